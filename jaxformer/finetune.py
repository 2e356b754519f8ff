"""`jaxformer finetune`: sequence classification on top of a pretrained encoder or decoder run.

    finetune(workdir, task, out, overrides, valid=..., test=...)   # -> {"dev_accuracy", "best_step", "test", ...}

The pretrained run in `workdir` gives the config (model shapes, tokenizer) and the newest verified checkpoint; the
fine-tuning run gets `objective.kind=classify` and trains with THE train step, the same shardings, optimizer,
checkpointing and loop (`trainer.fit`) as pretraining. Only the batches differ: {"tokens": [B, T], "labels": [B]}.

- Inputs: an encoder sees `[CLS] text [SEP]` (bidirectional), a decoder `text [EOS]` (causal); texts are
  truncated to fit `train.seq_len` and right-padded with PAD (EOS for a vocabulary without PAD, as an imported
  GPT-2's: its closing EOS then counts as padding, so `last` pools the last text token), which no real token
  attends to. All ids are the run's tokenizer's own (`special_ids`).
- Pooling (`objective.pooling`): `cls` (encoder default), `last` real token (decoder default) or `mean` of the
  real tokens; the classifier head (Linear d_model -> n_classes) is created fresh on the pretrained backbone.
- `objective.linear_probe=true` trains the head only: the backbone gets stop_gradient and an optimizer that
  sets its updates to zero, so it stays bit-identical.
- Training batches are a seeded permutation of the training set per epoch, addressed by (seed, step): resuming
  `out` continues exactly where an uninterrupted run would be. Evaluation covers the whole dev split every time.
- Tasks: `sst2` (GLUE dev), `rt-polarity` (seeded 90/10), or a .tsv/.jsonl file, validated on `--valid FILE` or
  else a seeded 10% held out of it. Labels are the integers 0..n-1 or class names (numbered in sorted order);
  the map is fixed when the run is created (`<out>/labels.json`) and every later file goes through it.
- Model selection: every evaluation that beats the best validation accuracy so far is kept in `<out>/best/`
  (`keep_best.py`); that model, not the last step, is what the summary's dev/test figures, `jaxformer eval` and
  `jaxformer predict` use. `train.early_stop_patience=N` ends training after N evaluations without one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

from jaxformer import atomic, objectives, parallel, predict, rundir, train, trainer
from jaxformer import config as config_lib
from jaxformer.config import Config, MeshConfig, ObjectiveConfig
from jaxformer.data.batching import global_batch
from jaxformer.data.classification import Columns, is_task_file, load_task
from jaxformer.data.classification_batches import (
    classification_batch_at,
    encode_examples,
    real_tokens_at,
    task_splits,
)
from jaxformer.data.labels import LabelMap
from jaxformer.data.root import is_data_path
from jaxformer.data.tokenizers import load_tokenizer
from jaxformer.errors import UserError
from jaxformer.keep_best import METRIC, BestKeeper
from jaxformer.run import Run, open_run

# Fine-tuning defaults on top of the pretrained run's config; --set overrides win. Chosen at CPU scale (README,
# "Encoder vs decoder at matched compute"): a 2 x 128 encoder MLM-pretrained on PTB with a 2k BPE, rt-polarity,
# 300 steps of 32 (one epoch), mean pooling: lr 1e-3 reached train/dev accuracy 0.685/0.699 where 3e-4 reached
# 0.655/0.682 (the old 500-step, 3e-4 default on a char-level encoder: ~0.54 dev, i.e. chance). One epoch is
# where dev accuracy peaks: at 900 steps training accuracy reaches 0.834 while dev falls to 0.674 (keep-best
# keeps step 300). objective.pooling=mean helps tiny encoders.
DEFAULTS = {"train.steps": 300, "train.batch_size": 32, "train.log_every": 25, "train.eval_every": 100,
            "train.checkpoint_every": 300, "optimizer.lr": 1e-3, "optimizer.warmup_steps": 30,
            "optimizer.weight_decay": 0.01}
# Set from the pretrained run and the task, never by --set.
FIXED_KEYS = ("objective.kind", "objective.task", "objective.causal", "objective.n_classes", "objective.valid",
              "objective.text_column", "objective.label_column", "data.")
PRETRAINED_FILE = "pretrained.json"  # where the fine-tuning run started from


# ---------------------------------------------------------------------------------------------- config

def finetune_config(pretrained: Config, task: str, n_classes: int, overrides: list[str], *, valid: str = "",
                    columns: Columns = Columns(), kind: str = "classify") -> Config:
    """The pretrained run's config with a classification objective (`kind`: classify, or tag for a tagger),
    DEFAULTS, then the user's overrides; resolved for this host's devices (the mesh is not the pretraining one:
    all devices on `data` by default)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith(FIXED_KEYS):
            raise UserError(f"{key} comes from the pretrained run and --task/--valid/--text-column/--label-column, "
                            f"so finetune does not take it from --set: leave it out.")
    objective = ObjectiveConfig(kind=kind, task=task, n_classes=n_classes,
                                causal=objectives.for_config(pretrained).causal, valid=valid,
                                text_column=columns.text, label_column=columns.label)
    cfg = replace(pretrained, objective=objective, mesh=MeshConfig())
    cfg = config_lib.apply_overrides(config_lib.apply_overrides(cfg, DEFAULTS), overrides)
    return config_lib.resolve(cfg, n_devices=jax.device_count())


