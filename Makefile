# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.i2i-installed

.PHONY: install demo demo-cityscapes demo-nirvis app test test-fast bench clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch torchvision
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Train StarGAN v2 + ReMix on the procedural set (continues runs/demo if it exists), then score it with the AFHQ
# protocol using a proxy feature network trained on the same data (no pretrained weights needed; marked as such).
demo: install
	$(PY) -m i2i.train --config configs/afhq_demo.yaml --run-dir runs/demo --resume auto --remix
	$(PY) -m evaluators afhq --run runs/demo --backbone proxy --allow-random-lpips --max-per-domain 30

# SPADE on the procedural street scenes (label map -> photo), scored with a segmenter trained on the same data.
demo-cityscapes: install
	$(PY) -m i2i.train --config configs/cityscapes_demo.yaml --run-dir runs/demo-cityscapes --resume auto --remix
	$(PY) -m evaluators cityscapes --run runs/demo-cityscapes --segmenter proxy --segmenter-steps 300 --backbone proxy

# LightCNN + StyleGAN2 on the procedural NIR/VIS faces (the encoder is first trained on the training identities).
demo-nirvis: install
	$(PY) -m i2i.train --config configs/nirvis_demo.yaml --run-dir runs/demo-nirvis --resume auto --remix
	$(PY) -m evaluators nirvis --run runs/demo-nirvis

# Serve the demo runs in the browser: each of runs/demo, runs/demo-cityscapes, runs/demo-nirvis that exists is exported
# to ONNX first when its export is missing or older than its checkpoint.
app: install
	@test -n "$$(ls runs/demo/checkpoints/*.pt 2>/dev/null)" || { echo "no trained demo in runs/demo: run 'make demo' first"; exit 2; }
	@for run in runs/demo runs/demo-cityscapes runs/demo-nirvis; do \
	    if [ -n "$$(ls $$run/checkpoints/*.pt 2>/dev/null)" ]; then \
	        $(PY) -m i2i.export --run $$run --out exports/$$(basename $$run) --skip-if-current || exit 1; fi; done
	$(PY) -m apps.gradio_app --exports exports

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/iteration_time.py --variants all

clean-demo:
	rm -rf runs/demo
