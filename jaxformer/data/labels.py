"""The label map of a fine-tuning run: class names <-> class ids, fixed when the run is created.

    labels = LabelMap.from_examples(train_labels, source)     # at creation: integers as they are, names sorted
    labels.save(out)                                          # <out>/labels.json (atomic)
    labels = LabelMap.load(out)                               # every later read: resume, valid, test, predict
    ids = labels.ids(raw_labels)                              # int64 [N]; an unseen label is one sentence

A file is always mapped through the run's map, never numbered on its own: a test file that lacks a class keeps
every other class's id, and a label the run never trained on is refused instead of silently renumbered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxformer import atomic
from jaxformer.errors import UserError

LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class RawLabel:
    """A label as a file wrote it: an integer class id or a class name, and where it was (`path:line`)."""

    value: int | str
    where: str


@dataclass(frozen=True)
class LabelMap:
    """`names[i]` is the name of class id i. `integer`: the training labels were the integers 0..n-1 (names are
    their decimal strings, and files must give integers); otherwise files give names."""

    names: tuple[str, ...]
    integer: bool

    @property
    def n_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_examples(cls, labels: list[RawLabel], source: str) -> LabelMap:
        """The map a new run takes from its training labels: integers must be 0..n-1, each present (n >= 2);
        class names are numbered in sorted order. Mixing both kinds is refused."""
        ints = [lab for lab in labels if isinstance(lab.value, int)]
        names = [lab for lab in labels if not isinstance(lab.value, int)]
        if ints and names:  # a typo'd id or a stray header line, not a class of its own
            raise UserError(f"{source} mixes integer labels ({ints[0].where}: {ints[0].value}) with class names "
                            f"({names[0].where}: {names[0].value!r}): use one kind of label throughout.")
        if names:
            found = sorted({str(lab.value) for lab in names})
            if len(found) < 2:
                raise UserError(f"Task {source} has only the class {found[0]!r} in its training labels: "
                                f"classification needs at least 2 classes.")
            return cls(tuple(found), integer=False)
        present = sorted({int(lab.value) for lab in ints})
        n = present[-1] + 1 if present else 0
        if len(present) < 2 or present[0] != 0 or len(present) != n:
            raise UserError(f"Task {source} has training labels {present[:10]}: classification needs the integers "
                            f"0..n-1 with n >= 2, each present in the training split; renumber the labels.")
        return cls(tuple(str(i) for i in range(n)), integer=True)

    def ids(self, labels: list[RawLabel]) -> np.ndarray:
        """int64 class ids of `labels` under this map (a file that lacks some classes keeps the others' ids)."""
        index = {name: i for i, name in enumerate(self.names)}
        out = np.empty(len(labels), np.int64)
        for row, lab in enumerate(labels):
            key = str(lab.value) if isinstance(lab.value, int) == self.integer else None
            if key not in index:
                raise UserError(f"{lab.where} has the label {lab.value!r}, which is not one of the run's classes "
                                f"({self.describe()}): fix that row, or fine-tune a new run that has this class.")
            out[row] = index[key]
        return out

    def describe(self, limit: int = 8) -> str:
        shown = ", ".join(self.names[:limit]) + (f", ... ({self.n_classes} in all)" if self.n_classes > limit else "")
        return f"the integers 0..{self.n_classes - 1}" if self.integer else shown

    # ------------------------------------------------------------------------------------------ run directory

    def save(self, workdir: str | Path) -> None:
        atomic.write_text(Path(workdir) / LABELS_FILE,
                          json.dumps({"names": list(self.names), "integer": self.integer}) + "\n")

    @classmethod
    def load(cls, workdir: str | Path) -> LabelMap | None:
        """The run's saved map; None when the run has none (made before label maps were saved)."""
        path = Path(workdir) / LABELS_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(tuple(str(n) for n in data["names"]), integer=bool(data["integer"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path} is not a valid label map ({err}): restore it from the run's backup.") from None
