"""charts/r1v/files/data_prep.py, the data-prep Job's script: the SuperCLEVR part and the marker,
run on local files through file:// URLs (the Hub downloads need the internet and are not run here)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.chart.render import CHART

_spec = importlib.util.spec_from_file_location("data_prep", CHART / "files" / "data_prep.py")
data_prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_prep)


@pytest.fixture(autouse=True)
def sigterm_handler_restored():
    """data_prep.main installs its SIGTERM handler for good (it is a pod's PID 1); run in this process,
    the handler goes back afterwards so that later tests see the interpreter's default."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture
def superclevr_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    questions = src / "superclevr_test200_counting_problems.jsonl"
    rows = [{"image_path": f"./images/superCLEVR_new_{i:06d}.png", "question": "How many?", "ground_truth": i % 7 + 3}
            for i in range(3)]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    archive = src / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"images/superCLEVR_new_{i:06d}.png", f"png{i}")
        zf.writestr("images/superCLEVR_new_999999.png", "unused")  # not asked for: not extracted
    return questions, archive


def test_superclevr_extracts_only_the_needed_images(tmp_path, superclevr_source):
    questions, archive = superclevr_source
    out = tmp_path / "data" / "datasets" / "superclevr"
    got = data_prep.prepare_superclevr(questions.as_uri(), archive.as_uri(), out)
    assert got == out / questions.name and got.read_text() == questions.read_text()
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"superCLEVR_new_{i:06d}.png" for i in range(3)]
    assert (out / "images" / "superCLEVR_new_000001.png").read_text() == "png1"
    assert not (out / "images.zip").exists()  # several GB on a real run


def test_superclevr_second_run_downloads_nothing(tmp_path, superclevr_source):
    questions, archive = superclevr_source
    out = tmp_path / "superclevr"
    data_prep.prepare_superclevr(questions.as_uri(), archive.as_uri(), out)
    archive.unlink()  # a re-run that needed the archive would now fail
    data_prep.prepare_superclevr(questions.as_uri(), archive.as_uri(), out)


def test_superclevr_fails_when_the_archive_lacks_an_image(tmp_path, superclevr_source):
    questions, archive = superclevr_source
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/superCLEVR_new_000000.png", "png0")
    with pytest.raises(SystemExit, match="lacks 2 images"):
        data_prep.prepare_superclevr(questions.as_uri(), archive.as_uri(), tmp_path / "out")


def test_marker_is_json_written_atomically(tmp_path):
    marker = tmp_path / ".r1v-prep" / "r1v.json"
    data_prep.write_marker(marker, {"model": "/data/models/m"})
    content = json.loads(marker.read_text())
    assert content["model"] == "/data/models/m" and "finished_at" in content
    assert [p.name for p in marker.parent.iterdir()] == ["r1v.json"]  # no temp file left behind


def test_cli_takes_exactly_the_arguments_the_chart_passes(monkeypatch):
    from tests.chart.render import only, render
    job = only(render({"dataPrep": {"enabled": True}}), "Job", "-data-prep")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    calls = []
    monkeypatch.setattr(data_prep, "snapshot", lambda repo, dest, kind, rev: calls.append((repo, str(dest), kind, rev)))
    monkeypatch.setattr(data_prep, "prepare_superclevr",
                        lambda q, i, d, keep_zip, questions_sha256: calls.append(("sha256", questions_sha256)) or d)
    monkeypatch.setattr(data_prep, "write_marker", lambda marker, contents: calls.append(("marker", str(marker))))
    assert data_prep.main(args) == 0
    assert calls == [("Qwen/Qwen2-VL-2B-Instruct", "/data/models/Qwen2-VL-2B-Instruct", "model", None),
                     ("leonardPKU/clevr_cogen_a_train", "/data/datasets/clevr_cogen_a_train", "dataset", None),
                     ("sha256", SHARED_QUESTIONS_SHA256), ("marker", "/data/.r1v-prep/r1v.json")]
    # Revisions set in values reach the downloads.
    args = only(render({"dataPrep": {"enabled": True}, "model": {"revision": "v1.0"},
                        "dataset": {"revision": "a" * 40}}),
                "Job", "-data-prep")["spec"]["template"]["spec"]["containers"][0]["args"]
    calls.clear()
    assert data_prep.main(args) == 0
    assert [c[3] for c in calls[:2]] == ["v1.0", "a" * 40]


# --- pinned sources ------------------------------------------------------------------------------

SHARED_QUESTIONS_SHA256 = "4ca86120527cd76d6957a33a6b745980bf8d51c3307a4fdbab5e264b89f19b04"


