"""The two Dockerfiles: hadolint-clean, pinned CUDA bases (by digest when given), non-root, the
project's entry points, and every Python distribution from a lock file with hashes compiled from
pyproject.toml (nothing is built here: no Docker engine, no GPU)."""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"trainer": REPO / "docker" / "trainer.Dockerfile", "evaluator": REPO / "docker" / "evaluator.Dockerfile"}
HADOLINT = Path(sys.executable).with_name("hadolint")
ENTRYPOINTS = {"trainer": '["torchrun", "-m", "r1v_job"]', "evaluator": '["python", "-m", "eval_job"]'}

sys.path.insert(0, str(REPO / "docker"))
import pins  # noqa: E402  (docker/pins.py: the helper the Dockerfiles run)


def hadolint(path: Path) -> subprocess.CompletedProcess:
    # Threshold "info": style findings fail too, not only warnings and errors.
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_clean(image):
    result = hadolint(DOCKERFILES[image])
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_hadolint_gate_fails_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3006" in result.stdout


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.M))


def _expand(word: str, args: dict[str, str]) -> str:
    """Docker's ARG expansion in FROM: ${NAME} and ${NAME:+word} (word when NAME is set and not empty)."""
    word = re.sub(r"\$\{(\w+):\+@\$\{(\w+)\}\}", lambda m: f"@{args[m.group(2)]}" if args[m.group(1)] else "", word)
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], word)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_cuda_base_is_pinned_and_the_image_runs_as_non_root(image):
    text = DOCKERFILES[image].read_text()
    args = _args(text)
    bases = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(bases) >= 2  # multi-stage: the runtime stage leaves the build tools behind
    digest = "sha256:" + "ab" * 32
    for base in bases:
        resolved = _expand(base, args)
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-[a-z]+(-[a-z]+)?-ubuntu\d\d\.\d\d", resolved), resolved
        # Each base takes a digest build arg (empty by default: no digest is recorded that was not verified).
        (name,) = re.findall(r"\$\{(CUDA_\w+_DIGEST):\+", base)
        assert args[name] == ""
        assert _expand(base, {**args, name: digest}) == f"{resolved}@{digest}"
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "1000:1000"  # numeric: runAsNonRoot can verify it
    assert re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1) == ENTRYPOINTS[image]
    for label in ("title", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in text


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_python_version_is_named_outside_pyproject(image):
    text = DOCKERFILES[image].read_text()
    assert "==" not in text
    installs = re.findall(r"pip install[^\n]*", text)
    # Every distribution from a lock, checked by hash; then the project itself, without dependencies.
    assert installs and all(re.search(r"--require-hashes (--no-build-isolation )?-r [\w-]+\.lock$", line)
                            or line.rstrip().endswith("--no-deps .") for line in installs), installs


def _installed_locks(text: str) -> list[str]:
    return re.findall(r"--require-hashes (?:--no-build-isolation )?-r ([\w-]+\.lock)", text)


def test_images_install_the_extras_the_issue_names():
    trainer, evaluator = (DOCKERFILES[i].read_text() for i in ("trainer", "evaluator"))
    assert _installed_locks(trainer) == ["trainer.lock", "trainer-gpu.lock"]
    assert _installed_locks(evaluator) == ["evaluator.lock"]
    assert pins.LOCKS["trainer.lock"][0] == ["base", "train", "build"]
    assert pins.LOCKS["trainer-gpu.lock"] == (["base", "gpu"], "trainer.lock")
    assert pins.LOCKS["evaluator.lock"] == (["base", "eval", "k8s"], None)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"train", "gpu", "eval", "k8s"} <= set(extras)
    gpu = {req.split("==")[0] for req in extras["gpu"]}
    assert {"deepspeed", "flash-attn"} <= gpu


def test_pins_reads_pyproject_and_refuses_unpinned(tmp_path):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert (pins.pins(REPO / "pyproject.toml", ["base", "gpu"])
            == project["dependencies"] + project["optional-dependencies"]["gpu"])
    loose = tmp_path / "pyproject.toml"
    loose.write_text('[project]\nname="x"\ndependencies=["torch>=2"]\n')
    with pytest.raises(SystemExit, match="not pinned"):
        pins.pins(loose, ["base"])


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pat in patterns:
        negate, pat = pat.startswith("!"), pat.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_dockerfiles_copy_and_drops_the_rest():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = set()
    for path in DOCKERFILES.values():
        for line in re.findall(r"^COPY (?!--from)(.+)$", path.read_text(), re.M):
            sources.update(line.split()[:-1])
    assert sources >= {"pyproject.toml", "docker/trainer.lock", "docker/trainer-gpu.lock", "docker/evaluator.lock",
                       "r1v_common", "r1v_job", "eval_job", "r1v_submit", "charts", "recipes"}
    for src in sources:
        assert not _ignored(f"{src}/x.py" if "." not in src else src, patterns), src
    for junk in (".venv/bin/python", ".git/HEAD", "runs/x/checkpoint-1/model.safetensors", "r1v_job/__pycache__/a.pyc"):
        assert _ignored(junk, patterns), junk


def test_chart_app_version_is_the_package_version():
    # Image tags default to the chart's appVersion, and `make images` tags with pyproject's version.
    chart = yaml.safe_load((REPO / "charts" / "r1v" / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version


# --- lock files ----------------------------------------------------------------------------------

def test_lock_files_are_up_to_date_with_pyproject(tmp_path):
    assert pins.lock_problems(REPO / "pyproject.toml", REPO / "docker") == []
    # The check can fail: a pin moved without `make lock`, and a distribution without a hash.
    moved = tmp_path / "pyproject.toml"
    moved.write_text((REPO / "pyproject.toml").read_text().replace('"trl==1.16.0"', '"trl==1.17.0"'))
    locks = tmp_path / "locks"
    locks.mkdir()
    for name in pins.LOCKS:
        (locks / name).write_text((REPO / "docker" / name).read_text())
    problems = pins.lock_problems(moved, locks)
    assert any("trainer.lock: compiled from other pins" in p for p in problems)
    assert any("trainer.lock: trl is 1.16.0, pyproject.toml pins 1.17.0" in p for p in problems)
    assert not any("evaluator.lock" in p for p in problems)  # trl is not the evaluator's
    text = (locks / "evaluator.lock").read_text()
    (locks / "evaluator.lock").write_text(re.sub(r"(?m)^(pyyaml==\S+) \\\n(    --hash=\S+ \\\n)*    --hash=\S+\n",
                                                 r"\1\n", text))
    assert pins.lock_problems(REPO / "pyproject.toml", locks) == [f"{locks}/evaluator.lock: no hash for pyyaml==6.0.4"]


def test_regenerating_the_lock_files_changes_nothing(tmp_path):
    """`make lock` again (uv reads PyPI; skipped where PyPI cannot be reached) writes the same files."""
    try:
        with urllib.request.urlopen("https://pypi.org/simple/uv/", timeout=10):
            pass
    except OSError as exc:
        pytest.skip(f"PyPI not reachable ({exc}): the offline part is test_lock_files_are_up_to_date_with_pyproject")
    for name in pins.LOCKS:  # in order: trainer-gpu.lock is constrained to trainer.lock in the same folder
        pins.compile_lock(REPO / "pyproject.toml", name, tmp_path)
        assert (tmp_path / name).read_text() == (REPO / "docker" / name).read_text(), name
