"""Rollout and step speed of the GRPO trainer, measured inside real TRL GRPOTrainer steps.

    python -m bench --model tiny --recipe recipes/smoke_cpu.yaml --variants r1v ours
    python -m bench --model bench/configs/qwen2vl_2b.json --recipe recipes/r1v_qwen2vl_2b_clevr.yaml ...

Each variant builds the trainer the way `python -m r1v_job` does (r1v_job.grpo.build_trainer), wraps
TRL's own phases with timers, trains `warmup + steps` optimizer steps and reports the measured ones:
rollouts/s, generated tokens/s, seconds per step split into generation, reference log-probs, policy
forward, backward, optimizer and the rest, peak memory and an MFU estimate. The `r1v` variant
replaces TRL's batched generation by R1-V's: one `generate(num_return_sequences=G)` call per prompt.
See docs/performance.md for the figures and how the FLOPs are counted.
"""
