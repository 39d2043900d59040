"""TRL's GRPOTrainer with the project's few overrides: each one a method, each with its reason."""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import torch
import trl.trainer.grpo_trainer as trl_grpo
from PIL import Image
from trl import GRPOTrainer

from r1v_common.processing import decoded_image_problem

from .checkpoints import checkpoint_problem, fsync_tree, rotate_checkpoints
from .image_work import (UnprocessableImages, UnusableImage, _ImageCache, decode_images_once, images_decoded_on_use,
                         process_each_image_once)
from .preflight import UsageError
from .preemption import DiskFull, is_disk_full, remove_partial
from .restarts import check_not_past_last_step
from .vision_dedup import enable_rope_index_once, enable_vision_dedup

logger = logging.getLogger(__name__)


class ResumeError(UsageError):
    """A checkpoint's weights do not fit the model: resuming would silently train something else.
    Permanent (exit 2): every restart would meet the same checkpoint."""


def model_keys_from_checkpoint(model, state_dict: dict) -> dict:
    """`state_dict` read from a checkpoint, with its keys renamed the way `from_pretrained` renames them.

    Why: transformers 5.24's `save_pretrained` writes Qwen2-VL under the legacy names
    (`model.layers.*`, `visual.*`) for older readers, while the model's own names are
    `model.language_model.*` / `model.visual.*`; the Trainer's resume loads the file with
    `load_state_dict(strict=False)`, so 57 of the tiny model's 58 tensors were silently left at the
    base model's values (upstream: huggingface/transformers#43701). `from_pretrained` maps the names
    with the model's conversion mapping; we apply the same mapping here.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    own = model.state_dict()
    renamed = {}
    for key, tensor in state_dict.items():
        new_key, converter = rename_source_key(key, renamings, converters, model.base_model_prefix, own)
        if converter is not None:
            # A converter merges or splits tensors (MoE experts, fused projections): not a rename,
            # and none of the models this project trains needs one. Refuse rather than guess.
            raise ResumeError(f"checkpoint tensor {key} needs transformers' weight conversion {converter!r}; "
                              "resuming such a model is not supported")
        renamed[new_key] = tensor
    return renamed


class UnusableData(Exception):
    """No row of the training data set can be processed any more (every image became unreadable)."""


class R1VGRPOTrainer(GRPOTrainer):
    """GRPOTrainer, unchanged but for the overrides below."""

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """A strict resume of the model weights (see `model_keys_from_checkpoint` for why).

        Any missing or unexpected tensor is an error naming them, never the upstream warning. Under
        DeepSpeed transformers loads DeepSpeed's own (strict) module states instead and never calls
        this method; FSDP, SageMaker and PEFT checkpoints keep transformers' loader.
        """
        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        if self.is_fsdp_enabled or hasattr(model, "peft_config"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if (folder / "model.safetensors").is_file():
            files = [folder / "model.safetensors"]
        elif (folder / "model.safetensors.index.json").is_file():
            index = json.loads((folder / "model.safetensors.index.json").read_text())
            files = [folder / name for name in sorted(set(index["weight_map"].values()))]
        else:
            raise ResumeError(f"resume from {folder}: no model.safetensors (or its index) to load the weights from")
        state_dict = {}
        for file in files:
            state_dict.update(safetensors.torch.load_file(str(file), device="cpu"))
        state_dict = model_keys_from_checkpoint(model, state_dict)
        result = model.load_state_dict(state_dict, strict=False)
        # save_pretrained leaves out tied duplicates (lm_head tied to the embeddings): a missing key
        # that shares storage with a loaded one was loaded.
        own = model.state_dict()
        loaded = {own[k].data_ptr() for k in state_dict if k in own}
        missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
        if missing or result.unexpected_keys:
            raise ResumeError(
                f"resume from {folder}: the checkpoint does not fit the model: missing {_few(missing)}, "
                f"unexpected {_few(result.unexpected_keys)}; pass --resume_from_checkpoint with another "
                "checkpoint, or --auto_resume false to start over")
        logger.info("resumed the weights of %d tensors from %s", len(state_dict), folder)

    def _save_checkpoint(self, model, trial) -> None:
        """transformers' checkpoint, then made durable, then rotated; a full disk is one error.

        Durable: once every rank has written its files, each node's first process fsyncs the folder
        (without it a node crash or an NFS server restart shortly after a save can leave a
        checkpoint whose trainer_state.json exists while its weights are still in the page cache).
        Rotated: transformers deletes the checkpoints beyond `save_total_limit` inside its save,
        before anything is fsynced, and counts half-written ones; here they go only after the new one
        is on disk and whole, counting complete checkpoints only (checkpoints.rotate_checkpoints).
        Full disk: the half-written checkpoint is removed (it would keep filling the disk) and
        DiskFull names the folder; the restart resumes from the newest complete checkpoint.
        """
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"checkpoint-{self.state.global_step}"
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotation below
        try:
            super()._save_checkpoint(model, trial)
        except Exception as exc:
            if not is_disk_full(exc, folder):
                raise
            if self.state.is_local_process_zero:
                remove_partial(folder)
            raise DiskFull(folder, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}; removed the partial "
                           "checkpoint; the restart resumes from the newest complete one once space is freed") from exc
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states, DeepSpeed shards) are written
        if self.state.is_local_process_zero:
            fsync_tree(folder)
        self.accelerator.wait_for_everyone()
        if limit and self.args.should_save:
            if problem := checkpoint_problem(folder, training_state=not self.args.save_only_model):
                logger.warning("not rotating checkpoints: the new %s is not whole (%s)", folder, problem)
            else:
                rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                                   training_state=not self.args.save_only_model,
                                   best_model_checkpoint=self.state.best_model_checkpoint)

    def _init_training_state(self, max_steps, *args, **kwargs):
        """Refuses to train past the run's last step (r1v_job.restarts): transformers resumed from a
        checkpoint at the last step would run one more step before its own stop check (`step 7/6`)."""
        result = super()._init_training_state(max_steps, *args, **kwargs)
        check_not_past_last_step(self.state.global_step, max_steps, self.callback_handler.callbacks)
        return result


    # --- Speed levers ----------------------------------------------------------------------------
    # Two costs of a step repeat work (their GPU figures: docs/performance.md): the vision tower runs
    # on every rollout's copy of each image, and the CPU decodes and processes every copy. The
    # levers below remove both without changing the algorithm; each has a recipe switch
    # (r1v_job.config) so the bench can measure it alone. Compiled decoding is opt-in, unmeasured.
    # Two more host-side costs on the step's path: the rollouts' pixel copies assembled on the CPU and
    # copied to the device (send_images_once), and M-RoPE positions recomputed row by row with host
    # syncs in every forward (rope_index_once).

    def __init__(self, *args, dedup_vision: bool = True, group_micro_batches: bool = True,
                 process_images_once: bool = True, compile_generation: bool = False,
                 send_images_once: bool = True, rope_index_once: bool = True, **kwargs):
        self.dedup_vision, self.group_micro_batches = dedup_vision, group_micro_batches
        self.process_images_once, self.compile_generation = process_images_once, compile_generation
        self.send_images_once, self.rope_index_once = send_images_once, rope_index_once
        self.rows_skipped = 0  # rows replaced at run time (`_usable_rows`)
        if process_images_once and kwargs.get("train_dataset") is not None:
            kwargs["train_dataset"] = images_decoded_on_use(kwargs["train_dataset"])
        super().__init__(*args, **kwargs)
        if dedup_vision:
            for model in (self.model, self.ref_model):
                if model is not None:
                    enable_vision_dedup(model)
        if rope_index_once:
            for model in (self.model, self.ref_model):
                if model is not None:
                    enable_rope_index_once(model)
        if compile_generation:
            # TRL builds its GenerationConfig with disable_compile=True; a static cache is what lets
            # transformers compile the decode step (on CUDA) instead of launching every op eagerly.
            self.generation_config.cache_implementation = "static"
            self.generation_config.disable_compile = False
            if self.generation_kwargs is not None:
                self.generation_kwargs["cache_implementation"] = "static"

    def _prepare_inputs(self, generation_batch):
        # TRL shuffles single rollouts before cutting micro-batches, so a 16-rollout micro-batch holds
        # ~10 distinct images instead of 2 and vision dedup saves little. Shuffling whole groups keeps
        # every micro-batch made of whole groups; with loss_type grpo/dapo and equal micro-batches the
        # step's gradient is the same (tests/trainer/test_speed_levers.py).
        if not (self.group_micro_batches and self.model.training):
            return super()._prepare_inputs(generation_batch)
        with _shuffle_whole_groups(self.num_generations):
            return super()._prepare_inputs(generation_batch)

    def _generate_and_score_completions(self, inputs):
        # The dataset hands over undecoded images (images_decoded_on_use): the Trainer prefetches one
        # batch per accumulation step and TRL uses only the first, so decoding happens here, once per
        # distinct image. The same PIL object then serves all of a prompt's rollouts, and the image
        # processor runs once per distinct image for TRL's two processor calls of the step.
        original = inputs
        inputs = self._usable_rows(original)
        if not self.process_images_once:
            return super()._generate_and_score_completions(inputs)
        device = self.accelerator.device if self.send_images_once else None
        refused: dict[tuple, str] = {}  # image content (_ImageCache key) -> why the processor failed on it
        while True:
            try:
                with process_each_image_once(self.processing_class, device=device):
                    return super()._generate_and_score_completions(inputs)
            except UnprocessableImages as failed:
                # Raised by TRL's first processor call, before generation and before any collective:
                # the step can start again without the rows. Any later call is not retried.
                failing = {_ImageCache().key(image): reason for image, reason in failed.failed}
                if not failed.first_call or failing.keys() <= refused.keys():
                    raise
                refused.update(failing)
                # From the rows as given, not the stand-ins of the last try: a stand-in re-hashed would
                # differ from the one a rank that refused both images at once picks for the same prompt.
                inputs = self._usable_rows(original, refused)

    # --- A row that fails at run time ------------------------------------------------------------
    # r1v_job.data checks every image before training, but a file can change after the check (the
    # check's result is cached by the data set's fingerprint, not the images'), and the processor may
    # fail on what the check let through. Raised inside a step, that error would recur at the same step
    # on every restart (the data order is restored on resume): a crash loop. So each distinct image of
    # the step is decoded and checked here (r1v_common.processing.decoded_image_problem), and an image the
    # processor fails on in TRL's first processor call of the step is refused and the step begins
    # again; each row with a failing image is replaced by a usable row of the data set. With
    # process_images_once off, the data loader decodes the images (a failure there is not caught) and
    # processor failures are not caught either: that path is the speed lever's baseline.

    def _image_verdict(self, image, verdicts: dict, keys: _ImageCache, refused: dict) -> str | None:
        if isinstance(image, UnusableImage):
            return image.reason
        if not isinstance(image, Image.Image):
            return None  # not an image this guard knows: TRL gets it as it is
        name = getattr(image, "filename", "") or "image"
        if refused and (key := keys.key(image)) in refused:  # by content: a replacement may hold the same image
            return f"{name}: {refused[key]}"
        if id(image) not in verdicts:  # the image is kept with its verdict, so its id stays its own
            problem = decoded_image_problem(image)
            verdicts[id(image)] = (image, f"{name}: {problem}" if problem else None)
        return verdicts[id(image)][1]

    def _row_problem(self, row: dict, verdicts: dict, keys: _ImageCache, refused: dict) -> str | None:
        images = row.get("images") if isinstance(row.get("images"), list) else [row.get("image")]
        return next((p for image in images if (p := self._image_verdict(image, verdicts, keys, refused))), None)

    def _usable_rows(self, rows: list[dict], refused: dict | None = None) -> list[dict]:
        """`rows` decoded, each row the processor cannot take replaced by a usable row of the data set.

        The replacement is a function of the bad row's text alone (the data set row at its hash), so
        every process that holds rollouts of that prompt puts the same row in its place, and a group of
        num_generations rollouts stays one prompt. The number of rows stays the same: collectives and
        the batch arithmetic are unchanged.
        """
        rows = decode_images_once(rows, keep_going=True)  # rows the data loader decoded pass through
        verdicts, keys, replaced, out, refused = {}, _ImageCache(), {}, [], refused or {}
        for row in rows:
            problem = self._row_problem(row, verdicts, keys, refused)
            if problem is None:
                out.append(row)
                continue
            identity = hashlib.blake2b(repr((row.get("problem"), row.get("solution"), row.get("prompt"))).encode(),
                                       digest_size=8).digest()
            if identity not in replaced:
                replaced[identity] = self._replacement(int.from_bytes(identity, "big"), verdicts, keys, refused)
                self.rows_skipped += 1
                logger.warning("step %d: skipped a training row the processor cannot take (%s); trained on data "
                               "set row %d in its place (%d rows skipped at run time so far)",
                               self.state.global_step + 1,
                               problem, replaced[identity][0], self.rows_skipped)
            out.append(replaced[identity][1])
        return out

    def _replacement(self, seed: int, verdicts: dict, keys: _ImageCache, refused: dict) -> tuple[int, dict]:
        dataset = self.train_dataset
        for offset in range(len(dataset)):
            index = (seed + offset) % len(dataset)
            row = decode_images_once([dataset[index]], keep_going=True)[0]
            if self._row_problem(row, verdicts, keys, refused) is None:
                return index, row
        raise UnusableData(f"no row of the training data ({len(dataset)} rows) can be processed any more: "
                           "every image is unreadable or refused; check the data volume")


def _few(keys: list[str], shown: int = 5) -> str:
    keys = sorted(keys)
    return "[]" if not keys else "[" + ", ".join(keys[:shown]) + (
        f", ... ({len(keys)} in all)]" if len(keys) > shown else "]")


_warned_partial_groups: list = []


@contextmanager
def _shuffle_whole_groups(group: int):
    """Within the block, TRL's rollout shuffle before micro-batching permutes whole groups of `group`
    consecutive rollouts instead of single rollouts. Groups are consecutive rows: TRL's sampler lays
    them out so, and its advantages (`rewards.view(-1, num_generations)`) rely on it too. A batch that
    is not whole groups (a prompt's rollouts spread over processes) is shuffled TRL's way."""
    shuffle = trl_grpo.shuffle_sequence_dict

    def shuffle_groups(batch: dict) -> dict:
        rows = len(next(v for v in batch.values() if v is not None))
        if rows % group:
            if not _warned_partial_groups:
                _warned_partial_groups.append(rows)
                logger.warning("group_micro_batches: %d rollouts per process are not whole groups of %d (a "
                               "prompt's rollouts span processes); shuffling single rollouts as TRL does", rows, group)
            return shuffle(batch)
        # TRL's own draw, so the random stream after it (next steps' sampling) stays TRL's; the order in
        # which groups first appear in a uniform permutation is a uniform order of the groups.
        first_seen = dict.fromkeys((torch.randperm(rows) // group).tolist())
        order = (torch.tensor(list(first_seen))[:, None] * group + torch.arange(group)).flatten()
        return {key: value if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0)
                else value[order] if isinstance(value, torch.Tensor) else [value[i] for i in order]
                for key, value in batch.items()}

    trl_grpo.shuffle_sequence_dict = shuffle_groups
    try:
        yield
    finally:
        trl_grpo.shuffle_sequence_dict = shuffle
