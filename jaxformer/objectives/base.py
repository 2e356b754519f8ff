"""What every objective is: `prepare` (batch -> model inputs, targets, loss weights), the head that scores the
predicted positions, the attention it trains under, and what a trained run of it can do.

A new kind (NSP, distillation, token classification, ...) subclasses `Objective`, sets the class attributes and
`prepare` / `scores`, and registers itself in `objectives/__init__.py`; `train.train_step` stays one function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp

from jaxformer.data.tokenizer_base import DEFAULT_SPECIALS, SpecialIds
from jaxformer.errors import UserError
from jaxformer.objectives.xent import fused_xent_sums, xent_sums

if TYPE_CHECKING:
    from jaxformer.config import Config, ObjectiveConfig

# What a trained run can be asked to do -> the command that does it (for "use this instead" hints).
ABILITY_COMMANDS = {"sample": "jaxformer sample", "fill-mask": "jaxformer fill-mask", "predict": "jaxformer predict"}
# What a run must be to do it (for "... needs ..." in the same hints).
ABILITY_NEEDS = {"sample": "a decoder run (objective.kind=clm)", "fill-mask": "an encoder run (objective.kind=mlm)",
                 "predict": "a fine-tuned classifier (made by jaxformer finetune)"}


@dataclass(frozen=True)
class Objective:
    cfg: ObjectiveConfig
    vocab_size: int
    specials: SpecialIds = DEFAULT_SPECIALS  # the vocabulary's PAD/EOS/MASK/... ids (data.special_ids)

    kind: ClassVar[str]
    head: ClassVar[str]  # the Transformer head it trains: "lm", "mlm" or "classifier"
    abilities: ClassVar[frozenset[str]] = frozenset()  # what a trained run supports: "sample", "fill-mask", "predict"
    token_level: ClassVar[bool] = True  # one prediction per token (perplexity/bpc mean something), else per example
    reads_corpus: ClassVar[bool] = True  # trains on the corpus `cfg.data` names; False: brings its own examples
    pair_tasks: ClassVar[bool] = False  # whether objective.pair_task (NSP / SOP) can train beside it

    @classmethod
    def resolve_config(cls, o: ObjectiveConfig) -> ObjectiveConfig:
        """Fill this kind's derived settings (config.resolve calls it)."""
        return o

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        """Raise UserError for settings this kind cannot use (config.validate calls it)."""
        if cfg.objective.linear_probe:
            raise UserError("objective.linear_probe applies to fine-tuning only (objective.kind=classify).")
        if cfg.objective.pair_task and not cls.pair_tasks:
            raise UserError(f"objective.pair_task={cfg.objective.pair_task} trains beside masked-LM pretraining only: "
                            f"use objective.kind=mlm, or leave objective.pair_task empty.")
        if cfg.train.early_stop_patience:
            raise UserError("train.early_stop_patience applies to fine-tuning only (objective.kind=classify): leave "
                            "it at 0.")

    @property
    def causal(self) -> bool:
        """Causal (decoder) or bidirectional (encoder) attention."""
        raise NotImplementedError

    @property
    def last_block_at_slots(self) -> bool:
        """Whether its training loss asks the model for the predicted positions only (`forward(rows_BxR=...)`,
        which model.last_block_slots_only turns into a last block at those rows); `jaxformer params` counts the
        FLOPs by it."""
        return False

    @property
    def family(self) -> str:
        return "decoder" if self.causal else "encoder"

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        """Batch arrays -> {"inputs", "targets", "weights", ...} for `loss_sums` (on device, inside the step)."""
        raise NotImplementedError

    @staticmethod
    def with_packing(ex: dict, batch: dict) -> dict:
        """Windows of T+1 tokens feed T inputs: the packing arrays (document ids, positions) are cut alike."""
        return {**ex, **{key: batch[key][:, :-1] for key in ("segment_ids", "positions") if key in batch}}

    def slot_hidden(self, hidden_BxTxD: jax.Array, ex: dict) -> jax.Array:
        """Hidden states [B, P, D] at the predicted slots of `ex` (vocabulary heads; aligned with ex["targets"])."""
        raise NotImplementedError

    def scores(self, model, hidden_BxTxD: jax.Array, ex: dict) -> jax.Array:
        """Logits [..., C] at the predicted slots of `ex` (aligned with ex["targets"])."""
        return self.head_logits(model, self.slot_hidden(hidden_BxTxD, ex))

    def head_logits(self, model, hidden_xD: jax.Array) -> jax.Array:
        """This objective's vocabulary head at every given position (import parity, fill-mask)."""
        return model.vocab_logits(*self.head_inputs(model, hidden_xD))

    def head_inputs(self, model, hidden_xD: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """What this objective's vocabulary head projects: [..., E] vectors and the vocabulary bias (or None)."""
        return model.mlm_inputs(hidden_xD) if self.head == "mlm" else model.lm_inputs(hidden_xD)

    @property
    def description(self) -> str:
        """What a run of this objective is, for hints: "a decoder run with objective.kind=clm"."""
        article = "an" if self.family[0] in "aeiou" else "a"
        return f"{article} {self.family} run with objective.kind={self.kind}"

    def forward(self, model, ex: dict, *, rng: jax.Array | None = None,
                rows_BxR: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The model's final hidden states [B, T, D] on `ex`'s inputs (only at `rows_BxR`, [B, R, D], when given:
        the loss reads no other, so the last block computes no other where the model can), and the MoE
        auxiliary loss."""
        hidden, aux, _ = model(ex["inputs"], causal=self.causal, positions_BxT=ex.get("positions"),
                               segment_ids_BxT=ex.get("segment_ids"), token_types_BxT=ex.get("token_types"),
                               rng=rng, rows_BxR=rows_BxR)
        return hidden, aux

    def slot_states(self, model, ex: dict, *, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """The final hidden states [B, P, D] at the predicted slots of `ex` (the forward pass), and the MoE
        auxiliary loss."""
        hidden_BxTxD, aux = self.forward(model, ex, rng=rng)
        return self.slot_hidden(hidden_BxTxD, ex), aux

    def logits(self, model, ex: dict, *, rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """float32 logits at the predicted slots of `ex` (the forward pass), and the MoE auxiliary loss."""
        if self.head in ("lm", "mlm"):  # vocabulary heads: from the slot states (MLM computes only those)
            h_BxPxD, aux = self.slot_states(model, ex, rng=rng)
            return self.head_logits(model, h_BxPxD).astype(jnp.float32), aux
        hidden_BxTxD, aux = self.forward(model, ex, rng=rng)
        return self.scores(model, hidden_BxTxD, ex).astype(jnp.float32), aux

    def loss_sums(self, model, ex: dict, *, rng: jax.Array | None) -> tuple[jax.Array, dict]:
        """Summed cross-entropy over weighted predictions, plus sums for accuracy and the MoE auxiliary loss."""
        chunk = model.cfg.xent_chunk
        if chunk > 0 and self.head in ("lm", "mlm"):  # vocabulary heads: never all [P, V] logits at once
            h_BxPxD, aux = self.slot_states(model, ex, rng=rng)
            h_BxPxE, bias_U = self.head_inputs(model, h_BxPxD)
            table, table_axes = model.vocab_table()
            xent_sum, correct_sum = fused_xent_sums(
                h_BxPxE.reshape(-1, h_BxPxE.shape[-1]), table, table_axes, bias_U, ex["targets"].reshape(-1),
                ex["weights"].reshape(-1), vocab_size=model.cfg.vocab_size, chunk=chunk, dtype=model.dtype)
            return xent_sum, {"correct": correct_sum, "n_tokens": jnp.sum(ex["weights"]), "aux": aux}
        logits, aux = self.logits(model, ex, rng=rng)
        return self.prediction_sums(logits, ex, aux)

    # How the step turns the sums of `loss_sums` into its loss and metrics. Sums are over a micro-batch, the
    # counts (`counts`, taken from the whole batch before it is split) over the global batch, so gradient
    # accumulation adds the micro-batches' losses up to exactly the full batch's.

    def counts(self, ex: dict) -> dict:
        """Global-batch normalisers of the loss terms."""
        return {"n_tokens": jnp.maximum(ex["weights"].sum(), 1.0)}

    def total_loss(self, loss_sum: jax.Array, stats: dict, counts: dict) -> jax.Array:
        """The loss that is differentiated (without the MoE auxiliary term, which the step adds)."""
        return loss_sum / counts["n_tokens"]

    def step_metrics(self, loss_sum: jax.Array, stats: dict, counts: dict) -> dict:
        """`loss` (what is minimised) and `accuracy`, plus any per-term figures of this objective."""
        return {"loss": loss_sum / counts["n_tokens"], "accuracy": stats["correct"] / counts["n_tokens"]}

    def eval_metrics(self, totals: dict) -> dict:
        """`step_metrics` from the summed `loss_sums` of whole evaluation batches (host floats)."""
        n = max(totals["n_tokens"], 1.0)
        return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n}

    @staticmethod
    def prediction_sums(logits: jax.Array, ex: dict, aux: jax.Array) -> tuple[jax.Array, dict]:
        """Summed cross-entropy of float32 `logits` against ex["targets"] under ex["weights"], and the sums for
        accuracy."""
        xent_sum, correct_sum = xent_sums(logits, ex["targets"], ex["weights"])
        return xent_sum, {"correct": correct_sum, "n_tokens": jnp.sum(ex["weights"]), "aux": aux}

    def require(self, ability: str, where: str) -> None:
        """One sentence, naming a command that works for this run, when it cannot do `ability`."""
        if ability in self.abilities:
            return
        can = [ABILITY_COMMANDS[a] for a in sorted(self.abilities)] or ["jaxformer eval"]
        raise UserError(f"{where} holds {self.description}: {ability} needs "
                        f"{ABILITY_NEEDS.get(ability, 'another kind of run')}; use {' or '.join(can)} with this one.")
