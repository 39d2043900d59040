"""Training data from each supported form; unusable rows dropped and counted; empty data is an error."""

import json
import logging
import shutil

import datasets
import pytest

from r1v_job.data import DataError, load_train_dataset
from r1v_common.prompts import TRAIN_PROMPT


def _rows(jsonl):
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def _as_hf_dataset(jsonl) -> datasets.Dataset:
    """The jsonl as a Dataset with an Image feature, as CLEVR-70k has on the Hub."""
    rows = _rows(jsonl)
    for row in rows:
        row["image"] = str(jsonl.parent / row["image"])
    return datasets.Dataset.from_list(rows).cast_column("image", datasets.Image())


def _check(ds, n):
    assert len(ds) == n
    row = ds[0]
    assert row["image"].size == (112, 112)
    assert row["prompt"] == [{"role": "user", "content": TRAIN_PROMPT.format(Question=row["problem"])}]
    assert row["solution"].startswith("<answer>")


def test_jsonl_with_relative_image_paths(clevr_train):
    _check(load_train_dataset(str(clevr_train)), 24)


def test_jsonl_with_an_image_root(clevr_train, tmp_path):
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(clevr_train, moved)
    _check(load_train_dataset(str(moved), image_root=str(clevr_train.parent)), 24)


def test_save_to_disk_folder_and_dataset_dict(clevr_train, tmp_path):
    ds = _as_hf_dataset(clevr_train)
    ds.save_to_disk(str(tmp_path / "plain"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    _check(load_train_dataset(str(tmp_path / "plain")), 24)
    _check(load_train_dataset(str(tmp_path / "dict"), split="train"), 24)


def test_parquet_file_and_folder(clevr_train, tmp_path):
    ds = _as_hf_dataset(clevr_train)
    (tmp_path / "pq").mkdir()
    ds.select(range(12)).to_parquet(str(tmp_path / "pq" / "train-0.parquet"))
    ds.select(range(12, 24)).to_parquet(str(tmp_path / "pq" / "train-1.parquet"))
    _check(load_train_dataset(str(tmp_path / "pq" / "train-0.parquet")), 12)
    _check(load_train_dataset(str(tmp_path / "pq")), 24)


def test_hub_ids_go_to_load_dataset_with_config_and_split(clevr_train, monkeypatch):
    # The Hub is unreachable here: check that a Hub id reaches datasets.load_dataset unchanged.
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        return _as_hf_dataset(clevr_train)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _check(load_train_dataset("leonardPKU/clevr_cogen_a_train", split="train"), 24)
    assert calls == [("leonardPKU/clevr_cogen_a_train", None, "train")]


def test_bad_rows_are_dropped_counted_and_explained(clevr_train, tmp_path, caplog):
    shutil.copytree(clevr_train.parent, tmp_path / "d")
    rows = _rows(clevr_train)[:6]
    (tmp_path / "d" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows[1]["image"] = "images/missing.png"
    rows[2]["image"] = "corrupt.png"
    rows[3]["solution"] = "<answer> three </answer>"
    rows[4]["solution"] = None
    bad = tmp_path / "d" / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="r1v_job.data"):
        ds = load_train_dataset(str(bad))
    assert len(ds) == 2
    assert [r["solution"] for r in ds] == [rows[0]["solution"], rows[5]["solution"]]
    message = caplog.text
    assert "dropped 4 of 6 rows" in message
    for reason in ("bad.jsonl:2: image not found", "bad.jsonl:3: unreadable image", "bad.jsonl:4: non-numeric solution",
                   "bad.jsonl:5: missing solution"):
        assert reason in message


def test_no_usable_rows_is_an_error_that_says_why(clevr_train, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "nope.png", "problem": "How many?", "solution": "<answer> 2 </answer>"})
                   + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: no usable rows out of 1.*bad.jsonl:1: image not found"):
        load_train_dataset(str(bad))


def test_wrong_schema_names_the_missing_columns(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"image_path": "x.png", "question": "How many?", "ground_truth": 2}) + "\n")
    with pytest.raises(DataError, match=r"missing columns \['image', 'problem', 'solution'\]"):
        load_train_dataset(str(bad))


def test_malformed_json_lines_are_dropped_and_counted_like_bad_rows(clevr_train, tmp_path, caplog):
    shutil.copytree(clevr_train.parent, tmp_path / "d")
    lines = [json.dumps(r) for r in _rows(clevr_train)[:4]]
    lines.insert(1, '{"image": "images/x.png", "problem": ')  # line 2: cut short
    lines.insert(3, "\xff not text")  # line 4, written below as Latin-1: not UTF-8
    bad = tmp_path / "d" / "bad.jsonl"
    bad.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    with caplog.at_level(logging.WARNING, logger="r1v_job.data"):
        ds = load_train_dataset(str(bad))
    assert len(ds) == 4
    assert "dropped 2 of 6 rows" in caplog.text
    assert "bad.jsonl:2: malformed JSON" in caplog.text
    assert "bad.jsonl:4: not UTF-8 text (byte 0xff at column 1)" in caplog.text


def test_an_empty_data_set_is_one_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no usable rows out of 0; the file has no rows"):
        load_train_dataset(str(empty))