def _flat_params(params) -> dict:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def check_backbone(pretrained: Config, cfg: Config, workdir: str | Path) -> None:
    """Every parameter of the fine-tuning model but the head must exist, with its shape, in the pretrained one."""
    old = _flat_params(train.abstract_state(pretrained).params)
    for key, leaf in _flat_params(train.abstract_state(cfg).params).items():
        if train.HEAD in key:
            continue
        if key not in old or old[key].shape != leaf.shape:
            had = f"shape {old[key].shape}" if key in old else "no such parameter"
            raise UserError(f"The fine-tuning model's parameter {key} {leaf.shape} does not match the pretrained "
                            f"run in {workdir} ({had}): keep the model.* settings that shape parameters as they "
                            f"were in pretraining.")


def load_pretrained(state: train.TrainState, workdir: str | Path) -> tuple[train.TrainState, int]:
    """`state` with every parameter but the classifier head taken from the newest verified checkpoint in
    `workdir`, resharded onto `state`'s shardings; optimizer state and head stay as initialised."""
    pre = open_run(workdir).state
    old = _flat_params(pre.params)

    def take(path, leaf):
        key = jax.tree_util.keystr(path)
        if train.HEAD in key:
            return leaf
        return jax.device_put(old[key].astype(leaf.dtype), leaf.sharding)

    return state.replace(params=jax.tree_util.tree_map_with_path(take, state.params)), int(pre.step)


def _has_checkpoint(workdir: Path) -> bool:
    folder = workdir / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- the run

def evaluate(run: Run, tokens_NxT: np.ndarray, labels_N: np.ndarray, labels: LabelMap, fn) -> dict:
    """Loss, accuracy, macro-F1 and per-class accuracy over every example (see `predict.classification_metrics`)."""
    log_probs = predict.log_probabilities(run, tokens_NxT, batch_size=run.cfg.train.batch_size, fn=fn)
    return predict.classification_metrics(log_probs, labels_N, labels)


def _task_id(path: str) -> str:
    """A task or validation file as the run records it: absolute, except `@data/` paths (portable)."""
    return str(Path(path).absolute()) if is_task_file(path) and not is_data_path(path) else path


def _check_eval_cadence(out: Path, cfg: Config) -> None:
    """For a classifier, the evaluation steps are the candidates for the best checkpoint (and the steps early
    stopping counts), so unlike pretraining a resumed fine-tuning run must keep train.eval_every."""
    if not (out / rundir.CONFIG_FILE).exists():
        return
    saved = rundir.read_config(out).train.eval_every
    if saved != cfg.train.eval_every:
        raise UserError(f"{out} holds a fine-tuning run evaluated every {saved} steps, and its evaluations choose "
                        f"the best checkpoint, so train.eval_every={cfg.train.eval_every} would change its results: "
                        f"resume with train.eval_every={saved}, or use a new --out.")


