"""CLM (decoder): predict token t+1 from tokens <= t; every real position carries loss; causal attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer.objectives.base import Objective


class CausalLM(Objective):
    kind = "clm"
    head = "lm"
    abilities = frozenset({"sample"})

    @property
    def causal(self) -> bool:
        return True

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        """Windows `tokens` [B, T+1] (+ packing `segment_ids`, `positions`) -> inputs/targets [B, T]."""
        tokens = batch["tokens"]
        ex = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
        pad = self.specials.pad  # None: the vocabulary has no padding token (GPT-2), every target counts
        weights = tokens[:, 1:] != pad if pad is not None else jnp.ones(tokens[:, 1:].shape, bool)
        if "segment_ids" in batch:  # never predict across a document boundary
            seg = batch["segment_ids"]
            weights &= (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        ex["weights"] = weights.astype(jnp.float32)
        return self.with_packing(ex, batch)

    def slot_hidden(self, hidden_BxTxD, ex):
        return hidden_BxTxD  # every position predicts the next token
