# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.i2i-installed

.PHONY: install demo app test test-fast bench clean-demo

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

# Serve the demo run in the browser: export it to ONNX first when the export is missing or older than its checkpoint.
app: install
	@test -n "$$(ls runs/demo/checkpoints/*.pt 2>/dev/null)" || { echo "no trained demo in runs/demo: run 'make demo' first"; exit 2; }
	$(PY) -m i2i.export --run runs/demo --out exports/demo --skip-if-current
	$(PY) -m apps.gradio_app --exports exports

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/iteration_time.py --variants all

clean-demo:
	rm -rf runs/demo
