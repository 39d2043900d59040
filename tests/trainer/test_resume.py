"""Restarts lose, repeat and fake nothing: a run killed after a checkpoint and restarted ends with
the same weights and losses as one never interrupted; a finished run is never trained on or
rewritten; a corrupt newest checkpoint is skipped; no marker stands while a run trains."""

import json
import shutil

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from transformers import TrainerCallback

from r1v_job import checkpoints as ckpt
from r1v_job.grpo import parse_args, run
from r1v_job.trainer import ResumeError

MARKER = ckpt.COMPLETION_MARKER


def _args(model, data, out, *extra):
    # The smoke recipe as shipped (its rewards move the tiny model's weights), 4 steps, a checkpoint
    # every 2.
    return parse_args(["--config", "recipes/smoke_cpu.yaml", "--model_name_or_path", str(model),
                       "--dataset_name", str(data), "--output_dir", str(out), "--offline_bootstrap", "false",
                       "--max_steps", "4", "--save_steps", "2", *extra])


class Killed(BaseException):
    """Raised where a SIGKILL would stop the process: nothing after it runs (BaseException, so no
    `except Exception` in transformers or TRL catches it)."""


class KillAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


class Watch(TrainerCallback):
    """Records the steps trained and whether the marker was in output_dir while training."""

    def __init__(self, out):
        self.out, self.steps, self.marker_seen = out, [], []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        self.marker_seen.append((self.out / MARKER).exists())


def _weights(path):
    return safetensors.torch.load_file(str(path / "model.safetensors"))


def _losses(path):
    return {h["step"]: h["loss"] for h in json.loads((path / "trainer_state.json").read_text())["log_history"]
            if "loss" in h}


