"""Installability: tested dependency ranges that match CI's pinned constraints, a core install without TensorFlow
or torch, and a `make help` that lists every target."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST_MOVING = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")
requirements = pytest.importorskip("packaging.requirements")
utils = pytest.importorskip("packaging.utils")


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, str]:
    lines = (REPO / ".ci" / "constraints.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_every_dependency_is_a_range_whose_lower_bound_ci_pins():
    pinned = pins()
    direct = project()["dependencies"] + [r for extra in project()["optional-dependencies"].values() for r in extra]
    for text in direct:
        req = requirements.Requirement(text)
        name = utils.canonicalize_name(req.name)
        lower = [s.version for s in req.specifier if s.operator == ">="]
        assert lower and not [s for s in req.specifier if s.operator == "=="], f"{text}: not a range with a lower bound"
        assert name in pinned, f"{name} is not pinned in .ci/constraints.txt"
        assert pinned[name].split("+")[0] == lower[0], f"{text}: CI pins {pinned[name]}"
        if name in FAST_MOVING:
            upper = [s.version for s in req.specifier if s.operator == "<"]
            major, minor = lower[0].split(".")[:2]
            assert upper == [f"{major}.{int(minor) + 1}"], f"{text}: cap it below the next minor release"


def test_core_dependencies_pull_no_tensorflow_or_torch():
    """The installed metadata of the core requirements, followed transitively without extras."""
    todo = [requirements.Requirement(r) for r in project()["dependencies"]]
    names = {"safetensors", "tokenizers"} & {utils.canonicalize_name(r.name) for r in todo}
    assert names == {"safetensors", "tokenizers"}  # import-hf works from a default install
    seen = set()
    while todo:
        req = todo.pop()
        name = utils.canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [requirements.Requirement(r) for r in metadata.requires(req.name) or []]
        except metadata.PackageNotFoundError:
            continue
    assert not {n for n in seen if n.startswith(("tensorflow-cpu", "tensorflow-intel", "torch", "keras"))
                or n in ("tensorflow", "tf-nightly")}, sorted(seen)


def test_ci_installs_with_the_constraints():
    assert re.search(r"pip install .*-c \.ci/constraints\.txt", (REPO / ".ci" / "run").read_text())


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_help_lists_every_target():
    from experiments.ablations import GRIDS

    makefile = (REPO / "Makefile").read_text()
    targets = {m for m in re.findall(r"^([a-z][a-z-]*):", makefile, re.M)}
    out = subprocess.run(["make", "-s", "-C", str(REPO), "help"], capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert targets - {"help"} <= listed, targets - listed
    assert {f"ablate-{grid}" for grid in GRIDS} <= listed
    assert {"notebooks", "import-hf", "ablate-all"} <= listed
