"""On-disk token cache: a flat uint16/uint32 array + a small JSON header, memory-mapped on read.

Layout under the cache root (`data.cache_dir`, else $JAXFORMER_CACHE_DIR, else ~/.cache/jaxformer):
    tokens/<key>.bin    raw little-endian ids: the documents' tokens with EOS between documents
    tokens/<key>.json   {"dtype", "n_tokens", "n_documents", "tokenizer", "source", ...}; written LAST
    tokenizers/<key>/   tokenizers trained per (corpus, kind, vocab size, split), reused by new workdirs

Every file is written to a temp name in the same folder and renamed into place, and a cache entry counts
only when its JSON exists and the .bin has exactly the size it declares: an interrupted run leaves at worst
an orphan temp file, never a corrupt entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from jaxformer import atomic

_FLUSH_TOKENS = 1 << 22  # write to disk every ~4M tokens so memory stays flat on large corpora


def cache_root(data_cfg) -> Path:
    root = getattr(data_cfg, "cache_dir", "") or os.environ.get("JAXFORMER_CACHE_DIR") or "~/.cache/jaxformer"
    return Path(root).expanduser()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _paths(root: Path, key: str) -> tuple[Path, Path]:
    folder = root / "tokens"
    return folder / f"{key}.bin", folder / f"{key}.json"


def read_tokens(root: Path, key: str) -> tuple[np.ndarray, dict] | None:
    """The cached tokens (read-only memmap) and header, or None when absent or incomplete."""
    bin_path, meta_path = _paths(root, key)
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        if bin_path.stat().st_size != meta["n_tokens"] * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta["n_tokens"] == 0:
        return np.zeros(0, dtype), meta
    return np.memmap(bin_path, dtype=dtype, mode="r"), meta


def write_tokens(root: Path, key: str, chunks: Iterable[np.ndarray], dtype: np.dtype,
                 meta: Callable[[], dict]) -> None:
    """Stream token chunks into the cache entry `key`, atomically; `meta()` is called after the last chunk
    (so it can report what was counted while tokenizing)."""
    bin_path, meta_path = _paths(root, key)
    n_tokens = 0
    with atomic.replacing(bin_path, durable=True) as tmp, open(tmp, "wb") as f:
        pending: list[np.ndarray] = []
        n_pending = 0
        for chunk in chunks:
            pending.append(chunk)
            n_pending += len(chunk)
            if n_pending >= _FLUSH_TOKENS:
                f.write(np.concatenate(pending).astype(dtype).tobytes())
                n_tokens += n_pending
                pending, n_pending = [], 0
        if pending:
            f.write(np.concatenate(pending).astype(dtype).tobytes())
            n_tokens += n_pending
    # the header last: an entry counts only once its JSON exists (see read_tokens)
    atomic.write_text(meta_path, json.dumps({**meta(), "dtype": dtype.name, "n_tokens": n_tokens}, indent=2))
