"""SFT (instruction tuning of a decoder): CLM on prompt → response rows, the loss on the response tokens only.

A kind of its own, not a switch inside CLM, so that a run records what it is: `eval` scores it by exact match
of its greedy answers, `sample --chat` wraps a prompt in its template, and `jaxformer train` cannot start one
without pairs. Its step is THE step (`train.train_step`): only `prepare` differs from CLM, taking the weights
from the rows' `loss_mask` (1 on response tokens and the closing EOS; exactly 0 on the prompt, the template's
prompt part and the padding). Packed rows keep CLM's rule that no target crosses a segment boundary.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from jaxformer.data.sft import DEFAULT_TEMPLATE, Template
from jaxformer.errors import UserError
from jaxformer.objectives.clm import CausalLM

if TYPE_CHECKING:
    from jaxformer.config import Config, ObjectiveConfig


class InstructionTuning(CausalLM):
    kind = "sft"
    reads_corpus = False  # prompt/response pairs, read by jaxformer/sft.py

    @classmethod
    def resolve_config(cls, o: ObjectiveConfig) -> ObjectiveConfig:
        return o if o.template else replace(o, template=DEFAULT_TEMPLATE)

    @classmethod
    def validate_config(cls, cfg: Config) -> None:
        super().validate_config(cfg)
        if not cfg.objective.task:
            raise UserError("objective.kind=sft trains on prompt → response pairs: start it with `jaxformer sft "
                            "--workdir <pretrained decoder> --data gsm8k --out <new run>`.")
        Template.parse(cfg.objective.template)

    def prepare(self, batch: dict, rng: jax.Array) -> dict:
        """Rows `tokens`, `loss_mask` [B, T+1] (+ packing `segment_ids`, `positions`) -> inputs/targets [B, T]."""
        tokens = batch["tokens"]
        weights = batch["loss_mask"][:, 1:] > 0
        if "segment_ids" in batch:
            seg = batch["segment_ids"]
            weights &= (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        ex = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights.astype(jnp.float32)}
        return self.with_packing(ex, batch)
