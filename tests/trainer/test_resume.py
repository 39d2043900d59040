"""Restarts lose, repeat and fake nothing: a run killed after a checkpoint (or stopped by SIGTERM,
or by a full disk) and restarted ends with the same weights and losses as one never interrupted; a
finished run is never trained on or rewritten; a corrupt newest checkpoint is skipped; no marker
stands while a run trains."""

import json
import os
import shutil
import signal
import time

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from transformers import TrainerCallback

from r1v_job import checkpoints as ckpt
from r1v_job import trainer as trainer_module
from r1v_job.grpo import main, parse_args, run
from r1v_job.preemption import PREEMPTED
from r1v_job.trainer import ResumeError
from tests.trainer import kill_reward
from tests.helpers import tmpfs

MARKER = ckpt.COMPLETION_MARKER


def _argv(model, data, out, *extra):
    # The smoke recipe as shipped (its rewards move the tiny model's weights), 4 steps, a checkpoint
    # every 2.
    return ["--config", "recipes/smoke_cpu.yaml", "--model_name_or_path", str(model),
            "--dataset_name", str(data), "--output_dir", str(out), "--offline_bootstrap", "false",
            "--max_steps", "4", "--save_steps", "2", *extra]


def _args(model, data, out, *extra):
    return parse_args(_argv(model, data, out, *extra))


# The recipe's rewards plus one that adds 0 and sends SIGTERM in the middle of step N
# (R1V_TEST_TERM_AT_CALL=N): the same run as without it.
TERM_REWARD = ("--reward_funcs", "accuracy_reward", "format_reward", "tag_count_reward",
               "tests.trainer.kill_reward:die_at_call")


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
    straight_losses = _losses(runs["straight"] / "checkpoint-4")
    resumed_losses = _losses(runs["killed"] / "checkpoint-4")
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


