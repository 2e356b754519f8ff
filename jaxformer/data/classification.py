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


def _labels_to_ids(raw: list, path: Path) -> np.ndarray:
    try:
        return np.asarray([int(v) for v in raw], dtype=np.int64)
    except (TypeError, ValueError):
        names = sorted({str(v) for v in raw})
        index = {n: i for i, n in enumerate(names)}
        return np.asarray([index[str(v)] for v in raw], dtype=np.int64)


def load_tsv(path: Path) -> tuple[list[str], np.ndarray]:
    """TSV with a header naming a text column (sentence/text/...) and a label column."""
    if not path.is_file():
        raise UserError(f"Task file {path} does not exist: check the path.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if len(rows) < 2:
        raise UserError(f"{path} has no data rows: it needs a header line and at least one row.")
    header = rows[0]
    text_col = header.index(_pick(header, TEXT_COLUMNS, path, "text"))
    label_col = header.index(_pick(header, LABEL_COLUMNS, path, "label"))
    body = [r for r in rows[1:] if len(r) > max(text_col, label_col)]
    return [r[text_col] for r in body], _labels_to_ids([r[label_col] for r in body], path)


def load_jsonl(path: Path) -> tuple[list[str], np.ndarray]:
    """JSON Lines, one object per line with a text field (text/sentence/...) and a label field."""
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{lineno} is not valid JSON: fix that line.") from None
    if not records:
        raise UserError(f"{path} has no records: it needs one JSON object per line.")
    keys = list(records[0])
    text_key = _pick(keys, TEXT_COLUMNS, path, "text")
    label_key = _pick(keys, LABEL_COLUMNS, path, "label")
    return [str(r[text_key]) for r in records], _labels_to_ids([r[label_key] for r in records], path)
