"""Decoding from a trained decoder (KV cache, greedy / temperature / top-k / top-p) and fill-mask for encoders.

`generate` left-pads a batch of prompts to a bucket length, gives the pads position -1 (so the KV cache never
writes them and the attention mask hides them: a padded row computes exactly what that prompt computes alone),
runs ONE jit-compiled prefill over the bucket and ONE jit-compiled `lax.while_loop` that feeds one token per
step through the cache. Compiled shapes depend only on (batch, bucket, max_new_tokens) and on the sampling
mode (greedy / plain sampling / filtered sampling); temperature, k, p, seed and EOS are traced values.

`generate_uncached` is the slow reference: it re-runs the full forward over the growing sequence every step.
Both draw step i's sample with `fold_in(PRNGKey(seed), i)`, so with the same seed they agree token for token
(up to float noise deciding a near-tie).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer.errors import UserError

try:  # the tokenizer module owns the fixed special ids
    from jaxformer.data.tokenizers import MASK as MASK_ID
except ImportError:  # pragma: no cover - same fixed value, should the tokenizer module fail to import
    MASK_ID = 4

MIN_BUCKET = 16  # shortest compiled prompt length; buckets double from here
UNCACHED_CHUNK = 64  # the no-cache reference recompiles once per this many tokens of growth


# ---------------------------------------------------------------------------------------------- sampling

def sample_logits(logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array, *, greedy: bool, filtered: bool) -> jax.Array:
    """Next token per row: argmax (`greedy`), or a draw from softmax(logits / T) restricted to top-k / top-p.

    Filtering works on the vocabulary sorted by logit, by rank, so top-k keeps exactly k tokens even with
    ties, and top-p keeps the smallest prefix whose probability reaches p (the most likely token always stays).
    Top-p is applied after top-k, on the renormalised distribution (as Hugging Face does).
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = logits_BxV / temperature
    if not filtered:
        return jax.random.categorical(key, scaled_BxV, axis=-1).astype(jnp.int32)
    v = scaled_BxV.shape[-1]
    sorted_BxV, order_BxV = jax.lax.top_k(scaled_BxV, v)  # descending
    rank_V = jnp.arange(v)
    keep_BxV = rank_V < jnp.where(top_k > 0, top_k, v)
    sorted_BxV = jnp.where(keep_BxV, sorted_BxV, -jnp.inf)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # probability mass ranked above each token
    keep_BxV &= (before_BxV < top_p) | (rank_V == 0)
    choice_B = jax.random.categorical(key, jnp.where(keep_BxV, sorted_BxV, -jnp.inf), axis=-1)
    return jnp.take_along_axis(order_BxV, choice_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _sampling_mode(temperature: float, top_k: int, top_p: float) -> tuple[bool, bool]:
    greedy = temperature == 0.0  # top_k=1 goes through the filter on purpose: it is how tests check top-k
    filtered = not greedy and (top_k > 0 or top_p < 1.0)
    return greedy, filtered


# ---------------------------------------------------------------------------------------------- checks

def _model_of(graphdef, params):
    return nnx.merge(graphdef, params)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
    if not temperature >= 0.0:
        raise UserError(f"temperature must be >= 0 (0 = greedy), got {temperature}.")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 = off), got {top_k}.")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1] (1 = off), got {top_p}.")


def _prompt_rows(prompts, vocab_size: int, max_seq_len: int, max_new_tokens: int) -> list[np.ndarray]:
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        raise UserError("prompts must be a list of token-id sequences, not a single sequence: wrap it in a list.")
    rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    for i, row in enumerate(rows):
        if row.size == 0:
            raise UserError(f"Prompt {i} is empty: give at least one token (e.g. BOS).")
        if row.min() < 0 or row.max() >= vocab_size:
            raise UserError(f"Prompt {i} has token ids outside the model's vocabulary [0, {vocab_size}).")
        longest = max_seq_len - min(max_new_tokens, 1)
        if row.size > longest:  # not even one new token fits: the prompt itself is the problem
            raise UserError(f"Prompt {i} has {row.size} tokens, too long for the model's context of {max_seq_len} "
                            f"tokens: shorten it to at most {longest} tokens.")
        if row.size + max_new_tokens > max_seq_len:
            raise UserError(f"Prompt {i} has {row.size} tokens, which with max_new_tokens={max_new_tokens} exceeds "
                            f"the model's context of {max_seq_len} tokens: shorten the prompt or generate fewer.")
    return rows


