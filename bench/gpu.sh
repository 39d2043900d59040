#!/usr/bin/env bash
# The GPU step, measured in one call on the lent machine (one H100 80 GB or H200 141 GB, torch 2.11,
# Python 3.12, no registry): the Qwen2-VL-2B architecture with random weights, the seed recipe
# (16 prompts x 8 rollouts per optimizer step, micro-batches of 16, beta 0.04), 64-token completions,
# 480x320 CLEVR-like scenes, sdpa, one process (no DeepSpeed). Every variant whose estimated peak fits
# the free GPU memory runs (bench/gpu_plan.py: the defaults, R1-V's style, TRL as before the levers at
# the largest micro-batch that fits, each lever, fp32 weights under autocast, the whole step in one
# checkpointed micro-batch); precision=bf16 is the real run's (bf16 weights, fp32 master weights and
# AdamW states, as ZeRO-2 keeps them). New variants stop starting at 6 minutes: the whole call, set-up
# included, ends inside 8.
#
#   make gpu-wheels                                   # here, once: the wheels the machine lacks, in .whl/
#   bash bench/gpu.sh --commit "$(git rev-parse --short HEAD)"   # there (docs/performance.md: the call)
#   bash bench/gpu.sh --dry-run                       # anywhere: the same plan on the tiny model, on the CPU
#
# Writes $OUT/bench_qwen2vl_2b.json (every figure, per step, the plan, versions, the commit given) and
# $OUT/bench_qwen2vl_2b.log (what it printed: the plan, then a compact table).
set -euo pipefail

DRY_RUN=0
COMMIT=
while (( $# )); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --commit) COMMIT=${2:?--commit needs a value}; shift ;;
    *) echo "bench/gpu.sh: unknown argument $1 (--dry-run, --commit SHA)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
# No network on the GPU machine: fail at once instead of waiting on Hub time-outs.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

if (( DRY_RUN )); then
  PY=${PYTHON:-.venv/bin/python}
  # The plan for an H100's free memory, on the tiny model: 2 prompts x 8 rollouts, 4-token
  # completions, small scenes, one step per variant (micro-batches clamped to the 16-rollout step).
  ARGS=(--model tiny --free-gib 79.2 --prompts 2 --generations 8 --completion-length 4 --image-size 112x112
        --set use_cpu=true --threads 1 --workdir "${WORKDIR:-runs/bench/gpu-dry-run}")
else
  PY=${PYTHON:-python3}
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  if compgen -G ".whl/*.whl" > /dev/null; then  # the lent machine: its python3 plus the carried wheels
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PYTHONPATH
  elif ! "$PY" -c "import trl, datasets, math_verify" 2> /dev/null; then
    echo "bench/gpu.sh: $PY lacks trl/datasets/math-verify and .whl/ has no wheels: run 'make gpu-wheels'" \
         "before the call and carry .whl (or set PYTHON to an environment with '.[train]' installed)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia-smi.csv" || true
  ARGS=(--model bench/configs/qwen2vl_2b.json --prompts 16 --generations 8 --completion-length 64
        --image-size 480x320 --steps 2 --warmup 1 --workdir /tmp/bench)
fi

# Every import the run needs, in seconds rather than after minutes of model building (transformers
# checks its own pins here too); then each carried wheel's requirements against what is installed
# there, as warnings (the machine's pyarrow and fsspec versions, which datasets bounds, are not known
# in advance).
"$PY" - <<'EOF'
import glob, importlib.util, sys, torch, transformers, trl
from importlib.metadata import PackageNotFoundError, distribution, version
from packaging.requirements import Requirement
import r1v_job.grpo, bench.harness, bench.gpu_plan  # noqa: F401
vision = "yes" if importlib.util.find_spec("torchvision") else "no"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"trl {trl.__version__}, torchvision {vision}, cuda {torch.cuda.is_available() and torch.cuda.get_device_name()}",
      flush=True)
for wheel in sorted(glob.glob(".whl/*.whl")):
    for line in distribution(wheel.split("/")[-1].split("-")[0]).requires or []:
        need = Requirement(line)
        if need.marker is not None and not need.marker.evaluate({"extra": ""}):
            continue
        try:
            have = version(need.name)
        except PackageNotFoundError:
            continue  # an optional import the run does not make (tests/bench/test_gpu_wheels.py checks those)
        if not need.specifier.contains(have, prereleases=True):
            print(f"warning: {wheel}: needs {need}, {need.name} {have} is installed", flush=True)
EOF

# Variants start until 6 minutes after this script began (set-up counted): it ends inside 8.
(( DRY_RUN )) || ARGS+=(--time-budget $(( 360 - SECONDS )))
"$PY" -m bench --plan gpu --recipe recipes/r1v_qwen2vl_2b_clevr.yaml --table compact \
  ${COMMIT:+--commit "$COMMIT"} --out "$OUT/bench_qwen2vl_2b.json" "${ARGS[@]}" 2>&1 | tee "$OUT/bench_qwen2vl_2b.log"
echo "bench/gpu.sh: done in ${SECONDS}s"
