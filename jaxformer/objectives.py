"""The two pretraining objectives as data: `prepare` turns a batch of token windows into model inputs,
targets and loss weights; `loss_sums` runs the model and returns summed loss terms.

CLM (decoder): predict token t+1 from tokens <= t, every real position carries loss, causal attention.
MLM (encoder): mask `mask_rate` of the ordinary tokens (80% [MASK] / 10% random / 10% kept, configurable),
drawn on device from the step's RNG (dynamic masking, RoBERTa style), loss on masked positions only,
bidirectional attention. Both share the batcher, the model and the train step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxformer.config import ObjectiveConfig
from jaxformer.data.tokenizers import MASK, N_SPECIAL, PAD


def is_causal(objective: ObjectiveConfig) -> bool:
    return objective.kind == "clm"


def n_mask_slots(objective: ObjectiveConfig, seq_len: int) -> int:
    """Fixed number of prediction slots per row (static shape), enough for `mask_rate` of a full row."""
    return max(1, math.ceil(objective.mask_rate * seq_len))


def mask_tokens(tokens_BxT: jax.Array, rng: jax.Array, objective: ObjectiveConfig, vocab_size: int) -> dict:
    """Choose round(mask_rate * n_ordinary) ordinary tokens per row, corrupt them 80/10/10.

    Returns inputs [B, T], the chosen positions [B, M], their original ids [B, M] and weights [B, M]
    (0 for unused slots). Special tokens (id < N_SPECIAL: pad, cls, sep, ...) are never chosen.
    """
    b, t = tokens_BxT.shape
    m = n_mask_slots(objective, t)
    rng_pick, rng_action, rng_random = jax.random.split(rng, 3)
    ordinary_BxT = tokens_BxT >= N_SPECIAL
    scores_BxT = jnp.where(ordinary_BxT, jax.random.uniform(rng_pick, (b, t)), -1.0)
    _, positions_BxM = jax.lax.top_k(scores_BxT, m)  # a uniformly random order of the ordinary tokens
    n_to_mask_B = jnp.round(objective.mask_rate * ordinary_BxT.sum(-1)).astype(jnp.int32)
    chosen_BxM = (jnp.arange(m)[None, :] < n_to_mask_B[:, None]) & jnp.take_along_axis(ordinary_BxT, positions_BxM, 1)
    targets_BxM = jnp.take_along_axis(tokens_BxT, positions_BxM, 1)

    u_BxM = jax.random.uniform(rng_action, (b, m))
    random_ids_BxM = jax.random.randint(rng_random, (b, m), N_SPECIAL, vocab_size)
    replaced_BxM = jnp.where(u_BxM < objective.mask_token_frac, MASK,
                             jnp.where(u_BxM < objective.mask_token_frac + objective.random_token_frac,
                                       random_ids_BxM, targets_BxM))
    replaced_BxM = jnp.where(chosen_BxM, replaced_BxM, targets_BxM)
    inputs_BxT = tokens_BxT.at[jnp.arange(b)[:, None], positions_BxM].set(replaced_BxM)
    return {"inputs": inputs_BxT, "mask_positions": positions_BxM, "targets": targets_BxM,
            "weights": chosen_BxM.astype(jnp.float32)}


def prepare(batch: dict, rng: jax.Array, objective: ObjectiveConfig, vocab_size: int) -> dict:
    """Batch windows `tokens` [B, T+1] (+ optional packing `segment_ids`, `positions`) -> model inputs/targets."""
    tokens = batch["tokens"]
    if objective.kind == "clm":
        ex = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
        weights = tokens[:, 1:] != PAD
        if "segment_ids" in batch:  # never predict across a document boundary
            seg = batch["segment_ids"]
            weights &= (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        ex["weights"] = weights.astype(jnp.float32)
    else:
        ex = mask_tokens(tokens[:, :-1], rng, objective, vocab_size)
    for key in ("segment_ids", "positions"):
        if key in batch:
            ex[key] = batch[key][:, :-1]
    return ex


def loss_sums(model, ex: dict, *, causal: bool, rng: jax.Array | None) -> tuple[jax.Array, dict]:
    """Summed cross-entropy over weighted positions, plus sums for accuracy and the MoE auxiliary loss."""
    hidden_BxTxD, aux, _ = model(ex["inputs"], causal=causal, positions_BxT=ex.get("positions"),
                                 segment_ids_BxT=ex.get("segment_ids"), rng=rng)
    if "mask_positions" in ex:  # project only the masked positions: [B, M, D] -> [B, M, V]
        h = jnp.take_along_axis(hidden_BxTxD, ex["mask_positions"][..., None], axis=1)
        logits = model.mlm_logits(h)
    else:
        logits = model.logits(hidden_BxTxD)
    logits = logits.astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, ex["targets"])
    w = ex["weights"]
    correct = (jnp.argmax(logits, -1) == ex["targets"]).astype(jnp.float32)
    return jnp.sum(xent * w), {"correct": jnp.sum(correct * w), "n_tokens": jnp.sum(w), "aux": aux}
