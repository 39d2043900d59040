"""charts/r1v/files/data_prep.py, the data-prep Job's script: the SuperCLEVR part and the marker,
run on local files through file:// URLs (the Hub downloads need the internet and are not run here)."""

from __future__ import annotations

import importlib.util
import json
import zipfile

import pytest

from tests.chart.r1v_chart_helpers import CHART

_spec = importlib.util.spec_from_file_location("data_prep", CHART / "files" / "data_prep.py")
data_prep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_prep)


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
    from tests.chart.r1v_chart_helpers import only, render
    args = only(render({"dataPrep": {"enabled": True}}), "Job", "-data-prep")["spec"]["template"]["spec"]["containers"][0]["args"]
    calls = []
    monkeypatch.setattr(data_prep, "snapshot", lambda repo, dest, kind: calls.append((repo, str(dest), kind)))
    monkeypatch.setattr(data_prep, "prepare_superclevr", lambda q, i, d, keep_zip: d / "q.jsonl")
    monkeypatch.setattr(data_prep, "write_marker", lambda marker, contents: calls.append(("marker", str(marker))))
    assert data_prep.main(args) == 0
    assert calls == [("Qwen/Qwen2-VL-2B-Instruct", "/data/models/Qwen2-VL-2B-Instruct", "model"),
                     ("leonardPKU/clevr_cogen_a_train", "/data/datasets/clevr_cogen_a_train", "dataset"),
                     ("marker", "/data/.r1v-prep/r1v.json")]
