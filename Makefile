# Two entry points do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch (a looser requirement would pull the multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint

$(VENV)/.installed: pyproject.toml setup.py $(wildcard kernels/csrc/*.c kernels/csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,onnx,export,trt-check,camera,plot,sdk,serve]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rynn-edge demo

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
