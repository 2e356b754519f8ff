"""Model selection for fine-tuning: keep the checkpoint with the best validation accuracy, stop early.

    keeper = BestKeeper(run, patience=cfg.train.early_stop_patience)   # picks up the run's history on resume
    BestKeeper(run, metric="valid_f1")       # a tagger is selected by entity F1 instead of accuracy
    keeper.consider(state, valid_metrics)    # at every evaluation: a strictly better accuracy is saved
    keeper.exhausted                         # `patience` evaluations in a row without improving
    keeper.best_step, keeper.best            # the selected step and its logged validation metrics

The best parameters live in `<run>/best/checkpoints/<step>` (one step, written like every checkpoint and
waited for, so a logged evaluation always has its checkpoint on disk); `jaxformer eval` and `predict` use them.
Ties keep the earlier step. The state so far is rebuilt from `metrics.jsonl`, whose lines after the step a
run resumes from are dropped, so a resumed run selects exactly what an uninterrupted one would.
"""

from __future__ import annotations

import jax

from jaxformer import metrics as metrics_lib
from jaxformer.checkpoint import Checkpointer
from jaxformer.predict import BEST_DIR
from jaxformer.run import Run

METRIC = "valid_accuracy"  # what "best" means; logged at every evaluation


class BestKeeper:
    def __init__(self, run: Run, *, patience: int = 0, metric: str = METRIC):
        self.patience, self.metric = patience, metric
        start = run.step
        self.best: dict = {}
        self.best_step: int | None = None
        self.since_best = 0  # evaluations since the best one
        for row in metrics_lib.read_metrics(run.workdir):
            if row.get("step", 0) <= start and metric in row:
                self._record(row["step"], row)
        self.ckpt = Checkpointer(run.workdir / BEST_DIR, keep=1, tokenizer_fingerprint=run.tokenizer.fingerprint)
        for step in self.ckpt.steps():  # left by an attempt that was interrupted after `start`
            if step > start:
                self.ckpt.manager.delete(step)

    def _record(self, step: int, row: dict) -> bool:
        better = self.best_step is None or row[self.metric] > self.best[self.metric]
        if better:
            self.best, self.best_step, self.since_best = row, step, 0
        else:
            self.since_best += 1
        return better

    def consider(self, state, valid: dict) -> None:
        """An evaluation of `state` (its metrics without the valid_ prefix): saved when it is the best yet."""
        step = int(jax.device_get(state.step))
        if self._record(step, {f"valid_{k}": v for k, v in valid.items()}):
            self.ckpt.save(state)
            self.ckpt.wait()

    @property
    def exhausted(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def close(self) -> None:
        self.ckpt.close()
