"""`jaxformer finetune`: sequence classification on top of a pretrained encoder or decoder run.

    finetune(workdir, task, out, overrides)   # -> {"dev_accuracy", "step", ...}; `out` is a normal run directory

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
- Tasks: `sst2` (GLUE dev), `rt-polarity` (seeded 90/10), or a .tsv/.jsonl file, of which a seeded 10% is held
  out as dev. Labels must be the integers 0..n-1 (text labels are numbered in sorted order by the loader).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax

from jaxformer import atomic, objectives, parallel, rundir, train, trainer
from jaxformer import config as config_lib
from jaxformer.config import Config, MeshConfig, ObjectiveConfig
from jaxformer.data.batching import global_batch
from jaxformer.data.classification_batches import (
    classification_batch_at,
    classification_eval_batches,
    encode_examples,
    n_classes_of,
    task_splits,
)
from jaxformer.data.root import is_data_path
from jaxformer.data.tokenizers import load_tokenizer
from jaxformer.errors import UserError
from jaxformer.run import Run, open_run

# Fine-tuning defaults on top of the pretrained run's config; --set overrides win.
DEFAULTS = {"train.steps": 500, "train.batch_size": 32, "train.log_every": 25, "train.eval_every": 100,
            "train.checkpoint_every": 500, "optimizer.lr": 3e-4, "optimizer.warmup_steps": 50,
            "optimizer.weight_decay": 0.01}
# Set from the pretrained run and the task, never by --set.
FIXED_KEYS = ("objective.kind", "objective.task", "objective.causal", "objective.n_classes", "data.")
PRETRAINED_FILE = "pretrained.json"  # where the fine-tuning run started from


# ---------------------------------------------------------------------------------------------- config

def finetune_config(pretrained: Config, task: str, n_classes: int, overrides: list[str]) -> Config:
    """The pretrained run's config with a classification objective, DEFAULTS, then the user's overrides;
    resolved for this host's devices (the mesh is not the pretraining one: all devices on `data` by default)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith(FIXED_KEYS):
            raise UserError(f"{key} comes from the pretrained run and --task, so finetune does not take it from "
                            f"--set: leave it out.")
    objective = ObjectiveConfig(kind="classify", task=task, n_classes=n_classes,
                                causal=objectives.for_config(pretrained).causal)
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

def evaluate(run: Run, batches: list[dict], eval_fn) -> dict:
    """Loss and accuracy over every example of fixed batches (padding rows carry no weight)."""
    totals = trainer.eval_totals(run, batches, eval_fn)
    n = max(totals["n_tokens"], 1.0)
    return {"loss": totals["loss_sum"] / n, "accuracy": totals["correct"] / n, "n_examples": int(totals["n_tokens"])}


def finetune(workdir: str | Path, task: str, out: str | Path, overrides: list[str] = (), *,
             show_progress: bool = True, stop_after: int | None = None) -> dict:
    """Fine-tune the pretrained run in `workdir` on `task` into the run directory `out` (resumes if it has
    checkpoints); returns the final metrics (`dev_accuracy`, `dev_loss`, `step`, ...) and the Run."""
    workdir, out = Path(workdir), Path(out)
    if out.absolute() == workdir.absolute():
        raise UserError(f"--out {out} is the pretrained run's directory: give the fine-tuning run its own --out.")
    pretrained = rundir.read_config(workdir)
    if not objectives.for_config(pretrained).token_level:
        raise UserError(f"{workdir} holds a fine-tuned classifier: point --workdir at a pretraining (clm or mlm) run.")
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
        raise UserError(f"{workdir} has no saved tokenizer: it is not a complete jaxformer run directory.")
    resuming = _has_checkpoint(out)
    if not resuming and not _has_checkpoint(workdir):
        raise UserError(f"No checkpoint in {workdir / 'checkpoints'}: pretrain there first, or point --workdir at "
                        f"a run that saved one.")
    (train_texts, train_labels), (dev_texts, dev_labels) = task_splits(task)
    n_classes = n_classes_of(task, train_labels, dev_labels)
    is_file = Path(task).suffix in (".tsv", ".jsonl", ".json") and not is_data_path(task)  # @data/ stays portable
    task_id = str(Path(task).absolute()) if is_file else task
    cfg = finetune_config(pretrained, task_id, n_classes, list(overrides))
    check_backbone(pretrained, cfg, workdir)
    causal, seq_len = cfg.objective.causal, cfg.train.seq_len
    train_x, dev_x = (encode_examples(t, tokenizer, seq_len, causal=causal) for t in (train_texts, dev_texts))

    with rundir.WorkdirLock(out, enabled=jax.process_index() == 0):
        run = open_run(out, cfg, tokenizer=tokenizer)
        if not resuming:
            run.state, pretrained_step = load_pretrained(run.state, workdir)
            if jax.process_index() == 0:
                origin = {"workdir": str(workdir.absolute()), "step": pretrained_step,
                          "objective": pretrained.objective.kind}
                atomic.write_text(out / PRETRAINED_FILE, json.dumps(origin) + "\n")
        run.write_run_files()
        t = run.cfg.train
        procs = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        dev_batches = classification_eval_batches(dev_x, dev_labels, t.batch_size, **procs,
                                                  fill_id=tokenizer.special_ids.fill)
        sharding = parallel.batch_sharding(run.mesh, ndim=1)
        eval_fn = train.compile_eval_step(run.shardings, run.mesh)
        result = trainer.fit(
            run, show_progress=show_progress, stop_after=stop_after,
            batch_at=lambda step: global_batch(classification_batch_at(
                train_x, train_labels, batch_size=t.batch_size, seed=t.seed, step=step, **procs), sharding),
            evaluate_state=lambda state: evaluate(replace(run, state=state), dev_batches, eval_fn))
    origin = json.loads((out / PRETRAINED_FILE).read_text()) if (out / PRETRAINED_FILE).exists() else {}
    summary = {"task": task, "backbone": "decoder" if causal else "encoder", "pooling": cfg.objective.pooling,
               "linear_probe": cfg.objective.linear_probe, "pretrained": origin.get("workdir", str(workdir)),
               "pretrained_step": origin.get("step"), "step": result["step"], "n_train": len(train_labels),
               "n_dev": len(dev_labels)}
    if "valid_accuracy" in result:  # absent when the loop stopped early or had nothing left to train
        summary.update(dev_accuracy=result["valid_accuracy"], dev_loss=result["valid_loss"],
                       train_loss=result["loss"], train_accuracy=result["accuracy"])
    else:
        summary.update({f"dev_{k}": v for k, v in evaluate(run, dev_batches, eval_fn).items()})
    return {**summary, "preempted": result["preempted"], "run": result["run"]}


def print_summary(out: str | Path, result: dict, last: int = 8) -> None:
    """A small table of the logged steps (train and dev loss/accuracy), then one JSON line of the result."""
    from rich.console import Console
    from rich.table import Table

    from jaxformer import metrics as metrics_lib

    rows = metrics_lib.read_metrics(out)
    columns = [("step", "step", "{:d}"), ("loss", "train loss", "{:.4f}"), ("accuracy", "train acc", "{:.3f}"),
               ("valid_loss", "dev loss", "{:.4f}"), ("valid_accuracy", "dev acc", "{:.4f}")]
    table = Table(title=f"fine-tuning {result['task']} ({result['backbone']}, {result['pooling']} pooling"
                        f"{', linear probe' if result['linear_probe'] else ''})")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for row in rows[-last:]:
        table.add_row(*[fmt.format(row[key]) if key in row else "" for key, _, fmt in columns])
    Console().print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "run"}))
