"""Fill-mask accuracy of an encoder (MLM) run: top-1 and top-5 over held-out masked tokens.

The validation split's fixed evaluation batches, masked exactly as training masks them (`MaskedLM.prepare`, with
the evaluation's fixed mask seed per batch, so every call scores the same positions); a masked position counts
once, whatever it was replaced with ([MASK], a random token, or itself). Top-1 equals the `accuracy` that
training logs for the split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import trainer
from jaxformer.data.batching import eval_batches


def _correct_fn(objective, top_k: tuple[int, ...]):
    def correct(state, batch, rng):
        ex = objective.prepare(batch, rng)
        logits_BxMxV, _ = objective.logits(state.model(), ex)
        rank_BxM = (logits_BxMxV > jnp.take_along_axis(logits_BxMxV, ex["targets"][..., None], -1)).sum(-1)
        w_BxM = ex["weights"]
        return {"n": w_BxM.sum(), **{f"top{k}": (w_BxM * (rank_BxM < k)).sum() for k in top_k}}

    return jax.jit(correct)


def fill_mask_accuracy(run, valid_tokens, *, n_batches: int | None = None, top_k: tuple[int, ...] = (1, 5)) -> dict:
    """{"top1": .., "top5": .., "n_masked": ..} over `n_batches` (default train.eval_batches) fixed batches of
    the validation tokens (`run.corpus.split("valid")` of a run being trained)."""
    run.objective.require("fill-mask", run.workdir)
    cfg = run.cfg
    fn = _correct_fn(run.objective, tuple(top_k))
    batches = eval_batches(valid_tokens, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len,
                           n_batches=n_batches or cfg.train.eval_batches, process_index=0, process_count=1,
                           packing=cfg.data.packing, eos_id=trainer._document_separator(cfg))
    totals: dict[str, float] = {}
    for i, batch in enumerate(batches):
        out = jax.device_get(fn(run.state, {k: jnp.asarray(v) for k, v in batch.items()},
                                jax.random.fold_in(jax.random.key(trainer.EVAL_MASK_SEED), i)))
        totals = {k: totals.get(k, 0.0) + float(v) for k, v in out.items()}
    n = max(totals.get("n", 0.0), 1.0)
    return {**{f"top{k}": totals.get(f"top{k}", 0.0) / n for k in top_k}, "n_masked": int(totals.get("n", 0))}
