"""A fine-tuned classifier at work: class probabilities, predictions, and the metrics a paper reports.

    clf = open_classifier("runs/enc-rt")             # the run, its label map, its best checkpoint (else newest)
    log_probs_NxC = clf.log_probabilities(texts)      # float32, one row per text (truncated like training)
    clf.predictions(log_probs_NxC)                    # [{"label": name, "probabilities": {name: p}}, ...]
    classification_metrics(log_probs_NxC, ids, clf.labels)   # loss, accuracy, macro_f1, class_accuracy

`jaxformer eval` (a labelled file or the run's own splits), `jaxformer predict` (one prediction per input
line) and fine-tuning's validation and `--test` all go through here, so they score the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from jaxformer import objectives, parallel
from jaxformer.checkpoint import restore_newest
from jaxformer.data.batching import global_batch
from jaxformer.data.classification import Columns
from jaxformer.data.classification_batches import classification_eval_batches, encode_examples, task_splits
from jaxformer.data.labels import LabelMap
from jaxformer.errors import UserError
from jaxformer.run import Run, open_run

log = logging.getLogger(__name__)
BEST_DIR = "best"  # <run>/best/checkpoints/<step>: the fine-tuned parameters with the best validation accuracy


def compile_log_probabilities(shardings, mesh):
    """jit of (state, {"tokens" [B, T], "labels" [B]}) -> float32 log-probabilities [B, C], replicated."""
    def log_probs(state, batch):
        objective = objectives.for_config(state.cfg)
        ex = objective.prepare(batch, jax.random.key(0))  # classification draws nothing from the key
        logits, _ = objective.logits(state.model(), ex)
        return jax.nn.log_softmax(logits, axis=-1)

    return jax.jit(log_probs, in_shardings=(shardings, parallel.batch_sharding(mesh, ndim=1)),
                   out_shardings=parallel.replicated(mesh))


def log_probabilities(run: Run, tokens_NxT: np.ndarray, *, batch_size: int, fn=None) -> np.ndarray:
    """float32 [N, C] log-probabilities of encoded examples, in full-size batches (the last padded); every
    process passes all N rows and gets all N answers."""
    fn = fn or compile_log_probabilities(run.shardings, run.mesh)
    procs = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    no_labels = np.full(len(tokens_NxT), -1, np.int64)
    out = []
    for local in classification_eval_batches(tokens_NxT, no_labels, batch_size, **procs,
                                             fill_id=run.tokenizer.special_ids.fill):
        out.append(np.asarray(jax.device_get(
            fn(run.state, global_batch(local, parallel.batch_sharding(run.mesh, ndim=1))))))
    return np.concatenate(out)[:len(tokens_NxT)] if out else np.zeros((0, run.cfg.objective.n_classes), np.float32)


def classification_metrics(log_probs_NxC: np.ndarray, labels_N: np.ndarray, labels: LabelMap) -> dict:
    """Loss (mean cross-entropy), accuracy, macro-F1 and per-class accuracy (recall) of predictions against
    class ids. Macro-F1 averages the F1 of every class that occurs in the labels or the predictions (a class
    predicted but absent scores 0); per-class accuracy covers the classes present in the labels."""
    n = len(labels_N)
    if n == 0:
        raise UserError("There are no labelled examples to score: give a file with at least one row.")
    predicted_N = log_probs_NxC.argmax(-1)
    out = {"loss": float(-log_probs_NxC[np.arange(n), labels_N].mean()),
           "accuracy": float((predicted_N == labels_N).mean())}
    f1s, class_accuracy = [], {}
    for c, name in enumerate(labels.names):
        support, predicted = int((labels_N == c).sum()), int((predicted_N == c).sum())
        if not support and not predicted:
            continue
        correct = int(((predicted_N == c) & (labels_N == c)).sum())
        precision, recall = correct / max(predicted, 1), correct / max(support, 1)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        if support:
            class_accuracy[name] = recall
    return {**out, "macro_f1": float(np.mean(f1s)), "class_accuracy": class_accuracy, "n_examples": n}


def run_labels(run: Run) -> LabelMap:
    """The run's saved label map; a run from before label maps were saved gets the map its training data gives
    (the same numbering rule), or the integers 0..n-1 when that data is gone."""
    labels = LabelMap.load(run.workdir)
    if labels is None:
        o = run.cfg.objective
        try:
            labels = task_splits(o.task, valid=o.valid, columns=Columns(o.text_column, o.label_column)).labels
        except UserError:
            labels = LabelMap(tuple(str(i) for i in range(o.n_classes)), integer=True)
    if labels.n_classes != run.cfg.objective.n_classes:
        raise UserError(f"{run.workdir}'s label map has {labels.n_classes} classes but its model has "
                        f"objective.n_classes={run.cfg.objective.n_classes}: the labels.json does not belong to "
                        f"this run; restore it.")
    return labels


def restore_best(run: Run):
    """The state of `run`'s best checkpoint (see `keep_best`), or None when it has none."""
    folder = Path(run.workdir) / BEST_DIR
    if not (folder / "checkpoints").is_dir():
        return None
    return restore_newest(folder, run.state, run.shardings, tokenizer_fingerprint=run.tokenizer.fingerprint)


@dataclass
class Classifier:
    run: Run
    labels: LabelMap
    checkpoint: str  # "best" (by validation accuracy) or "newest" (the run kept no best)

    @property
    def step(self) -> int:
        return self.run.step

    @property
    def columns(self) -> Columns:
        return Columns(self.run.cfg.objective.text_column, self.run.cfg.objective.label_column)

    def log_probabilities(self, texts: list[str]) -> np.ndarray:
        cfg = self.run.cfg
        tokens = encode_examples(texts, self.run.tokenizer, cfg.train.seq_len, causal=cfg.objective.causal)
        shards = self.run.mesh.size  # the batch must split over this host's devices, whatever trained the run
        batch_size = -(-cfg.train.batch_size // shards) * shards
        return log_probabilities(self.run, tokens, batch_size=batch_size)

    def predictions(self, log_probs_NxC: np.ndarray) -> list[dict]:
        probs_NxC = np.exp(log_probs_NxC.astype(np.float64))
        names = self.labels.names
        return [{"label": names[int(row.argmax())], "probabilities": {n: round(float(p), 6) for n, p in
                                                                        zip(names, row, strict=True)}}
                for row in probs_NxC]


def open_classifier(workdir: str | Path) -> Classifier:
    """A fine-tuned run at its best checkpoint (the one fine-tuning selected), else its newest; one sentence
    naming a command that works when `workdir` holds another kind of run."""
    run = open_run(workdir)
    run.objective.require("predict", str(workdir))
    labels = run_labels(run)
    best = restore_best(run)
    if best is not None:
        run.state = best
    return Classifier(run, labels, "best" if best is not None else "newest")