def test_rotation_counts_complete_checkpoints_only_and_keeps_the_newest_whole_one(runs, tmp_path):
    """A save killed midway leaves a half-written folder of a higher step (resume skips it). Counting
    it, transformers' rotation with save_total_limit 1 would keep that folder and delete the whole
    checkpoint the run had just saved."""
    from transformers.trainer_utils import rotate_checkpoints as transformers_rotate

    def leftovers(out):
        (out / "checkpoint-9").mkdir()  # killed while saving step 9 of an earlier attempt
        (out / "checkpoint-9" / "model.safetensors").write_bytes(b"cut short")
        (out / "checkpoint-1").mkdir()  # an older one, never finished
        return out

    ours = leftovers(_copy_run(runs["straight"], tmp_path / "ours", "checkpoint-2", "checkpoint-4"))
    assert {p.name for p in ckpt.rotate_checkpoints(ours, 1)} == {"checkpoint-1", "checkpoint-2"}
    assert sorted(p.name for p in ours.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-9"]
    assert ckpt.latest_complete_checkpoint(ours) == ours / "checkpoint-4"
    theirs = leftovers(_copy_run(runs["straight"], tmp_path / "theirs", "checkpoint-2", "checkpoint-4"))
    transformers_rotate(output_dir=str(theirs), save_total_limit=1, use_mtime=False)
    assert ckpt.latest_complete_checkpoint(theirs) is None  # what the rule above prevents


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


def test_sigterm_mid_step_checkpoints_that_step_exits_preempted_and_the_resumed_run_ends_bit_for_bit(
        runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(kill_reward, "_calls", 0)
    monkeypatch.setenv("R1V_TEST_TERM_AT_CALL", "3")  # step 3's reward: after its generation, before its backward
    monkeypatch.setenv("R1V_GRACE_SECONDS", "60")
    monkeypatch.setenv("R1V_PREEMPTED_FILE", str(tmp_path / "preempted"))
    assert main(_argv(runs["model"], runs["data"], out, *TERM_REWARD)) == PREEMPTED
    took = time.monotonic() - kill_reward.term_sent_at
    assert took < 60  # the step in flight and its checkpoint fit the grace period
    # The step in flight was finished and saved, fsynced and whole; nothing final was written.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert ckpt.checkpoint_problem(out / "checkpoint-3") is None
    assert ckpt.checkpoint_step(out / "checkpoint-3") == 3
    assert not (out / MARKER).exists() and not (out / "model.safetensors").exists()
    err = capsys.readouterr().err
    assert f"r1v_job: preempted: stopped on SIGTERM after step 3; {out / 'checkpoint-3'} is saved" in err
    assert (tmp_path / "preempted").exists()  # what the launcher reads under torchrun
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was the run's only

    monkeypatch.delenv("R1V_TEST_TERM_AT_CALL")
    watch = Watch(out)
    run(*_args(runs["model"], runs["data"], out, *TERM_REWARD), callbacks=[watch])
    assert watch.steps == [4]  # step 3 is not redone
    straight, resumed = _weights(runs["straight"]), _weights(out)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    at_3 = _weights(out / "checkpoint-3")
    assert sum(not torch.equal(straight[k], at_3[k]) for k in straight) > len(straight) // 2  # step 4 moved them
    assert _losses(out / "checkpoint-4") == _losses(runs["straight"] / "checkpoint-4")


def test_sigterm_when_the_grace_period_cannot_fit_a_save_stops_without_one_and_says_so(
        runs, tmp_path, monkeypatch, capsys, caplog):
    out = tmp_path / "run"
    monkeypatch.setattr(kill_reward, "_calls", 0)
    monkeypatch.setenv("R1V_TEST_TERM_AT_CALL", "2")
    monkeypatch.setenv("R1V_GRACE_SECONDS", "0.01")  # less than step 1's save took
    with caplog.at_level("WARNING"):
        assert main(_argv(runs["model"], runs["data"], out, *TERM_REWARD, "--save_steps", "1")) == PREEMPTED
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert "stopping after step 2 without a checkpoint" in caplog.text
    assert "without a checkpoint (no time left to save one); the restart resumes from" in capsys.readouterr().err


def test_sigterm_before_training_is_no_preemption_the_launcher_is_told_of(tiny_model_dir, clevr_train, tmp_path,
                                                                            monkeypatch, capsys):
    """torchrun SIGTERMs the other workers when one dies while loading the model: those ranks stop at
    once (143) but leave no preempted file, so the launcher counts the crash (a restart loop on a
    crash in setup would otherwise never end). A SIGTERM to the pod itself reaches the launcher's trap."""
    import r1v_job.grpo as grpo

    def sigterm_while_loading(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("the SIGTERM did not stop the setup")

    monkeypatch.setattr(grpo, "build_trainer", sigterm_while_loading)
    monkeypatch.setenv("R1V_PREEMPTED_FILE", str(tmp_path / "preempted"))
    assert main(_argv(tiny_model_dir, clevr_train, tmp_path / "run")) == PREEMPTED
    assert "r1v_job: preempted: SIGTERM outside the training loop" in capsys.readouterr().err
    assert not (tmp_path / "preempted").exists()


# A disk that fills during a checkpoint save (a real tmpfs of a few MB): one line naming ENOSPC and
# the path, no partial checkpoint left, and once space is freed the restart resumes from the last
# complete checkpoint. Rotation (save_total_limit) deletes older checkpoints only once the new one
# is whole and fsynced.

@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "size=16m") as mount:
        yield mount


def test_a_disk_that_fills_during_a_save_is_one_line_leaves_no_partial_checkpoint_and_resumes(
        runs, small_disk, monkeypatch, capsys):
    out = small_disk / "run"
    monkeypatch.setattr(kill_reward, "_calls", 0)
    # In step 3, after checkpoint-2: leave 200 kB free, less than checkpoint-4 needs (~3 MB).
    monkeypatch.setenv("R1V_TEST_FILL_AT_CALL", "3")
    monkeypatch.setenv("R1V_TEST_FILL_DIR", str(small_disk))
    monkeypatch.setenv("R1V_TEST_FILL_LEAVE", str(200 << 10))
    assert main(_argv(runs["model"], runs["data"], out, *TERM_REWARD, "--save_total_limit", "1")) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("r1v_job:")]
    assert len(lines) == 1
    assert "ENOSPC" in lines[0] and str(out / "checkpoint-4") in lines[0]
    assert "removed the partial checkpoint" in lines[0]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # no partial checkpoint-4
    assert ckpt.checkpoint_problem(out / "checkpoint-2") is None

    (small_disk / "filler").unlink()  # space freed
    monkeypatch.delenv("R1V_TEST_FILL_AT_CALL")
    events = []
    fsync_tree, rotate = trainer_module.fsync_tree, trainer_module.rotate_checkpoints

    def spy_fsync(path, *a, **k):
        fsync_tree(path, *a, **k)
        events.append(("fsync", path.name))

    def spy_rotate(**kwargs):
        newest = ckpt.checkpoints_by_step(out)[-1][1]
        events.append(("rotate", newest.name, ckpt.checkpoint_problem(newest)))
        rotate(**kwargs)

    monkeypatch.setattr(trainer_module, "fsync_tree", spy_fsync)
    monkeypatch.setattr(trainer_module, "rotate_checkpoints", spy_rotate)
    watch = Watch(out)
    run(*_args(runs["model"], runs["data"], out, *TERM_REWARD, "--save_total_limit", "1"), callbacks=[watch])
    assert watch.steps == [3, 4]  # resumed from checkpoint-2
    # checkpoint-2 went only after checkpoint-4 was fsynced and whole
    assert events == [("fsync", "checkpoint-4"), ("rotate", "checkpoint-4", None)]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    straight, resumed = _weights(runs["straight"]), _weights(out)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _losses(out / "checkpoint-4") == _losses(runs["straight"] / "checkpoint-4")


def _fill(disk, leave):
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    filler.write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))


