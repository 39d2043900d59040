"""Print the pinned requirements of pyproject.toml's dependencies and extras, one per line.

The images install from these lines so that pyproject.toml stays the only place naming a version:
    python3 docker/pins.py base train    # [project.dependencies] + the train extra
    python3 docker/pins.py gpu           # the gpu extra alone
An extra pyproject.toml does not define is reported on stderr and skipped (so an image build can
ask for an optional extra such as "build" before it exists).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def pins(pyproject: Path, groups: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    lines: list[str] = []
    for group in groups:
        if group == "base":
            found = project.get("dependencies", [])
        elif group in extras:
            found = extras[group]
        else:
            print(f"pins.py: {pyproject} has no extra {group!r}; skipped", file=sys.stderr)
            continue
        lines += [req for req in found if req not in lines]
    unpinned = [req for req in lines if "==" not in req]
    if unpinned:
        raise SystemExit(f"pins.py: not pinned with ==: {unpinned}")
    return lines


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    print("\n".join(pins(root / "pyproject.toml", sys.argv[1:])))
