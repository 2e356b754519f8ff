"""Sequence classification (fine-tuning): one label per sequence from the classifier head on a pooled hidden
state ([CLS], last real token or mean of the real tokens); causal or not as the pretrained backbone was.
Batches are {"tokens": [B, T] right-padded with the vocabulary's fill id (`SpecialIds.fill`: PAD, or EOS where
there is no PAD), "labels": [B]}."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxformer.data.tokenizers import PAD
from jaxformer.errors import UserError
from jaxformer.objectives.base import Objective

if TYPE_CHECKING:
    from jaxformer.config import Config, ObjectiveConfig


def pool_weights(tokens_BxT: jax.Array, pooling: str, pad_id: int = PAD) -> jax.Array:
    """[B, T] float32 weights, each row summing to 1, that pool hidden states over the sequence: `cls` picks
    position 0, `last` the last real (non-PAD) token, `mean` averages the real tokens (specials included).
    Sequences are right-padded with `pad_id` (the vocabulary's fill id, see `SpecialIds.fill`)."""
    real_BxT = tokens_BxT != pad_id
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
    reads_corpus = False

    @classmethod
    def resolve_config(cls, o: ObjectiveConfig) -> ObjectiveConfig:
        return o if o.pooling else replace(o, pooling="last" if o.causal else "cls")

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        o = cfg.objective
        if o.n_classes < 2:
            raise UserError(f"Bad value {o.n_classes} for objective.n_classes: a classifier needs at least 2 classes.")
        if o.pooling not in ("", "cls", "last", "mean"):
            raise UserError(f"Bad value {o.pooling!r} for objective.pooling: choose one of cls, last, mean.")
        if o.pooling == "cls" and o.causal:
            raise UserError("objective.pooling=cls needs a bidirectional (encoder) backbone: under causal attention "
                            "the first token sees nothing else; use last or mean.")

    @property
    def description(self) -> str:
        return f"a fine-tuned classifier (objective.kind=classify, {self.family} backbone)"

    @property
    def causal(self) -> bool:
        return self.cfg.causal

    @property
    def last_block_at_slots(self) -> bool:
        return self.cfg.pooling in ("cls", "last")  # one position per sequence; the mean reads every one

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        """A label < 0 marks a padding row (weight 0), which keeps the last evaluation batch full-sized. Real
        tokens are segment 1 and PAD segment 0, so no real token attends to padding (the result does not depend
        on how much padding there is)."""
        tokens, labels, fill = batch["tokens"], batch["labels"], self.specials.fill
        return {"inputs": tokens, "segment_ids": (tokens != fill).astype(jnp.int32),
                "targets": jnp.maximum(labels, 0), "weights": (labels >= 0).astype(jnp.float32),
                "pool_weights": pool_weights(tokens, self.cfg.pooling, fill)}

    def scores(self, model, hidden_BxTxD, ex):
        return model.classify(pool(hidden_BxTxD, ex["pool_weights"]))  # [B, D] -> [B, C]

    def logits(self, model, ex: dict, *, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """[CLS] / last-token pooling reads one position per sequence: the model is asked for that row alone
        (with `model.last_block_slots_only` the last block computes no other), the same logits."""
        if not self.last_block_at_slots:
            return super().logits(model, ex, rng=rng)
        rows_Bx1 = jnp.argmax(ex["pool_weights"], axis=1)[:, None]  # the one-hot pooling weights' position
        h_Bx1xD, aux = self.forward(model, ex, rng=rng, rows_BxR=rows_Bx1)
        return model.classify(h_Bx1xD[:, 0].astype(jnp.float32)).astype(jnp.float32), aux
