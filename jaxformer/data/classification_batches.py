"""Classification data for fine-tuning: a task's train/dev split, token encoding, and (seed, step) batches.

    (train_texts, train_labels), (dev_texts, dev_labels) = task_splits(task)
    n = n_classes_of(task, train_labels, dev_labels)
    x = encode_examples(train_texts, tokenizer, seq_len, causal=...)        # int32 [N, seq_len]
    batch = classification_batch_at(x, train_labels, batch_size=B, seed=s, step=i)  # {"tokens", "labels"}
    batches = classification_eval_batches(dev_x, dev_labels, B)           # the whole split, padded

Named like this so they never shadow the language-modelling `batch_at` / `eval_batches` of batching.py.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from jaxformer.data.batching import local_rows
from jaxformer.data.classification import load_task
from jaxformer.data.tokenizers import PAD, Tokenizer
from jaxformer.errors import UserError

HOLDOUT_SEED = 1234  # a .tsv/.jsonl task holds out the last HOLDOUT_FRACTION of this permutation as dev
HOLDOUT_FRACTION = 0.1


def task_splits(task: str) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    """((train texts, labels), (dev texts, labels)) of a named task or a .tsv/.jsonl file."""
    texts, labels = load_task(task, "train")
    if Path(task).suffix not in (".tsv", ".jsonl", ".json"):
        return (texts, labels), load_task(task, "dev")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(texts))  # a file has no splits: hold out dev
    n_dev = int(round(len(texts) * HOLDOUT_FRACTION))
    if n_dev < 1 or n_dev == len(texts):
        raise UserError(f"Task file {task} has {len(texts)} rows, too few to hold out a dev split: add rows.")
    cut = len(texts) - n_dev
    return ([texts[i] for i in order[:cut]], labels[order[:cut]]), ([texts[i] for i in order[cut:]], labels[order[cut:]])


def n_classes_of(task: str, train_labels: np.ndarray, dev_labels: np.ndarray) -> int:
    """The number of classes; refuses labels that are not the integers 0..n-1 (n >= 2) in the training split."""
    present = np.unique(train_labels)
    n = int(present.max()) + 1 if len(present) else 0
    if len(present) < 2 or present.min() != 0 or len(present) != n:
        raise UserError(f"Task {task} has training labels {present.tolist()[:10]}: classification needs the "
                        f"integers 0..n-1 with n >= 2, each present in the training split; renumber the labels.")
    if len(dev_labels) == 0 or dev_labels.min() < 0 or dev_labels.max() >= n:
        raise UserError(f"Task {task} has dev labels outside 0..{n - 1} (or no dev rows): fix the dev split.")
    return n


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


def classification_batch_at(tokens: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int, step: int,
             process_index: int = 0, process_count: int = 1) -> dict:
    """This process's rows of the global training batch at (seed, step): examples step*B .. step*B+B-1 of the
    stream that visits the training set in a fresh seeded permutation each epoch (so each epoch sees every
    example once, and the batch depends on (seed, step) only)."""
    n = len(labels)
    index = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epochs = index // n
    chosen = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        chosen[sel] = _epoch_order(seed, int(epoch), n)[index[sel] % n]
    chosen = chosen[local_rows(batch_size, process_index, process_count)]
    return {"tokens": tokens[chosen], "labels": labels[chosen].astype(np.int32)}


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
