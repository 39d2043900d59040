"""The wheels carried to the lent GPU machine cover what the GPU scripts import that the machine lacks.

What the scripts import is read off a real import of their modules (and one reward call, which pulls in
math-verify's parser), not from a hand list: the distributions the project's own modules import, and
those the carried packages require and that the import loaded, must be on the machine
(bench/device_packages.txt) or carried (bench/gpu_wheels.txt). (The machine's own packages bring their
own requirements: its huggingface-hub 1.33 is not this venv's 2.x and imports other things.) A carried
wheel's requirements on the machine's packages must hold for the versions recorded there, and what
transformers checks at import must be carried unless the machine's version is known to pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench.gpu_wheels import DEVICE_PACKAGES, WHEEL_LIST, listed, normalize, pyproject_pins, wanted

ROOT = Path(__file__).resolve().parents[2]
# The machine: Python 3.12 on x86-64 Linux.
MARKERS = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "os_name": "posix", "extra": ""}

_IMPORTS = r"""
import json, sys
from importlib.metadata import packages_distributions
import bench.__main__, bench.gpu_plan, bench.harness, bench.models, r1v_job.grpo, r1v_job.tiny
from r1v_job import rewards
rewards.accuracy_reward([[{"content": "<answer>3</answer>"}]], solution=["<answer>3</answer>"])
owners = packages_distributions()
root = sys.argv[1]
loaded, direct = set(), set()
def ours(path):  # under the checkout, but not an installed package (the venv may live in the checkout)
    return path.startswith(root) and "site-packages" not in path
for name, module in list(sys.modules.items()):
    top = name.partition(".")[0]
    where = getattr(module, "__file__", None) or ""
    if ours(where):  # the project's own module: what it imports at its top level
        for value in vars(module).values():
            try:  # a lazy module (torch.backends.cuda) raises on any attribute without a GPU
                owner = getattr(value, "__module__", None) if not hasattr(value, "__spec__") else value.__name__
            except Exception:
                continue
            owner = owner.partition(".")[0] if isinstance(owner, str) else None
            own = ours(getattr(sys.modules.get(owner), "__file__", None) or "")
            if owner in owners and not own:
                direct.update(owners[owner])
    elif top in owners:
        loaded.update(owners[top])
print(json.dumps({"loaded": sorted(loaded), "direct": sorted(direct)}))
"""


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    """Distributions the GPU scripts' modules load in all ("loaded") and import themselves ("direct")."""
    out = subprocess.run([sys.executable, "-c", _IMPORTS, str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    found = json.loads(out.stdout.splitlines()[-1])
    return {key: {normalize(name) for name in names} for key, names in found.items()}


def requirements(name: str) -> list[Requirement]:
    """`name`'s requirements on the machine (Python 3.12, Linux x86-64, no extras)."""
    found = [Requirement(line) for line in distribution(name).requires or []]
    return [r for r in found if r.marker is None or r.marker.evaluate(MARKERS)]


def uncovered(imports: dict, device: dict, carried: set[str]) -> list[str]:
    """Distributions the scripts need on the machine that neither it nor the wheels provide: the project's
    direct imports, and what a package that is not the machine's own requires, where the import loaded it."""
    needed, todo = set(), list(imports["direct"])
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in carried or name not in device:
            todo += [n for n in map(normalize, (r.name for r in requirements(name))) if n in imports["loaded"]]
    return sorted(name for name in needed if name not in device and name not in carried)


def unmet(carried: set[str], device: dict) -> list[str]:
    """Carried wheels' requirements that a recorded machine version does not meet (the machine's copy is
    what the wheel will import unless that package is carried too)."""
    problems = []
    for name in sorted(carried):
        for requirement in requirements(name):
            target = normalize(requirement.name)
            on_device = device.get(target)
            if target not in carried and on_device and not requirement.specifier.contains(on_device, prereleases=True):
                problems.append(f"{name} needs {requirement}, the machine has {target} {on_device}")
    return problems


def test_the_wheels_cover_every_package_the_gpu_scripts_import_that_the_machine_lacks(imports):
    device, carried = listed(DEVICE_PACKAGES), set(listed(WHEEL_LIST))
    assert {"torch", "transformers", "trl", "datasets", "math-verify"} <= imports["direct"]
    assert {"dill", "multiprocess", "latex2sympy2-extended", "antlr4-python3-runtime"} <= imports["loaded"]
    assert uncovered(imports, device, carried) == []
    # The check fails where a wheel is missing: the machine has no dill of its own (datasets needs it).
    assert uncovered(imports, device, carried - {"dill"}) == ["dill"]
    assert not carried - imports["loaded"]  # nothing carried that the scripts do not load


def test_carried_wheels_fit_the_machines_recorded_versions():
    device, carried = listed(DEVICE_PACKAGES), set(listed(WHEEL_LIST))
    assert unmet(carried, device) == []
    # Carrying transformers (the machine's is 5.17) is what meets trl's and datasets' needs on it.
    assert unmet({"trl", "datasets"}, {**device, "transformers": "4.50.0"})


def test_the_project_imports_its_pinned_versions_there_but_the_machines_torch(imports):
    """A package the project imports itself runs at pyproject's pin there: carried unless the machine has
    that very version. torch and torchvision are the machine's own CUDA build (2.11): too big to carry."""
    device, carried, pins = listed(DEVICE_PACKAGES), set(listed(WHEEL_LIST)), pyproject_pins()
    off_pin = sorted(name for name in imports["direct"] & set(pins) - {"torch", "torchvision"}
                     if name not in carried and device.get(name) != pins[name])
    assert off_pin == []
    assert device["transformers"] != pins["transformers"] and "transformers" in carried


def test_what_transformers_checks_at_import_is_carried_or_known_to_pass():
    from transformers.dependency_versions_check import pkgs_to_check_at_runtime
    from transformers.dependency_versions_table import deps

    device, carried = listed(DEVICE_PACKAGES), set(listed(WHEEL_LIST))
    for package in pkgs_to_check_at_runtime:
        name = normalize(package)
        if name in carried:
            continue
        assert device.get(name), f"{name}: transformers checks its version at import; the machine's is unknown"
        assert Requirement(deps[package]).specifier.contains(device[name]), name


def test_carried_versions_are_the_pins_or_what_the_tests_ran():
    versions, pins = wanted(), pyproject_pins()
    assert versions["trl"] == pins["trl"] and versions["transformers"] == pins["transformers"]
    for name, carried_version in versions.items():
        assert distribution(name).version == carried_version, name  # the metadata checked above is this version
