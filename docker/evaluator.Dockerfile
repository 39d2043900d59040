# syntax=docker/dockerfile:1
# The evaluator: `python -m eval_job`, also used for the chart's data preparation and helm test
# (it has the Hub client and the Kubernetes client). No compiler, no flash-attn, no DeepSpeed, and
# nothing of the trainer: eval_job stands on r1v_common only (tests/eval/test_imports.py), and the lock
# holds the base, eval and k8s pins, not the train extra.
# Build from the repository root:
#   docker build -f docker/evaluator.Dockerfile -t r1v-evaluator:0.1.0 .

# Versions: the CUDA base here; every Python distribution from docker/evaluator.lock, with hashes
# (compiled from pyproject.toml by `make lock`).

# torch's wheels bring their own CUDA libraries, so the minimal CUDA base (driver hooks only) is enough.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04
# The base's digest (sha256:...), so that a re-pushed tag cannot change the image: `make images`
# passes CUDA_BASE_DIGEST (docs/operations.md, "Reproducible images"). Empty = by tag alone.
ARG CUDA_BASE_DIGEST=

# ---- build: venv and pip, so the runtime image carries neither pip caches nor python3-venv -----
FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU}${CUDA_BASE_DIGEST:+@${CUDA_BASE_DIGEST}} AS build
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive drops superseded versions, so apt pins would break rebuilds; the CUDA base tag
# fixes the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.12 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml docker/evaluator.lock ./
RUN pip install --no-cache-dir --require-hashes -r evaluator.lock
COPY README.md ./
COPY r1v_common ./r1v_common
COPY eval_job ./eval_job
# r1v_submit carries the chart as package data (r1v_submit/chart links to charts/r1v, whose
# files/ link to recipes/): all three are copied so the wheel built here holds the chart.
COPY r1v_submit ./r1v_submit
COPY charts ./charts
COPY recipes ./recipes
RUN pip install --no-cache-dir --no-deps .

# ---- runtime -----------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU}${CUDA_BASE_DIGEST:+@${CUDA_BASE_DIGEST}} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CUDA_VERSION
ARG CUDA_BASE_DIGEST
LABEL org.opencontainers.image.title="r1v-evaluator" \
      org.opencontainers.image.description="R1-V SuperCLEVR evaluator, data preparation and helm test image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="nvidia/cuda:${CUDA_VERSION}-base-ubuntu24.04" \
      org.opencontainers.image.base.digest="${CUDA_BASE_DIGEST}"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN userdel --remove ubuntu 2>/dev/null; \
    useradd --uid 1000 --user-group --create-home --shell /bin/bash r1v
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/r1v
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/r1v
USER 1000:1000
ENTRYPOINT ["python", "-m", "eval_job"]
CMD ["--help"]
