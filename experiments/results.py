"""Experiment results as records: the key of a run, one JSON line per finished run, and mean ± std tables.

    key = run_key(cfg, extra={"eval": {...}})        # what decides a run's result, hashed
    append_record(Path("results/positions.jsonl"), record)
    records = read_records(Path("results/positions.jsonl"))
    print(markdown_table(summarize(records, ...), ...))

The key hashes the resolved config minus the keys that may change on resume (`jaxformer.rundir`): logging,
evaluation and checkpoint cadence, mesh, cache folder. Anything else (seed, steps, shapes, data source, ...) gives
another key, so a run made with other settings is never taken for this one, and two runs with one key are the
same experiment. What the config does not name is not in the key: the contents of the data files, and the code.

Appends are one `write` of one line under an exclusive `flock`, on a file opened with O_APPEND: processes of a
job array can append to one file at once and every line stays whole (local file systems and NFS with locking).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from jaxformer import config as config_lib
from jaxformer import rundir

KEY_LENGTH = 12  # hex digits of the sha256 kept in directory names and records (48 bits)


def result_settings(cfg: config_lib.Config) -> dict:
    """The flat settings that change a run's results: the resolved config minus `MAY_CHANGE_ON_RESUME`."""
    resolved = config_lib.resolve(cfg)
    return {k: v for k, v in sorted(rundir._flat(resolved).items())
            if not k.startswith(rundir.MAY_CHANGE_ON_RESUME)}


def run_key(cfg: config_lib.Config, *, extra: dict | None = None, without: Iterable[str] = ()) -> str:
    """A short hash of `result_settings(cfg)` plus `extra` (anything else that changes the record, e.g. how it
    is evaluated), minus the keys in `without` (e.g. `train.seed` for the key shared by a cell's seeds)."""
    settings = {k: v for k, v in result_settings(cfg).items() if k not in set(without)}
    payload = json.dumps({"settings": settings, "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


# ---------------------------------------------------------------------------------------------- JSONL records

def append_record(path: Path, record: dict) -> None:
    """Append `record` as one line; safe against other processes appending to the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        written = 0
        while written < len(line):  # one write in practice; a short write is continued under the same lock
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def read_records(path: Path, *, on_bad_line: Callable[[int, str], None] | None = None) -> list[dict]:
    """Every record of a JSONL file (none when it does not exist). A line that is not a JSON object (a file
    edited by hand, a disk that filled up) is passed to `on_bad_line(line_number, text)` and skipped."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # never read half of an append
        data = f.read()
    records = []
    for number, raw in enumerate(data.decode(errors="replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif on_bad_line is not None:
            on_bad_line(number, raw[:80])
    return records


# ---------------------------------------------------------------------------------------------- mean ± std

@dataclass
class Summary:
    """The records of one cell (same settings but the seed): their count and mean / sample std per field."""
    label: str
    records: list[dict]

    @property
    def n(self) -> int:
        return len(self.records)

    def values(self, field: str) -> list[float]:
        return [float(r[field]) for r in self.records if isinstance(r.get(field), int | float)]

    def mean(self, field: str) -> float | None:
        values = self.values(field)
        return statistics.fmean(values) if values else None

    def std(self, field: str) -> float | None:
        values = self.values(field)
        return statistics.stdev(values) if len(values) > 1 else None


def summarize(records: list[dict], *, cell_of: Callable[[dict], str], label_of: Callable[[dict], str]) -> list[Summary]:
    """Group records by `cell_of(record)` (first appearance order); the last record of a repeated run key wins."""
    unique: dict[str, dict] = {}
    for r in records:
        unique[r.get("run_key") or str(id(r))] = r
    cells: dict[str, Summary] = {}
    for r in unique.values():
        cells.setdefault(cell_of(r), Summary(label_of(r), [])).records.append(r)
    return list(cells.values())


def mean_std(summary: Summary, field: str, spec: str = ".4f") -> str:
    mean = summary.mean(field)
    if mean is None:
        return "–"
    std = summary.std(field)
    return f"{mean:{spec}} ± {std:{spec}}" if std is not None else f"{mean:{spec}}"


@dataclass(frozen=True)
class Column:
    title: str
    cell: Callable[[Summary], str]
    align: str = "right"


def markdown_table(summaries: list[Summary], columns: list[Column], *, best_by: str | None = None,
                   lower_is_better: bool = True) -> str:
    """A markdown table, one row per summary; the row with the best mean of `best_by` is bold and starred."""
    best = None
    if best_by is not None:
        scored = [(s.mean(best_by), i) for i, s in enumerate(summaries) if s.mean(best_by) is not None
                  and math.isfinite(s.mean(best_by))]
        if scored:
            best = (min if lower_is_better else max)(scored)[1]
    lines = ["| " + " | ".join(c.title for c in columns) + " |",
             "|" + "|".join("---:" if c.align == "right" else "---" for c in columns) + "|"]
    for i, s in enumerate(summaries):
        cells = [c.cell(s) for c in columns]
        if i == best:
            cells = [f"**{text}**" if text and text != "–" else text for text in cells]
            cells[0] = f"{cells[0]} ★"
        lines.append("| " + " | ".join(text.replace("|", "\\|") for text in cells) + " |")
    return "\n".join(lines)