def test_a_disk_that_fills_while_finishing_from_the_last_checkpoint_is_one_line_and_the_restart_finishes(
        runs, small_disk, capsys):
    """A restart at the last step makes its checkpoint the final model and writes the marker: a full
    disk in either is one line (exit 1) with nothing half-written left, and the next restart finishes."""
    out = _copy_run(runs["straight"], small_disk / "run", "checkpoint-4")
    to_copy = [f for f in (out / "checkpoint-4").iterdir()
               if f.is_file() and (ckpt._WEIGHTS.match(f.name) or ckpt._MODEL_FILES.match(f.name))]
    pages = sum(-(-f.stat().st_size // 4096) * 4096 for f in to_copy) + 4096  # and the output_dir's lease
    argv = _argv(runs["model"], runs["data"], out)
    for leave, what in ((100 << 10, "the final model from checkpoint-4"), (pages, f"the completion marker {MARKER}")):
        for f in to_copy:  # the small files copied before the weights in the first try: the restart rewrites them
            (out / f.name).unlink(missing_ok=True)
        _fill(small_disk, leave)  # the second time: room for the final model's files, not for the marker
        assert main(argv) == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("r1v_job:")]
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        assert lines[0].startswith(f"r1v_job: error: no space left on device (ENOSPC) writing {out}: {what} ("), lines
        assert not list(out.glob(".*.tmp")) and not (out / MARKER).exists()
    assert ckpt.final_weights(out)  # the copy that fitted stays; the marker is what the restart adds
    (small_disk / "filler").unlink()
    assert main(argv) == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["global_step"] == 4 and ckpt.marker_problem(out, marker) is None
    assert (out / "model.safetensors").read_bytes() == (runs["straight"] / "model.safetensors").read_bytes()
