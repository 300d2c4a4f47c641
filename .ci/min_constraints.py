"""Pins for the lower-bounds check (.ci/min-versions).

`python min_constraints.py pyproject.toml [EXTRA ...]` prints one `name==X` line
for every `name>=X` requirement of the project's dependencies (and of the named
extras), for `pip install -c`. `python min_constraints.py --check FILE` fails
unless the installed version of every pinned package is exactly its pin.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def pins(pyproject: str, extras: list[str]) -> dict[str, str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    out = {}
    for req in requirements:
        m = REQUIREMENT.match(req.split(";")[0].split("#")[0])
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


def _padded(version: str) -> tuple:
    """'9.0' and '9.0.0' are the same release (as pip's == says)."""
    parts = [int(p) if p.isdigit() else p for p in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main(argv: list[str]) -> int:
    if argv[0] == "--check":
        wrong = []
        for line in open(argv[1]):
            name, _, version = line.strip().partition("==")
            if name and _padded(metadata.version(name)) != _padded(version):
                wrong.append(f"{name}: installed {metadata.version(name)}, declared minimum {version}")
        print("\n".join(wrong) or "every declared minimum is installed")
        return 1 if wrong else 0
    for name, version in pins(argv[0], argv[1:]).items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
