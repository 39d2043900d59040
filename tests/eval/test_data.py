"""Bad input: bad rows are skipped and reported with file and line; zero usable rows is an error."""

import json
import logging
import shutil

import pytest

from eval_job import cli
from eval_job.data import DataError, read_questions


def _row(image, truth=3, question="How many different items are there in the image?"):
    return json.dumps({"image_path": image, "question": question, "ground_truth": truth})


@pytest.fixture
def bad_file(tmp_path, questions):
    """Three good rows and the four kinds of bad row, with a blank line that is not a row."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        shutil.copy(questions.parent / "images" / "superclevr_000000.png", images / name)
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = [
        _row("./images/a.png", 3),                       # 1
        _row("./images/missing.png", 4),                 # 2: missing image
        _row("./images/corrupt.png", 5),                 # 3: corrupt image
        '{"image_path": "./images/b.png", "question": ',  # 4: malformed JSON
        "",                                              # 5: blank, ignored
        _row("./images/b.png", "four"),                  # 6: non-integer ground truth
        _row("./images/c.png", "7"),                     # 7: a digit string is an integer
        _row(str(images / "a.png"), 9),                  # 8: absolute path
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_are_skipped_with_file_and_line(bad_file):
    questions, skipped = read_questions(bad_file)
    assert [(q.line, q.ground_truth) for q in questions] == [(1, 3), (7, 7), (8, 9)]
    assert [s.line for s in skipped] == [2, 3, 4, 6]
    reasons = [str(s) for s in skipped]
    assert reasons[0].startswith(f"{bad_file}:2: image not found")
    assert reasons[1].startswith(f"{bad_file}:3: unreadable image")
    assert reasons[2].startswith(f"{bad_file}:4: malformed JSON")
    assert reasons[3] == f"{bad_file}:6: ground_truth must be an integer, got 'four'"


def test_image_root_overrides_the_files_folder(tmp_path, questions):
    moved = tmp_path / "elsewhere.jsonl"
    shutil.copy(questions, moved)
    with pytest.raises(DataError):  # the images are not next to the copy...
        read_questions(moved)
    found, skipped = read_questions(moved, image_root=questions.parent)  # ...but under --image-root
    assert len(found) == 6 and not skipped


def test_evaluation_of_a_bad_file_scores_the_good_rows_and_reports_four_skips(bad_file, tiny_model, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc = cli.main(["--model", str(tiny_model), "--data", str(bad_file), "--out", str(out),
                       "--max-new-tokens", "4", "--batch-size", "2"])
    assert rc == 0
    summary = json.loads((out / "final" / "cot" / "summary.json").read_text())
    assert (summary["evaluated"], summary["skipped"]) == (3, 4)
    assert [row.split(": ")[0] for row in summary["skipped_rows"]] == [f"{bad_file}:{n}" for n in (2, 3, 4, 6)]
    results = [json.loads(line) for line in (out / "final" / "cot" / "results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 7, 8]
    for n in (2, 3, 4, 6):
        assert f"{bad_file}:{n}:" in caplog.text


@pytest.mark.parametrize("content, why", [
    ("", "the file has no rows"),
    ("\n\n", "the file has no rows"),
    ('{"image_path": "./nope.png", "question": "How many?", "ground_truth": 1}\nnot json\n',
     "all 2 rows were skipped (first: {file}:1: image not found"),
])
def test_zero_usable_questions_is_an_error_that_says_why(tmp_path, tiny_model, caplog, content, why):
    data = tmp_path / "q.jsonl"
    data.write_text(content)
    rc = cli.main(["--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "out")])
    assert rc == cli.EXIT_INPUT
    assert f"no usable questions in {data}: " + why.format(file=data) in caplog.text
    assert not (tmp_path / "out").exists()


def test_missing_question_file_is_an_error(tmp_path, tiny_model, caplog):
    rc = cli.main(["--model", str(tiny_model), "--data", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o")])
    assert rc == cli.EXIT_INPUT
    assert f"cannot read the question file {tmp_path / 'absent.jsonl'}" in caplog.text


def test_undecodable_lines_are_bad_rows_and_a_bom_is_not_data(tmp_path, questions):
    shutil.copytree(questions.parent / "images", tmp_path / "images")
    good = _row("./images/superclevr_000000.png", 3).encode()
    latin1 = ('{"image_path": "./images/superclevr_000000.png", "question": "Wie viele Gegenst\u00e4nde?", '
              '"ground_truth": 3}').encode("latin-1")  # an editor's Latin-1 save: \xe4 is not UTF-8
    path = tmp_path / "q.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + latin1 + b"\n" + good + b"\n")
    found, skipped = read_questions(path)
    assert [q.line for q in found] == [1, 3]
    assert [str(s) for s in skipped] == [f"{path}:2: not UTF-8 text (byte 0xe4 at column 80)"]


def test_bad_images_are_named_in_summary_json_and_the_other_rows_scored(tiny_model, questions, tmp_path, monkeypatch):
    from eval_job import generate
    from r1v_job.synthetic import read_jsonl
    from tests.helpers import bad_images

    folder = tmp_path / "superclevr"
    shutil.copytree(questions.parent, folder)
    good = read_jsonl(questions)  # lines 1-6
    bad = bad_images(folder)  # lines 7-10
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in good + [{**good[0], "image_path": v} for v in bad.values()]))
    first = folder / good[0]["image_path"]
    real = generate.load_generator

    def load_after_the_volume_lost_data(*args, **kwargs):
        # Line 1's image passed the check when the file was read; cut in half before the model loads,
        # it fails while its batch is scored.
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "load_generator", load_after_the_volume_lost_data)
    out = tmp_path / "out"
    assert cli.main(["--model", str(tiny_model), "--data", str(data), "--out", str(out), "--batch-size", "4",
                     "--max-new-tokens", "4"]) == 0
    summary = json.loads((out / "final" / "cot" / "summary.json").read_text())
    assert (summary["evaluated"], summary["skipped"]) == (5, 5)
    named = summary["skipped_rows"]
    assert named[0].startswith(f"{data}:7: aspect ratio 30000 of a 30000x1 image is over 200"), named
    assert named[1] == f"{data}:8: image {folder}/fifo.png is a FIFO, not a regular file"
    assert named[2] == f"{data}:9: image_path must be a path, got a number (42)"
    assert named[3].startswith(f"{data}:10: colour mode CMYK (accepted: "), named
    assert named[4].startswith(f"{data}:1: failed while scoring: OSError: image file is truncated"), named
    results = [json.loads(line) for line in (out / "final" / "cot" / "results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in results] == [2, 3, 4, 5, 6]
