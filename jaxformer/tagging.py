"""`jaxformer finetune --task wnut17` (or a .conll file): token classification (NER) on a pretrained encoder or
decoder run, and the tagger at work (`jaxformer eval`, `jaxformer predict` on its run directory).

    finetune_tags(workdir, "wnut17", out, overrides, test="wnut17")   # -> {"dev_f1", "best_step", "test", ...}
    tagger = predict.open_classifier(out)                               # a tagging run opens like a classifier
    tag_metrics(tagger.run, sentences, tagger.labels)                  # loss, word accuracy, entity P/R/F1

It is sequence fine-tuning (`finetune.py`) with another objective and other batches: the same config building
(`finetune_config` with objective.kind=tag, the tag set as n_classes), backbone check and weight loading, THE
train step through `trainer.fit`, the label map saved with the run (`labels.json`: the sorted tag set), and the
best checkpoint kept by validation entity F1 (`keep_best`), which eval/predict use.

- Data: CoNLL `token<TAB>tag` files (`data/conll.py`); `wnut17` is `<data root>/wnut17/` with its train/dev/test
  splits; a file task validates on `--valid FILE` or a seeded 10% of its sentences. `--test wnut17` (the task's
  name) scores the named task's test split; `--test FILE` any CoNLL file.
- Inputs (`data/tagging_batches.py`): each word tokenized alone with the pretrained run's tokenizer, its tag on
  the first subword; specials, padding and later subwords carry zero loss weight. Words that do not fit in
  train.seq_len are counted (`truncated_words`, `truncated_entities`) and scored as O, never silently dropped.
- Metrics (`evaluation/entities.py`): entity-level precision/recall/F1 with CoNLL semantics, micro over all
  entities and per type; plus loss and accuracy over the words' tags.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

from jaxformer import atomic, finetune, parallel, predict, rundir, trainer
from jaxformer.data.batching import global_batch
from jaxformer.data.classification_batches import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    classification_batch_at,
    real_tokens_at,
)
from jaxformer.data.conll import TAG_TASK_ALIASES, TaggedSentence, read_tag_task
from jaxformer.data.labels import LabelMap
from jaxformer.data.tagging_batches import encode_tagged, tag_ids, tag_map, tagging_eval_batches
from jaxformer.errors import UserError
from jaxformer.evaluation.entities import entity_scores
from jaxformer.keep_best import BestKeeper
from jaxformer.run import Run, open_run

METRIC = "valid_f1"  # what the kept (best) checkpoint of a tagger maximises: entity-level F1 on the dev split


def tag_splits(task: str, valid: str = "") -> tuple[list[TaggedSentence], list[TaggedSentence]]:
    """(train, dev) sentences: dev is `valid` when given, else the named task's dev split, else a seeded 10% of
    the file's sentences."""
    train = read_tag_task(task, "train")
    if valid:
        return train, read_tag_task(valid, "dev")
    if task.lower() in TAG_TASK_ALIASES:
        return train, read_tag_task(task, "dev")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(train))
    n_dev = int(round(len(train) * HOLDOUT_FRACTION))
    if n_dev < 1 or n_dev == len(train):
        raise UserError(f"Tagging file {task} has {len(train)} sentences, too few to hold out a dev split: add "
                        f"sentences, or give a validation file with --valid.")
    cut = len(train) - n_dev
    return [train[i] for i in order[:cut]], [train[i] for i in order[cut:]]


