"""Sentence-classification tasks for fine-tuning: (texts, labels) per split.

    load_task("sst2", "train" | "dev"/"valid"/"validation")      GLUE SST-2 TSV (<data root>/sst-2-glue)
    load_task("rt-polarity", "train" | "dev")                    sentence polarity v1.0, seeded 90/10 split
    load_task("path/to/file.tsv" | "path/to/file.jsonl", split)  generic: all rows, whatever the split
                                                                 (`@data/<path>` is <path> under the data root)

Named tasks are looked up in the data root (`data_root()`: $JAXFORMER_DATA, default ./data). Labels are int64
class ids; text labels in generic files are mapped to ids in sorted order.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from jaxformer.data.root import PREFIX, data_root, is_data_path, not_under_root, resolve_data_path
from jaxformer.errors import UserError

RT_POLARITY_SEED = 1234
RT_POLARITY_DEV_FRACTION = 0.1
TEXT_COLUMNS = ("sentence", "text", "review", "content")
LABEL_COLUMNS = ("label", "labels", "class", "sentiment")
_SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "validation": "dev", "test": "test"}


def load_task(name_or_path: str, split: str) -> tuple[list[str], np.ndarray]:
    if name_or_path in ("sst2", "sst-2", "glue/sst2"):
        return load_sst2(data_root() / "sst-2-glue", split)
    if name_or_path in ("rt-polarity", "rt_polarity", "mr"):
        return load_rt_polarity(data_root() / "rt-polarity", split)
    path = resolve_data_path(name_or_path)
    if path.suffix in (".tsv", ".jsonl", ".json") and path.is_file():
        return load_jsonl(path) if path.suffix in (".jsonl", ".json") else load_tsv(path)
    if path.suffix in (".tsv", ".jsonl", ".json") and is_data_path(name_or_path):
        raise UserError(not_under_root(name_or_path[len(PREFIX):]))
    if path.suffix in (".tsv", ".jsonl", ".json"):
        raise UserError(f"Task file {path} does not exist: check the path given to --task.")
    raise UserError(f"Unknown task '{name_or_path}': use sst2, rt-polarity, or a path to a .tsv/.jsonl file "
                    f"with text and label columns.")


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


def load_sst2(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    """GLUE SST-2: train.tsv / dev.tsv with header `sentence<TAB>label` (test.tsv is unlabelled)."""
    split = _canonical_split(split, ("train", "dev"), "sst2")
    _require_dir(folder, "sst2")
    texts, labels = load_tsv(folder / f"{split}.tsv")
    return [t.strip() for t in texts], labels


def load_rt_polarity(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Pang & Lee sentence polarity: rt-polarity.pos (1) / .neg (0), one sentence per line. No official split:
    a fixed permutation (seed RT_POLARITY_SEED) puts the last 10% in dev."""
    split = _canonical_split(split, ("train", "dev"), "rt-polarity")
    _require_dir(folder, "rt-polarity")
    texts: list[str] = []
    labels: list[int] = []
    for suffix, label in (("neg", 0), ("pos", 1)):
        raw = (folder / f"rt-polarity.{suffix}").read_bytes()
        try:
            text = raw.decode("utf-8")  # the copy in the shared data sets is UTF-8
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # the original Cornell release is Windows-1252 / latin-1
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    order = np.random.default_rng(RT_POLARITY_SEED).permutation(len(texts))
    n_dev = int(round(len(texts) * RT_POLARITY_DEV_FRACTION))
    chosen = order[len(texts) - n_dev:] if split == "dev" else order[: len(texts) - n_dev]
    return [texts[i] for i in chosen], np.asarray([labels[i] for i in chosen], dtype=np.int64)


def _pick(columns: list[str], wanted: tuple[str, ...], path: Path, what: str) -> str:
    lower = {c.lower(): c for c in columns}
    for name in wanted:
        if name in lower:
            return lower[name]
    raise UserError(f"{path} has no {what} column (found: {', '.join(columns)}): name it one of "
                    f"{', '.join(wanted)}.")


def _label_value(raw, where: str) -> int | str:
    """A row's label as an integer class id or a class name; anything else is refused with the row's place."""
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():  # 1.0 from a tool that writes every number as a float
        return int(raw)
    if isinstance(raw, str) and raw.strip():
        name = raw.strip()
        try:
            return int(name)
        except ValueError:
            return name
    raise UserError(f"{where} has the label {raw!r}, which is neither an integer class id nor a class name: "
                    f"fix that row.")


def _labels_to_ids(labels: list[tuple[str, int | str]], path: Path) -> np.ndarray:
    """(where, label) pairs -> int64 ids: integers as they are, class names numbered in sorted order."""
    ints = [(where, v) for where, v in labels if isinstance(v, int)]
    if len(ints) == len(labels):
        return np.asarray([v for _, v in ints], dtype=np.int64)
    names = [(where, v) for where, v in labels if not isinstance(v, int)]
    if ints:  # a typo'd id or a stray header line, not a class of its own
        raise UserError(f"{path} mixes integer labels ({ints[0][0]}: {ints[0][1]}) with class names "
                        f"({names[0][0]}: {names[0][1]!r}): use one kind of label throughout.")
    index = {n: i for i, n in enumerate(sorted({v for _, v in names}))}
    return np.asarray([index[v] for _, v in names], dtype=np.int64)


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # exported spreadsheets are often Windows-1252


def load_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    """TSV with a header naming a text column (sentence/text/...) and a label column; blank lines are skipped,
    a row without both columns is refused."""
    if not path.is_file():
        raise UserError(f"Task file {path} does not exist: check the path.")
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    if len(rows) < 2:
        raise UserError(f"{path} has no data rows: it needs a header line and at least one row.")
    header = rows[0][1]
    text_col = header.index(_pick(header, TEXT_COLUMNS, path, "text"))
    label_col = header.index(_pick(header, LABEL_COLUMNS, path, "label"))
    texts, labels = [], []
    for lineno, row in rows[1:]:
        if len(row) <= max(text_col, label_col):
            raise UserError(f"{path}:{lineno} has {len(row)} tab-separated fields, but the header names "
                            f"{len(header)}: give every row a {header[text_col]} and a {header[label_col]}.")
        texts.append(row[text_col])
        labels.append((f"{path}:{lineno}", _label_value(row[label_col], f"{path}:{lineno}")))
    return texts, _labels_to_ids(labels, path)


def load_jsonl(path: Path) -> tuple[list[str], np.ndarray]:
    """JSON Lines, one object per line with a text field (text/sentence/...) and a label field."""
    records = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno} is not valid JSON: fix that line.") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno} is a JSON {type(record).__name__}, not an object: write one "
                                f"object with a text and a label field per line.")
            records.append((lineno, record))
    if not records:
        raise UserError(f"{path} has no records: it needs one JSON object per line.")
    keys = list(records[0][1])
    text_key = _pick(keys, TEXT_COLUMNS, path, "text")
    label_key = _pick(keys, LABEL_COLUMNS, path, "label")
    texts, labels = [], []
    for lineno, record in records:
        where = f"{path}:{lineno}"
        if text_key not in record or label_key not in record:
            missing = label_key if text_key in record else text_key
            raise UserError(f"{where} has no '{missing}' field: give every line a '{text_key}' and a "
                            f"'{label_key}'.")
        if not isinstance(record[text_key], str):
            raise UserError(f"{where} has a {type(record[text_key]).__name__} as its '{text_key}', not a string: "
                            f"fix that line.")
        texts.append(record[text_key])
        labels.append((where, _label_value(record[label_key], where)))
    return texts, _labels_to_ids(labels, path)
