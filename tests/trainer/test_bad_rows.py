"""No row stops a run: rows the processor would fail on are dropped before training (named FILE:LINE),
and a row that fails anyway during training (its file changed after the check) is replaced by a usable
row of the data set: the model is never given it, and the run ends normally."""

import json
import logging
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback
from trl import GRPOTrainer

from r1v_job.grpo import main
from r1v_job.synthetic import read_jsonl
from tests.helpers import bad_images

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "recipes" / "smoke_cpu.yaml"


class Truncate(TrainerCallback):
    """After step 1 every training image but `keep` is cut in half on disk, as a volume that lost data."""

    def __init__(self, images: Path, keep: Path):
        self.images, self.keep = images, keep

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            for image in sorted(self.images.glob("*.png")):
                if image != self.keep:
                    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
        return control


def test_bad_rows_are_dropped_and_a_row_failing_mid_run_is_replaced(clevr_train, tiny_model_dir, tmp_path, caplog,
                                                                    monkeypatch):
    import r1v_job.grpo as grpo

    data = tmp_path / "clevr"
    shutil.copytree(clevr_train.parent, data)
    bad = bad_images(data)
    rows = read_jsonl(clevr_train)
    template = rows[0]
    jsonl = data / "train.jsonl"
    # Lines 25-28: the four bad rows, after the 24 good ones.
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows + [{**template, "image": v} for v in bad.values()]))
    keep = sorted((data / "images").glob("*.png"))[0]
    real_callbacks = grpo.training_callbacks
    monkeypatch.setattr(grpo, "training_callbacks",
                        lambda *a: [*real_callbacks(*a), Truncate(data / "images", keep)])
    given = []  # the image files of the rows TRL builds its inputs from, per step
    real = GRPOTrainer._generate_and_score_completions

    def record(self, inputs):
        given.append({Path(row["image"].filename).name for row in inputs})
        return real(self, inputs)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", record)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = main(["--config", str(SMOKE), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(jsonl),
                     "--output_dir", str(out), "--offline_bootstrap", "false", "--max_steps", "2",
                     "--save_steps", "2"])
    assert code == 0
    assert (out / "training_complete.json").is_file()
    log = caplog.text
    assert f"dataset {jsonl}: dropped 4 of 28 rows" in log
    for line, reason in ((25, r"aspect ratio 30000 of a 30000x1 image is over 200 \(Qwen2-VL's smart_resize"),
                         (26, r"image \S+fifo.png is a FIFO, not a regular file"),
                         (27, r"image is a number \(42\), not a path"),
                         (28, r"colour mode CMYK \(accepted: ")):
        assert re.search(rf"dropped {jsonl}:{line}: {reason}", log), (line, log)
    # Step 2's rows had truncated images: each was replaced by the one readable image's row.
    assert "step 2: skipped a training row the processor cannot take" in log and "unreadable image" in log
    assert len(given) == 2 and given[1] == {keep.name}, given


def test_an_image_the_processor_fails_on_starts_the_step_again_without_it(clevr_train, tiny_model_dir, tmp_path):
    from transformers.image_utils import make_flat_list_of_images

    from r1v_job.grpo import build_trainer, parse_args
    from r1v_job.image_work import decode_images_once

    trainer = build_trainer(*parse_args([
        "--config", str(SMOKE), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(clevr_train),
        "--output_dir", str(tmp_path / "run"), "--offline_bootstrap", "false"]))
    rows = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]  # 2 prompts x 4 rollouts, images undecoded
    failing = decode_images_once(rows[:1])[0]["image"].tobytes()
    processor = trainer.processing_class.image_processor
    real, calls = processor.preprocess, []

    def preprocess(images, *args, **kwargs):  # passes the check, fails in the processor: a failure nobody foresaw
        flat = make_flat_list_of_images(images)
        calls.append(any(image.tobytes() == failing for image in flat))
        if calls[-1]:
            raise ValueError("cannot resize this image")
        return real(images, *args, **kwargs)

    processor.preprocess = preprocess
    trainer.model.train()
    batch = trainer._generate_and_score_completions(rows)
    assert trainer.rows_skipped == 1
    assert batch["prompt_ids"].shape[0] == 8  # the same number of rollouts, the group kept whole
    # The step's two images failed together, then each was tried alone; the step started again without
    # the failing one, and the pixels the model got came from calls without it.
    assert calls[:3] == [True, True, False] and calls[3:] and not any(calls[3:]), calls


def test_a_stand_in_refused_in_turn_is_replaced_as_a_rank_refusing_both_at_once_replaces_it(
        clevr_train, tiny_model_dir, tmp_path, monkeypatch):
    """Every rank holding a prompt's rollouts must put the same row in its place. Here the prompt's
    image fails in the processor, then so does its stand-in's: the row used is the one a rank that
    met both failures in one try picks for that prompt (the stand-in chosen from the prompt's own
    row, never from the refused stand-in's)."""
    from r1v_job.grpo import build_trainer, parse_args
    from r1v_job.image_work import _ImageCache, decode_images_once

    trainer = build_trainer(*parse_args([
        "--config", str(SMOKE), "--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(clevr_train),
        "--output_dir", str(tmp_path / "run"), "--offline_bootstrap", "false"]))
    rows = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]  # 2 prompts x 4 rollouts, images undecoded
    keys = _ImageCache()

    def what(row):
        return row["problem"], row["solution"], decode_images_once([row])[0]["image"].tobytes()

    bad = decode_images_once(rows[:1])[0]["image"]
    first_stand_in = trainer._usable_rows(rows, {keys.key(bad): "refused"})[0]
    also_bad = decode_images_once([first_stand_in])[0]["image"]
    both = {keys.key(bad): "refused", keys.key(also_bad): "refused"}
    expected = what(trainer._usable_rows(rows, both)[0])  # a rank that refused both images in its first try
    failing = {bad.tobytes(), also_bad.tobytes()}
    processor = trainer.processing_class.image_processor
    real_preprocess = processor.preprocess

    def preprocess(images, *args, **kwargs):
        from transformers.image_utils import make_flat_list_of_images

        if any(image.tobytes() in failing for image in make_flat_list_of_images(images)):
            raise ValueError("cannot resize this image")
        return real_preprocess(images, *args, **kwargs)

    processor.preprocess = preprocess
    tries = []
    real = GRPOTrainer._generate_and_score_completions

    def record(self, inputs):
        tries.append([what(row) for row in inputs])
        return real(self, inputs)

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", record)
    trainer.model.train()
    trainer._generate_and_score_completions(rows)
    assert len(tries) == 3  # the prompt's image refused, then its stand-in's, then the step ran
    assert tries[1][0] == what(first_stand_in) and expected != what(first_stand_in)
    assert tries[-1][:4] == [expected] * 4 and tries[-1][4:] == [what(rows[4])] * 4
