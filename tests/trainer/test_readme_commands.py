"""README's Train then Evaluate commands, as written, on a fresh checkout (nothing under runs/)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _readme_command(section: str, start: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(rf"^## {section}\n.*?```bash\n(.*?)```", text, re.S | re.M).group(1)
    line = next(line for line in block.splitlines() if line.startswith(start))
    argv = shlex.split(line.split("  #")[0])
    assert argv[0] == ".venv/bin/python"
    return [sys.executable, *argv[1:]]


@pytest.mark.slow
def test_readme_train_then_evaluate_work_as_written(tmp_path):
    import safetensors.torch
    import torch

    shutil.copytree(REPO / "recipes", tmp_path / "recipes")  # a fresh clone: recipes, no runs/
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    train = _readme_command("Train", ".venv/bin/python -m r1v_job --config recipes/smoke_cpu.yaml")
    result = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = tmp_path / "runs" / "smoke"
    assert json.loads((runs / "grpo" / "training_complete.json").read_text())["global_step"] == 6
    # The smoke recipe's rewards give the tiny random model a signal: its weights moved.
    base = safetensors.torch.load_file(str(runs / "tiny-qwen2vl" / "model.safetensors"))
    trained = safetensors.torch.load_file(str(runs / "grpo" / "model.safetensors"))
    assert sum(not torch.equal(base[k], trained[k]) for k in base) == len(base)

    evaluate = _readme_command("Evaluate", ".venv/bin/python -m eval_job")
    result = subprocess.run(evaluate, cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((runs / "eval" / "final" / "cot" / "summary.json").read_text())
    assert summary["evaluated"] == 8 and summary["step"] == 6