def _batch_size(run: Run) -> int:
    """The run's batch size, rounded up to split over this host's devices (whatever trained the run)."""
    shards = run.mesh.size
    return -(-run.cfg.train.batch_size // shards) * shards


def tag_log_probabilities(run: Run, sentences: list[TaggedSentence], labels: LabelMap | None, fn=None):
    """Per sentence, float32 [n_kept_words, C] log-probabilities of the tags of its words (read at each word's
    tagged subword), and the encoding (truncation counts, word positions)."""
    cfg = run.cfg
    enc = encode_tagged(sentences, run.tokenizer, cfg.train.seq_len, causal=cfg.objective.causal, labels=labels)
    fn = fn or predict.compile_log_probabilities(run.shardings, run.mesh)
    batch_size = _batch_size(run)
    procs = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    rows = []
    for local in tagging_eval_batches(enc.tokens_NxT, enc.labels_NxT, batch_size,
                                      fill_id=run.tokenizer.special_ids.fill, **procs):
        out = fn(run.state, global_batch(local, parallel.batch_sharding(run.mesh, ndim=1)))
        rows.append(np.asarray(jax.device_get(out)))
    log_probs_NxTxC = np.concatenate(rows)[:len(sentences)]
    return [log_probs_NxTxC[n, pos] for n, pos in enumerate(enc.word_positions)], enc


def tag_metrics(run: Run, sentences: list[TaggedSentence], labels: LabelMap, fn=None) -> dict:
    """Loss and accuracy over the tags of the words that fit, and entity P/R/F1 (overall and per type) over
    whole sentences, with truncated words predicted O."""
    if not sentences:
        raise UserError("There are no tagged sentences to score: give a file with at least one.")
    log_probs, enc = tag_log_probabilities(run, sentences, labels, fn)
    gold_ids = tag_ids(sentences, labels)
    nll, correct, n_words, predicted = 0.0, 0, 0, []
    for lp_WxC, gold_W, sentence in zip(log_probs, gold_ids, sentences, strict=True):
        kept = len(lp_WxC)
        nll -= float(lp_WxC[np.arange(kept), gold_W[:kept]].sum())
        guess = lp_WxC.argmax(-1) if kept else np.zeros(0, np.int64)
        correct += int((guess == gold_W[:kept]).sum())
        n_words += kept
        tags = [labels.names[int(i)] for i in guess] + ["O"] * (len(sentence.words) - kept)
        predicted.append(tags)
    scores = entity_scores([s.tags for s in sentences], predicted)
    return {"loss": nll / max(n_words, 1), "accuracy": correct / max(n_words, 1),
           **{k: scores[k] for k in ("precision", "recall", "f1")}, "per_type": scores["per_type"],
           "n_sentences": len(sentences), "n_words": n_words + enc.n_truncated_words,
           "n_gold_entities": scores["n_gold_entities"], "truncated_words": enc.n_truncated_words,
           "truncated_entities": enc.n_truncated_entities}


def predicted_tags(run: Run, words: list[list[str]], labels: LabelMap) -> list[dict]:
    """`jaxformer predict` for a tagger: each sentence's words with their tags (O for truncated words)."""
    sentences = [TaggedSentence(tuple(w), ("O",) * len(w), f"input:{i + 1}") for i, w in enumerate(words)]
    log_probs, _ = tag_log_probabilities(run, sentences, None)
    out = []
    for lp_WxC, sentence in zip(log_probs, sentences, strict=True):
        tags = [labels.names[int(i)] for i in lp_WxC.argmax(-1)] + ["O"] * (len(sentence.words) - len(lp_WxC))
        out.append({"words": list(sentence.words), "tags": tags, "truncated": len(sentence.words) - len(lp_WxC)})
    return out


def finetune_tags(workdir: str | Path, task: str, out: str | Path, overrides: list[str] = (), *, valid: str = "",
                  test: str = "", show_progress: bool = True, stop_after: int | None = None) -> dict:
    """Fine-tune the pretrained run in `workdir` as a tagger on `task` into `out` (resumes if it has checkpoints);
    keeps the checkpoint with the best dev entity F1 and scores it on `test` when given. Returns the summary and
    the Run (at the selected model)."""
    workdir, out = Path(workdir), Path(out)
    pretrained, tokenizer = finetune.open_pretrained(workdir, out)
    resuming = finetune._has_checkpoint(out)
    if not resuming and not finetune._has_checkpoint(workdir):
        raise UserError(f"No checkpoint in {workdir / 'checkpoints'}: pretrain there first, or point --workdir at "
                        f"a run that saved one.")
    saved_labels = LabelMap.load(out) if (out / rundir.CONFIG_FILE).exists() else None
    train_set, dev_set = tag_splits(task, valid)
    labels = saved_labels or tag_map(train_set, task)
    test_set = read_tag_task(test, "test") if test else None  # read (and refused) before training
    if test_set is not None:
        tag_ids(test_set, labels)
    cfg = finetune.finetune_config(pretrained, finetune._task_id(task), labels.n_classes, list(overrides),
                                   valid=finetune._task_id(valid) if valid else "", kind="tag")
    finetune.check_backbone(pretrained, cfg, workdir)
    finetune._check_eval_cadence(out, cfg)
    causal, seq_len = cfg.objective.causal, cfg.train.seq_len
    train_x = encode_tagged(train_set, tokenizer, seq_len, causal=causal, labels=labels)

    with rundir.WorkdirLock(out, enabled=jax.process_index() == 0):
        run = open_run(out, cfg, tokenizer=tokenizer)
        if not resuming:
            run.state, pretrained_step = finetune.load_pretrained(run.state, workdir)
            if jax.process_index() == 0:
                origin = {"workdir": str(workdir.absolute()), "step": pretrained_step,
                          "objective": pretrained.objective.kind}
                atomic.write_text(out / finetune.PRETRAINED_FILE, json.dumps(origin) + "\n")
        run.write_run_files()
        if jax.process_index() == 0 and saved_labels is None:
            labels.save(out)
        t = run.cfg.train
        procs = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        sharding = parallel.batch_sharding(run.mesh, ndim=1)
        probs_fn = predict.compile_log_probabilities(run.shardings, run.mesh)
        keeper = BestKeeper(run, patience=t.early_stop_patience, metric=METRIC)

        def evaluate_state(state):
            metrics = tag_metrics(replace(run, state=state), dev_set, labels, probs_fn)
            keeper.consider(state, metrics)
            return metrics

        try:
            if keeper.exhausted:
                result = {"step": run.step, "preempted": False, "early_stopped": True, "run": run}
            else:
                result = trainer.fit(
                    run, show_progress=show_progress, stop_after=stop_after,
                    batch_at=lambda step: global_batch(classification_batch_at(
                        train_x.tokens_NxT, train_x.labels_NxT, batch_size=t.batch_size, seed=t.seed, step=step,
                        **procs), sharding),
                    tokens_at=lambda step: real_tokens_at(train_x.tokens_NxT, batch_size=t.batch_size, seed=t.seed,
                                                          step=step, fill_id=tokenizer.special_ids.fill),
                    evaluate_state=evaluate_state, stop_when=lambda step, logged: keeper.exhausted)
        finally:
            keeper.close()
        best = predict.restore_best(run)
        if best is not None:
            run.state = best
        scored = test and not result["preempted"]
        test_metrics = tag_metrics(run, test_set, labels, probs_fn) if scored else None
    origin = json.loads((out / finetune.PRETRAINED_FILE).read_text()) \
        if (out / finetune.PRETRAINED_FILE).exists() else {}
    summary = {"task": task, "objective": "tag", "backbone": "decoder" if causal else "encoder",
               "pretrained": origin.get("workdir", str(workdir)), "pretrained_step": origin.get("step"),
               "step": result["step"], "n_train": len(train_set), "n_dev": len(dev_set), "labels": list(labels.names),
               "train_truncated_words": train_x.n_truncated_words,
               "train_truncated_entities": train_x.n_truncated_entities,
               "model": "best" if best is not None else "newest", "best_step": keeper.best_step,
               "selected_by": METRIC, "early_stopped": result["early_stopped"]}
    if "accuracy" in result:
        summary.update(train_loss=result["loss"], train_accuracy=result["accuracy"])
    if keeper.best_step is not None:
        summary.update({f"dev_{k[len('valid_'):]}": v for k, v in keeper.best.items() if k.startswith("valid_")})
    else:
        summary.update({f"dev_{k}": v for k, v in tag_metrics(run, dev_set, labels, probs_fn).items()})
    if test_metrics is not None:
        summary["test"] = {"data": test, **test_metrics}
    return {**summary, "preempted": result["preempted"], "run": run}


def print_summary(out: str | Path, result: dict, last: int = 8) -> None:
    """The logged steps (train loss, dev loss / entity P/R/F1), which model was kept, per-type dev F1, then one
    JSON line of the result."""
    from rich.console import Console
    from rich.table import Table

    from jaxformer import metrics as metrics_lib

    columns = [("step", "step", "{:d}"), ("loss", "train loss", "{:.4f}"), ("valid_loss", "dev loss", "{:.4f}"),
               ("valid_accuracy", "dev tag acc", "{:.4f}"), ("valid_precision", "dev P", "{:.4f}"),
               ("valid_recall", "dev R", "{:.4f}"), ("valid_f1", "dev entity-F1", "{:.4f}")]
    table = Table(title=f"tagging {result['task']} ({result['backbone']} backbone)")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for row in metrics_lib.read_metrics(out)[-last:]:
        table.add_row(*[fmt.format(row[key]) if key in row else "" for key, _, fmt in columns])
    console = Console()
    console.print(table)
    if result.get("best_step") is not None:
        console.print(f"kept the model of step {result['best_step']} (best dev entity F1): the dev/test figures, "
                      f"`jaxformer eval` and `jaxformer predict` use it.", highlight=False)
    if result.get("train_truncated_words"):
        console.print(f"train.seq_len cut {result['train_truncated_words']} training words "
                      f"({result['train_truncated_entities']} entities touched); they carry no loss.",
                      highlight=False)
    print(json.dumps({k: v for k, v in result.items() if k != "run"}))
