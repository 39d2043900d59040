"""Checkpoint mode: every complete checkpoint-N in step order, then the final model; reruns reuse
what is on disk."""

import json
import logging
import struct

import pytest

from eval_job import cli
from eval_job.checkpoints import find_targets


def _safetensors(tensor_bytes: int) -> bytes:
    """A safetensors file holding one uint8 tensor of `tensor_bytes` bytes, written by hand (stdlib)."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [tensor_bytes], "data_offsets": [0, tensor_bytes]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(tensor_bytes)


def test_checkpoints_are_ordered_by_step_and_incomplete_ones_skipped(tmp_path):
    for n in (2, 10, 9, 4, 7):
        (tmp_path / f"checkpoint-{n}").mkdir()
        (tmp_path / f"checkpoint-{n}" / "model.safetensors").write_bytes(_safetensors(64))
        if n != 4:  # checkpoint-4 is still being written: no trainer_state.json yet
            (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text(json.dumps({"global_step": n}))
    # checkpoint-7's weights were cut short (its trainer_state.json parses): not scored either.
    (tmp_path / "checkpoint-7" / "model.safetensors").write_bytes(_safetensors(64)[:-10])
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "training_complete.json").write_text(json.dumps({"global_step": 11}))
    targets = find_targets(tmp_path, tmp_path)
    assert [(t.name, t.step) for t in targets] == [("checkpoint-2", 2), ("checkpoint-9", 9), ("checkpoint-10", 10),
                                                   ("final", 11)]


@pytest.fixture
def run_dir(tmp_path, copy_model):
    """A training output folder: two checkpoints (the first saved without its processor, so it borrows
    the final model's), one incomplete checkpoint, and the final model with its completion marker."""
    run = copy_model(tmp_path / "run", step=2)
    copy_model(run / "checkpoint-1", processor=False, step=1)
    copy_model(run / "checkpoint-2", step=2)
    (run / "checkpoint-3").mkdir()  # incomplete: must be ignored
    (run / "training_complete.json").write_text(json.dumps({"global_step": 2, "model_dir": str(run)}))
    return run


def test_checkpoint_mode_scores_each_checkpoint_then_final_and_a_rerun_evaluates_nothing(
        run_dir, questions, pushgateway, tmp_path, monkeypatch, caplog):
    out = tmp_path / "eval"
    argv = ["--checkpoints", str(run_dir), "--data", str(questions), "--out", str(out), "--prompt", "cot,direct",
            "--max-new-tokens", "8", "--pushgateway", pushgateway.url]
    assert cli.main(argv) == 0

    expected = [("checkpoint-1", 1), ("checkpoint-2", 2), ("final", 2)]
    index = json.loads((out / "scores.json").read_text())
    assert [(r["checkpoint"], r["step"], r["prompt"]) for r in index] == \
        [(name, step, prompt) for name, step in expected for prompt in ("cot", "direct")]
    assert not (out / "checkpoint-3").exists()
    for name, step in expected:
        summary = json.loads((out / name / "cot" / "summary.json").read_text())
        assert (summary["checkpoint"], summary["step"], summary["evaluated"]) == (name, step, 6)
        # The run label defaults to the training output folder's name; each checkpoint is its own group.
        group = dict(job="r1v-eval", run="run", checkpoint=name)
        assert pushgateway.value("r1v_eval_checkpoint_step", **group) == step
        assert pushgateway.value("r1v_eval_accuracy_ratio", **group, prompt="direct") == \
            json.loads((out / name / "direct" / "summary.json").read_text())["accuracy"]

    # A rerun must not load a model at all, must leave the results untouched, and still pushes.
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.json*") if p.name != "scores.json"}
    def no_model(*args, **kwargs):
        raise AssertionError("a rerun loaded a model")
    monkeypatch.setattr("eval_job.generate.load_generator", no_model)
    from prometheus_client import delete_from_gateway
    from eval_job.metrics import grouping_key, pod_namespace
    delete_from_gateway(pushgateway.url, job="r1v-eval",
                        grouping_key=grouping_key(pod_namespace(), "run", "checkpoint-1"))
    assert not pushgateway.samples("r1v_eval_checkpoint_step", run="run", checkpoint="checkpoint-1")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eval_job"):
        assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert "evaluated 0 (checkpoint, prompt) pairs, reused 6" in caplog.text
    assert pushgateway.value("r1v_eval_checkpoint_step", run="run", checkpoint="checkpoint-1") == 1


def test_changed_settings_evaluate_again(tiny_model, questions, tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model), "--data", str(questions), "--out", str(out), "--max-new-tokens", "2"]
    assert cli.main(argv) == 0
    from eval_job import generate
    loads = []
    real = generate.load_generator
    monkeypatch.setattr(generate, "load_generator", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert cli.main(argv) == 0
    assert loads == []  # same settings: reused
    assert cli.main(argv[:-1] + ["3"]) == 0
    assert len(loads) == 1  # a different generation budget changes the score: evaluated again
    assert json.loads((out / "final" / "cot" / "summary.json").read_text())["settings"]["max_new_tokens"] == 3


def test_a_changed_model_at_the_same_path_is_scored_again(copy_model, questions, tmp_path, monkeypatch):
    model = copy_model(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data", str(questions), "--out", str(out), "--max-new-tokens", "2"]
    assert cli.main(argv) == 0
    first = json.loads((out / "final" / "cot" / "summary.json").read_text())
    from eval_job import generate
    loads = []
    real = generate.load_generator
    monkeypatch.setattr(generate, "load_generator", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert cli.main(argv) == 0
    assert loads == []  # same weights: reused
    # Training went on into the same folder: other weights (same path, same size, new mtime).
    import safetensors.torch
    weights = safetensors.torch.load_file(str(model / "model.safetensors"))
    safetensors.torch.save_file({k: v + 0.01 for k, v in weights.items()}, str(model / "model.safetensors"),
                                metadata={"format": "pt"})
    assert cli.main(argv) == 0
    assert len(loads) == 1
    second = json.loads((out / "final" / "cot" / "summary.json").read_text())
    assert second["settings"]["model_files"] != first["settings"]["model_files"]


def test_two_evaluators_on_one_out_neither_crash_nor_evaluate_twice(copy_model, questions, tmp_path, monkeypatch):
    import threading

    from eval_job import evaluate
    model = copy_model(tmp_path / "model")
    out = tmp_path / "out"
    evaluated = []
    real = evaluate.evaluate_prompt
    monkeypatch.setattr(evaluate, "evaluate_prompt", lambda *a, **k: evaluated.append(a[2]) or real(*a, **k))
    argv = ["--model", str(model), "--data", str(questions), "--out", str(out), "--max-new-tokens", "2",
            "--prompt", "cot,direct"]
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(cli.main(argv))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert codes == [0, 0]
    # Each (model, prompt) scored once: the other evaluator waited for the claim, then reused it.
    assert sorted(evaluated) == ["cot", "direct"]
    assert not list(out.rglob("*.tmp"))
    index = json.loads((out / "scores.json").read_text())
    assert [(r["checkpoint"], r["prompt"]) for r in index] == [("final", "cot"), ("final", "direct")]


def test_written_scores_are_readable_by_others_under_the_umask(tmp_path):
    import os
    import stat

    from eval_job.evaluate import write_atomically

    path = tmp_path / "summary.json"
    write_atomically(path, "{}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert path.read_text() == "{}\n"
