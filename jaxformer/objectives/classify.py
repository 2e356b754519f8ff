"""Sequence classification (fine-tuning): one label per sequence from the classifier head on a pooled hidden
state ([CLS], last real token or mean of the real tokens); causal or not as the pretrained backbone was.
Batches are {"tokens": [B, T] right-padded with PAD, "labels": [B]}."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer.data.tokenizers import PAD
from jaxformer.objectives.base import Objective


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


class SequenceClassification(Objective):
    kind = "classify"
    head = "classifier"
    abilities = frozenset({"predict"})
    token_level = False

    @property
    def description(self) -> str:
        return f"a fine-tuned classifier (objective.kind=classify, {self.family} backbone)"

    @property
    def causal(self) -> bool:
        return self.cfg.causal

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        """A label < 0 marks a padding row (weight 0), which keeps the last evaluation batch full-sized. Real
        tokens are segment 1 and PAD segment 0, so no real token attends to padding (the result does not depend
        on how much padding there is)."""
        tokens, labels = batch["tokens"], batch["labels"]
        return {"inputs": tokens, "segment_ids": (tokens != PAD).astype(jnp.int32),
                "targets": jnp.maximum(labels, 0), "weights": (labels >= 0).astype(jnp.float32),
                "pool_weights": pool_weights(tokens, self.cfg.pooling)}

    def scores(self, model, hidden_BxTxD, ex):
        return model.classify(pool(hidden_BxTxD, ex["pool_weights"]))  # [B, D] -> [B, C]
