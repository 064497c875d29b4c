# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv when absent and installs
# exactly the locked set (requirements/lock-pyXY.txt, with hashes); `make lock` refreshes the locks.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out
PYVER := $(shell $(PY) -c 'import sys; print("%d%d" % sys.version_info[:2])')
LOCK := requirements/lock-py$(PYVER).txt
# torch's CPU build is not on PyPI. A lock that holds it (torch==X+cpu) is installed with the PyTorch CPU index as an
# extra source, unless a local wheel folder (PIP_FIND_LINKS) already has the wheel; a lock without it gets torch
# from that index first.
TORCH ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
LOCAL_TORCH := $(foreach d,$(PIP_FIND_LINKS),$(wildcard $(d)/torch-$(TORCH)+cpu-cp$(PYVER)-*.whl))
TORCH_SOURCE := $(if $(LOCAL_TORCH),,--extra-index-url $(TORCH_INDEX))

.PHONY: demo test lint venv lock bench clean

# A new lock (or pyproject.toml) rebuilds .venv from nothing, so nothing installed before lingers beside the lock.
$(STAMP): $(wildcard $(LOCK)) pyproject.toml
	@test -f $(LOCK) || { echo "no lock for Python $(PYVER): use Python 3.10-3.12 (PY=python3.11 make ...)"; exit 2; }
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	# deepspeed ships only an sdist: its build environment gets the lock's setuptools and wheel, not PyPI's newest.
	grep -E '^(setuptools|wheel)==' $(LOCK) | cut -d' ' -f1 > $(VENV)/build-constraints.txt
	if grep -q '^torch==' $(LOCK); then \
	  PIP_CONSTRAINT=$(VENV)/build-constraints.txt \
	    $(BIN)/pip install -q --require-hashes --no-deps $(TORCH_SOURCE) -r $(LOCK); \
	else \
	  $(BIN)/pip install -q --no-deps --index-url $(TORCH_INDEX) "torch==$(TORCH)+cpu" && \
	  PIP_CONSTRAINT=$(VENV)/build-constraints.txt $(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK); \
	fi
	# The project itself, built with the locked setuptools (no unpinned build environment).
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP)

# uv resolves the locks (requirements/lock.sh); it lives in a venv of its own, at a pinned version.
UV_VERSION ?= 0.13.9
LOCK_VENV := .lock-venv

lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q "uv==$(UV_VERSION)"; }
	UV=$(LOCK_VENV)/bin/uv requirements/lock.sh

demo: $(STAMP)
	$(BIN)/python -m phi3v_train.demo --out $(DEMO_OUT)

# The GPU machine's older transformers & co. (requirements/gpu-image.txt), as an overlay in front of .venv: the
# model tests run again over it, and the device rehearsal installs its wheels as the GPU run installs carried ones.
GPU_IMAGE := $(VENV)/gpu-image
$(GPU_IMAGE)/.installed: requirements/gpu-image.txt $(STAMP)
	rm -rf $(GPU_IMAGE)
	$(BIN)/pip download -q --no-deps --require-hashes --only-binary=:all: -d $(GPU_IMAGE)/wheels -r requirements/gpu-image.txt
	$(BIN)/pip install -q --no-deps --no-index --target $(GPU_IMAGE)/site $(GPU_IMAGE)/wheels/*.whl
	touch $@

test: $(STAMP) $(GPU_IMAGE)/.installed
	PHI3V_GPU_IMAGE_WHEELS=$(GPU_IMAGE)/wheels $(BIN)/python -m pytest -q -n 2 tests
	PHI3V_GPU_IMAGE=1 PYTHONPATH=$(GPU_IMAGE)/site $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider tests/train/model

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(DEMO_OUT)
