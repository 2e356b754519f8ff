"""Named experiments: `experiments/<name>.py` files (dashes in the name are underscores in the file) that give a
preset, overrides, and in their docstring the command, the expected result and the measured one.

    jaxformer train --experiment shakespeare-char-cpu --workdir runs/shakespeare-char-cpu [--set KEY=VALUE ...]
    make shakespeare-char-cpu

An experiment file is data: its `PRESET = "..."` and `OVERRIDES = [...]` are read as literals (nothing in it is
run). `--set` values are applied after the experiment's overrides, so they win.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from pathlib import Path

from jaxformer import config as config_lib
from jaxformer.errors import UserError

# The repository's experiments/ folder, beside the package (an editable install or a checkout).
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


@dataclass(frozen=True)
class Experiment:
    name: str
    preset: str
    overrides: tuple[str, ...]
    doc: str
    path: Path

    @property
    def summary(self) -> str:
        return self.doc.strip().splitlines()[0] if self.doc.strip() else ""


def _read(path: Path) -> Experiment | None:
    """The experiment in `path`, or None when the file is not one (it assigns no PRESET)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("PRESET", "OVERRIDES"):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    if "PRESET" not in values:
        return None
    overrides = values.get("OVERRIDES", [])
    if not isinstance(values["PRESET"], str) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"{path}: PRESET must be a string and OVERRIDES a list of 'KEY=VALUE' strings")
    return Experiment(path.stem.replace("_", "-"), values["PRESET"], tuple(overrides), ast.get_docstring(tree) or "",
                      path)


def all_experiments(folder: Path = EXPERIMENTS_DIR) -> dict[str, Experiment]:
    found = (_read(path) for path in sorted(folder.glob("*.py")) if not path.name.startswith("_"))
    return {e.name: e for e in found if e is not None}


def get(name: str, folder: Path = EXPERIMENTS_DIR) -> Experiment:
    if not folder.is_dir():
        raise UserError(f"No experiments folder at {folder}: --experiment needs a checkout of the repository "
                        f"(pip install -e .); use --preset and --set instead.")
    known = all_experiments(folder)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of: {', '.join(known)}."
        raise UserError(f"Unknown experiment {name!r}: {hint}")
    return known[name]


def load_config(name: str, overrides: list[str], folder: Path = EXPERIMENTS_DIR) -> config_lib.Config:
    """The experiment's preset with its overrides, then `overrides` (the command line's --set) on top."""
    experiment = get(name, folder)
    return config_lib.load_config(experiment.preset, [*experiment.overrides, *overrides])
