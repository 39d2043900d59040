#!/usr/bin/env bash
# The trainer's own entry point on one GPU: `python -m r1v_job` with the seed recipe, on the
# Qwen2-VL-2B architecture (random weights), 3 steps, scraping its /metrics while it runs. Checks
# what the CPU tests cannot: bf16 on a GPU, the attention choice, the GPU memory gauges.
#
#   bash bench/gpu_trainer_check.sh                # on the GPU machine (wheels in .whl/: make gpu-wheels)
#   bash bench/gpu_trainer_check.sh --cpu-dry-run  # the same steps on the tiny model, on the CPU
set -euo pipefail
OUT=${OUT:-runs/bench/gpu-trainer}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  PY=${PYTHON:-.venv/bin/python}; WORK=runs/bench/gpu-trainer-dry; SPEC=tiny; SIZE=112x112
  EXTRA=(--use_cpu true --bf16 false --dtype float32 --max_completion_length 8)
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3; WORK=/tmp/trainer-check; SPEC=bench/configs/qwen2vl_2b.json; SIZE=480x320
  EXTRA=(--max_completion_length 64)
fi
mkdir -p "$WORK"
PATHS=$("$PY" - "$SPEC" "$WORK" "$SIZE" <<'EOF'
import sys, torch
from pathlib import Path
from bench.models import prepare_model, write_scenes
spec, work, size = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
w, h = map(int, size.split("x"))
model = prepare_model(spec, work, device="cuda" if torch.cuda.is_available() else "cpu")
print(model, write_scenes(work / "scenes", 64, w, h))
EOF
)
read -r MODEL DATA <<< "$(tail -n 1 <<< "$PATHS")"
PORT=8000
# No DeepSpeed on one GPU (ZeRO shards across GPUs; it is not installed on the lent machine either).
"$PY" -m r1v_job --config recipes/r1v_qwen2vl_2b_clevr.yaml --model_name_or_path "$MODEL" \
  --dataset_name "$DATA" --output_dir "$WORK/run" --deepspeed "" --max_steps 3 --save_steps 3 \
  --metrics_port "$PORT" --auto_resume false "${EXTRA[@]}" > "$OUT/train.log" 2>&1 &
TRAINER=$!
# Keep the last scrape taken while the trainer ran (the server stops with training).
while kill -0 "$TRAINER" 2>/dev/null; do
  "$PY" -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$PORT/metrics', timeout=2).read().decode())" \
    > "$OUT/metrics.tmp" 2>/dev/null && grep -q '^r1v_train_global_step [1-9]' "$OUT/metrics.tmp" && mv "$OUT/metrics.tmp" "$OUT/metrics.txt"
  sleep 1
done
wait "$TRAINER"
grep -E "attn_implementation|step [0-9]+/|final model" "$OUT/train.log"
grep -E "^r1v_train_(global_step|reward\{|kl |loss |gpu_memory|step_duration_seconds_count|rollouts_total)" "$OUT/metrics.txt"
test -f "$WORK/run/training_complete.json" && echo "completion marker written"
