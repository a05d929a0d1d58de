# onnxrep: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= out/demo
JOBS   ?= auto   # pytest-xdist workers for make test / test-all

.PHONY: install install-real demo test test-all test-real lint bench bench-int8 clean

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
	$(PY) -m pytest -q -n $(JOBS)

# Everything, including the slow end-to-end tests on full-size models.
test-all: install
	$(PY) -m pytest -q -n $(JOBS) -m "slow or not slow"

# The real-exporter tier: models built by their own code (official YOLOv9 and YOLOv7, timm, and the families
# of tests/real/families: ultralytics YOLOv8/YOLO11/RT-DETR, YOLOv6, YOLO-NAS, PP-YOLOE+), exported by their
# exporters, optimized with defaults. REAL=quick (yolov9-t, gelan-t, four timm families, two small YOLOv7s,
# yolov8n, yolov6n, yolonas-s; the CI set) or REAL=all (adds yolov9-s/m/c/e, the official YOLOv7
# configurations, yolo11n, rtdetr-l, yolov6s, yolonas-m, ppyoloe-s (PaddlePaddle, installed only then) and
# the two models trained on synthetic shapes for the float16 test: about an hour of training on 2 cores the
# first time), or a list. Exports are cached in out/real-exports/, trained models in out/trained/.
REAL ?= all
PADDLE := $(if $(filter all,$(REAL))$(findstring ppyoloe,$(REAL)),$(VENV)/.installed-paddle,)
install-real: $(VENV)/.installed-real

# yolov9pip, yolov7-package, yolov6detect and modern-yolonas with --no-deps: their declared dependencies
# (a CUDA torchvision, tensorboard, lightning, pinned numpy...) are not needed to build or export a model
# (tests/real/stubs.py stands in for what they import)
$(VENV)/.installed-real: $(STAMP)
	$(PY) -m pip install -q -e '.[test,real]'
	$(PY) -m pip install -q --no-deps yolov9pip yolov7-package yolov6detect==0.4.1 modern-yolonas==0.5.0
	touch $@

# PP-YOLOE+: PaddlePaddle, PaddleDetection (its pins, numpy<1.24 and opencv<=4.6, are not met: the family
# module imports only its model code) and paddle2onnx (pins onnx<=1.17; works with ours)
$(VENV)/.installed-paddle: $(VENV)/.installed-real
	$(PY) -m pip install -q paddlepaddle==3.3.1
	$(PY) -m pip install -q --no-deps paddledet==2.6.0 paddle2onnx==2.1.0 onnxoptimizer polygraphy
	touch $@

test-real: install-real $(PADDLE)
	ONNXREP_REAL_MODELS=$(REAL) $(PY) -m pytest -q -m real tests/real

lint: install
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check onnxrep models tests peer_benchmarks

bench: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) peer_benchmarks/run.py
	$(PY) peer_benchmarks/float16.py
	$(PY) peer_benchmarks/nms.py
	$(PY) peer_benchmarks/tool_time.py
	$(PY) peer_benchmarks/int8.py latency
	$(PY) peer_benchmarks/quote.py

# int8 accuracy on the models trained on synthetic shapes (mAP by pycocotools): needs PyTorch and the official
# YOLOv9 code (install-real); trains the models first when out/trained/ lacks them (about an hour on 2 cores).
bench-int8: install-real
	$(PY) -m pip install -q -e '.[test,real,int8]'
	$(PY) peer_benchmarks/int8.py accuracy
	$(PY) peer_benchmarks/quote.py

.PHONY: measure-test docs

# How long `make test` takes on this machine: peer_benchmarks/results/test_time.json (README.md quotes it).
measure-test: install
	mkdir -p out
	/usr/bin/time -f %e -o out/test_time.txt $(MAKE) test
	$(PY) peer_benchmarks/quote.py --record-test-time out/test_time.txt --jobs "$(strip $(JOBS))"

# Re-render the measured numbers of README.md and docs/*.md from peer_benchmarks/results/ (no measuring).
docs:
	$(PY) peer_benchmarks/quote.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
