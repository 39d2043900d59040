# Every target sets up what it needs: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS := train,eval,k8s,demo,dev

IMAGE_REPO ?= ghcr.io/r1v-k8s
IMAGE_TAG  ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILDER    ?= $(shell command -v docker >/dev/null 2>&1 && echo docker || echo buildah)

.PHONY: setup tools test demo smoke images lock bench gpu-wheels schema clean

setup: $(VENV)/.installed

# Re-installs when the pins change. DS_BUILD_OPS=0: DeepSpeed's CUDA ops are built in the GPU image,
# never here.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

# Real Prometheus parts for the tests, from Debian: the Pushgateway (and promtool for rule checks).
tools:
	@command -v prometheus-pushgateway >/dev/null && command -v promtool >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-pushgateway prometheus >/dev/null; }

test: setup tools
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The trainer's smoke recipe end to end: builds the tiny model and scenes on first use.
smoke: setup
	$(PY) -m r1v_job --config recipes/smoke_cpu.yaml

# Miniature R1-V on 2 CPU cores, three seeds (its time: docs/demo.md, "Timing"): a broad "Instruct"
# start, GRPO via r1v_job, two SFT controls on the same rows, eval_job scores on the held-out split,
# table (means and 95% intervals), the two findings and a plot in runs/demo/.
# PUSHGATEWAY=http://host:9091 also pushes the scores.
demo: setup
	$(PY) -m demo --out runs/demo $(if $(PUSHGATEWAY),--pushgateway $(PUSHGATEWAY))

# CPU speed table of docs/performance.md: each speed lever alone and combined, against TRL as it was
# (levers=none) and R1-V's style, on CLEVR-sized scenes (the GPU table: bash bench/gpu.sh on a GPU
# machine). About 8 minutes of CPU time.
BENCH_VARIANTS := ours:mb=16,levers=none ours:mb=16,levers=dedup ours:mb=16,levers=dedup+group \
  ours:mb=16,levers=images ours:mb=16,levers=dedup+group+images ours:mb=16,levers=dedup+group+images+pixels \
  ours:mb=16,levers=dedup+group+images+rope ours:mb=16 r1v:levers=none
bench: setup
	$(PY) -m bench --model tiny --recipe recipes/smoke_cpu.yaml --image-size 480x320 --set max_pixels=401408 --threads 1 --steps 3 --warmup 1 --baseline ours:mb=16,levers=none --variants $(BENCH_VARIANTS) --out runs/bench/cpu_tiny.json

# The wheels the lent GPU machine lacks (bench/gpu_wheels.txt), into .whl/, which the device call
# carries for bench/gpu.sh; fails when the tree with them is over the call's 64 MiB.
gpu-wheels: setup
	$(PY) -m bench.gpu_wheels --dest .whl

# Both images from the repo root; tags default to pyproject's version (= the chart's appVersion).
# CUDA_DEVEL_DIGEST, CUDA_RUNTIME_DIGEST, CUDA_BASE_DIGEST (sha256:...) pin the CUDA bases by digest
# (docs/operations.md, "Reproducible images").
images:
	$(BUILDER) build -f docker/trainer.Dockerfile --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$(REVISION) \
	  --build-arg CUDA_DEVEL_DIGEST=$(CUDA_DEVEL_DIGEST) --build-arg CUDA_RUNTIME_DIGEST=$(CUDA_RUNTIME_DIGEST) \
	  -t $(IMAGE_REPO)/r1v-trainer:$(IMAGE_TAG) .
	$(BUILDER) build -f docker/evaluator.Dockerfile --build-arg VERSION=$(IMAGE_TAG) --build-arg REVISION=$(REVISION) \
	  --build-arg CUDA_BASE_DIGEST=$(CUDA_BASE_DIGEST) -t $(IMAGE_REPO)/r1v-evaluator:$(IMAGE_TAG) .

# The chart's values.schema.json and README.md from the comments of its values.yaml (tools/chart_schema.py;
# the tests check they match).
schema: setup
	$(PY) tools/chart_schema.py

# The images' lock files (docker/*.lock: every distribution with its hashes) from pyproject.toml's
# pins, with uv from the dev extra; reads PyPI. Run after changing any pin; the tests check they match.
lock: setup
	$(PY) docker/pins.py --lock

clean:
	rm -rf runs .pytest_cache
