"""Input checks that run before any model loads: a bad recipe costs seconds, not a GPU pod's start-up.

Each check takes (script_args, training_args, model_args) and raises UsageError with one line naming
the key, value, file or port and the way out. `python -m r1v_job` turns a UsageError into that line
on stderr and exit code 2 (permanent: retrying cannot help); `preflight_only: true` runs these checks
and the data check, then exits 0. Other teams' checks join by appending to CHECKS.
"""

from __future__ import annotations

import enum
import errno
import json
import math
import os
import socket
import tempfile
import types
import typing
from dataclasses import fields
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
    R1-V's lr 1e-6 most bf16 weights never change (the update is below half a bf16 ulp; the measured
    share: docs/fidelity.md, "precision"). DeepSpeed's bf16/fp16 optimizers keep fp32 master weights
    themselves; without it the weights must load as float32, and `bf16: true` then trains under bf16
    autocast, as R1-V's README run did.
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


# --- Recipe values ---------------------------------------------------------------------------------
# TrlParser hands YAML values to the dataclasses unconverted (argparse converts only what comes as
# text), so `max_steps: 6.5`, `max_steps: null` or `dataset_name: 42` would reach the trainer and
# fail later in a traceback without the key. Each value the recipe sets is checked against its
# field's annotation here; then the values, from wherever they came, against the ranges below.

# Types TRL accepts beyond the annotation: scale_rewards true/false mean "group"/"none".
_ALSO_ACCEPTED = {"scale_rewards": bool}


def _show(value) -> str:
    """A value as the recipe writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _matches(value, hint, top: bool = True) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg, top) for arg in args)
    if hint is type(None):
        return value is None
    if top and isinstance(value, str) and hint in (int, float, bool, str) or (
            isinstance(hint, type) and issubclass(hint, enum.Enum) and isinstance(value, str)):
        return True  # argparse converts text with the field's type and names a bad one itself
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint)
    if origin is list or hint is list:
        return isinstance(value, list) and all(_matches(v, args[0], top=False) for v in value) if args else \
            isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in args
    return True  # a type this check does not know: left to the field's own code


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "text",
             dict: "a mapping"}
    if hint in names:
        return names[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    if origin is list or hint is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(hint, "__name__", str(hint))


def check_recipe_types(recipe: dict, config: str, dataclass_types) -> None:
    """Each key of the recipe file `config` holds a value of its field's type (annotation)."""
    for cls in dataclass_types:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name not in recipe:
                continue
            value, hint = recipe[f.name], hints.get(f.name, typing.Any)
            also = _ALSO_ACCEPTED.get(f.name)
            if not (_matches(value, hint) or (also is not None and isinstance(value, also))):
                raise UsageError(f"{f.name} {_show(value)}: must be {_describe(hint)} (--config {config})")
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise UsageError(f"{f.name} {_show(value)}: must be one of {', '.join(map(str, choices))} "
                                 f"(--config {config})")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(low, integer: bool = False, optional: bool = False, strict: bool = False):
    def test(v):
        if v is None:
            return optional
        return (_is_int(v) if integer else _is_number(v)) and (v > low if strict else v >= low)
    return test


def _between(low, high, optional: bool = False, low_open: bool = False):
    return lambda v: (v is None and optional) or (_is_number(v) and (low < v if low_open else low <= v) and v <= high)


def _one_of(*choices):
    return lambda v: v in choices


# TRL 1.16's loss formulations (GRPOConfig.loss_type; any other fails at the first step: "Unknown loss type").
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")

