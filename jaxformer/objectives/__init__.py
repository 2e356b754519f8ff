"""Training objectives, one object per kind. Each owns how a batch becomes inputs/targets/weights, its loss,
the model head it trains, causal or bidirectional attention, and what a trained run can do (sample, fill-mask).

    objective = objectives.for_config(cfg)     # the one place that maps objective.kind to behaviour
    ex = objective.prepare(batch, rng)
    loss_sum, stats = objective.loss_sums(model, ex, rng=dropout_rng)

To add a kind: subclass `base.Objective` in its own file and list it in `OBJECTIVES`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jaxformer.objectives.base import Objective
from jaxformer.objectives.classify import SequenceClassification, pool, pool_weights
from jaxformer.objectives.clm import CausalLM
from jaxformer.objectives.distill import DISTILLED, Distillation, Teacher
from jaxformer.objectives.mlm import MaskedLM, n_mask_slots
from jaxformer.objectives.sft import InstructionTuning
from jaxformer.objectives.tag import TokenClassification

if TYPE_CHECKING:
    from jaxformer.config import Config

# One registry: objective.kind -> the class (new kinds register here).
OBJECTIVES: dict[str, type[Objective]] = {o.kind: o for o in (
    CausalLM, MaskedLM, SequenceClassification, TokenClassification, InstructionTuning)}


def for_config(cfg: Config) -> Objective:
    """The objective of a (resolved) config, with the special ids of its vocabulary."""
    from jaxformer.data.tokenizers import SpecialIds

    cls = OBJECTIVES[cfg.objective.kind]
    if cfg.objective.teacher and cfg.objective.kind in DISTILLED:  # a student of `jaxformer distill`
        cls = DISTILLED[cfg.objective.kind]
    return cls(cfg.objective, cfg.model.vocab_size, SpecialIds.parse(cfg.data.special_ids))


__all__ = ["DISTILLED", "OBJECTIVES", "CausalLM", "Distillation", "InstructionTuning", "MaskedLM", "Objective",
           "SequenceClassification", "Teacher", "TokenClassification", "for_config", "n_mask_slots", "pool",
           "pool_weights"]
