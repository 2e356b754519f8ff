"""Token classification (NER fine-tuning): one tag per word from the classifier head applied at every position;
causal or not as the pretrained backbone was. Batches are {"tokens": [B, T] right-padded with the vocabulary's
fill id, "labels": [B, T]} where a label < 0 (specials, padding, a word's later subwords) carries no loss, so
each word is scored once, at its first subword (see `data/tagging_batches.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxformer.errors import UserError
from jaxformer.objectives.base import Objective

if TYPE_CHECKING:
    from jaxformer.config import Config


class TokenClassification(Objective):
    kind = "tag"
    head = "classifier"
    abilities = frozenset({"predict"})
    token_level = False  # not a language model: no perplexity, and no pretraining corpus to load
    reads_corpus = False

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        o = cfg.objective
        if o.n_classes < 2:
            raise UserError(f"Bad value {o.n_classes} for objective.n_classes: a tagger needs at least 2 tags.")
        if o.pooling:
            raise UserError("objective.pooling applies to sequence classification: a tagger scores every word, "
                            "leave it unset.")

    @property
    def description(self) -> str:
        return f"a fine-tuned tagger (objective.kind=tag, {self.family} backbone)"

    @property
    def causal(self) -> bool:
        return self.cfg.causal

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        """As in sequence classification, real tokens are segment 1 and padding segment 0, so no real token
        attends to padding and a word's tag does not depend on how the row was padded."""
        tokens, labels = batch["tokens"], batch["labels"]
        return {"inputs": tokens, "segment_ids": (tokens != self.specials.fill).astype(jnp.int32),
                "targets": jnp.maximum(labels, 0), "weights": (labels >= 0).astype(jnp.float32)}

    def scores(self, model, hidden_BxTxD, ex):
        return model.classify(hidden_BxTxD)  # the head on every position: [B, T, D] -> [B, T, C]
