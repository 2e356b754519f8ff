"""`load_corpus`: source -> tokenizer -> token ids cached on disk -> train/valid memmaps.

Token stream: the documents' ids in source order, with ONE EOS (the tokenizer's `special_ids.eos`) between
consecutive documents (none before the first or after the last). Since no text encodes to EOS, the EOS tokens
are exactly the document boundaries; packing (see batching.py) derives segments from them, so no second array is stored.

Split: the first int(n * (1 - valid_fraction)) tokens are train, the rest valid (nanoGPT's 90/10 for tiny
shakespeare). The tokenizer is trained on the first (1 - valid_fraction) of the CHARACTERS (the split is in
tokens, which do not exist before the tokenizer), capped at MAX_TOKENIZER_CHARS; for a single-document corpus
that is the same text as the token split's train part, to within a token.

Tokenizer lookup order: the workdir's (its kind must match data.tokenizer), then the cache's tokenizer for
this (corpus, kind, vocab size, split), then a freshly trained one, which is saved in both places (in the
workdir only once the corpus has passed its checks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxformer.data import token_cache
from jaxformer.data.documents import Source
from jaxformer.data.sources import open_source
from jaxformer.data.tokenizers import Tokenizer, check_kind, load_tokenizer, train_tokenizer
from jaxformer.errors import UserError

MAX_TOKENIZER_CHARS = 200_000_000  # tokenizer training text cap (memory); char vocab beyond it -> UNK
_ENCODE_CHUNK_CHARS = 1 << 20  # long documents are encoded in newline-aligned pieces of about this size


@dataclass
class Corpus:
    """Token ids of one source under one tokenizer; `train`/`valid` are views of the cached memmap."""

    tokenizer: Tokenizer
    train: np.ndarray
    valid: np.ndarray
    tokens: np.ndarray | None = None  # the whole stream (train followed by valid)
    n_documents: int = 0

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def split(self, name: str) -> np.ndarray:
        if name in ("train", "valid"):
            return getattr(self, name)
        if name == "validation":
            return self.valid
        raise UserError(f"Unknown split '{name}': use train or valid.")


def load_corpus(data_cfg, workdir: str | os.PathLike | None, *, show_progress: bool = True,
                seq_len: int | None = None, tokenizer: Tokenizer | None = None) -> Corpus:
    """The corpus of `data_cfg.source` under `tokenizer` if given (a distillation student encodes with its
    teacher's), else the workdir's (or a cached, or a new) tokenizer. With `seq_len`,
    both splits must hold a full window of seq_len + 1 tokens. Nothing is written into `workdir`: the run saves
    its tokenizer (`Run.write_run_files`) once the whole config has been checked."""
    root = token_cache.cache_root(data_cfg)
    source = open_source(data_cfg.source, cache_root=root)
    tokenizer = tokenizer or resolve_tokenizer(data_cfg, source, workdir, root)
    key = token_cache.cache_key("tokens-v1", source.identity, tokenizer.fingerprint)
    cached = token_cache.read_tokens(root, key)
    if cached is None:
        dtype = token_cache.token_dtype(tokenizer.vocab_size)
        stats = {"n_documents": 0}
        token_cache.write_tokens(
            root, key, _token_chunks(source, tokenizer, stats, show_progress), dtype,
            lambda: {"source": data_cfg.source, "source_identity": source.identity, "tokenizer": tokenizer.kind,
                     "tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
                     **stats})
        cached = token_cache.read_tokens(root, key)
        assert cached is not None, "token cache entry vanished right after writing it"
    tokens, meta = cached
    corpus = _split(tokens, data_cfg, tokenizer, n_documents=int(meta["n_documents"]))
    if seq_len is not None:
        check_windows(corpus, data_cfg, seq_len)
    return corpus


def _split(tokens: np.ndarray, data_cfg, tokenizer: Tokenizer, **extra) -> Corpus:
    n = len(tokens)
    if n == 0:
        raise UserError(f"data.source={data_cfg.source} gave no text at all (empty corpus): point it at "
                        f"non-empty files.")
    n_train = int(n * (1.0 - data_cfg.valid_fraction))
    if n_train < 2 or n - n_train < 2:
        raise UserError(f"data.source={data_cfg.source} has only {n} tokens, too few to split with "
                        f"data.valid_fraction={data_cfg.valid_fraction}: use more text.")
    return Corpus(tokenizer=tokenizer, train=tokens[:n_train], valid=tokens[n_train:], tokens=tokens, **extra)


def check_windows(corpus: Corpus, data_cfg, seq_len: int) -> None:
    """Refuse, before any training, a corpus whose train or validation split is shorter than one window."""
    need = seq_len + 1
    if len(corpus.train) < need or len(corpus.valid) < need:
        raise UserError(f"data.source={data_cfg.source} is too short for train.seq_len={seq_len} (its train and "
                        f"validation splits have {len(corpus.train)} and {len(corpus.valid)} tokens, and each needs "
                        f"at least {need}): use more text, a smaller train.seq_len or another data.valid_fraction.")


# ---------------------------------------------------------------------------------------------- tokenizer

def resolve_tokenizer(data_cfg, source: Source, workdir, root: Path) -> Tokenizer:
    tok = load_tokenizer(workdir)
    if tok is not None:
        check_kind(tok, data_cfg.tokenizer, workdir)
        return tok
    kind = data_cfg.tokenizer
    if kind == "hf":
        train_tokenizer(kind, "", 0)  # refuses: a Hugging Face tokenizer comes only with its imported run
    size_part = str(data_cfg.vocab_size) if kind in ("bpe", "unigram") else "-"
    cached_dir = root / "tokenizers" / token_cache.cache_key("tokenizer-v1", source.identity, kind, size_part,
                                                             repr(float(data_cfg.valid_fraction)))
    tok = load_tokenizer(cached_dir)
    if tok is None:
        text = "" if kind == "byte" else tokenizer_training_text(source, data_cfg.valid_fraction)
        if kind != "byte" and not text:
            raise UserError(f"data.source={data_cfg.source} gave no text to train the {kind} tokenizer on "
                            f"(empty corpus): point it at non-empty files.")
        tok = train_tokenizer(kind, text, data_cfg.vocab_size)
        tok.save(cached_dir)
    return tok  # the run directory gets it from `Run.write_run_files`, once the whole config has been checked


def tokenizer_training_text(source: Source, valid_fraction: float) -> str:
    """The first (1 - valid_fraction) of the corpus characters (documents joined by newlines)."""
    total = sum(len(doc) + 1 for doc in source.documents())
    budget = min(int(total * (1.0 - valid_fraction)), MAX_TOKENIZER_CHARS)
    parts, used = [], 0
    for doc in source.documents():
        if used >= budget:
            break
        piece = doc[: budget - used]
        parts.append(piece)
        used += len(piece) + 1
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- tokenizing

def _pieces(doc: str) -> Iterator[str]:
    """Newline-aligned slices of a long document, so that one encode call never holds a giant id list."""
    i = 0
    while i < len(doc):
        end = i + _ENCODE_CHUNK_CHARS
        if end < len(doc):
            cut = doc.rfind("\n", i, end)
            end = cut + 1 if cut > i else end
        yield doc[i:end]
        i = end


def _token_chunks(source: Source, tok: Tokenizer, stats: dict, show_progress: bool) -> Iterator[np.ndarray]:
    from tqdm.auto import tqdm

    if tok.special_ids.eos is None:
        raise UserError(f"The {tok.kind} tokenizer has no end-of-text token to separate the documents of "
                        f"{source.spec}: use a tokenizer with one.")
    eos = np.array([tok.special_ids.eos], np.int32)
    n_docs = 0
    # counted in characters, so that a single large document (tiny shakespeare) still shows progress
    with tqdm(total=source.n_chars, desc=f"tokenizing {source.spec} ({tok.kind})", unit="char", unit_scale=True,
              disable=not show_progress, leave=False) as bar:
        for doc in source.documents():
            if not doc:
                continue  # no empty segments, no doubled EOS
            if n_docs:
                yield eos
            for piece in _pieces(doc):
                yield tok.encode(piece)
                bar.update(len(piece))
            n_docs += 1
    stats["n_documents"] = n_docs
