"""The import rule: the evaluator stands on r1v_common and needs nothing of the trainer, so its image
(docker/evaluator.Dockerfile) carries neither r1v_job nor the `train` extra."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAINER_ONLY = ("r1v_job", "trl", "datasets", "deepspeed")

# Every module of both packages, imported in a fresh interpreter: what got loaded is what the
# evaluator's image must hold.
_PROBE = """
import importlib, json, pkgutil, sys
for package in ("r1v_common", "eval_job"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        if info.name != "eval_job.__main__":
            importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(probe: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _trainer_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in TRAINER_ONLY]


def test_eval_job_and_r1v_common_import_nothing_of_the_trainer():
    loaded = _loaded(_PROBE)
    assert "eval_job.cli" in loaded and "eval_job.gate" in loaded and "r1v_common.jobs" in loaded
    assert _trainer_modules(loaded) == []


def test_the_import_check_sees_a_trainer_module():
    # The same probe, given one import of the trainer, reports it: the check above can fail.
    assert "r1v_job.checkpoints" in _trainer_modules(_loaded("import r1v_job.checkpoints\n" + _PROBE))


def test_the_evaluator_image_copies_no_trainer_code_and_installs_no_train_extra():
    text = (REPO / "docker" / "evaluator.Dockerfile").read_text()
    copied = {src for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M) for src in line.split()[:-1]}
    assert {"r1v_common", "eval_job"} <= copied and "r1v_job" not in copied
    # The lock the image installs from (compiled from the base, eval and k8s pins: test_docker.py).
    lock = (REPO / "docker" / "evaluator.lock").read_text()
    assert re.search(r"(?m)^torch==", lock)
    assert not re.search(r"(?m)^(trl|datasets|deepspeed|accelerate)==", lock)
