#!/usr/bin/env bash
# GPU figures for issue 6, in one command: the Qwen2-VL-2B-Instruct architecture with random weights,
# bf16, sdpa, one GPU, 16 prompts x 8 rollouts (128 per optimizer step), completions pinned to 64
# tokens, 480x320 CLEVR-like scenes (187 visual tokens each). R1-V-style generation against TRL's
# batched generation, then the variants TRL offers. About 5-6 minutes on one H100 or H200.
#
#   bash bench/gpu.sh                 # on the lent GPU machine, from the repo root; results in $OUT
#   bash bench/gpu.sh --cpu-dry-run   # anywhere: the same steps on a shrunken 2B config, on the CPU
#
# Writes $OUT/bench_qwen2vl_2b.json (every figure, per step), $OUT/bench_qwen2vl_2b.log (the table).
# Not measured: vLLM colocate (its wheels are too big to carry to the machine), flash-attention (not
# installed there), torch_compile (compiling a 2B model per padded shape would take the whole budget).
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
  # Variants still waiting after 4.5 minutes are skipped, so the run ends inside ~6 minutes.
  LENGTH=64; STEPS=2; WARMUP=1; BUDGET=270
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

# Variant order: the figures the issue asks for first (ours, then the R1-V baseline: one long step
# after the first variant has warmed the GPU), then the memory-hungry ones, which may run out of memory.
#   ours            TRL: one batched generate for the step's 128 rollouts; micro-batches of 8 (the recipe's)
#   r1v             R1-V: per micro-step 1 prompt, generate(num_return_sequences=8), 16 micro-steps
#   ours:mb=16      micro-batches of 16 rollouts (8 micro-steps)
#   ours:mb=32,gc   32 rollouts per micro-batch with gradient checkpointing (4 micro-steps)
#   ours:mb=16,liger  TRL's use_liger_kernel (Liger RMSNorm/SwiGLU/RoPE kernels), when liger-kernel imports
#   ours:mb=128,gc  the whole step in one micro-batch, gradient checkpointing
"$PY" -m bench --model "$MODEL" --recipe recipes/r1v_qwen2vl_2b_clevr.yaml \
  --prompts 16 --generations 8 --completion-length "$LENGTH" --image-size 480x320 \
  --steps "$STEPS" --warmup "$WARMUP" --time-budget "$BUDGET" \
  --variants ours r1v:warmup=0,steps=1 ours:mb=16 ours:mb=32,gc ours:mb=16,liger ours:mb=128,gc \
  --workdir "$WORK" --out "$OUT/bench_qwen2vl_2b.json" "${EXTRA[@]}" 2>&1 | tee "$OUT/bench_qwen2vl_2b.log"
