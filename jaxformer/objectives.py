"""The objectives as data: `prepare` turns a batch into model inputs, targets and loss weights; `loss_sums`
runs the model and returns summed loss terms.

CLM (decoder): predict token t+1 from tokens <= t, every real position carries loss, causal attention.
MLM (encoder): mask `mask_rate` of the ordinary tokens (80% [MASK] / 10% random / 10% kept, configurable),
drawn on device from the step's RNG (dynamic masking, RoBERTa style), loss on masked positions only,
bidirectional attention. Both share the batcher, the model and the train step.
Classify (fine-tuning, see finetune.py): one label per sequence from the classifier head on a pooled hidden
state ([CLS], last real token or mean of the real tokens), causal or not as the pretrained backbone was; it
shares the model and the train step, with its own batches {"tokens": [B, T], "labels": [B]}.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxformer.config import ObjectiveConfig
from jaxformer.data.tokenizers import MASK, N_SPECIAL, PAD


def is_causal(objective: ObjectiveConfig) -> bool:
    return objective.causal if objective.kind == "classify" else objective.kind == "clm"


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


def pool_weights(tokens_BxT: jax.Array, pooling: str) -> jax.Array:
    """[B, T] float32 weights, each row summing to 1, that pool hidden states over the sequence: `cls` picks
    position 0, `last` the last real (non-PAD) token, `mean` averages the real tokens (specials included).
    Sequences are right-padded with PAD."""
    real_BxT = tokens_BxT != PAD
    if pooling == "mean":
        return real_BxT / jnp.maximum(real_BxT.sum(-1, keepdims=True), 1)
    t = tokens_BxT.shape[1]
    index_B = jnp.zeros(tokens_BxT.shape[0], jnp.int32) if pooling == "cls" else \
        jnp.maximum(real_BxT.sum(-1) - 1, 0)
    return (jnp.arange(t)[None, :] == index_B[:, None]).astype(jnp.float32)


def pool(hidden_BxTxD: jax.Array, weights_BxT: jax.Array) -> jax.Array:
    """Weighted sum over positions in float32 (exact for the one-hot cls/last weights); positions of weight 0
    contribute nothing, not even a NaN."""
    w_BxTx1 = weights_BxT[..., None]
    return jnp.sum(jnp.where(w_BxTx1 > 0, hidden_BxTxD.astype(jnp.float32) * w_BxTx1, 0.0), axis=1)


def prepare(batch: dict, rng: jax.Array, objective: ObjectiveConfig, vocab_size: int) -> dict:
    """Batch windows `tokens` [B, T+1] (+ optional packing `segment_ids`, `positions`) -> model inputs/targets.

    Classification batches are `tokens` [B, T] (right-padded with PAD) and `labels` [B]; a label < 0 marks a
    padding row (weight 0), which keeps the last evaluation batch full-sized. Real tokens are segment 1 and PAD
    segment 0, so no real token attends to padding (the result does not depend on how much padding there is)."""
    tokens = batch["tokens"]
    if objective.kind == "classify":
        labels = batch["labels"]
        return {"inputs": tokens, "segment_ids": (tokens != PAD).astype(jnp.int32),
                "targets": jnp.maximum(labels, 0), "weights": (labels >= 0).astype(jnp.float32),
                "pool_weights": pool_weights(tokens, objective.pooling)}
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
    if "pool_weights" in ex:  # classification: one prediction per sequence, [B, D] -> [B, C]
        logits = model.classify(pool(hidden_BxTxD, ex["pool_weights"]))
    elif "mask_positions" in ex:  # project only the masked positions: [B, M, D] -> [B, M, V]
        h = jnp.take_along_axis(hidden_BxTxD, ex["mask_positions"][..., None], axis=1)
        logits = model.mlm_logits(h)
    else:
        logits = model.logits(hidden_BxTxD)
    logits = logits.astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, ex["targets"])
    w = ex["weights"]
    # "target logit is the max" reuses the max that the log-softmax computes (an argmax would be a second pass
    # over [B, T, V]: ~5% of a small CLM step); ties count as correct.
    target_logit = jnp.take_along_axis(logits, ex["targets"][..., None], axis=-1)[..., 0]
    correct = (target_logit >= logits.max(-1)).astype(jnp.float32)
    return jnp.sum(xent * w), {"correct": jnp.sum(correct * w), "n_tokens": jnp.sum(w), "aux": aux}
