"""Input checks that run before any model loads: a bad recipe costs seconds, not a GPU pod's start-up.

Each check takes (script_args, training_args, model_args) and raises UsageError with one line naming
the key, value, file or port and the way out. `python -m r1v_job` turns a UsageError into that line
on stderr and exit code 2 (permanent: retrying cannot help); `preflight_only: true` runs these checks
and the data check, then exits 0. Other teams' checks join by appending to CHECKS.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path


class UsageError(Exception):
    """Bad input: the recipe, the command line or a file it names. Exit code 2, one line."""


def check_schedule(script_args, training_args, model_args) -> None:
    max_steps, epochs = training_args.max_steps, training_args.num_train_epochs
    if max_steps == -1:
        if not epochs > 0:
            raise UsageError(f"num_train_epochs {epochs}: must be positive when max_steps is -1 "
                             "(or set max_steps to a positive number of optimizer steps)")
    elif max_steps <= 0:
        raise UsageError(f"max_steps {max_steps}: must be a positive number of optimizer steps, "
                         "or -1 to train num_train_epochs epochs")
    stop = script_args.stop_at_step
    if stop is not None and stop <= 0:
        raise UsageError(f"stop_at_step {stop}: must be a positive optimizer step (or unset to train to "
                         "the schedule's end)")


def check_rewards(script_args, training_args, model_args) -> None:
    from .rewards import RewardError, get_reward_funcs

    try:
        get_reward_funcs(script_args.reward_funcs)
    except RewardError as exc:
        raise UsageError(str(exc)) from None


# Weight dtypes a plain (non-DeepSpeed) optimizer would update in place, losing small updates.
_HALF_DTYPES = ("bfloat16", "float16", "auto")


def check_precision(script_args, training_args, model_args) -> None:
    """Refuse a recipe whose optimizer would update 16-bit weights directly.

    Without DeepSpeed, transformers' AdamW updates the weights in the dtype they were loaded in: at
    R1-V's lr 1e-6, 98% of bf16 weights never change (the update is below half a bf16 ulp). DeepSpeed's
    bf16/fp16 optimizers keep fp32 master weights themselves; without it the weights must load as
    float32, and `bf16: true` then trains under bf16 autocast, as R1-V's README run did.
    """
    dtype = str(model_args.dtype or "auto").removeprefix("torch.")
    if training_args.deepspeed or dtype not in _HALF_DTYPES:
        return
    weights = "the checkpoint's dtype (bfloat16 for Qwen2-VL)" if dtype == "auto" else dtype
    raise UsageError(
        f"dtype: {dtype} with deepspeed unset: AdamW would update {weights} weights in place and round most "
        "updates at lr 1e-6 away; set dtype: float32 (bf16: true then trains under bf16 autocast on fp32 "
        "weights, as R1-V's README run did) or deepspeed: recipes/zero2.json")


def _looks_like_a_path(name: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else is a folder on this machine.
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model(script_args, training_args, model_args) -> None:
    name = model_args.model_name_or_path
    if not name:
        raise UsageError("model_name_or_path: not set (a model folder or a Hub id such as "
                         "Qwen/Qwen2-VL-2B-Instruct)")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not script_args.offline_bootstrap:
            raise UsageError(f"model_name_or_path {name}: the folder has no config.json (not a saved model)")
        return
    if script_args.offline_bootstrap:
        return  # the bootstrap writes a tiny model there
    if path.exists():
        raise UsageError(f"model_name_or_path {name}: not a folder")
    if _looks_like_a_path(name):
        raise UsageError(f"model_name_or_path {name}: no such folder (copy the model there, or name a Hub id)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json", revision=model_args.model_revision)
        except ValueError:  # not a valid repo id either
            cached = None
        if not isinstance(cached, str):
            raise UsageError(f"model_name_or_path {name}: HF_HUB_OFFLINE is set and the model is not in the "
                             "Hugging Face cache; pass the folder it was copied to")


def check_dataset(script_args, training_args, model_args) -> None:
    name = script_args.dataset_name
    if not name:
        raise UsageError("dataset_name: not set (a jsonl, a save_to_disk folder, parquet files or a Hub id)")
    if script_args.image_root and not Path(script_args.image_root).is_dir():
        raise UsageError(f"image_root {script_args.image_root}: no such folder")
    path = Path(name).expanduser()
    if path.exists() or "*" in name:
        return
    if script_args.offline_bootstrap and path.suffix == ".jsonl":
        return  # the bootstrap draws synthetic scenes there
    if script_args.offline_bootstrap:
        raise UsageError(f"dataset_name {name}: offline_bootstrap draws synthetic scenes only to a path "
                         "ending in .jsonl")
    if path.suffix in (".jsonl", ".json", ".parquet") or _looks_like_a_path(name):
        raise UsageError(f"dataset_name {name}: no such file or folder")


def check_metrics_port(script_args, training_args, model_args) -> None:
    """Rank 0 serves /metrics (r1v_job.metrics); a port taken by another process would otherwise end
    the run in a traceback without the port, after the model has loaded."""
    port = script_args.metrics_port
    if not port or int(os.environ.get("RANK", "0")) != 0:
        return
    if not 0 < port < 65536:
        raise UsageError(f"metrics_port {port}: not a TCP port (1-65535, or 0 to serve no metrics)")
    addr = script_args.metrics_addr
    try:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET  # as r1v_job.metrics.MetricsServer
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"metrics_port {port}: in use by another process; pick another port, or 0 to serve "
                             "no metrics") from None
        raise UsageError(f"metrics_addr {addr}: cannot bind port {port} there ({exc.strerror or exc}); use 0.0.0.0, "
                         "the pod's IP or 127.0.0.1") from None


CHECKS = [check_schedule, check_precision, check_rewards, check_model, check_dataset, check_metrics_port]


def run_checks(script_args, training_args, model_args) -> None:
    for check in CHECKS:
        check(script_args, training_args, model_args)


def check_chart_keys(config: str, recipe, env=os.environ) -> None:
    """The recipe keys a deployment sets itself (the Helm chart's R1V_CHART_KEYS: JSON
    {key: [the chart value that sets it, its value]}) must not be set otherwise in the recipe file.
    The chart writes them into its own recipe ConfigMap; a user's ConfigMap (recipe.existingConfigMap)
    is only known here, so a disagreement ends the run before anything loads, naming both keys."""
    owned = env.get("R1V_CHART_KEYS")
    if not owned or not isinstance(recipe, dict):
        return
    for key, (chart_key, value) in sorted(json.loads(owned).items()):
        if key in recipe and not _same(recipe[key], value):
            raise UsageError(f"--config {config}: {key} {recipe[key]!r} conflicts with the chart's {chart_key} "
                             f"({value!r}): remove {key} from the recipe (the chart sets it from {chart_key}) "
                             f"or set {chart_key}")


def _same(a, b) -> bool:
    """YAML and JSON spell one number or path in several ways (8000 and 8000.0, "60" and 60)."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
