#!/usr/bin/env bash
# GPU figures for issues 6 and 12, in one command: the Qwen2-VL-2B-Instruct architecture with random
# weights, the seed recipe's precision (fp32 weights under bf16 autocast; one process, no DeepSpeed,
# whose ZeRO-2 in the real run casts the weights to bf16: these steps are somewhat heavier than the
# real run's, and heavier than the bf16-weight figures measured before e481e75), sdpa, one GPU, 16 prompts x 8 rollouts (128 per optimizer step), completions pinned
# to 64 tokens, 480x320 CLEVR-like scenes (187 visual tokens each), the seed recipe's micro-batch of
# 16. The R1-V-style baseline, then each speed lever of issue 12 alone and combined. About 7-8
# minutes on one H100 or H200 (variants still waiting after 6 minutes are skipped).
#
#   bash bench/gpu.sh                 # on the lent GPU machine, from the repo root; results in $OUT
#   bash bench/gpu.sh --cpu-dry-run   # anywhere: the same steps on a shrunken 2B config, on the CPU
#
# Writes $OUT/bench_qwen2vl_2b.json (every figure, per step), $OUT/bench_qwen2vl_2b.log (the table).
# Not measured: vLLM colocate (its wheels are too big to carry to the machine), flash-attention (not
# installed there), TRL's torch_compile of the training passes (one compile per padded shape would take
# the whole budget). The compiled decode (levers=...+compile) is measured, its compile in warm-up steps.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then DRY_RUN=1; fi
OUT=${OUT:-runs/bench/gpu}
mkdir -p "$OUT"
# No network on the GPU machine: fail at once instead of waiting on Hub time-outs.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if (( DRY_RUN )); then
  PY=${PYTHON:-.venv/bin/python}
  WORK=runs/bench/gpu-dry-run
  mkdir -p "$WORK"
  MODEL=$WORK/qwen2vl_2b_shrunk.json
  # The 2B config with small layers and vocabulary, through the same config-JSON path. (The vocabulary is
  # cut too because, without Triton, TRL's fused LM head scores every prompt position, not only the
  # completion: with 151936 entries one CPU step took six minutes.)
  "$PY" - "$MODEL" <<'EOF'
import json, sys
config = json.load(open("bench/configs/qwen2vl_2b.json"))
config.update(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_window_layers=2)
config["rope_scaling"]["mrope_section"] = [2, 3, 3]  # must sum to head_dim / 2 = 8
config["vision_config"].update(depth=2, embed_dim=32, num_heads=2, hidden_size=64)
json.dump(config, open(sys.argv[1], "w"), indent=1)
EOF
  LENGTH=4; STEPS=1; WARMUP=0; BUDGET=600
  EXTRA=(--set use_cpu=true --set bf16=false --set dtype=float32 --threads 1)
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  PY=python3
  WORK=/tmp/bench
  MODEL=bench/configs/qwen2vl_2b.json
  # Variants still waiting after 6 minutes are skipped, so the run ends inside ~8 minutes.
  LENGTH=64; STEPS=2; WARMUP=1; BUDGET=360
  EXTRA=()
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee "$OUT/nvidia-smi.csv" || true
fi

# Preflight: name every missing module in seconds, not after minutes of model building; then import
# the trainer itself, which pulls in everything the run needs (and transformers checks its own pins).
"$PY" - <<'EOF'
import importlib.util, sys
needed = ["torch", "transformers", "trl", "accelerate", "datasets", "math_verify", "latex2sympy2_extended", "yaml",
          "PIL", "prometheus_client", "pyarrow", "pandas", "xxhash", "dill", "multiprocess", "jinja2", "psutil"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"missing modules: {', '.join(missing)} (carry their wheels in .whl/)")
import torch, transformers, trl
import r1v_job.grpo, bench.harness  # noqa: F401
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"trl {trl.__version__}, torchvision {'yes' if importlib.util.find_spec('torchvision') else 'no'}, "
      f"liger_kernel {'yes' if importlib.util.find_spec('liger_kernel') else 'no'}, "
      f"cuda {torch.cuda.is_available() and torch.cuda.get_device_name()}", flush=True)
EOF

# Variant order: the figures issue 12 asks for first, so a run cut short still has them. `levers=`
# switches the named levers on and the others off (bench.harness.LEVERS); without it the recipe's
# defaults hold (dedup, group and images on, compile off). mb=16: the recipe's micro-batch.
#   ours:levers=none      TRL as it was before issue 12: every rollout's image copy encoded, rollouts
#                         shuffled singly into micro-batches, every prefetched row decoded, the image
#                         processor on all 128 copies twice (docs/performance.md's 8.91 s/step, with bf16 weights)
#   r1v:levers=none       R1-V: per micro-step 1 prompt, generate(num_return_sequences=8), 16 micro-steps
#   ours                  the recipe's defaults: dedup + group + images
#   ours:levers=all,...   + the compiled static-cache decode; 2 unmeasured warm-up steps hold the compile
#   ours:levers=dedup     vision dedup alone (TRL's single-rollout shuffle: ~10 images per micro-batch)
#   ours:levers=dedup+group   + whole groups per micro-batch (2 images per micro-batch of 16)
#   ours:levers=images    CPU image work once per distinct image, alone
#   ours:levers=compile,warmup=2   the compiled decode alone
#   ours:mb=128           the defaults with the whole step in one micro-batch (dedup cut the activations)
"$PY" -m bench --model "$MODEL" --recipe recipes/r1v_qwen2vl_2b_clevr.yaml \
  --prompts 16 --generations 8 --completion-length "$LENGTH" --image-size 480x320 \
  --steps "$STEPS" --warmup "$WARMUP" --time-budget "$BUDGET" --baseline r1v:levers=none,warmup=0,steps=1 \
  --variants ours:mb=16,levers=none r1v:levers=none,warmup=0,steps=1 ours:mb=16 ours:mb=16,levers=all,warmup=2 \
    ours:mb=16,levers=dedup ours:mb=16,levers=dedup+group ours:mb=16,levers=images \
    ours:mb=16,levers=compile,warmup=2 ours:mb=128 \
  --workdir "$WORK" --out "$OUT/bench_qwen2vl_2b.json" "${EXTRA[@]}" 2>&1 | tee "$OUT/bench_qwen2vl_2b.log"
