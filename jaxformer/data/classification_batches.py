"""Classification data for fine-tuning: a task's train/dev examples under the run's label map, token encoding,
and (seed, step) batches.

    splits = task_splits(task, valid=..., labels=saved_map_or_None)      # .labels, .train_texts/_labels, .dev_*
    x = encode_examples(splits.train_texts, tokenizer, seq_len, causal=...)  # int32 [N, seq_len]
    batch = classification_batch_at(x, y, batch_size=B, seed=s, step=i)      # {"tokens", "labels"}
    n = real_tokens_at(x, batch_size=B, seed=s, step=i)                      # its non-PAD tokens (throughput)
    batches = classification_eval_batches(dev_x, dev_y, B)                   # the whole split, padded

Named like this so they never shadow the language-modelling `batch_at` / `eval_batches` of batching.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from jaxformer.data.batching import local_rows
from jaxformer.data.classification import Columns, is_task_file, read_labelled_file, read_task, task_file
from jaxformer.data.labels import LabelMap
from jaxformer.data.tokenizers import PAD, Tokenizer
from jaxformer.errors import UserError

HOLDOUT_SEED = 1234  # a .tsv/.jsonl task holds out the last HOLDOUT_FRACTION of this permutation as dev
HOLDOUT_FRACTION = 0.1


@dataclass
class TaskSplits:
    """A fine-tuning run's data: its label map, and texts with class ids for training and validation."""

    labels: LabelMap
    train_texts: list[str]
    train_labels: np.ndarray
    dev_texts: list[str]
    dev_labels: np.ndarray


def task_splits(task: str, *, valid: str = "", labels: LabelMap | None = None,
                columns: Columns = Columns()) -> TaskSplits:
    """The training and validation examples of a named task or a .tsv/.jsonl file, mapped through `labels` (the
    run's saved map), or through a new map made from the training labels when the run is new. Validation is
    the `valid` file when given, else the named task's dev split, else a seeded 10% held out of the file."""
    texts, raw = read_task(task, "train", columns)
    if valid:
        dev_texts, dev_raw = read_labelled_file(task_file(valid, "Validation file", "--valid"), columns)
    elif not is_task_file(task):
        dev_texts, dev_raw = read_task(task, "dev", columns)
    else:  # a file has no splits: hold out dev
        order = np.random.default_rng(HOLDOUT_SEED).permutation(len(texts))
        n_dev = int(round(len(texts) * HOLDOUT_FRACTION))
        if n_dev < 1 or n_dev == len(texts):
            raise UserError(f"Task file {task} has {len(texts)} rows, too few to hold out a dev split: add rows, "
                            f"or give a validation file with --valid.")
        cut = len(texts) - n_dev
        dev_texts, dev_raw = [texts[i] for i in order[cut:]], [raw[i] for i in order[cut:]]
        texts, raw = [texts[i] for i in order[:cut]], [raw[i] for i in order[:cut]]
    if not dev_texts:
        raise UserError(f"The validation split of {valid or task} has no rows: give it labelled examples.")
    labels = labels or LabelMap.from_examples(raw, task)
    return TaskSplits(labels, texts, labels.ids(raw), dev_texts, labels.ids(dev_raw))


def encode_examples(texts: list[str], tokenizer: Tokenizer, seq_len: int, *, causal: bool) -> np.ndarray:
    """int32 [N, seq_len]: `[CLS] text [SEP]` (encoder) or `text [EOS]` (decoder), text truncated to fit,
    right-padded with the fill id (PAD, or EOS for a vocabulary without PAD), all in the tokenizer's own ids."""
    ids_of = tokenizer.special_ids
    frame = [ids_of.eos] if causal else [ids_of.cls, ids_of.sep]
    if None in frame:
        raise UserError(f"The run's {tokenizer.kind} tokenizer has no {'EOS' if causal else '[CLS]/[SEP]'} token to "
                        f"frame a classification input with: fine-tune a run whose tokenizer has one.")
    out = np.full((len(texts), seq_len), ids_of.fill, np.int32)
    room = seq_len - (1 if causal else 2)
    if room < 1:
        raise UserError(f"train.seq_len={seq_len} leaves no room for text next to the special tokens: raise it.")
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)[:room]
        row = np.concatenate([ids, frame]) if causal else np.concatenate([frame[:1], ids, frame[1:]])
        out[i, :len(row)] = row
    return out


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(n: int, *, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The example indices of the global training batch at (seed, step): examples step*B .. step*B+B-1 of the
    stream that visits the training set in a fresh seeded permutation each epoch (so each epoch sees every
    example once, and the batch depends on (seed, step) only)."""
    index = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs = index // n
    chosen = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        chosen[sel] = _epoch_order(seed, int(epoch), n)[index[sel] % n]
    return chosen


def classification_batch_at(tokens: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int, step: int,
                            process_index: int = 0, process_count: int = 1) -> dict:
    """This process's rows of the global training batch at (seed, step) (see `batch_rows`)."""
    chosen = batch_rows(len(labels), batch_size=batch_size, seed=seed, step=step)
    chosen = chosen[local_rows(batch_size, process_index, process_count)]
    return {"tokens": tokens[chosen], "labels": labels[chosen].astype(np.int32)}


def real_tokens_at(tokens: np.ndarray, *, batch_size: int, seed: int, step: int, fill_id: int = PAD) -> int:
    """The non-padding tokens (not `fill_id`, the tokenizer's `special_ids.fill`) of the global training batch at
    (seed, step): what throughput counts."""
    chosen = batch_rows(len(tokens), batch_size=batch_size, seed=seed, step=step)
    return int(np.count_nonzero(tokens[chosen] != fill_id))


def classification_eval_batches(tokens: np.ndarray, labels: np.ndarray, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, fill_id: int = PAD) -> list[dict]:
    """The whole split in order, in full-size batches: the last is padded with rows of `fill_id` (the
    tokenizer's `special_ids.fill`) labelled -1 (weight 0)."""
    n_batches = math.ceil(len(labels) / batch_size)
    pad = n_batches * batch_size - len(labels)
    tokens = np.concatenate([tokens, np.full((pad, tokens.shape[1]), fill_id, np.int32)])
    labels = np.concatenate([labels.astype(np.int32), np.full(pad, -1, np.int32)])
    rows = local_rows(batch_size, process_index, process_count)
    return [{"tokens": tokens[i * batch_size:(i + 1) * batch_size][rows],
             "labels": labels[i * batch_size:(i + 1) * batch_size][rows]} for i in range(n_batches)]
