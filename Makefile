# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv when missing and install everything once; a second run installs
# nothing (the stamp file records the install).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Our machines install the CPU wheel that lies on disk; elsewhere any torch >= 2.6 works
# (weights-only checkpoint loading with named stand-ins, en_seg/checkpoint.py), e.g.
# `make test TORCH='torch>=2.6'`; a torch already in the venv is kept.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.en-seg-installed

.PHONY: install demo test benchmark cuda-build cuda-emulation test-pretrain test-other-libraries

install: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import torch' 2>/dev/null || $(PIP) install '$(TORCH)'
	# mmcv 2.1.0 has no wheel for recent torch: build it with its ops against the
	# installed torch (pip caches the built wheel, so a rebuild takes seconds).
	$(PIP) install 'setuptools<82' wheel ninja numpy opencv-python-headless mmengine==0.10.7
	MMCV_WITH_OPS=1 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install mmsegmentation==1.2.2 ftfy regex pytest hypothesis
	# With the onnx extra, whose tests run in `make test`; the pretrain extra's run in
	# `make test-pretrain`.
	$(PIP) install --no-build-isolation -e '.[onnx]'
	touch $@

demo: $(STAMP)
	bash tools/demo.sh

test: $(STAMP)
	$(PY) -m pytest tests

# The CUDA kernels run on the CPU by an emulation (tests/cuda_emulation; needs g++, no GPU
# or nvcc); `make test` runs these tests too.
cuda-emulation: $(STAMP)
	$(PY) -m pytest tests/test_cuda_emulation.py

# Regenerates the measured tables in docs/ (and quoted in README.md) on this machine; the
# instruction counts need valgrind.
benchmark: $(STAMP)
	$(PY) tools/benchmark.py ratio --device cpu --threads 1 --clock cpu --repeats 5
	KINETO_LOG_LEVEL=5 $(PY) tools/benchmark.py layer --device cpu --threads 1 2 \
		--doc docs/benchmark_layer_model.md
	$(PY) tools/benchmark.py passes --device cpu --threads 1 2 \
		--doc docs/benchmark_layer_model.md
	KINETO_LOG_LEVEL=5 $(PY) tools/benchmark.py model --device cpu --threads 1 2 \
		--doc docs/benchmark_layer_model.md
	$(PY) tools/benchmark.py instructions --doc docs/benchmark_layer_model.md

# `make cuda-build`: compiles en_seg.ops._C with its CUDA kernels, checks that every op
# has one (tools/check_cuda_build.py) and that the elementwise passes store 128 bits a
# pack (tools/sass_report.py, its table in $(CUDA_BUILD)/sass_report.md); needs nvcc, no
# GPU. It uses a second environment,
# $(CUDA_VENV), with PyPI's CUDA build of torch: torch==2.13.0 from pip's default index is
# built with CUDA 13.0, as is the nvcc here. This machine's pip configuration (config files
# and PIP_FIND_LINKS) would install the CPU wheel on disk instead, so pip reads no config
# file (PIP_CONFIG_FILE=/dev/null) and no find-links. Architectures: CUDA_ARCHS (default
# sm_80 and sm_90 binaries + PTX). The wheel is built out of the tree, under $(CUDA_BUILD)
# (setuptools reads its build directories from the file DIST_EXTRA_CONFIG names), and
# installed into $(CUDA_VENV), leaving the CPU build of `make install` in en_seg/ops/.
# From nothing about 2.8 GB of download (torch and its CUDA libraries) and 2.5 minutes on
# 2 cores; 12 s once built (ninja recompiles only changed sources).
CUDA_VENV ?= .venv-cuda
CUDA_TORCH ?= torch==2.13.0
CUDA_ARCHS ?= 8.0 9.0+PTX
CUDA_BUILD := build/cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_PIP := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(CUDA_PY) -m pip
CUDA_STAMP := $(CUDA_VENV)/.torch-installed

$(CUDA_STAMP): Makefile
	test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PIP) install '$(CUDA_TORCH)' 'setuptools<82' wheel ninja numpy \
		nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37
	touch $@

cuda-build: $(CUDA_STAMP)
	mkdir -p $(CUDA_BUILD) && rm -rf $(CUDA_BUILD)/dist
	printf '[build]\nbuild_base = $(CUDA_BUILD)\n[egg_info]\negg_base = $(CUDA_BUILD)\n' \
		> $(CUDA_BUILD)/setup.cfg
	DIST_EXTRA_CONFIG=$(CUDA_BUILD)/setup.cfg TORCH_CUDA_ARCH_LIST='$(CUDA_ARCHS)' FORCE_CUDA=1 \
		$(CUDA_PIP) wheel --no-build-isolation --no-deps -w $(CUDA_BUILD)/dist .
	$(CUDA_PIP) install --no-deps --force-reinstall $(CUDA_BUILD)/dist/*.whl
	$(CUDA_PY) tools/check_cuda_build.py
	$(CUDA_PY) tools/sass_report.py --check > $(CUDA_BUILD)/sass_report.md

# `make test-pretrain`: tests/test_pretraining.py, the ImageNet pre-training with mmpretrain
# (configs/exemplar_norm/resnet50-v1c_*_in1k.py) that starts a segmentation run, on the CPU.
# mmpretrain imports torchvision, and PyPI's torchvision for torch 2.13.0 is a CUDA build,
# which fails to import beside the CPU torch of $(VENV): so these tests run in $(CUDA_VENV),
# with the en-seg wheel of cuda-build, from an empty folder outside the checkout (so that
# en_seg is that wheel, and no stray module in the working directory, e.g. a py.py in /tmp,
# shadows an installed one). pip reuses the mmcv wheel that `make install` built (its
# cache); `make test` skips these tests, naming this target.
PRETRAIN_STAMP := $(CUDA_VENV)/.openmmlab-installed

$(PRETRAIN_STAMP): $(CUDA_STAMP)
	MMCV_WITH_OPS=1 $(CUDA_PIP) install --no-build-isolation torchvision==0.28.0 \
		opencv-python-headless mmengine==0.10.7 mmcv==2.1.0 mmsegmentation==1.2.2 \
		mmpretrain==1.2.0 ftfy regex pytest matplotlib scikit-learn safetensors
	touch $@

test-pretrain: cuda-build $(PRETRAIN_STAMP)
	cd "$$(mktemp -d)" && $(abspath $(CUDA_PY)) -m pytest -p no:cacheprovider \
		$(CURDIR)/tests/test_pretraining.py

# `make test-other-libraries`: tests/test_other_libraries.py, EN in models of torchvision,
# timm and segmentation_models_pytorch (convert_batchnorm) and in mmpretrain's ResNet50 and
# mmdet's Faster R-CNN configs, on the CPU; in $(CUDA_VENV) for test-pretrain's reason
# (torchvision), with onnxruntime for the ONNX check of the converted torchvision DeepLabV3.
OTHER_STAMP := $(CUDA_VENV)/.other-libraries-installed

$(OTHER_STAMP): $(PRETRAIN_STAMP)
	$(CUDA_PIP) install timm==1.0.31 segmentation-models-pytorch==0.6.0 mmdet==3.3.0 'onnx>=1.16' \
		'onnxruntime>=1.18' 'onnxscript>=0.2'
	touch $@

test-other-libraries: cuda-build $(OTHER_STAMP)
	cd "$$(mktemp -d)" && $(abspath $(CUDA_PY)) -m pytest -p no:cacheprovider \
		$(CURDIR)/tests/test_other_libraries.py