def open_pretrained(workdir: Path, out: Path):
    """The pretraining run a fine-tuning run (classifier or tagger) in `out` starts from: its config and tokenizer;
    one sentence when `workdir` is `out`, a fine-tuned run, or incomplete."""
    if out.absolute() == workdir.absolute():
        raise UserError(f"--out {out} is the pretrained run's directory: give the fine-tuning run its own --out.")
    pretrained = rundir.read_config(workdir)
    if not objectives.for_config(pretrained).token_level:
        raise UserError(f"{workdir} holds a fine-tuned run: point --workdir at a pretraining (clm or mlm) run.")
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
        raise UserError(f"{workdir} has no saved tokenizer: it is not a complete jaxformer run directory.")
    return pretrained, tokenizer


def finetune(workdir: str | Path, task: str, out: str | Path, overrides: list[str] = (), *,
             valid: str = "", test: str = "", columns: Columns = Columns(),
             show_progress: bool = True, stop_after: int | None = None) -> dict:
    """Fine-tune the pretrained run in `workdir` on `task` into the run directory `out` (resumes if it has
    checkpoints), validating on `valid` (a file) or the task's dev split; keeps the checkpoint with the best
    validation accuracy and scores it on `test` when given. Returns the summary (`dev_accuracy` etc. of the
    selected model, `best_step`, `test`, ...) and the Run, whose state is the selected model.
    A tagging task (wnut17, a .conll file) fine-tunes a tagger instead (`tagging.finetune_tags`)."""
    from jaxformer.data.conll import is_tag_task

    if is_tag_task(task):
        from jaxformer import tagging

        if columns != Columns():
            raise UserError("--text-column/--label-column apply to .tsv/.jsonl tasks: a CoNLL file has token and "
                            "tag columns; leave them out.")
        return tagging.finetune_tags(workdir, task, out, overrides, valid=valid, test=test,
                                     show_progress=show_progress, stop_after=stop_after)
    workdir, out = Path(workdir), Path(out)
    pretrained, tokenizer = open_pretrained(workdir, out)
    resuming = _has_checkpoint(out)
    if not resuming and not _has_checkpoint(workdir):
        raise UserError(f"No checkpoint in {workdir / 'checkpoints'}: pretrain there first, or point --workdir at "
                        f"a run that saved one.")
    saved_labels = LabelMap.load(out) if (out / rundir.CONFIG_FILE).exists() else None
    splits = task_splits(task, valid=valid, labels=saved_labels, columns=columns)
    test_set = load_task(test, "test", splits.labels, columns) if test else None  # refused before training
    cfg = finetune_config(pretrained, _task_id(task), splits.labels.n_classes, list(overrides),
                          valid=_task_id(valid) if valid else "", columns=columns)
    check_backbone(pretrained, cfg, workdir)
    _check_eval_cadence(out, cfg)
    causal, seq_len = cfg.objective.causal, cfg.train.seq_len
    train_x, dev_x = (encode_examples(t, tokenizer, seq_len, causal=causal)
                      for t in (splits.train_texts, splits.dev_texts))

    with rundir.WorkdirLock(out, enabled=jax.process_index() == 0):
        run = open_run(out, cfg, tokenizer=tokenizer)
        if not resuming:
            run.state, pretrained_step = load_pretrained(run.state, workdir)
            if jax.process_index() == 0:
                origin = {"workdir": str(workdir.absolute()), "step": pretrained_step,
                          "objective": pretrained.objective.kind}
                atomic.write_text(out / PRETRAINED_FILE, json.dumps(origin) + "\n")
        run.write_run_files()
        if jax.process_index() == 0 and saved_labels is None:
            splits.labels.save(out)  # the label map is the run's from now on
        t = run.cfg.train
        procs = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        sharding = parallel.batch_sharding(run.mesh, ndim=1)
        probs_fn = predict.compile_log_probabilities(run.shardings, run.mesh)
        keeper = BestKeeper(run, patience=t.early_stop_patience)

        def evaluate_state(state):
            metrics = evaluate(replace(run, state=state), dev_x, splits.dev_labels, splits.labels, probs_fn)
            keeper.consider(state, metrics)
            return metrics

        try:
            if keeper.exhausted:  # this run already stopped early: nothing left to train
                result = {"step": run.step, "preempted": False, "early_stopped": True, "run": run}
            else:
                result = trainer.fit(
                    run, show_progress=show_progress, stop_after=stop_after,
                    batch_at=lambda step: global_batch(classification_batch_at(
                        train_x, splits.train_labels, batch_size=t.batch_size, seed=t.seed, step=step, **procs),
                        sharding),
                    tokens_at=lambda step: real_tokens_at(train_x, batch_size=t.batch_size, seed=t.seed,
                                                          step=step, fill_id=tokenizer.special_ids.fill),
                    evaluate_state=evaluate_state, stop_when=lambda step, logged: keeper.exhausted)
        finally:
            keeper.close()
        best = predict.restore_best(run)
        model = "best" if best is not None else "newest"
        if best is not None:
            run.state = best
        scored = test and not result["preempted"]  # a test number is for a finished run only
        test_metrics = evaluate(run, encode_examples(test_set[0], tokenizer, seq_len, causal=causal), test_set[1],
                                splits.labels, probs_fn) if scored else None
    origin = json.loads((out / PRETRAINED_FILE).read_text()) if (out / PRETRAINED_FILE).exists() else {}
    summary = {"task": task, "backbone": "decoder" if causal else "encoder", "pooling": cfg.objective.pooling,
               "linear_probe": cfg.objective.linear_probe, "pretrained": origin.get("workdir", str(workdir)),
               "pretrained_step": origin.get("step"), "step": result["step"], "n_train": len(splits.train_labels),
               "n_dev": len(splits.dev_labels), "labels": list(splits.labels.names), "model": model,
               "best_step": keeper.best_step, "selected_by": METRIC, "early_stopped": result["early_stopped"]}
    if "accuracy" in result:  # the last logged training window (absent when there was nothing left to train)
        summary.update(train_loss=result["loss"], train_accuracy=result["accuracy"])
    if keeper.best_step is not None:  # the selected model's validation metrics, as logged
        summary.update({f"dev_{k[len('valid_'):]}": v for k, v in keeper.best.items() if k.startswith("valid_")})
    else:  # stopped before any evaluation
        summary.update({f"dev_{k}": v for k, v in evaluate(run, dev_x, splits.dev_labels, splits.labels,
                                                            probs_fn).items()})
    if test_metrics is not None:
        summary["test"] = {"data": test, **test_metrics}
    return {**summary, "preempted": result["preempted"], "run": run}


