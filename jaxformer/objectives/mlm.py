"""MLM (encoder): mask `mask_rate` of the ordinary tokens (80% [MASK] / 10% random / 10% kept, configurable),
drawn on device from the step's RNG (dynamic masking, RoBERTa style); loss on the masked positions only, whose
hidden states alone go through the vocabulary head; bidirectional attention.

With `objective.pair_task` (nsp | sop) the batches are sentence pairs `[CLS] A [SEP] B [SEP]` (data/pairs.py)
and the loss is BERT's: mean MLM loss + mean pair loss (2-way, on the pooled [CLS] state), from ONE forward pass.
It is a setting of this kind rather than a kind of its own because everything else (masking, the MLM head,
fill-mask, the step) is MLM's; only the batch and one extra loss term differ."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

from jaxformer.data.tokenizers import SpecialIds
from jaxformer.errors import UserError
from jaxformer.objectives.base import Objective

if TYPE_CHECKING:
    from jaxformer.config import Config


def n_mask_slots(mask_rate: float, seq_len: int) -> int:
    """Fixed number of prediction slots M per row (static shape), enough for `mask_rate` of a full row."""
    return max(1, math.ceil(mask_rate * seq_len))


def _leading(specials: SpecialIds) -> int:
    """How many special ids form the block 0, 1, ..., n-1 (all 8 of jaxformer's fixed table)."""
    n = 0
    while n in specials.all:
        n += 1
    return n


def is_ordinary(tokens: jax.Array, specials: SpecialIds) -> jax.Array:
    """True where a token is ordinary text, not one of the vocabulary's special ids."""
    n = _leading(specials)
    ordinary = tokens >= n
    for special_id in specials.all[n:]:  # a handful of scattered ids (an imported vocabulary's [CLS], [SEP], ...)
        ordinary &= tokens != special_id
    return ordinary


def random_ordinary_ids(rng: jax.Array, shape: tuple[int, ...], vocab_size: int, specials: SpecialIds) -> jax.Array:
    """Uniform over the ordinary ids of [0, vocab_size): a draw over the leading block's complement, then shifted
    past each scattered special id in increasing order (with jaxformer's table: exactly randint(N_SPECIAL, V))."""
    n = _leading(specials)
    scattered = [i for i in specials.all[n:] if i < vocab_size]
    ids = jax.random.randint(rng, shape, n, vocab_size - len(scattered))
    for special_id in scattered:
        ids = ids + (ids >= special_id)
    return ids


class MaskedLM(Objective):
    kind = "mlm"
    head = "mlm"
    abilities = frozenset({"fill-mask"})
    pair_tasks = True

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if SpecialIds.parse(cfg.data.special_ids).mask is None:
            raise UserError("objective.kind=mlm needs a [MASK] token, and this run's tokenizer has none: use "
                            "objective.kind=clm.")

    @property
    def causal(self) -> bool:
        return False

    @property
    def last_block_at_slots(self) -> bool:
        return True

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        ex = self.with_packing(self.mask_tokens(batch["tokens"][:, :-1], rng), batch)
        if self.cfg.pair_task:  # pair rows keep the T+1 window shape of every batch; the last column is padding
            ex.update(token_types=batch["token_types"][:, :-1], pair_labels=batch["pair_labels"])
        return ex

    def loss_sums(self, model, ex: dict, *, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        if not self.cfg.pair_task:
            return super().loss_sums(model, ex, rng=rng)
        h_BxMxD, cls_BxD, aux = self.slot_and_cls_states(model, ex, rng=rng, cls=True)
        mlm_sum, stats = self.prediction_sums(self.head_logits(model, h_BxMxD).astype(jnp.float32), ex, aux)
        pair_logits_Bx2 = model.pair_logits(cls_BxD).astype(jnp.float32)
        labels_B = ex["pair_labels"]
        xent_B = optax.softmax_cross_entropy_with_integer_labels(pair_logits_Bx2, labels_B)
        correct_B = (jnp.argmax(pair_logits_Bx2, -1) == labels_B).astype(jnp.float32)
        return mlm_sum, {**stats, "pair_loss_sum": xent_B.sum(), "pair_correct": correct_B.sum(),
                         "n_pairs": jnp.asarray(labels_B.shape[0], jnp.float32)}

    def counts(self, ex: dict) -> dict:
        counts = super().counts(ex)
        if self.cfg.pair_task:
            counts["n_pairs"] = jnp.asarray(ex["pair_labels"].shape[0], jnp.float32)
        return counts

    def total_loss(self, loss_sum, stats, counts):
        mlm = super().total_loss(loss_sum, stats, counts)
        return mlm + stats["pair_loss_sum"] / counts["n_pairs"] if self.cfg.pair_task else mlm

    def step_metrics(self, loss_sum, stats, counts):
        out = super().step_metrics(loss_sum, stats, counts)
        if self.cfg.pair_task:
            pair = {"pair_loss": stats["pair_loss_sum"] / counts["n_pairs"],
                    "pair_accuracy": stats["pair_correct"] / counts["n_pairs"]}
            out = {"loss": out["loss"] + pair["pair_loss"], "mlm_loss": out["loss"], "accuracy": out["accuracy"],
                   **pair}
        return out

    def eval_metrics(self, totals: dict) -> dict:
        out = super().eval_metrics(totals)
        if self.cfg.pair_task:
            n = max(totals["n_pairs"], 1.0)
            pair = {"pair_loss": totals["pair_loss_sum"] / n, "pair_accuracy": totals["pair_correct"] / n}
            out = {"loss": out["loss"] + pair["pair_loss"], "mlm_loss": out["loss"], "accuracy": out["accuracy"],
                   **pair}
        return out

    def mask_tokens(self, tokens_BxT: jax.Array, rng: jax.Array) -> dict:
        """Choose round(mask_rate * n_ordinary) ordinary tokens per row, corrupt them 80/10/10.

        Returns inputs [B, T], the chosen positions [B, M], their original ids [B, M] and weights [B, M]
        (0 for unused slots). Special tokens (`self.specials.all`: pad, cls, sep, ...) are never chosen, nor
        drawn as random replacements.
        """
        o = self.cfg
        b, t = tokens_BxT.shape
        m = n_mask_slots(o.mask_rate, t)
        rng_pick, rng_action, rng_random = jax.random.split(rng, 3)
        ordinary_BxT = is_ordinary(tokens_BxT, self.specials)
        scores_BxT = jnp.where(ordinary_BxT, jax.random.uniform(rng_pick, (b, t)), -1.0)
        _, positions_BxM = jax.lax.top_k(scores_BxT, m)  # a uniformly random order of the ordinary tokens
        n_to_mask_B = jnp.round(o.mask_rate * ordinary_BxT.sum(-1)).astype(jnp.int32)
        chosen_BxM = (jnp.arange(m)[None, :] < n_to_mask_B[:, None]) & jnp.take_along_axis(ordinary_BxT,
                                                                                            positions_BxM, 1)
        targets_BxM = jnp.take_along_axis(tokens_BxT, positions_BxM, 1)

        u_BxM = jax.random.uniform(rng_action, (b, m))
        random_ids_BxM = random_ordinary_ids(rng_random, (b, m), self.vocab_size, self.specials)
        replaced_BxM = jnp.where(u_BxM < o.mask_token_frac, self.specials.mask,
                                 jnp.where(u_BxM < o.mask_token_frac + o.random_token_frac,
                                           random_ids_BxM, targets_BxM))
        replaced_BxM = jnp.where(chosen_BxM, replaced_BxM, targets_BxM)
        inputs_BxT = tokens_BxT.at[jnp.arange(b)[:, None], positions_BxM].set(replaced_BxM)
        return {"inputs": inputs_BxT, "mask_positions": positions_BxM, "targets": targets_BxM,
                "weights": chosen_BxM.astype(jnp.float32)}

    def slot_states(self, model, ex, *, rng=None):
        h_BxMxD, _, aux = self.slot_and_cls_states(model, ex, rng=rng, cls=False)
        return h_BxMxD, aux

    def slot_and_cls_states(self, model, ex, *, rng, cls: bool):
        """The final states at the masked positions [B, M, D], at [CLS] (position 0) [B, D] when `cls` (pair
        tasks) else None, and the MoE auxiliary loss: the loss reads nothing else of the last block, so with
        `model.last_block_slots_only` it computes these rows alone, all but the key and value projections that
        every position still needs (dropout there draws its masks at these rows only)."""
        rows_BxR = ex["mask_positions"]
        if cls:
            rows_BxR = jnp.concatenate([jnp.zeros_like(rows_BxR[:, :1]), rows_BxR], axis=1)
        h_BxRxD, aux = self.forward(model, ex, rng=rng, rows_BxR=rows_BxR)
        return (h_BxRxD[:, 1:], h_BxRxD[:, 0], aux) if cls else (h_BxRxD, None, aux)

    def slot_hidden(self, hidden_BxTxD, ex):
        # Only the masked positions reach the head: [B, T, D] -> [B, M, D].
        return jnp.take_along_axis(hidden_BxTxD, ex["mask_positions"][..., None], axis=1)
