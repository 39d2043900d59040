"""`make gpu-wheels`: the wheels the lent GPU machine lacks, downloaded into the folder its call carries.

    python -m bench.gpu_wheels [--dest .whl]

The machine has no registry: what bench/gpu.sh needs beyond the machine's own packages travels with
the working tree as wheels (bench/gpu_wheels.txt names them), and the whole tree with them must stay
under the device call's 64 MiB. Python 3.12 manylinux x86_64 wheels, one version each: pyproject.toml's
pin, else the version this venv installed from pyproject.toml. Wheels of other versions in the folder
are removed, since two versions of one package stop the install there.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_LIST = Path(__file__).with_name("gpu_wheels.txt")
DEVICE_PACKAGES = Path(__file__).with_name("device_packages.txt")
CARRY_LIMIT = 64 * 2**20  # the device call's working tree, carried folders included
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> dict[str, str | None]:
    """`name [version]` lines of a package list (comments and blank lines skipped), by normalized name."""
    packages = {}
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            packages[normalize(fields[0])] = fields[1] if len(fields) > 1 else None
    return packages


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        name, sep, pinned = requirement.partition("==")
        if sep:
            pins[normalize(name)] = pinned.split(";")[0].strip()
    return pins


def wanted() -> dict[str, str]:
    """Each listed package's version: the pin, else the installed one."""
    pins, versions = pyproject_pins(), {}
    for name in listed(WHEEL_LIST):
        if name in pins:
            versions[name] = pins[name]
            continue
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            sys.exit(f"{WHEEL_LIST}: {name} is neither pinned in pyproject.toml nor installed here; "
                     "run `make setup` first")
    return versions


def wheel_name(path: Path) -> tuple[str, str]:
    name, wheel_version = path.name.split("-")[:2]
    return normalize(name), wheel_version


def travelling_bytes(dest: Path) -> int:
    """What a device call sends besides `dest`: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    skip = dest.resolve()
    return sum(p.stat().st_size for p in (ROOT / f for f in files if f)
               if p.is_file() and skip not in p.resolve().parents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_wheels", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="folder the device call carries")
    args = parser.parse_args(argv)
    versions = wanted()
    args.dest.mkdir(parents=True, exist_ok=True)
    for wheel in args.dest.glob("*.whl"):
        name, wheel_version = wheel_name(wheel)
        if versions.get(name) != wheel_version:
            wheel.unlink()  # another version or a package no longer listed
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "--dest", str(args.dest),
                    *(f"{name}=={pinned}" for name, pinned in versions.items())], check=True)
    wheels = sorted(args.dest.glob("*.whl"))
    missing = set(versions) - {wheel_name(w)[0] for w in wheels}
    if missing:
        sys.exit(f"{args.dest}: no wheel for {', '.join(sorted(missing))}")
    carried, tree = sum(w.stat().st_size for w in wheels), travelling_bytes(args.dest)
    print(f"{len(wheels)} wheels, {carried / 2**20:.1f} MiB in {args.dest}; with the working tree "
          f"({tree / 2**20:.1f} MiB) {(carried + tree) / 2**20:.1f} MiB of the device call's 64 MiB")
    if carried + tree > CARRY_LIMIT:
        print(f"{args.dest}: {(carried + tree) / 2**20:.1f} MiB is over the device call's 64 MiB carry limit",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