def print_summary(out: str | Path, result: dict, last: int = 8) -> None:
    """A small table of the logged steps (train and dev loss/accuracy), which model was kept, then one JSON line
    of the result."""
    from rich.console import Console
    from rich.table import Table

    from jaxformer import metrics as metrics_lib

    rows = metrics_lib.read_metrics(out)
    columns = [("step", "step", "{:d}"), ("loss", "train loss", "{:.4f}"), ("accuracy", "train acc", "{:.3f}"),
               ("valid_loss", "dev loss", "{:.4f}"), ("valid_accuracy", "dev acc", "{:.4f}"),
               ("valid_macro_f1", "dev macro-F1", "{:.4f}")]
    table = Table(title=f"fine-tuning {result['task']} ({result['backbone']}, {result['pooling']} pooling"
                        f"{', linear probe' if result['linear_probe'] else ''})")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for row in rows[-last:]:
        table.add_row(*[fmt.format(row[key]) if key in row else "" for key, _, fmt in columns])
    console = Console()
    console.print(table)
    if result.get("best_step") is not None:
        stopped = ", stopped early" if result.get("early_stopped") else ""
        console.print(f"kept the model of step {result['best_step']} (best {result['selected_by']}{stopped}): the "
                      f"dev/test figures below, `jaxformer eval` and `jaxformer predict` use it.", highlight=False)
    print(json.dumps({k: v for k, v in result.items() if k != "run"}))
