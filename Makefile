# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv when missing and install everything once; a second run installs
# nothing (the stamp file records the install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Our machines install the CPU wheel that lies on disk; elsewhere any torch >= 2.4 works
# (the ops register their autograd with torch.library, new in 2.4), e.g.
# `make test TORCH='torch>=2.4'`; a torch already in the venv is kept.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.en-seg-installed

.PHONY: install demo test benchmark

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install '$(TORCH)'
	# mmcv 2.1.0 has no wheel for recent torch: build it with its ops against the
	# installed torch (pip caches the built wheel, so a rebuild takes seconds).
	$(PIP) install 'setuptools<82' wheel ninja numpy opencv-python-headless mmengine==0.10.7
	MMCV_WITH_OPS=1 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install mmsegmentation==1.2.2 ftfy regex pytest
	$(PIP) install --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	bash tools/demo.sh

test: $(STAMP)
	$(PY) -m pytest tests

# Regenerates the measured tables in docs/ (and quoted in README.md) on this machine.
benchmark: $(STAMP)
	$(PY) tools/benchmark.py ratio --device cpu --threads 1 --clock cpu --repeats 5
	KINETO_LOG_LEVEL=5 $(PY) tools/benchmark.py layer --device cpu --threads 1 --clock cpu \
		--doc docs/benchmark_layer_model.md
	KINETO_LOG_LEVEL=5 $(PY) tools/benchmark.py model --device cpu --threads 1 --clock cpu \
		--doc docs/benchmark_layer_model.md
