"""Knowledge distillation (Hinton et al. 2015; DistilBERT, Sanh et al. 2019): a CLM or MLM student learns from
a frozen teacher's soft targets as well as from its own hard objective.

    loss = distill_alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))     the soft-target term
         + (1 - distill_alpha) * cross-entropy against the data                         the hard loss (clm / mlm)
         + distill_hidden * (1 - cos(student hidden, teacher hidden))                   DistilBERT's cosine term

The soft term is taken at the objective's prediction slots: every position for CLM, the masked positions for
MLM (DistilBERT's `--restrict_ce_to_mask`; its default also matches the unmasked positions, which would put the
vocabulary head on every position of both models). The teacher reads the student's very inputs (for MLM the same
masked tokens), with no dropout and no gradient. The cosine term averages over every real position, as
DistilBERT's does. T^2 keeps the soft term's gradients on the hard loss's scale whatever T is.

A distilled student keeps its kind (`DistilledCausalLM.kind == "clm"`): sampling, fill-mask, evaluation, export
and fine-tuning see an ordinary clm/mlm run, and `loss_sums` without a teacher (evaluation) is the hard loss.
The teacher reaches the one train step as `TrainState.teacher` (a `Teacher`); see jaxformer/distill.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxformer.errors import UserError
from jaxformer.objectives.base import Objective
from jaxformer.objectives.clm import CausalLM
from jaxformer.objectives.mlm import MaskedLM
from jaxformer.objectives.xent import xent_sums

if TYPE_CHECKING:
    from jaxformer.config import Config


@struct.dataclass
class Teacher:
    """The frozen teacher: parameters (a pytree, sharded like the student's by the same rules) and the static
    module structure and config they belong to. It has no optimizer state and receives no gradient."""

    params: nnx.State
    graphdef: Any = struct.field(pytree_node=False)
    cfg: Config = struct.field(pytree_node=False)

    def outputs(self, ex: dict, *, hidden: bool) -> tuple[jax.Array | None, jax.Array]:
        """The teacher's final hidden states [B, T, D] (when `hidden`, else None) and float32 logits at the
        predicted slots of `ex`. Without the hidden states an MLM teacher runs its last block at the slots only
        (model.last_block_slots_only), as the student does."""
        from jaxformer import objectives  # the package imports this module

        objective = objectives.for_config(self.cfg)
        model = nnx.merge(self.graphdef, self.params)
        if not hidden:
            return None, jax.lax.stop_gradient(objective.logits(model, ex)[0])
        hidden_BxTxD, _, _ = model(ex["inputs"], causal=objective.causal, positions_BxT=ex.get("positions"),
                                   segment_ids_BxT=ex.get("segment_ids"))
        logits = objective.scores(model, hidden_BxTxD, ex).astype(jnp.float32)
        return jax.lax.stop_gradient(hidden_BxTxD), jax.lax.stop_gradient(logits)


def soft_target_sum(teacher_logits: jax.Array, student_logits: jax.Array, weights: jax.Array,
                    temperature: float) -> jax.Array:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) per slot, summed under `weights`."""
    log_p = jax.nn.log_softmax(teacher_logits / temperature)
    log_q = jax.nn.log_softmax(student_logits / temperature)
    kl = optax.losses.kl_divergence_with_log_targets(log_q, log_p)
    return temperature ** 2 * jnp.sum(kl * weights)


def real_positions(ex: dict, pad: int | None) -> jax.Array:
    """[B, T] True at the input positions that hold text (not padding, not outside every document)."""
    real_BxT = ex["inputs"] != pad if pad is not None else jnp.ones(ex["inputs"].shape, bool)
    if "segment_ids" in ex:
        real_BxT &= ex["segment_ids"] > 0
    return real_BxT


class Distillation(Objective):
    """Mixed into CausalLM / MaskedLM (see DISTILLED): their prepare, head and attention, plus the teacher's terms."""

    @property
    def last_block_at_slots(self) -> bool:
        return super().last_block_at_slots and not self.cfg.distill_hidden  # the cosine term reads every position

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        o = cfg.objective
        if not 0.0 <= o.distill_alpha <= 1.0:
            raise UserError(f"Bad value {o.distill_alpha} for objective.distill_alpha: it weighs the soft targets "
                            f"against the hard loss and must be in [0, 1].")
        if o.temperature <= 0:
            raise UserError(f"Bad value {o.temperature} for objective.temperature: it must be positive.")
        if o.distill_hidden < 0:
            raise UserError(f"Bad value {o.distill_hidden} for objective.distill_hidden: it must be >= 0.")

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        ex = super().prepare(batch, rng)
        if self.cfg.distill_hidden:
            # Computed on the whole batch, before any micro-batch split: each real position's weight makes the
            # cosine sum, divided like every term by the batch's predicted-slot count, a mean over real positions.
            real_BxT = real_positions(ex, self.specials.pad).astype(jnp.float32)
            ex["hidden_weights"] = real_BxT * (ex["weights"].sum() / jnp.maximum(real_BxT.sum(), 1.0))
        return ex

    def loss_sums(self, model, ex: dict, *, rng: jax.Array | None, teacher: Teacher | None = None):
        """The weighted total (with a teacher) or the hard loss alone (without: evaluation). `stats["terms"]`
        holds each term's sum for the metrics: `loss` (hard), `distill_loss` (T^2 KL), `hidden_loss` (cosine,
        when weighted) and `total_loss` (what the gradient follows)."""
        o = self.cfg
        if o.distill_hidden:  # the cosine term reads every position's final state
            hidden_BxTxD, aux = self.forward(model, ex, rng=rng)
            logits = self.scores(model, hidden_BxTxD, ex).astype(jnp.float32)
        else:  # the slots alone (an MLM student's last block computes no other row)
            logits, aux = self.logits(model, ex, rng=rng)
        hard_sum, correct_sum = xent_sums(logits, ex["targets"], ex["weights"])
        stats = {"correct": correct_sum, "n_tokens": jnp.sum(ex["weights"]), "aux": aux}
        if teacher is None:
            return hard_sum, stats
        teacher_hidden_BxTxD, teacher_logits = teacher.outputs(ex, hidden=bool(o.distill_hidden))
        soft_sum = soft_target_sum(teacher_logits, logits, ex["weights"], o.temperature)
        total = (1.0 - o.distill_alpha) * hard_sum + o.distill_alpha * soft_sum
        terms = {"loss": hard_sum, "distill_loss": soft_sum}
        if o.distill_hidden:
            cosine_BxT = optax.losses.cosine_distance(hidden_BxTxD.astype(jnp.float32),
                                                      teacher_hidden_BxTxD.astype(jnp.float32), epsilon=1e-8)
            terms["hidden_loss"] = jnp.sum(cosine_BxT * ex["hidden_weights"])
            total = total + o.distill_hidden * terms["hidden_loss"]
        terms["total_loss"] = total
        return total, {**stats, "terms": terms}


class DistilledCausalLM(Distillation, CausalLM):
    pass


class DistilledMaskedLM(Distillation, MaskedLM):
    pass


# objective.kind -> the objective a run with objective.teacher set trains (the kinds a teacher can teach).
DISTILLED: dict[str, type[Objective]] = {"clm": DistilledCausalLM, "mlm": DistilledMaskedLM}
