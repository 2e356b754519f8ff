"""Batches from a token array: stateless, (seed, step)-addressed, sliced per process.

`batch_at(tokens, ..., seed, step)` draws the GLOBAL batch's window starts from an RNG seeded by (seed, step)
only, identically in every process, and returns rows [p*B/P, (p+1)*B/P) for process p. So:
- resuming at step s gives exactly the batch an uninterrupted run saw at step s (no iterator state to save);
- the processes' slices tile the global batch, whatever the number of processes.
Windows hold seq_len + 1 tokens: the objective shifts (CLM) or masks (MLM) them.

Packing (`packing=True`) adds, per window, from the EOS document separators (see pipeline.py):
- segment_ids: 1 for the window's first (possibly partial) document, +1 after every EOS; an EOS belongs to the
  document it ends. (0 would mean padding; windows are always full, so it does not occur.)
- positions: index within the current segment, restarting at 0 after each EOS. The first segment counts
  from the window start, not from its true document start, so positions stay below seq_len + 1.
A CLM target t+1 stays inside its document iff segment_ids[t+1] == segment_ids[t].
"""

from __future__ import annotations

import numpy as np

from jaxformer.data.tokenizers import EOS
from jaxformer.errors import UserError


def window_starts(n_tokens: int, *, batch_size: int, seq_len: int, seed: int, step: int) -> np.ndarray:
    """The global batch's window start offsets at (seed, step): uniform over every full window."""
    n_windows = n_tokens - (seq_len + 1) + 1
    if n_windows < 1:
        raise UserError(f"The token split has {n_tokens} tokens, fewer than train.seq_len+1={seq_len + 1}: "
                        f"lower train.seq_len or use a larger corpus / smaller data.valid_fraction.")
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_windows, size=batch_size, dtype=np.int64)


def local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count})")
    if batch_size % process_count:
        raise UserError(f"train.batch_size={batch_size} does not split over {process_count} processes: make it "
                        f"a multiple of {process_count}.")
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def windows_at(tokens: np.ndarray, starts: np.ndarray, seq_len: int, *, packing: bool = False,
               eos_id: int = EOS) -> dict:
    """Gather [len(starts), seq_len + 1] windows (one fancy-indexing read, no per-token Python)."""
    index = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    batch = {"tokens": np.asarray(tokens[index], dtype=np.int32)}
    if packing:
        batch.update(packing_arrays(batch["tokens"], eos_id))
    return batch


def packing_arrays(windows: np.ndarray, eos_id: int = EOS) -> dict:
    """segment_ids and positions for [B, L] windows whose documents are separated by `eos_id` (the tokenizer's
    `special_ids.eos`)."""
    b, length = windows.shape
    ends_doc = windows == eos_id
    starts_doc = np.zeros((b, length), dtype=bool)
    starts_doc[:, 0] = True
    starts_doc[:, 1:] = ends_doc[:, :-1]
    segment_ids = np.cumsum(starts_doc, axis=1, dtype=np.int32)
    col = np.broadcast_to(np.arange(length, dtype=np.int32), (b, length))
    last_start = np.maximum.accumulate(np.where(starts_doc, col, 0), axis=1)
    return {"segment_ids": segment_ids, "positions": (col - last_start).astype(np.int32)}


def batch_at(tokens: np.ndarray, *, batch_size: int, seq_len: int, seed: int, step: int, process_index: int = 0,
             process_count: int = 1, packing: bool = False, eos_id: int = EOS) -> dict:
    """This process's rows of the global batch at (seed, step): {"tokens": int32 [B_local, seq_len+1]}
    (+ "segment_ids", "positions" with packing)."""
    starts = window_starts(len(tokens), batch_size=batch_size, seq_len=seq_len, seed=seed, step=step)
    rows = local_rows(batch_size, process_index, process_count)
    return windows_at(tokens, starts[rows], seq_len, packing=packing, eos_id=eos_id)


def eval_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_batches: int, *, process_index: int = 0,
                 process_count: int = 1, packing: bool = False, eos_id: int = EOS) -> list[dict]:
    """Fixed validation batches: batch_size * n_batches windows evenly spaced over the split (the same every
    evaluation and every run), each batch sliced per process like `batch_at`."""
    n_windows = len(tokens) - seq_len
    if n_windows < 1:
        raise UserError(f"The validation split has {len(tokens)} tokens, fewer than train.seq_len+1="
                        f"{seq_len + 1}: lower train.seq_len or raise data.valid_fraction.")
    total = batch_size * n_batches
    starts = np.linspace(0, n_windows - 1, num=total).round().astype(np.int64).reshape(n_batches, batch_size)
    rows = local_rows(batch_size, process_index, process_count)
    return [windows_at(tokens, s[rows], seq_len, packing=packing, eos_id=eos_id) for s in starts]


def global_batch(local: dict, sharding, *, global_batch_size: int | None = None) -> dict:
    """Assemble each process's rows into global jax.Arrays sharded by `sharding` (a Sharding, or a dict of
    them per key). The global batch is local rows × process count unless `global_batch_size` says otherwise."""
    import jax

    out = {}
    for name, array in local.items():
        rows = global_batch_size if global_batch_size is not None else array.shape[0] * jax.process_count()
        spec = sharding[name] if isinstance(sharding, dict) else sharding
        out[name] = jax.make_array_from_process_local_data(spec, array, (rows, *array.shape[1:]))
    return out
