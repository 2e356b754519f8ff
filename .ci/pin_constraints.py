"""Write .ci/constraints.txt: every installed package that `jaxformer[dev,hf,tf]` pulls in (pyproject.toml's
requirements followed through the installed packages' metadata), pinned to its installed version.

Run it in the environment the tests passed in, after upgrading: `python .ci/pin_constraints.py`. The lower
bounds in pyproject.toml are the pinned versions of the direct dependencies.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "hf", "tf")
HEADER = """\
# Every package that jaxformer[dev,hf,tf] installs, pinned to the version the test suite passed with.
# .ci/run installs with `-c .ci/constraints.txt` so CI runs are reproducible; pyproject.toml's lower bounds are
# these versions. Regenerate with `python .ci/pin_constraints.py` after upgrading and re-running the tests.
"""


def closure(roots: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    todo = [(Requirement(r), "") for r in roots]
    seen = set()
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            print(f"not installed: {req}", file=sys.stderr)
            continue
        pins[key[0]] = dist.version
        for child in dist.requires or []:
            todo += [(Requirement(child), e) for e in ("", *req.extras)]
    return pins


def main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = project["dependencies"] + [r for e in EXTRAS for r in project["optional-dependencies"][e]]
    pins = closure(roots)
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (ROOT / ".ci" / "constraints.txt").write_text(HEADER + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
