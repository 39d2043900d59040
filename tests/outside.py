"""Test fixtures from outside the repository, for a clone that has no ../shared.

Each fixture is read from ../shared (the project's CI and developers have it) when it exists there,
else fetched once from its public source, pinned by tag or commit, into the git-ignored
.cache/outside/, else the test that needs it skips with a reason naming the file and both places
looked. R1V_NO_FETCH=1 turns fetching off (an offline run skips at once).
"""

from __future__ import annotations

import functools
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHE = REPO / ".cache" / "outside"

_TRAINING_OPERATOR = "https://raw.githubusercontent.com/kubeflow/training-operator/v1.9.0"
_PROMETHEUS_OPERATOR = "https://raw.githubusercontent.com/prometheus-operator/prometheus-operator/v0.93.1"
_TRAINER = "https://raw.githubusercontent.com/kubeflow/trainer/v2.3.0"
_R1V = "https://raw.githubusercontent.com/Deep-Agent/R1-V/bbbbe3d"


@dataclass(frozen=True)
class Fixture:
    shared: str  # path under ../shared, and under .cache/outside once fetched
    url: str  # the public source, pinned by tag or commit

    def describe(self) -> str:
        return f"{self.shared} (from {self.url})"


FIXTURES = {
    "pytorchjob-crd": Fixture("crds/kubeflow.org_pytorchjobs.yaml",
                              f"{_TRAINING_OPERATOR}/manifests/base/crds/kubeflow.org_pytorchjobs.yaml"),
    **{f"{plural}-crd": Fixture(f"crds/monitoring.coreos.com_{plural}.yaml",
                                f"{_PROMETHEUS_OPERATOR}/example/prometheus-operator-crd/monitoring.coreos.com_{plural}.yaml")
       for plural in ("servicemonitors", "podmonitors", "prometheusrules")},
    **{f"{plural}-crd": Fixture(f"crds/kubeflow-trainer-v2.3.0/trainer.kubeflow.org_{plural}.yaml",
                                f"{_TRAINER}/manifests/base/crds/trainer.kubeflow.org_{plural}.yaml")
       for plural in ("trainjobs", "trainingruntimes", "clustertrainingruntimes")},
    # A Helm template in the Trainer's chart: the runtime most clusters install.
    "torch-distributed-runtime": Fixture("crds/kubeflow-trainer-v2.3.0/runtime-torch-distributed.yaml",
                                         f"{_TRAINER}/charts/kubeflow-trainer/templates/runtimes/torch-distributed.yaml"),
    **{f"r1v-log-{tag}": Fixture(f"peers/r1v/counting_results_superclevr_200_qwen2vl_2b_instruct{suffix}_legacy.json",
                                 f"{_R1V}/src/eval/logs/counting_results_superclevr_200_qwen2vl_2b_instruct{suffix}_legacy.json")
       for tag, suffix in (("base", ""), ("grpo100", "_grpo100"))},
    # R1-V's SuperCLEVR-200 question file, the chart's superclevr.questionsUrl (pinned to the same commit).
    "r1v-superclevr-questions": Fixture("peers/r1v/superclevr_test200_counting_problems.jsonl",
                                        f"{_R1V}/src/eval/prompts/superclevr_test200_counting_problems.jsonl"),
}


def _fetch(fixture: Fixture, dest: Path) -> str | None:
    """Downloads to dest (atomically); returns why it could not, or None."""
    if os.environ.get("R1V_NO_FETCH") == "1":
        return "fetching is off (R1V_NO_FETCH=1)"
    try:
        with urllib.request.urlopen(fixture.url, timeout=20) as response:
            data = response.read()
    except OSError as e:
        return f"fetching failed: {e}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return None


@functools.lru_cache(maxsize=None)
def locate(key: str) -> tuple[Path | None, str]:
    """(path, "") when the fixture is available, else (None, the reason). Tried once per session."""
    fixture = FIXTURES[key]
    for base in (SHARED, CACHE):
        if (base / fixture.shared).is_file():
            return base / fixture.shared, ""
    why = _fetch(fixture, CACHE / fixture.shared)
    if why is None:
        return CACHE / fixture.shared, ""
    return None, f"needs {fixture.describe()}: not in {SHARED} nor {CACHE}, and {why}"


def require(key: str) -> Path:
    """The fixture's path, or skip the calling test with the reason."""
    path, why = locate(key)
    if path is None:
        pytest.skip(why)
    return path
