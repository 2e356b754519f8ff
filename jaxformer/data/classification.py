"""Sentence-classification files for fine-tuning, evaluation and prediction: texts and their labels as written.

    read_task("sst2", "train" | "dev"/"valid"/"validation")     GLUE SST-2 TSV (<data root>/sst-2-glue)
    read_task("rt-polarity", "train" | "dev")                   sentence polarity v1.0, seeded 90/10 split
    read_task("path/to/file.tsv" | "file.jsonl", split)         generic: all rows, whatever the split
                                                                (`@data/<path>` is <path> under the data root)
    -> (texts, [RawLabel(value, "path:line"), ...])             labels as written; the run's LabelMap maps them
    load_task(name, split[, labels])  -> (texts, int64 ids)     the same, mapped (a map of its own if none given)
    read_texts(path)                  -> texts                  what `predict` classifies: a .tsv/.jsonl text
                                                                column, or any other text file one line each

Named tasks are looked up in the data root (`data_root()`: $JAXFORMER_DATA, default ./data). Files are UTF-8
(a byte-order mark is fine, UTF-16 with one too); anything else is read as Windows-1252, else latin-1, the
encodings spreadsheets export, so a file of text never fails to decode. A binary file is refused.

A .tsv needs a header line naming its columns; the text and label columns are found by their usual names
(`TEXT_COLUMNS`, `LABEL_COLUMNS`) or named by `Columns` (`--text-column`, `--label-column`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxformer.data.labels import LabelMap, RawLabel  # noqa: F401  (RawLabel: part of this module's API)
from jaxformer.data.root import PREFIX, data_root, is_data_path, not_under_root, resolve_data_path
from jaxformer.errors import UserError

RT_POLARITY_SEED = 1234
RT_POLARITY_DEV_FRACTION = 0.1
TEXT_COLUMNS = ("sentence", "text", "review", "content")
LABEL_COLUMNS = ("label", "labels", "class", "sentiment")
FILE_SUFFIXES = (".tsv", ".jsonl", ".json")
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}


@dataclass(frozen=True)
class Columns:
    """The text and label column (TSV) or field (JSONL) names; empty: the first of the usual names present."""

    text: str = ""
    label: str = ""


def is_task_file(name_or_path: str) -> bool:
    return Path(name_or_path).suffix in FILE_SUFFIXES


def read_task(name_or_path: str, split: str, columns: Columns = Columns()) -> tuple[list[str], list[RawLabel]]:
    if name_or_path in ("sst2", "sst-2", "glue/sst2"):
        return read_sst2(data_root() / "sst-2-glue", split)
    if name_or_path in ("rt-polarity", "rt_polarity", "mr"):
        return read_rt_polarity(data_root() / "rt-polarity", split)
    return read_labelled_file(task_file(name_or_path), columns)


def load_task(name_or_path: str, split: str, labels: LabelMap | None = None,
              columns: Columns = Columns()) -> tuple[list[str], np.ndarray]:
    """(texts, int64 class ids) through `labels`, or through a map made from this split when none is given."""
    texts, raw = read_task(name_or_path, split, columns)
    labels = labels or LabelMap.from_examples(raw, name_or_path)
    return texts, labels.ids(raw)


def task_file(name_or_path: str, what: str = "Task file", flag: str = "--task") -> Path:
    """The path of a .tsv/.jsonl task file (`@data/` resolved); one sentence when it is not there."""
    path = resolve_data_path(name_or_path)
    if not is_task_file(name_or_path):
        raise UserError(f"Unknown task '{name_or_path}': use sst2, rt-polarity, or a path to a .tsv/.jsonl file "
                        f"with text and label columns.")
    if path.is_file():
        return path
    if is_data_path(name_or_path):
        raise UserError(not_under_root(name_or_path[len(PREFIX):]))
    raise UserError(f"{what} {path} does not exist: check the path given to {flag}.")


def _canonical_split(split: str, allowed: tuple[str, ...], task: str) -> str:
    canonical = _SPLIT_ALIASES.get(split.lower())
    if canonical not in allowed:
        raise UserError(f"Task {task} has no split '{split}': use one of {', '.join(allowed)}.")
    return canonical


def _require_dir(folder: Path, task: str) -> None:
    if folder.is_dir():
        return
    if folder.parent == data_root():
        raise UserError(not_under_root(f"{folder.name}/ (the {task} data)"))
    raise UserError(f"The {task} data is not at {folder}: check the folder.")


def read_sst2(folder: Path, split: str) -> tuple[list[str], list[RawLabel]]:
    """GLUE SST-2: train.tsv / dev.tsv with header `sentence<TAB>label` (test.tsv is unlabelled)."""
    split = _canonical_split(split, ("train", "dev"), "sst2")
    _require_dir(folder, "sst2")
    texts, labels = read_labelled_file(folder / f"{split}.tsv", Columns())
    return [t.strip() for t in texts], labels


def read_rt_polarity(folder: Path, split: str) -> tuple[list[str], list[RawLabel]]:
    """Pang & Lee sentence polarity: rt-polarity.pos (1) / .neg (0), one sentence per line. No official split:
    a fixed permutation (seed RT_POLARITY_SEED) puts the last 10% in dev."""
    split = _canonical_split(split, ("train", "dev"), "rt-polarity")
    _require_dir(folder, "rt-polarity")
    texts: list[str] = []
    labels: list[RawLabel] = []
    for suffix, label in (("neg", 0), ("pos", 1)):
        path = folder / f"rt-polarity.{suffix}"
        lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
        texts += lines
        labels += [RawLabel(label, str(path))] * len(lines)
    order = np.random.default_rng(RT_POLARITY_SEED).permutation(len(texts))
    n_dev = int(round(len(texts) * RT_POLARITY_DEV_FRACTION))
    chosen = order[len(texts) - n_dev:] if split == "dev" else order[: len(texts) - n_dev]
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


# ---------------------------------------------------------------------------------------------- decoding

def decode(data: bytes, path: Path) -> str:
    """Text of any common encoding: UTF-8 (BOM or not), UTF-16 with a BOM, else Windows-1252 (latin-1 for the
    five bytes it leaves undefined); bytes with NULs that are not UTF-16 are refused as binary."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass  # a binary file that happens to start like a BOM: refused below
    if b"\0" in data:
        raise UserError(f"{path} is not a text file (it contains NUL bytes): give a UTF-8 (or Windows-1252) "
                        f".tsv/.jsonl file.")
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # every byte sequence decodes


