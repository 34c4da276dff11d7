# `make demo` and `make test` work on a fresh machine: they create .venv when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.i2i-installed

.PHONY: install demo test test-fast bench clean-demo

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

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/iteration_time.py --variants all

clean-demo:
	rm -rf runs/demo
