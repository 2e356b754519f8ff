"""Sentence-pair batches for NSP / SOP pretraining: `[CLS] A [SEP] B [SEP]` rows cut from documents.

    docs = documents(tokens, specials, paragraphs=..., tokenizer=...)   # once per split
    batch = pair_batch_at(tokens, docs, task="nsp", seq_len=..., batch_size=..., seed=..., step=...)

A row: pick a document (in proportion to its length, so every token is equally likely to be used), a span of
up to seq_len - 3 consecutive tokens in it, and a random split point: A is the first part, B the rest. Then, with
probability 1/2 (label 1), make it a negative:
- nsp (BERT): B is replaced by a span of the same length from a random OTHER document;
- sop (ALBERT): A and B are swapped (both still come from the same document, so topic gives nothing away).
Label 0 is the true order, as in Hugging Face's `next_sentence_label` / `sentence_order_label`.

A and B are spans of tokens, not whole sentences (BERT cuts at sentence ends): the corpora here have no
sentence splitter, and a cut at a random token is the same for positives and negatives, so it adds no label cue.

Like `batching.batch_at`, the global batch at (seed, step) is drawn identically in every process, which then
keeps its own rows: resuming at step s gives the batch an uninterrupted run saw, whatever the process count.
Rows keep the [B, seq_len + 1] window shape of every batch (the objective drops the last column, always padding);
`segment_ids` is 1 on real tokens and 0 on padding (attention never mixes the two), `token_types` is 0 for
`[CLS] A [SEP]` and 1 for `B [SEP]`, `pair_labels` is [B].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxformer.data.batching import local_rows
from jaxformer.data.tokenizer_base import SpecialIds
from jaxformer.errors import UserError

PAIR_STREAM = 0x5E9  # keeps the pair RNG apart from other (seed, step)-addressed streams
EVAL_SEED = 1234  # validation pairs are drawn from this seed, the same in every evaluation and every run
NEGATIVE_TRIES = 16  # draws of an NSP "other document" long enough for B before taking a shorter one


@dataclass(frozen=True)
class Documents:
    """The [start, end) token spans of the documents of one split (only those of at least 2 tokens)."""

    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)


def newline_ids(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(ids whose text is one line end, ids whose text holds a blank line): what marks a paragraph end in this
    vocabulary, whatever the tokenizer (a char "\\n", a word tokenizer's line end, a SentencePiece "\\n\\n")."""
    single, blank = [], []
    for i in range(tokenizer.vocab_size):
        text = tokenizer.decode([i])
        if text and not text.strip(" \n"):
            (blank if text.count("\n") >= 2 else single if text.count("\n") == 1 else []).append(i)
    return np.asarray(single, np.int64), np.asarray(blank, np.int64)


def documents(tokens: np.ndarray, specials: SpecialIds, *, paragraphs: bool = False, tokenizer=None) -> Documents:
    """The documents of a token split: runs between EOS tokens (the source's documents), and with `paragraphs`
    also between blank lines (two line ends in a row). The separators belong to no document."""
    tokens = np.asarray(tokens)
    separator = tokens == specials.eos
    if paragraphs:
        single, blank = newline_ids(tokenizer)
        line_end = np.isin(tokens, single)
        double = line_end[:-1] & line_end[1:]
        separator[:-1] |= double
        separator[1:] |= double
        separator |= np.isin(tokens, blank)
    edges = np.diff(np.concatenate([[0], (~separator).astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = ends - starts >= 2
    return Documents(starts[keep].astype(np.int64), ends[keep].astype(np.int64))


def check_documents(docs: Documents, task: str, where: str) -> None:
    """One sentence when a split cannot give pairs for `task`."""
    if len(docs) == 0:
        raise UserError(f"{where} has no document of 2 or more tokens to cut a sentence pair from: use more text.")
    if task == "nsp" and len(docs) < 2:
        raise UserError(f"objective.pair_task=nsp takes B from another document, but {where} holds one document: "
                        f"set objective.pair_documents=paragraphs (split at blank lines), use a corpus of several "
                        f"documents, or use objective.pair_task=sop.")


def pair_batch_at(tokens: np.ndarray, docs: Documents, *, task: str, batch_size: int, seq_len: int, seed: int,
                  step: int, specials: SpecialIds, process_index: int = 0, process_count: int = 1) -> dict:
    """This process's rows of the global pair batch at (seed, step): tokens / token_types / segment_ids int32
    [B_local, seq_len + 1] and pair_labels int32 [B_local]."""
    if seq_len < 5:
        raise UserError(f"train.seq_len={seq_len} is too short for `[CLS] A [SEP] B [SEP]`: use at least 5.")
    rng = np.random.default_rng([seed, step, PAIR_STREAM])
    lengths = docs.ends - docs.starts
    cumulative = np.cumsum(lengths)
    budget = seq_len - 3  # tokens of A and B together

    def draw_document() -> int:  # in proportion to length
        return int(np.searchsorted(cumulative, rng.integers(cumulative[-1]), side="right"))

    out = {name: np.zeros((batch_size, seq_len + 1), np.int32) for name in ("tokens", "token_types", "segment_ids")}
    out["tokens"][:] = specials.pad
    labels = np.zeros(batch_size, np.int32)
    for row in range(batch_size):
        d = draw_document()
        width = min(budget, int(lengths[d]))
        start = int(docs.starts[d]) + int(rng.integers(int(lengths[d]) - width + 1))
        cut = int(rng.integers(1, width))
        a, b = tokens[start:start + cut], tokens[start + cut:start + width]
        labels[row] = int(rng.random() < 0.5)
        if labels[row] and task == "sop":
            a, b = b, a
        elif labels[row]:  # nsp: a span of B's length from another document
            for _ in range(NEGATIVE_TRIES):
                other = draw_document()
                if other != d and lengths[other] >= len(b):
                    break
            while other == d:
                other = int(rng.integers(len(docs)))
            n_b = min(len(b), int(lengths[other]))
            b_start = int(docs.starts[other]) + int(rng.integers(int(lengths[other]) - n_b + 1))
            b = tokens[b_start:b_start + n_b]
        row_tokens = np.concatenate([[specials.cls], a, [specials.sep], b, [specials.sep]])
        n_a = len(a) + 2
        out["tokens"][row, :len(row_tokens)] = row_tokens
        out["token_types"][row, n_a:len(row_tokens)] = 1
        out["segment_ids"][row, :len(row_tokens)] = 1
    out["pair_labels"] = labels
    rows = local_rows(batch_size, process_index, process_count)
    return {name: array[rows] for name, array in out.items()}


def pair_eval_batches(tokens: np.ndarray, docs: Documents, *, task: str, batch_size: int, seq_len: int,
                      n_batches: int, specials: SpecialIds, process_index: int = 0, process_count: int = 1
                      ) -> list[dict]:
    """Fixed validation pair batches: drawn from EVAL_SEED, the same every evaluation and every run."""
    return [pair_batch_at(tokens, docs, task=task, batch_size=batch_size, seq_len=seq_len, seed=EVAL_SEED, step=i,
                          specials=specials, process_index=process_index, process_count=process_count)
            for i in range(n_batches)]