def test_the_question_file_is_pinned_to_a_commit_and_its_sha256():
    import hashlib

    import yaml

    from tests.outside import FIXTURES, require

    values = yaml.safe_load((CHART / "values.yaml").read_text())["superclevr"]
    assert values["questionsUrl"] == FIXTURES["r1v-superclevr-questions"].url  # the commit, not a branch
    assert values["questionsSha256"] == SHARED_QUESTIONS_SHA256
    questions = require("r1v-superclevr-questions")
    assert hashlib.sha256(questions.read_bytes()).hexdigest() == SHARED_QUESTIONS_SHA256
    assert len(data_prep.needed_images(questions)) == 200


def test_a_question_file_with_another_sha256_is_fetched_again_then_refused(tmp_path, superclevr_source, capsys):
    import hashlib

    questions, _ = superclevr_source
    good = hashlib.sha256(questions.read_bytes()).hexdigest()
    dest = tmp_path / "out" / questions.name
    dest.parent.mkdir()
    dest.write_text('{"image_path": "./images/x.png"}\n')  # an older file, e.g. from the branch's head
    assert data_prep.fetch_checked(questions.as_uri(), dest, good) == dest
    assert dest.read_bytes() == questions.read_bytes()
    dest.unlink()
    with pytest.raises(SystemExit) as stop:
        data_prep.fetch_checked(questions.as_uri(), dest, "0" * 64)
    assert stop.value.code == 2 and not dest.exists()
    assert f"has sha256 {good}, superclevr.questionsSha256 says {'0' * 64}" in capsys.readouterr().err


def test_the_hub_commit_is_resolved_once_recorded_and_kept(tmp_path, monkeypatch):
    import huggingface_hub

    from r1v_common.checkpoints import SOURCE_RECORD, source_revision

    heads = {None: "c1" * 20}
    downloads = []
    monkeypatch.setattr(data_prep, "resolve_revision",
                        lambda repo, kind, rev, token: heads[rev] if rev in heads else f"{rev}-commit")
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda **kw: downloads.append(kw["revision"])
                        or Path(kw["local_dir"]).mkdir(parents=True, exist_ok=True))
    dest = tmp_path / "models" / "m"
    assert data_prep.snapshot("org/m", dest, "model") == "c1" * 20
    heads[None] = "c2" * 20  # the Hub's head moves on; a retry or a later release keeps the recorded commit
    assert data_prep.snapshot("org/m", dest, "model") == "c1" * 20
    assert data_prep.snapshot("org/m", dest, "model", "v2") == "v2-commit"  # an explicit revision wins
    assert downloads == ["c1" * 20, "c1" * 20, "v2-commit"]
    assert source_revision(dest) == "v2-commit"  # what the trainer reports
    # A folder recorded for another repository is not taken for this one.
    assert data_prep.snapshot("org/other", dest, "model") == "c2" * 20
    assert json.loads((dest / SOURCE_RECORD).read_text())["repo_id"] == "org/other"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a PID namespace")
def test_as_pid_1_sigterm_stops_a_download_at_once(tmp_path):
    """As PID 1 of a container Python ignores SIGTERM; data prep stops at once instead (a stand-in
    Hub client that takes a minute per download)."""
    hub = tmp_path / "stub" / "huggingface_hub"
    hub.mkdir(parents=True)
    (hub / "__init__.py").write_text("import pathlib, sys, time, types\n"
                                     "class HfApi:\n"
                                     "    def __init__(self, token=None): pass\n"
                                     "    def repo_info(self, *a, **kw): return types.SimpleNamespace(sha='c' * 40)\n"
                                     "def snapshot_download(**kwargs):\n"
                                     f"    pathlib.Path({str(tmp_path / 'downloading')!r}).touch()\n"
                                     "    time.sleep(60)\n")
    args = ["--model-id", "m", "--model-dir", tmp_path / "m", "--dataset-id", "d", "--dataset-dir", tmp_path / "d",
            "--superclevr-questions-url", "file:///q", "--superclevr-images-url", "file:///i",
            "--superclevr-dir", tmp_path / "s", "--marker", tmp_path / "marker"]
    # The stand-in Hub client first, then this checkout (data_prep.py imports r1v_common).
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             str(CHART / "files" / "data_prep.py"), *map(str, args)],
                            env={**os.environ,
                                 "PYTHONPATH": os.pathsep.join([str(tmp_path / "stub"), str(CHART.parents[1])])},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "downloading").exists():
        assert time.monotonic() < deadline and proc.poll() is None, (
            proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    started = time.monotonic()
    os.kill(int(children[0]), signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143 and time.monotonic() - started < 5
    assert "stopped by SIGTERM" in err and not (tmp_path / "marker").exists()