def read_text(path: Path) -> str:
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a .tsv/.jsonl file: give the file's path.")
    return decode(path.read_bytes(), path)


# ---------------------------------------------------------------------------------------------- rows

def _label_value(raw, where: str) -> RawLabel:
    """A row's label as an integer class id or a class name; anything else is refused with the row's place."""
    if isinstance(raw, bool):
        return RawLabel(int(raw), where)
    if isinstance(raw, int):
        return RawLabel(raw, where)
    if isinstance(raw, float) and raw.is_integer():  # 1.0 from a tool that writes every number as a float
        return RawLabel(int(raw), where)
    if isinstance(raw, str) and raw.strip():
        name = raw.strip()
        try:
            return RawLabel(int(name), where)
        except ValueError:
            return RawLabel(name, where)
    raise UserError(f"{where} has the label {raw!r}, which is neither an integer class id nor a class name: "
                    f"fix that row.")


def _column(found: list[str], named: str, usual: tuple[str, ...], path: Path, what: str) -> str:
    """The column called `named` (case-insensitive), else the first of the `usual` names present."""
    lower = {c.strip().lower(): c for c in found}
    if named:
        if named.strip().lower() in lower:
            return lower[named.strip().lower()]
        raise UserError(f"{path} has no column named {named!r} (found: {', '.join(found)}): check --{what}-column.")
    for name in usual:
        if name in lower:
            return lower[name]
    raise UserError(f"{path} has no {what} column (found: {', '.join(found)}): name it one of {', '.join(usual)}, "
                    f"or pass --{what}-column NAME.")


@dataclass
class _Table:
    """A file's rows as {column: value} records, with the line each came from."""

    path: Path
    columns: list[str]
    records: list[tuple[str, dict]]  # (where, record)
    n_fields: list[int] | None = None  # TSV: the number of fields of each row (a short row is named as such)


