# syntax=docker/dockerfile:1
# The trainer: torchrun over `python -m r1v_job`, with flash-attn and DeepSpeed compiled for
# A100 (sm_80) and H100 (sm_90). Build from the repository root:
#   docker build -f docker/trainer.Dockerfile -t r1v-trainer:0.1.0 .
# Versions: the CUDA base here; every Python distribution from docker/trainer.lock and
# docker/trainer-gpu.lock, with hashes (compiled from pyproject.toml by `make lock`).

# CUDA 13.0 matches the CUDA runtime the pinned torch wheel is built against; flash-attn and
# DeepSpeed's ops must be compiled with the same major version.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04
# The bases' digests (sha256:...), so that a re-pushed tag cannot change the image: `make images`
# passes CUDA_DEVEL_DIGEST and CUDA_RUNTIME_DIGEST (docs/operations.md, "Reproducible images").
# Empty = by tag alone.
ARG CUDA_DEVEL_DIGEST=
ARG CUDA_RUNTIME_DIGEST=

# ---- build: compilers and the CUDA toolkit, thrown away afterwards (several GB) ----------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU}${CUDA_DEVEL_DIGEST:+@${CUDA_DEVEL_DIGEST}} AS build
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive drops superseded versions, so apt pins would break rebuilds; the CUDA base tag
# fixes the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev git \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.12 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml docker/trainer.lock docker/trainer-gpu.lock ./
# Dependencies first (a layer that survives source edits): the whole environment from the lock, each
# file checked against its hash. It holds the "build" extra's pinned build helpers (ninja, packaging,
# psutil) the next step compiles with.
RUN pip install --no-cache-dir --require-hashes -r trainer.lock
# flash-attn and DeepSpeed compile against the torch installed above, hence no build isolation.
# FORCE_BUILD: never fetch a prebuilt flash-attn wheel from outside the package index.
ENV TORCH_CUDA_ARCH_LIST="8.0;9.0" \
    MAX_JOBS=8 \
    FLASH_ATTENTION_FORCE_BUILD=TRUE \
    DS_BUILD_FUSED_ADAM=1 \
    DS_BUILD_CPU_ADAM=1 \
    DS_BUILD_UTILS=1
RUN pip install --no-cache-dir --require-hashes --no-build-isolation -r trainer-gpu.lock
COPY README.md ./
COPY r1v_common ./r1v_common
COPY r1v_job ./r1v_job
COPY eval_job ./eval_job
# r1v_submit carries the chart as package data (r1v_submit/chart links to charts/r1v, whose
# files/ link to recipes/): all three are copied so the wheel built here holds the chart.
COPY r1v_submit ./r1v_submit
COPY charts ./charts
COPY recipes ./recipes
RUN pip install --no-cache-dir --no-deps .

# ---- runtime: CUDA runtime libraries, Python and the venv only ----------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}${CUDA_RUNTIME_DIGEST:+@${CUDA_RUNTIME_DIGEST}} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CUDA_VERSION
ARG CUDA_RUNTIME_DIGEST
LABEL org.opencontainers.image.title="r1v-trainer" \
      org.opencontainers.image.description="R1-V GRPO trainer (TRL, DeepSpeed, flash-attn) for Kubeflow PyTorchJobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04" \
      org.opencontainers.image.base.digest="${CUDA_RUNTIME_DIGEST}"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/*
# Ubuntu 24.04 ships a "ubuntu" user with uid 1000; the chart runs as 1000, so that uid is ours.
RUN userdel --remove ubuntu 2>/dev/null; \
    useradd --uid 1000 --user-group --create-home --shell /bin/bash r1v
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/r1v
# The recipes, so that `docker run IMAGE --config recipes/...` works (their deepspeed paths are relative).
COPY recipes ./recipes
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/r1v
USER 1000:1000
# torchrun reads its topology from the PET_* variables the Training Operator injects.
ENTRYPOINT ["torchrun", "-m", "r1v_job"]
CMD ["--config", "recipes/r1v_qwen2vl_2b_clevr.yaml"]
