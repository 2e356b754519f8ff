"""MLM (encoder): mask `mask_rate` of the ordinary tokens (80% [MASK] / 10% random / 10% kept, configurable),
drawn on device from the step's RNG (dynamic masking, RoBERTa style); loss on the masked positions only, whose
hidden states alone go through the vocabulary head; bidirectional attention."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxformer.data.tokenizers import MASK, N_SPECIAL
from jaxformer.objectives.base import Objective


def n_mask_slots(mask_rate: float, seq_len: int) -> int:
    """Fixed number of prediction slots M per row (static shape), enough for `mask_rate` of a full row."""
    return max(1, math.ceil(mask_rate * seq_len))


class MaskedLM(Objective):
    kind = "mlm"
    head = "mlm"
    abilities = frozenset({"fill-mask"})

    @property
    def causal(self) -> bool:
        return False

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        return self.with_packing(self.mask_tokens(batch["tokens"][:, :-1], rng), batch)

    def mask_tokens(self, tokens_BxT: jax.Array, rng: jax.Array) -> dict:
        """Choose round(mask_rate * n_ordinary) ordinary tokens per row, corrupt them 80/10/10.

        Returns inputs [B, T], the chosen positions [B, M], their original ids [B, M] and weights [B, M]
        (0 for unused slots). Special tokens (id < N_SPECIAL: pad, cls, sep, ...) are never chosen.
        """
        o = self.cfg
        b, t = tokens_BxT.shape
        m = n_mask_slots(o.mask_rate, t)
        rng_pick, rng_action, rng_random = jax.random.split(rng, 3)
        ordinary_BxT = tokens_BxT >= N_SPECIAL
        scores_BxT = jnp.where(ordinary_BxT, jax.random.uniform(rng_pick, (b, t)), -1.0)
        _, positions_BxM = jax.lax.top_k(scores_BxT, m)  # a uniformly random order of the ordinary tokens
        n_to_mask_B = jnp.round(o.mask_rate * ordinary_BxT.sum(-1)).astype(jnp.int32)
        chosen_BxM = (jnp.arange(m)[None, :] < n_to_mask_B[:, None]) & jnp.take_along_axis(ordinary_BxT,
                                                                                            positions_BxM, 1)
        targets_BxM = jnp.take_along_axis(tokens_BxT, positions_BxM, 1)

        u_BxM = jax.random.uniform(rng_action, (b, m))
        random_ids_BxM = jax.random.randint(rng_random, (b, m), N_SPECIAL, self.vocab_size)
        replaced_BxM = jnp.where(u_BxM < o.mask_token_frac, MASK,
                                 jnp.where(u_BxM < o.mask_token_frac + o.random_token_frac,
                                           random_ids_BxM, targets_BxM))
        replaced_BxM = jnp.where(chosen_BxM, replaced_BxM, targets_BxM)
        inputs_BxT = tokens_BxT.at[jnp.arange(b)[:, None], positions_BxM].set(replaced_BxM)
        return {"inputs": inputs_BxT, "mask_positions": positions_BxM, "targets": targets_BxM,
                "weights": chosen_BxM.astype(jnp.float32)}

    def scores(self, model, hidden_BxTxD, ex):
        # Project only the masked positions: [B, M, D] -> [B, M, V].
        h_BxMxD = jnp.take_along_axis(hidden_BxTxD, ex["mask_positions"][..., None], axis=1)
        return model.mlm_logits(h_BxMxD)
