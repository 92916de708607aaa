# Two commands on a fresh machine: `make run` (the tiny local pipeline) and `make test`.
# Both start with `make install`, which creates .venv when absent.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU machines get the CPU build of torch, pinned, before anything can pull a CUDA build.
# Set TORCH_INDEX to a CPU wheel index on machines whose default index serves CUDA builds.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
STAMP := $(VENV)/.p3-installed
# Image names the pipelines default to (src/p3/kfp/components/images.py); needs a Docker engine.
REGISTRY  ?= ghcr.io/p3-kubeflow
IMAGE_TAG ?= 0.1.0

.PHONY: install sandbox-deps run test test-fast bench images pin-images compile clean

install: sandbox-deps $(STAMP)

# The APPS sandbox's full isolation needs bubblewrap (grading refuses to run programs
# without it unless --allow-weak-isolation). Installed when root with apt; otherwise
# one line says what to install. Never fails the install itself.
sandbox-deps:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bubblewrap (APPS sandbox isolation)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	    || echo "make install: could not install bubblewrap with apt-get; APPS grading needs it (or --allow-weak-isolation)"; \
	else \
	  echo "make install: bubblewrap is missing; install it for APPS grading (e.g. sudo apt-get install bubblewrap)"; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_CUDA),1)
	$(PIP) install -q "torch>=2.3"
else
	$(PIP) install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple)
endif
	$(PIP) install -q -e '.[test,qlora]'
	touch $(STAMP)

run: install
	$(PY) pipelines/p3_math.py --local

test: install
	P3_PROGRESS=0 $(PY) -m pytest -q

test-fast: install
	P3_PROGRESS=0 $(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) bench/dpp_scale.py --quick

# The committed YAML for import from the KFP UI (tests/test_compiled.py checks it is current).
compile: install
	$(PY) pipelines/p3_math.py --compile pipelines/compiled/p3_math.yaml
	$(PY) pipelines/p3_apps.py --compile pipelines/compiled/p3_apps.yaml
	$(PY) pipelines/p3_math.py --compile pipelines/compiled/p3_math_per_epoch.yaml --epoch-per-run
	$(PY) pipelines/p3_apps.py --compile pipelines/compiled/p3_apps_per_epoch.yaml --epoch-per-run

images:
	DOCKER_BUILDKIT=1 docker build -f images/p3-base.Dockerfile  -t $(REGISTRY)/p3-base:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build -f images/p3-vllm.Dockerfile  -t $(REGISTRY)/p3-vllm:$(IMAGE_TAG) .
	DOCKER_BUILDKIT=1 docker build -f images/p3-train.Dockerfile -t $(REGISTRY)/p3-train:$(IMAGE_TAG) .

# Pin each image's base by digest: FROM name:tag -> name:tag@sha256:<what the registry gives
# for the tag now>. Needs the registry (Docker Hub), so a maintainer runs it where it is
# reachable; make test and make run never do. `--check` (no network) lists unpinned bases.
pin-images:
	$(PYTHON) images/pin_digests.py images/*.Dockerfile

clean:
	rm -rf runs .pytest_cache p3_math.yaml p3_apps.yaml