# field -> (test, what it must be). Where the constraint is TRL's or transformers', the reason says
# where a bad value would fail: at generation, at the first step, or at the trainer's start (after
# the model has loaded, and then on every restart).
VALUE_RULES: dict[str, tuple[typing.Callable, str]] = {
    "per_device_train_batch_size": (_at_least(1, integer=True), "a positive integer (completions per device and "
                                                                 "micro-batch)"),
    "gradient_accumulation_steps": (_at_least(1, integer=True), "a positive integer"),
    "num_generations": (_at_least(2, integer=True), "an integer of at least 2 (GRPO compares rollouts of a prompt)"),
    "max_completion_length": (_at_least(1, integer=True, optional=True), "a positive integer (tokens)"),
    "temperature": (_at_least(0, strict=True), "a positive number (transformers' sampling divides the logits by it)"),
    "top_p": (_between(0, 1, low_open=True), "a number in (0, 1] (transformers' top-p sampling)"),
    "top_k": (_at_least(0, integer=True), "a non-negative integer (0: no top-k)"),
    "min_p": (_between(0, 1, optional=True), "a number in [0, 1] or null"),
    "repetition_penalty": (_at_least(0, strict=True), "a positive number (1.0: none)"),
    "steps_per_generation": (_at_least(1, integer=True, optional=True), "a positive integer or null"),
    "generation_batch_size": (_at_least(1, integer=True, optional=True), "a positive integer or null"),
    "num_iterations": (_at_least(1, integer=True), "a positive integer"),
    "beta": (_at_least(0), "a non-negative number (0: no KL term)"),
    "epsilon": (_at_least(0), "a non-negative number"),
    "epsilon_high": (_at_least(0, optional=True), "a non-negative number or null"),
    "delta": (_at_least(0, optional=True, strict=True), "a positive number or null"),
    "top_entropy_quantile": (_between(0, 1), "a number in [0, 1]"),
    "entropy_coef": (_at_least(-math.inf), "a finite number"),
    "off_policy_mask_threshold": (_at_least(0, optional=True), "a non-negative number or null"),
    "loss_type": (_one_of(*LOSS_TYPES), f"one of {', '.join(LOSS_TYPES)} (TRL's losses)"),
    "scale_rewards": (_one_of("group", "batch", "none"), "one of group, batch, none (TRL; true/false mean "
                                                          "group/none)"),
    "importance_sampling_level": (_one_of("token", "sequence"), "token or sequence (TRL)"),
    "multi_objective_aggregation": (_one_of("sum_then_normalize", "normalize_then_sum"),
                                    "sum_then_normalize or normalize_then_sum (TRL)"),
    "learning_rate": (_at_least(0), "a finite non-negative number"),
    "weight_decay": (_at_least(0), "a finite non-negative number"),
    "adam_epsilon": (_at_least(0, strict=True), "a finite positive number"),
    "max_grad_norm": (_at_least(0), "a finite non-negative number (0: no clipping)"),
    "warmup_steps": (_at_least(0), "a finite non-negative number (steps, or a ratio below 1)"),
    "num_train_epochs": (_at_least(-math.inf), "a finite number"),
    "max_steps": (_is_int, "an integer: optimizer steps, or -1 for num_train_epochs epochs"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2^32) (numpy's seed range)"),
    "ddp_timeout": (_at_least(1, integer=True), "a positive integer (seconds)"),
    "save_steps": (_at_least(0, strict=True), "a positive number (steps, or a ratio below 1)"),
    "logging_steps": (_at_least(0, strict=True), "a positive number (steps, or a ratio below 1)"),
    "save_total_limit": (_at_least(1, integer=True, optional=True), "a positive integer or null (keep all)"),
    "min_pixels": (_at_least(1, integer=True), "a positive integer (pixels per image)"),
    "max_pixels": (_at_least(1, integer=True), "a positive integer (pixels per image)"),
    "max_train_samples": (_at_least(1, integer=True, optional=True), "a positive integer or null"),
    "bootstrap_scenes": (_at_least(1, integer=True), "a positive integer"),
    "metrics_grace_seconds": (_at_least(0), "a finite non-negative number (seconds)"),
    "output_dir_lease_stale_minutes": (_at_least(0), "a finite non-negative number (minutes; 0: no lease)"),
    "stop_at_step": (_at_least(-math.inf, integer=True, optional=True), "an integer or null"),
}


def check_values(script_args, training_args, model_args) -> None:
    """Every value in VALUE_RULES, and the pairs that must agree, from the recipe or the command line."""
    for name, (test, what) in VALUE_RULES.items():
        for args in (script_args, training_args, model_args):
            if hasattr(args, name):
                value = getattr(args, name)
                value = value.value if isinstance(value, enum.Enum) else value
                if not test(value):
                    raise UsageError(f"{name} {_show(value)}: must be {what}")
                break
    if script_args.min_pixels > script_args.max_pixels:
        raise UsageError(f"min_pixels {script_args.min_pixels}: above max_pixels {script_args.max_pixels}; the "
                         "processor's pixel budget per image needs min_pixels <= max_pixels (R1-V: 3136 and 401408)")
    weights = training_args.reward_weights
    if weights is not None:
        names = script_args.reward_funcs if isinstance(script_args.reward_funcs, list) else [script_args.reward_funcs]
        if not all(_is_number(w) for w in weights) or len(weights) != len(names):
            raise UsageError(f"reward_weights {weights}: must be {len(names)} finite numbers, one per reward "
                             f"function {names} (TRL refuses other lengths once the model has loaded)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(script_args, training_args, model_args) -> None:
    """output_dir is a folder this process can write in (or can create), and the completion marker
    is a file name in it: both would otherwise fail after the model has loaded, on every restart."""
    out = training_args.output_dir
    if not out:
        raise UsageError("output_dir: not set (the folder for checkpoints and the final model)")
    path = Path(out).expanduser()
    existing = _nearest_existing(path.absolute())
    if not existing.is_dir():
        where = "not a folder" if existing == path.absolute() else f"{existing} is not a folder"
        raise UsageError(f"output_dir {out}: {where}")
    try:  # a real write: permissions, read-only mounts and full quotas all show here (os.access misses some)
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".r1v-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        what = "" if existing == path.absolute() else f" (its nearest existing folder {existing})"
        raise UsageError(f"output_dir {out}: cannot write there{what}: {exc.strerror or exc}; give the job a "
                         "writable folder") from None
    marker = script_args.completion_marker
    if not isinstance(marker, str) or not marker or marker in (".", "..") or "/" in marker or os.sep in marker:
        raise UsageError(f"completion_marker {_show(marker)}: must be a file name inside output_dir, without "
                         f"folders (default: training_complete.json)")
    from r1v_common.checkpoints import _MODEL_FILES, _WEIGHTS

    if _MODEL_FILES.match(marker) or _WEIGHTS.match(marker):
        raise UsageError(f"completion_marker {marker!r}: the name of a final model file; choose another name")


CHECKS = [check_values, check_schedule, check_precision, check_rewards, check_model, check_dataset, check_output,
          check_metrics_port]


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