def _read_tsv(path: Path, columns: Columns, *, need_label: bool) -> _Table:
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    if not rows:
        raise UserError(f"{path} is empty: it needs a header line and at least one row.")
    header = [field.strip() for field in rows[0][1]]
    lower = {c.lower() for c in header}
    wanted_text = {columns.text.lower()} if columns.text else set(TEXT_COLUMNS)
    wanted_label = {columns.label.lower()} if columns.label else set(LABEL_COLUMNS)
    if not lower & wanted_text and not (need_label and lower & wanted_label):
        # Most likely no header at all: say so without presenting the first data row as column names.
        names = columns.text or "/".join(TEXT_COLUMNS)
        raise UserError(f"{path} does not start with a header line naming a text column ({names}): add one, e.g. "
                        f"`text<TAB>label`, as its first line, or, if its first line is a header, name the columns "
                        f"with --text-column/--label-column.")
    if len(rows) < 2:
        raise UserError(f"{path} has no data rows: it needs a header line and at least one row.")
    records = [(f"{path}:{lineno}", dict(zip(header, row, strict=False))) for lineno, row in rows[1:]]
    return _Table(path, header, records, n_fields=[len(row) for _, row in rows[1:]])


def _read_jsonl(path: Path) -> _Table:
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno} is not valid JSON: fix that line.") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno} is a JSON {type(record).__name__}, not an object: write one "
                                f"object with a text and a label field per line.")
            records.append((f"{path}:{lineno}", record))
    if not records:
        raise UserError(f"{path} has no records: it needs one JSON object per line.")
    return _Table(path, list(records[0][1]), records)


def _table(path: Path, columns: Columns, *, need_label: bool) -> _Table:
    if not path.is_file() and not path.is_dir():
        raise UserError(f"Task file {path} does not exist: check the path.")
    return _read_jsonl(path) if path.suffix in (".jsonl", ".json") else _read_tsv(path, columns, need_label=need_label)


def _texts(table: _Table, key: str, label_key: str | None) -> list[str]:
    texts = []
    for row, (where, record) in enumerate(table.records):
        if key not in record or (label_key is not None and label_key not in record):
            missing = key if key not in record else label_key
            if table.n_fields is not None:
                raise UserError(f"{where} has {table.n_fields[row]} tab-separated fields, but the header names "
                                f"{len(table.columns)}: "
                                f"give every row a {key}{'' if label_key is None else ' and a ' + label_key}.")
            raise UserError(f"{where} has no '{missing}' field: give every line a '{key}'"
                            f"{'' if label_key is None else f' and a {label_key!r}'}.")
        if not isinstance(record[key], str):
            raise UserError(f"{where} has a {type(record[key]).__name__} as its '{key}', not a string: fix that "
                            f"line.")
        texts.append(record[key])
    return texts


def read_labelled_file(path: Path, columns: Columns) -> tuple[list[str], list[RawLabel]]:
    """A .tsv (header line, then rows; blank lines skipped) or .jsonl (one object per line) of texts and labels."""
    table = _table(path, columns, need_label=True)
    text_key = _column(table.columns, columns.text, TEXT_COLUMNS, path, "text")
    label_key = _column(table.columns, columns.label, LABEL_COLUMNS, path, "label")
    texts = _texts(table, text_key, label_key)
    return texts, [_label_value(record[label_key], where) for where, record in table.records]


def read_texts(name_or_path: str, columns: Columns = Columns()) -> list[str]:
    """The texts to classify: the text column of a .tsv/.jsonl (any label column is ignored), or one text per
    line of any other text file (every line, blank or not, so that line i of the output answers line i)."""
    path = resolve_data_path(name_or_path)
    if is_data_path(name_or_path) and not path.exists():
        raise UserError(not_under_root(name_or_path[len(PREFIX):]))
    if not path.is_file():
        raise UserError(f"{path} does not exist: check the file to classify.")
    if path.suffix in FILE_SUFFIXES:
        table = _table(path, columns, need_label=False)
        return _texts(table, _column(table.columns, columns.text, TEXT_COLUMNS, path, "text"), None)
    return read_text(path).splitlines()
