# onnxrep: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= out/demo
JOBS   ?= auto

.PHONY: install demo test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Build a yolov9-c in training form (BatchNorm kept, RepConv unmerged, aux head) and optimize it.
demo: install
	mkdir -p $(DEMO)
	$(PY) -m models yolov9-c --form bn -o $(DEMO)/yolov9-c.onnx
	$(VENV)/bin/onnxrep optimize $(DEMO)/yolov9-c.onnx -o $(DEMO)/yolov9-c.opt.onnx

test: install
	$(PY) -m pytest -q

# Everything, including the slow end-to-end tests on full-size models.
test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check onnxrep models tests bench

bench: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
