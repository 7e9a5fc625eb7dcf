# Two entry points do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch (a looser requirement would pull the multi-GB CUDA build).
TORCH  ?= torch==2.13.0
# EGL for the physics twin's cameras (sim --physics); installed where apt is usable, else a note.
GL_LIBS := libegl1 libegl-mesa0 libgl1-mesa-dri
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo -n)

.PHONY: setup demo test lint fuzz

$(VENV)/.installed: pyproject.toml setup.py $(wildcard kernels/csrc/*.c kernels/csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,onnx,export,trt-check,camera,plot,sdk,serve,physics]"
	@dpkg -s $(GL_LIBS) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(GL_LIBS); } \
	  >/dev/null 2>&1 || echo "note: could not install $(GL_LIBS) (the physics twin's headless cameras): install them" \
	     "(or libosmesa6 and set MUJOCO_GL=osmesa)"
	$(PY) -m rynn_edge.runtime.sim.scene
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rynn-edge demo

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The C servo layer under ASan+UBSan, built apart in build/fuzz (never over the in-place extension), fuzzed
# through a pty: receive path and control loop. The sanitizer runtime is LD_PRELOADed into the fuzzing
# interpreter (see tests/kernels_fuzz.py). `make test` runs a 40 s pass of it (tests/test_kernels_fuzz.py).
FUZZ_SEED    ?= 16
FUZZ_SECONDS ?= 120
fuzz: setup
	$(PY) tests/kernels_fuzz.py --seed $(FUZZ_SEED) --seconds $(FUZZ_SECONDS) --build build/fuzz

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
