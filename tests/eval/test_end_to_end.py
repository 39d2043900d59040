"""End to end on the tiny model and a synthetic SuperCLEVR-format split, pushing to a real Pushgateway."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eval_job import cli
from eval_job.generate import Generator
from r1v_common.prompts import EVAL_PROMPTS

REPO = Path(__file__).resolve().parents[2]
ROW_KEYS = {"image", "question", "ground_truth", "model_output", "extracted_answer", "correct"}


def test_python_m_eval_job_writes_results_and_pushes_them(tiny_model, questions, pushgateway, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "eval_job", "--model", str(tiny_model), "--data", str(questions), "--out", str(out),
         "--prompt", "cot", "--prompt", "direct", "--batch-size", "4", "--max-new-tokens", "16",
         "--pushgateway", pushgateway.url, "--run", "e2e"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    truths = [json.loads(line)["ground_truth"] for line in questions.read_text().splitlines()]
    for prompt in ("cot", "direct"):
        folder = out / "final" / prompt
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        assert [r["ground_truth"] for r in rows] == truths
        assert all(ROW_KEYS <= r.keys() for r in rows)
        assert all(r["correct"] == (r["extracted_answer"] == r["ground_truth"]) for r in rows)
        s = json.loads((folder / "summary.json").read_text())
        assert (s["prompt"], s["checkpoint"], s["step"], s["evaluated"], s["skipped"]) == (prompt, "final", 0, 6, 0)
        assert s["accuracy"] == sum(r["correct"] for r in rows) / 6
        assert s["parse_failures"] == sum(r["extracted_answer"] is None for r in rows)
        assert s["duration_seconds"] > 0 and s["samples_per_second"] == pytest.approx(6 / s["duration_seconds"])
        assert s["settings"]["prompt_template"] == EVAL_PROMPTS[prompt]

        group = dict(job="r1v-eval", run="e2e", checkpoint="final")
        series = dict(group, benchmark="superclevr", prompt=prompt)
        assert pushgateway.value("r1v_eval_accuracy_ratio", **series) == s["accuracy"]
        assert pushgateway.value("r1v_eval_questions_evaluated", **series) == 6
        assert pushgateway.value("r1v_eval_questions_skipped", **series) == 0
        assert pushgateway.value("r1v_eval_parse_failures", **series) == s["parse_failures"]
        assert pushgateway.value("r1v_eval_duration_seconds", **series) == pytest.approx(s["duration_seconds"])
        assert pushgateway.value("r1v_eval_samples_per_second", **series) == pytest.approx(s["samples_per_second"])
    assert pushgateway.value("r1v_eval_checkpoint_step", **group) == 0
    last = max(json.loads((out / "final" / p / "summary.json").read_text())["finished_at_unix"]
               for p in ("cot", "direct"))
    assert pushgateway.value("r1v_eval_last_success_timestamp_seconds", **group) == pytest.approx(last)
    index = json.loads((out / "scores.json").read_text())
    assert [(r["checkpoint"], r["prompt"]) for r in index] == [("final", "cot"), ("final", "direct")]
    assert "final step      0 superclevr/cot" in proc.stdout


class KnownAnswers:
    """Stands in for the model: answers from a table keyed by image path."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, images, questions, template, max_new_tokens):
        return [self.answers[Path(p).name] for p in images]


def test_pushed_accuracy_is_the_share_of_correct_answers(questions, tiny_model, pushgateway, tmp_path, monkeypatch):
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    outputs = [f"<think>x</think><answer>{r['ground_truth']}</answer>" for r in rows[:4]]
    outputs += [f"<answer>{rows[4]['ground_truth'] + 1}</answer>", "I think 3"]  # wrong, then unparseable
    answers = {Path(r["image_path"]).name: o for r, o in zip(rows, outputs)}
    monkeypatch.setattr("eval_job.generate.load_generator", lambda *a, **k: KnownAnswers(answers))
    out = tmp_path / "out"
    rc = cli.main(["--model", str(tiny_model), "--data", str(questions), "--out", str(out),
                   "--pushgateway", pushgateway.url, "--run", "known", "--batch-size", "4"])
    assert rc == 0
    s = json.loads((out / "final" / "cot" / "summary.json").read_text())
    assert (s["correct"], s["evaluated"], s["parse_failures"]) == (4, 6, 1)
    labels = dict(run="known", checkpoint="final", benchmark="superclevr", prompt="cot")
    assert pushgateway.value("r1v_eval_accuracy_ratio", **labels) == pytest.approx(4 / 6)
    assert pushgateway.value("r1v_eval_parse_failures", **labels) == 1
    results = [json.loads(line) for line in (out / "final" / "cot" / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in results] == [True] * 4 + [False] * 2
    assert [r["extracted_answer"] for r in results][4:] == [rows[4]["ground_truth"] + 1, None]


def test_left_padded_batches_generate_what_single_questions_do(tiny_model, questions, monkeypatch):
    # fp32 on CPU everywhere: with a random tiny model, bf16 rounding alone could flip a greedy token.
    monkeypatch.setattr("eval_job.generate.runtime", lambda: ("cpu", torch.float32, "sdpa"))
    generator = Generator(tiny_model)
    image = questions.parent / "images" / "superclevr_000000.png"
    short, long = "How many?", "How many different items are there in the image, counting every one?"
    batched = generator.generate([image, image], [short, long], EVAL_PROMPTS["cot"], 12)
    alone = [generator.generate([image], [q], EVAL_PROMPTS["cot"], 12)[0] for q in (short, long)]
    assert batched == alone


FORBIDDEN = ("trl", "datasets", "deepspeed", "kubernetes", "kubeflow")


def test_evaluation_imports_no_training_or_kubernetes_packages(tiny_model, questions, tmp_path):
    # Run in a fresh interpreter: the evaluator image has none of these packages.
    script = (
        "import sys, json\n"
        "from eval_job.cli import main\n"
        f"rc = main(['--model', {str(tiny_model)!r}, '--data', {str(questions)!r}, '--out', {str(tmp_path)!r},"
        " '--max-new-tokens', '2'])\n"
        f"print(json.dumps([rc, sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r}))]))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [0, []]


def test_sources_import_kubernetes_only_inside_wait_and_gate_functions():
    for path in sorted((REPO / "eval_job").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            roots = {n.split(".")[0] for n in names}
            assert not roots & {"trl", "datasets", "deepspeed"}, f"{path.name}:{node.lineno} imports {names}"
            if roots & {"kubernetes", "kubeflow"}:
                assert path.name in ("wait.py", "gate.py") and node.col_offset > 0, \
                    f"{path.name}:{node.lineno}: kubernetes/kubeflow may be imported only inside wait.py's " \
                    "and gate.py's functions"
