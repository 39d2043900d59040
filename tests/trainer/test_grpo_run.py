"""Real GRPO runs of the tiny Qwen2-VL on synthetic scenes through TRL's GRPOTrainer."""

import hashlib
import json
import math
import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import TrainerCallback

from r1v_job import rewards
from r1v_job.grpo import parse_args, run
from tests.helpers import free_port


def _args(model, data, out, *extra):
    return parse_args([
        "--config", "recipes/smoke_cpu.yaml",
        "--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out),
        "--offline_bootstrap", "false", "--max_completion_length", "8", *extra,
    ])


def _image_key(image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


class RecordingReward:
    """Checks, rollout by rollout, that the image a completion was generated from is the one its
    solution counts (R1-V's bug #1: with >1 prompt per device, images and completions misaligned)."""

    __name__ = "recording_reward"

    def __init__(self, true_counts: dict[str, int]):
        self.true_counts, self.batches = true_counts, []

    def __call__(self, prompts, completions, solution, **kwargs):
        pairs = []
        for prompt, sol in zip(prompts, solution, strict=True):
            image = next(part["image"] for part in prompt[0]["content"] if part["type"] == "image")
            pairs.append((self.true_counts[_image_key(image)], int(re.search(r"\d+", sol).group())))
        self.batches.append(pairs)
        # A reward that varies within each group, so advantages, loss and KL are not all zero.
        return [len(rewards.completion_text(c)) % 5 / 4 for c in completions]


class ScrapeOnLog(TrainerCallback):
    """Scrapes /metrics over HTTP right after each log, while training runs."""

    def __init__(self, port):
        self.port, self.seen = port, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(body) for s in family.samples}
            self.seen.append((dict(logs), samples, state.global_step))


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, clevr_train, tmp_path_factory, monkeypatch_module):
    true_counts = {}
    from PIL import Image

    for line in clevr_train.read_text().splitlines():
        row = json.loads(line)
        true_counts[_image_key(Image.open(clevr_train.parent / row["image"]))] = int(
            re.search(r"\d+", row["solution"]).group())
    recorder = RecordingReward(true_counts)
    monkeypatch_module.setitem(rewards.REWARD_FUNCS, "recording_reward", recorder)
    port = free_port()
    scraper = ScrapeOnLog(port)
    out = tmp_path_factory.mktemp("grpo") / "run"
    # 2 prompts x 4 rollouts per micro-batch, 2 micro-batches per step: 4 prompts with different
    # counts share every generation batch.
    script_args, training_args, model_args = _args(
        tiny_model_dir, clevr_train, out, "--max_steps", "4", "--save_steps", "2",
        "--gradient_accumulation_steps", "2", "--metrics_port", str(port), "--metrics_grace_seconds", "0",
        "--reward_funcs", "accuracy_reward", "format_reward", "recording_reward")
    trainer = run(script_args, training_args, model_args, callbacks=[scraper])
    return dict(out=out, trainer=trainer, recorder=recorder, scraper=scraper)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_each_rollout_is_rewarded_against_its_own_image(first_run):
    batches = first_run["recorder"].batches
    assert len(batches) == 4  # one reward call per generation round = per optimizer step
    for pairs in batches:
        assert len(pairs) == 16  # 4 prompts x 4 rollouts
        assert all(true == claimed for true, claimed in pairs)
        assert len({true for true, _ in pairs}) > 1  # several different counts shared the batch


def test_loss_and_kl_are_finite_and_logged_per_step(first_run):
    history = [h for h in first_run["trainer"].state.log_history if "reward" in h]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for h in history:
        assert math.isfinite(h["loss"]) and math.isfinite(h["kl"])
        assert h["reward_std"] > 0  # the recording reward varies within groups: real advantages
        assert "rewards/accuracy_reward/mean" in h and "rewards/format_reward/mean" in h
    assert any(h["loss"] != 0 for h in history) and any(h["kl"] > 0 for h in history)


def test_checkpoints_final_model_and_marker(first_run):
    out = first_run["out"]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "checkpoint-4" / "model.safetensors").is_file()
    assert (out / "model.safetensors").is_file() and (out / "processor_config.json").is_file()
    marker = json.loads((out / "training_complete.json").read_text())
    assert marker["global_step"] == 4