def _snapshot(out):
    return {p.relative_to(out): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tiny_model_dir, clevr_train, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    run(*_args(tiny_model_dir, clevr_train, root / "straight"))
    with pytest.raises(Killed):
        run(*_args(tiny_model_dir, clevr_train, root / "killed"), callbacks=[KillAtStep(3)])
    killed_state = sorted(p.name for p in (root / "killed").iterdir())
    watch = Watch(root / "killed")
    run(*_args(tiny_model_dir, clevr_train, root / "killed"), callbacks=[watch])
    return dict(root=root, straight=root / "straight", killed=root / "killed", killed_state=killed_state,
                watch=watch, model=tiny_model_dir, data=clevr_train)


def test_resumed_run_ends_bit_for_bit_where_the_uninterrupted_one_does(runs, tiny_model_dir):
    # Killed in step 3: checkpoint-2 only, no final model, no marker.
    assert [n for n in runs["killed_state"] if n != "README.md"] == ["checkpoint-2"]
    assert runs["watch"].steps == [3, 4]
    straight, resumed = _weights(runs["straight"]), _weights(runs["killed"])
    base = safetensors.torch.load_file(str(tiny_model_dir / "model.safetensors"))
    assert straight.keys() == resumed.keys() == base.keys()
    # The smoke recipe's reward moves every tensor, and between the checkpoint and the end too: a
    # resume that kept the base (or checkpoint-2's) weights could not pass the equality below.
    assert all(not torch.equal(straight[k], base[k]) for k in base)
    at_2 = _weights(runs["straight"] / "checkpoint-2")
    assert sum(not torch.equal(straight[k], at_2[k]) for k in base) > len(base) // 2
    assert all(torch.equal(straight[k], resumed[k]) for k in base)
    straight_losses, resumed_losses = _losses(runs["straight"] / "checkpoint-4"), _losses(runs["killed"] / "checkpoint-4")
    assert resumed_losses == straight_losses and set(straight_losses) == {1, 2, 3, 4}
    assert any(straight_losses[s] != 0 for s in (3, 4))


def test_no_marker_stands_while_the_resumed_run_trains_and_one_is_written_after(runs):
    assert runs["watch"].marker_seen == [False, False]
    marker = json.loads((runs["killed"] / MARKER).read_text())
    assert marker["global_step"] == 4
    assert ckpt.marker_problem(runs["killed"], marker) is None
    assert marker["files"]["model.safetensors"]["size"] == (runs["killed"] / "model.safetensors").stat().st_size


def test_restarting_a_finished_run_trains_nothing_and_rewrites_nothing(runs, caplog):
    before = _snapshot(runs["straight"])
    watch = Watch(runs["straight"])
    with caplog.at_level("INFO"):
        assert run(*_args(runs["model"], runs["data"], runs["straight"]), callbacks=[watch]) is None
    assert watch.steps == []
    assert _snapshot(runs["straight"]) == before
    assert "already finished at step 4" in caplog.text


def test_raising_the_stop_step_continues_from_the_last_checkpoint(runs, tmp_path):
    out = tmp_path / "staged"
    run(*_args(runs["model"], runs["data"], out, "--stop_at_step", "2"))
    assert json.loads((out / MARKER).read_text())["global_step"] == 2
    watch = Watch(out)
    run(*_args(runs["model"], runs["data"], out, "--stop_at_step", "4"), callbacks=[watch])
    assert watch.steps == [3, 4] and watch.marker_seen == [False, False]  # the step-2 marker went first
    straight, staged = _weights(runs["straight"]), _weights(out)
    assert all(torch.equal(straight[k], staged[k]) for k in straight)  # same schedule: same weights
    assert json.loads((out / MARKER).read_text())["global_step"] == 4


def _copy_run(src, dst, *checkpoints):
    dst.mkdir()
    for name in checkpoints:
        shutil.copytree(src / name, dst / name)
    return dst


@pytest.mark.parametrize("damage", ["model.safetensors", "optimizer.pt"])
def test_a_corrupt_newest_checkpoint_is_skipped_naming_the_file(runs, tmp_path, caplog, damage):
    out = _copy_run(runs["straight"], tmp_path / "run", "checkpoint-2", "checkpoint-4")
    file = out / "checkpoint-4" / damage
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # cut short; trainer_state.json intact
    if damage == "optimizer.pt":  # its resume needs no training: check the pick, not a rerun
        with caplog.at_level("WARNING"):
            assert ckpt.latest_complete_checkpoint(out) == out / "checkpoint-2"
        assert f"checkpoint-4: {damage}: unreadable" in caplog.text
        return
    watch = Watch(out)
    with caplog.at_level("WARNING"):
        run(*_args(runs["model"], runs["data"], out), callbacks=[watch])
    assert f"checkpoint-4: {damage}: truncated" in caplog.text
    assert watch.steps == [3, 4]
    straight, again = _weights(runs["straight"]), _weights(out)
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_a_restart_killed_during_the_final_save_completes_it_without_training(runs, tmp_path):
    out = _copy_run(runs["straight"], tmp_path / "run", "checkpoint-2", "checkpoint-4")
    final = (runs["straight"] / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(final[: len(final) // 3])  # the final save cut short, no marker
    watch = Watch(out)
    assert run(*_args(runs["model"], runs["data"], out), callbacks=[watch]) is None
    assert watch.steps == []
    assert (out / "model.safetensors").read_bytes() == final
    marker = json.loads((out / MARKER).read_text())
    assert marker["global_step"] == 4 and ckpt.marker_problem(out, marker) is None
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]


def test_a_checkpoint_that_does_not_fit_the_model_is_an_error_naming_the_tensors(runs, tmp_path):
    out = _copy_run(runs["straight"], tmp_path / "run", "checkpoint-2")
    weights = out / "checkpoint-2" / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    dropped = next(k for k in tensors if "layers.1.mlp" in k)
    tensors.pop(dropped)
    tensors["model.extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ResumeError) as error:
        run(*_args(runs["model"], runs["data"], out))
    message = str(error.value)
    # Named in the model's own terms (the legacy name mapped the way from_pretrained maps it).
    assert "layers.1.mlp" in message and "model.extra.weight" in message and "checkpoint-2" in message
    assert sorted(p.name for p in out.iterdir() if p.name != "README.md") == ["checkpoint-2"]  # nothing written


def test_an_epoch_run_restarted_after_its_last_step_trains_nothing(runs, tmp_path, caplog):
    # max_steps -1: the last step is known only once the data is (4 rows x 4 rollouts / 8 per step = 2).
    out = tmp_path / "epochs"
    epochs = ("--max_steps", "-1", "--num_train_epochs", "1", "--max_train_samples", "4", "--save_steps", "1")
    run(*_args(runs["model"], runs["data"], out, *epochs))
    assert json.loads((out / MARKER).read_text())["global_step"] == 2
    before = _snapshot(out)
    watch = Watch(out)
    with caplog.at_level("INFO"):
        assert run(*_args(runs["model"], runs["data"], out, *epochs), callbacks=[watch]) is None
    assert watch.steps == [] and _snapshot(out) == before
    assert "already finished at step 2" in caplog.text