def prompt_bucket(longest: int, max_new_tokens: int, max_seq_len: int) -> int:
    """Compiled prompt length: the next power of two >= longest (min 16), capped so bucket + new <= context."""
    bucket = max(MIN_BUCKET, 1 << max(longest - 1, 0).bit_length())
    return max(longest, min(bucket, max_seq_len - max_new_tokens))


def left_pad(rows: list[np.ndarray], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens [B, width] right-aligned, and positions [B, width] = 0.. on the prompt, -1 on the pads."""
    tokens_BxT = np.full((len(rows), width), pad_id, np.int32)
    positions_BxT = np.full((len(rows), width), -1, np.int32)
    for b, row in enumerate(rows):
        tokens_BxT[b, width - row.size:] = row
        positions_BxT[b, width - row.size:] = np.arange(row.size)
    return tokens_BxT, positions_BxT


def _trim(out_BxR: np.ndarray, eos_id: int | None) -> list[list[int]]:
    """Per row: the new tokens up to and including the first EOS."""
    result = []
    for row in out_BxR.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        result.append(row)
    return result


# ---------------------------------------------------------------------------------------------- cached decoding

@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "greedy", "filtered"))
def _prefill(graphdef, params, tokens_BxP, positions_BxP, key, temperature, top_k, top_p, *, cache_len: int,
             greedy: bool, filtered: bool):
    """Run the padded prompts through the model once, filling a fresh cache; sample the first new token."""
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(tokens_BxP.shape[0], cache_len)
    h_BxPxD, _, cache = model(tokens_BxP, causal=True, positions_BxT=positions_BxP, cache=cache)
    logits_BxV = model.logits(h_BxPxD[:, -1])  # left padding puts every row's last prompt token last
    first_B = sample_logits(logits_BxV, jax.random.fold_in(key, 0), temperature, top_k, top_p,
                            greedy=greedy, filtered=filtered)
    return first_B, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy", "filtered"))
def _decode(graphdef, params, cache, first_B, lengths_B, key, temperature, top_k, top_p, eos_id, pad_id, *,
            max_new_tokens: int, greedy: bool, filtered: bool):
    """One token per iteration through the cache, until max_new_tokens or every row has emitted EOS."""
    model = nnx.merge(graphdef, params)
    out_BxR = jnp.full((first_B.shape[0], max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first_B)
    done_B = first_B == eos_id

    def cond(state):
        i, _, done_B, _, _ = state
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(state):
        i, token_B, done_B, cache, out_BxR = state
        # The token emitted at step i-1 sits at position len + i - 1.
        positions_Bx1 = (lengths_B + i - 1)[:, None]
        h_Bx1xD, _, cache = model(token_B[:, None], causal=True, positions_BxT=positions_Bx1, cache=cache)
        next_B = sample_logits(model.logits(h_Bx1xD[:, 0]), jax.random.fold_in(key, i), temperature, top_k,
                               top_p, greedy=greedy, filtered=filtered)
        next_B = jnp.where(done_B, pad_id, next_B)
        out_BxR = jax.lax.dynamic_update_slice(out_BxR, next_B[:, None], (0, i))
        return i + 1, next_B, done_B | (next_B == eos_id), cache, out_BxR

    state = (jnp.int32(1), first_B, done_B, cache, out_BxR)
    return jax.lax.while_loop(cond, body, state)[-1]


def _checked_request(graphdef, params, prompts, max_new_tokens, temperature, top_k, top_p):
    """The shared refusals of both decoders: (model config, prompt rows) or a UserError."""
    model = _model_of(graphdef, params)
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    cfg = model.cfg
    return cfg, _prompt_rows(prompts, cfg.vocab_size, cfg.max_seq_len, max_new_tokens)


def generate(graphdef, params, prompts: Sequence[np.ndarray | Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """New tokens for each prompt (up to and including EOS when `eos_id` is given), decoded with a KV cache.

    temperature 0 is greedy (argmax). Raises UserError for an encoder model, an empty prompt, ids outside
    the vocabulary, or a prompt that with max_new_tokens does not fit the context (`model.max_seq_len`).
    """
    cfg, rows = _checked_request(graphdef, params, prompts, max_new_tokens, temperature, top_k, top_p)
    if not rows or max_new_tokens == 0:
        return [[] for _ in rows]
    bucket = prompt_bucket(max(r.size for r in rows), max_new_tokens, cfg.max_seq_len)
    tokens_BxP, positions_BxP = left_pad(rows, bucket, pad_id)
    greedy, filtered = _sampling_mode(temperature, top_k, top_p)
    key = jax.random.PRNGKey(seed)
    knobs = (jnp.float32(max(temperature, 1e-30)), jnp.int32(top_k), jnp.float32(top_p))
    first_B, cache = _prefill(graphdef, params, tokens_BxP, positions_BxP, key, *knobs,
                              cache_len=bucket + max_new_tokens, greedy=greedy, filtered=filtered)
    if max_new_tokens == 1:  # nothing left to decode: skip compiling the loop
        return _trim(np.asarray(first_B)[:, None], eos_id)
    lengths_B = jnp.asarray([r.size for r in rows], jnp.int32)
    out_BxR = _decode(graphdef, params, cache, first_B, lengths_B, key, *knobs,
                      jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id),
                      max_new_tokens=max_new_tokens, greedy=greedy, filtered=filtered)
    return _trim(np.asarray(out_BxR), eos_id)


# ---------------------------------------------------------------------------------------------- reference

@functools.partial(jax.jit, static_argnames=("graphdef", "width", "greedy", "filtered"))
def _uncached_step(graphdef, params, tokens_BxL, positions_BxL, cur, done_B, key, temperature, top_k, top_p,
                   eos_id, pad_id, *, width: int, greedy: bool, filtered: bool):
    """Full forward over the first `width` columns; sample column `cur` from the logits at column cur - 1."""
    model = nnx.merge(graphdef, params)
    positions_BxW = positions_BxL[:, :width]
    # Explicit positions + segment ids take the masked attention path: pads (position -1, segment 0) are
    # invisible, and columns >= cur hold later positions, which the causal mask hides.
    h_BxWxD, _, _ = model(tokens_BxL[:, :width], causal=True, positions_BxT=positions_BxW,
                          segment_ids_BxT=(positions_BxW >= 0).astype(jnp.int32))
    h_BxD = jax.lax.dynamic_index_in_dim(h_BxWxD, cur - 1, axis=1, keepdims=False)
    next_B = sample_logits(model.logits(h_BxD), key, temperature, top_k, top_p, greedy=greedy, filtered=filtered)
    next_B = jnp.where(done_B, pad_id, next_B)
    tokens_BxL = jax.lax.dynamic_update_slice(tokens_BxL, next_B[:, None], (0, cur))
    return tokens_BxL, done_B | (next_B == eos_id)


def generate_uncached(graphdef, params, prompts: Sequence[np.ndarray | Sequence[int]], *, max_new_tokens: int,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                      eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """Reference decoder without a cache: same arguments and result as `generate`, far slower.

    Each step re-runs the model over the whole sequence so far (rounded up to a multiple of 64 columns, so it
    compiles a handful of times, not once per length). It always runs max_new_tokens steps.
    """
    cfg, rows = _checked_request(graphdef, params, prompts, max_new_tokens, temperature, top_k, top_p)
    if not rows or max_new_tokens == 0:
        return [[] for _ in rows]
    longest = max(r.size for r in rows)
    total = longest + max_new_tokens
    tokens_BxP, positions_BxP = left_pad(rows, longest, pad_id)
    tokens_BxL = np.concatenate([tokens_BxP, np.full((len(rows), max_new_tokens), pad_id, np.int32)], axis=1)
    lengths_B = np.asarray([r.size for r in rows], np.int32)
    positions_BxL = np.concatenate([positions_BxP, lengths_B[:, None] + np.arange(max_new_tokens)], axis=1)
    tokens_BxL, positions_BxL = jnp.asarray(tokens_BxL), jnp.asarray(positions_BxL.astype(np.int32))
    greedy, filtered = _sampling_mode(temperature, top_k, top_p)
    key = jax.random.PRNGKey(seed)
    knobs = (jnp.float32(max(temperature, 1e-30)), jnp.int32(top_k), jnp.float32(top_p),
             jnp.int32(-1 if eos_id is None else eos_id), jnp.int32(pad_id))
    done_B = jnp.zeros((len(rows),), bool)
    for i in range(max_new_tokens):
        cur = longest + i
        width = min(-(-cur // UNCACHED_CHUNK) * UNCACHED_CHUNK, total)
        tokens_BxL, done_B = _uncached_step(graphdef, params, tokens_BxL, positions_BxL, jnp.int32(cur), done_B,
                                            jax.random.fold_in(key, i), *knobs, width=width, greedy=greedy,
                                            filtered=filtered)
    return _trim(np.asarray(tokens_BxL[:, longest:]), eos_id)


# ---------------------------------------------------------------------------------------------- fill-mask

@functools.partial(jax.jit, static_argnames=("graphdef", "top_k"))
def _mask_probs(graphdef, params, tokens_1xT, mask_at_M, *, top_k: int):
    model = nnx.merge(graphdef, params)
    h_1xTxD, _, _ = model(tokens_1xT, causal=False)
    probs_MxV = jax.nn.softmax(model.mlm_logits(h_1xTxD[0, mask_at_M]).astype(jnp.float32), axis=-1)
    return jax.lax.top_k(probs_MxV, top_k)


def fill_mask(graphdef, params, ids_with_mask: Sequence[int] | np.ndarray, top_k: int = 5, *,
              mask_id: int = MASK_ID) -> list[list[tuple[int, float]]]:
    """For each MASK in the sequence (left to right): the top_k (token_id, probability) under the MLM head.
    The model must have one: open runs with `run.open_run` and ask `run.objective.require("fill-mask", ...)`."""
    model = _model_of(graphdef, params)
    ids_T = np.asarray(ids_with_mask, np.int32).reshape(-1)
    cfg = model.cfg
    mask_at_M = np.flatnonzero(ids_T == mask_id)
    if mask_at_M.size == 0:
        raise UserError("The input has no [MASK] token: put [MASK] where a word should be predicted.")
    if ids_T.size > cfg.max_seq_len:
        raise UserError(f"The input has {ids_T.size} tokens, more than the model's context of {cfg.max_seq_len}: "
                        "shorten it.")
    if ids_T.min() < 0 or ids_T.max() >= cfg.vocab_size:
        raise UserError(f"The input has token ids outside the model's vocabulary [0, {cfg.vocab_size}).")
    k = max(1, min(int(top_k), cfg.vocab_size))
    probs_MxK, ids_MxK = _mask_probs(graphdef, params, jnp.asarray(ids_T[None]), jnp.asarray(mask_at_M), top_k=k)
    probs_MxK, ids_MxK = np.asarray(probs_MxK), np.asarray(ids_MxK)
    return [[(int(t), float(p)) for t, p in zip(ids_K, probs_K, strict=True)]
            for ids_K, probs_K in zip(ids_MxK, probs_MxK, strict=True)]