def test_metrics_endpoint_matches_the_logged_values_during_the_run(first_run):
    seen = first_run["scraper"].seen
    assert len(seen) == 4
    for logs, samples, step in seen:
        assert samples[("r1v_train_global_step", ())] == step
        assert samples[("r1v_train_reward", ())] == pytest.approx(logs["reward"])
        assert samples[("r1v_train_reward_std", ())] == pytest.approx(logs["reward_std"])
        assert samples[("r1v_train_function_reward", (("function", "format_reward"),))] == pytest.approx(
            logs["rewards/format_reward/mean"])
        assert samples[("r1v_train_function_reward_std", (("function", "accuracy_reward"),))] == pytest.approx(
            logs["rewards/accuracy_reward/std"])
        assert samples[("r1v_train_kl", ())] == pytest.approx(logs["kl"])
        assert samples[("r1v_train_loss", ())] == pytest.approx(logs["loss"])
        assert samples[("r1v_train_learning_rate", ())] == pytest.approx(logs["learning_rate"])
        assert samples[("r1v_train_entropy_nats", ())] == pytest.approx(logs["entropy"])
        assert samples[("r1v_train_reward_zero_std_ratio", ())] == pytest.approx(logs["frac_reward_zero_std"])
        assert samples[("r1v_train_completion_truncated_ratio", ())] == pytest.approx(logs["completions/clipped_ratio"])
        for stat in ("mean", "min", "max"):
            assert samples[(f"r1v_train_completion_length_{stat}_tokens", ())] == pytest.approx(
                logs[f"completions/{stat}_length"])
            assert samples[(f"r1v_train_terminated_completion_length_{stat}_tokens", ())] == pytest.approx(
                logs[f"completions/{stat}_terminated_length"])
        # The bounds are disjoint: their sum is TRL's region share.
        low, high = (samples[("r1v_train_clip_ratio", (("bound", b),))] for b in ("low", "high"))
        assert low == pytest.approx(logs["clip_ratio/low_mean"]) and high == pytest.approx(logs["clip_ratio/high_mean"])
        assert low + high == pytest.approx(logs["clip_ratio/region_mean"])
        assert samples[("r1v_train_tokens_total", ())] == logs["num_tokens"] > 0
        assert samples[("r1v_train_max_steps", ())] == samples[("r1v_train_final_step", ())] == 4
        assert samples[("r1v_train_completion_timestamp_seconds", ())] == 0  # not finished yet
        # No reward="total" beside the per-function values any more: a sum over `function` is meaningful.
        assert not [k for k in samples if k[0] == "r1v_train_function_reward" and dict(k[1])["function"] == "total"]
    # Counters and the step histogram: 16 rollouts = 4 prompts per optimizer step.
    logs, samples, step = seen[-1]
    assert samples[("r1v_train_rollouts_total", ())] == 16 * step
    assert samples[("r1v_train_prompts_total", ())] == 4 * step
    assert samples[("r1v_train_step_duration_seconds_count", ())] == step


def test_every_trainer_series_is_documented():
    from pathlib import Path

    from r1v_job.metrics import new_registry

    section = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text().split(
        "## Trainer (scraped from rank 0)", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(r1v_train_\w+)`", section, re.M))
    exposed = {f.name + {"counter": "_total", "info": "_info"}.get(f.type, "") for f in new_registry().collect()}
    assert documented == exposed


def test_resume_continues_at_the_right_step_and_skips_a_truncated_checkpoint(
        first_run, tiny_model_dir, clevr_train, caplog):
    out = first_run["out"]
    (out / "training_complete.json").unlink()
    # A crash while writing checkpoint-5: weights there, trainer_state.json (written last) missing.
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "model.safetensors").write_bytes(b"half")

    steps = []

    class RecordSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    script_args, training_args, model_args = _args(tiny_model_dir, clevr_train, out, "--max_steps", "6",
                                                   "--save_steps", "2")
    with caplog.at_level("WARNING"):
        run(script_args, training_args, model_args, callbacks=[RecordSteps()])
    assert "skipping" in caplog.text and "checkpoint-5" in caplog.text
    assert steps == [5, 6]
    assert json.loads((out / "training_complete.json").read_text())["global_step"] == 6


def test_qwen2_5_vl_trains_by_changing_the_model_path_alone(clevr_train, tmp_path):
    from r1v_job.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "qwen25vl", arch="qwen2_5_vl")
    trainer = run(*_args(model, clevr_train, tmp_path / "run", "--max_steps", "1", "--save_steps", "1"))
    assert trainer.model.config.model_type == "qwen2_5_vl"
    assert json.loads((tmp_path / "run" / "training_complete.json").read_text())["global_step"] == 1
