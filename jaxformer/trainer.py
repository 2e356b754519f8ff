"""The training loop around `train.train_step`: data, checkpoints, logging, evaluation, resume.

Nothing but dispatch happens per step: the next batch is cut on the host while the device runs the current
one, metrics stay on device until a log step, and checkpoints are written asynchronously.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxformer import config as config_lib
from jaxformer import metrics as metrics_lib
from jaxformer import parallel, rundir, train
from jaxformer.checkpoint import Checkpointer
from jaxformer.data import pairs
from jaxformer.data.batching import batch_at, eval_batches, global_batch
from jaxformer.data.tokenizers import SpecialIds
from jaxformer.errors import NonFiniteError
from jaxformer.run import Run, open_run

log = logging.getLogger(__name__)
EVAL_MASK_SEED = 1234  # MLM eval masks are drawn from this fixed seed so eval losses compare across runs


def make_batch(cfg: config_lib.Config, tokens: np.ndarray, step: int, mesh,
               docs: pairs.Documents | None = None) -> dict:
    """The global batch of `step`: windows of the token stream, or sentence pairs cut from `docs` when the
    objective has a pair task."""
    if cfg.objective.pair_task:
        local = pairs.pair_batch_at(tokens, docs, task=cfg.objective.pair_task, batch_size=cfg.train.batch_size,
                                    seq_len=cfg.train.seq_len, seed=cfg.train.seed, step=step,
                                    specials=SpecialIds.parse(cfg.data.special_ids),
                                    process_index=jax.process_index(), process_count=jax.process_count())
        return global_batch(local, parallel.batch_sharding(mesh, ndim=1))
    local = batch_at(tokens, batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, seed=cfg.train.seed,
                     step=step, process_index=jax.process_index(), process_count=jax.process_count(),
                     packing=cfg.data.packing, eos_id=_document_separator(cfg))
    return global_batch(local, parallel.batch_sharding(mesh))


def _document_separator(cfg: config_lib.Config) -> int:
    """The id between documents in the token stream (packing): the vocabulary's EOS."""
    return SpecialIds.parse(cfg.data.special_ids).eos


def pair_documents(run: Run, split: str) -> pairs.Documents:
    """The documents that sentence pairs of a split are cut from (objective.pair_documents), checked."""
    cfg = run.cfg
    docs = pairs.documents(run.corpus.split(split), SpecialIds.parse(cfg.data.special_ids),
                           paragraphs=cfg.objective.pair_documents == "paragraphs", tokenizer=run.tokenizer)
    pairs.check_documents(docs, cfg.objective.pair_task, f"the {split} split of data.source={cfg.data.source}")
    return docs


def evaluate(run: Run, eval_fn=None, *, split: str = "valid", n_batches: int | None = None) -> dict:
    """Loss, accuracy, perplexity (and bits per character) over fixed batches of a split (with a pair task: also
    the MLM and pair losses and the pair accuracy, over fixed pair batches)."""
    cfg = run.cfg
    eval_fn = eval_fn or train.compile_eval_step(run.shardings, run.mesh)
    n_batches = n_batches or cfg.train.eval_batches
    if cfg.objective.pair_task:
        batches = pairs.pair_eval_batches(
            run.corpus.split(split), pair_documents(run, split), task=cfg.objective.pair_task,
            batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len, n_batches=n_batches,
            specials=SpecialIds.parse(cfg.data.special_ids), process_index=jax.process_index(),
            process_count=jax.process_count())
    else:
        batches = eval_batches(run.corpus.split(split), batch_size=cfg.train.batch_size, seq_len=cfg.train.seq_len,
                               n_batches=n_batches, process_index=jax.process_index(),
                               process_count=jax.process_count(), packing=cfg.data.packing,
                               eos_id=_document_separator(cfg))
    totals = eval_totals(run, batches, eval_fn)
    out = run.objective.eval_metrics(totals)
    return {**out, "n_tokens": int(totals["n_tokens"]),
            **metrics_lib.derived(out.get("mlm_loss", out["loss"]), char_level=run.tokenizer.char_level)}


def eval_totals(run: Run, local_batches, eval_fn) -> dict[str, float]:
    """`eval_step`'s sums over fixed batches (this process's rows of each), as host floats."""
    totals = None
    for i, local in enumerate(local_batches):
        out = eval_fn(run.state, global_batch(local, parallel.batch_sharding(run.mesh, ndim=1)),
                      jax.random.fold_in(jax.random.key(EVAL_MASK_SEED), i))
        totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
    return {k: float(v) for k, v in jax.device_get(totals).items()}


class _StopFlag:
    """SIGTERM (preemption) or Ctrl-C: finish the current step, save a checkpoint, exit."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train_loop(cfg: config_lib.Config, workdir: str | Path, *, show_progress: bool = True,
               stop_after: int | None = None, extend: bool = False) -> dict:
    """Train (or resume) a run in `workdir`; returns the final train and validation metrics.

    `stop_after`: behave as if preempted once that step is done (checkpoint, return), for tests and schedules.
    The result's `preempted` is True when the loop stopped early (signal or `stop_after`) after saving.
    """
    with rundir.WorkdirLock(workdir, enabled=jax.process_index() == 0):
        run = open_run(workdir, cfg, extend=extend, show_progress=show_progress)
        run.write_run_files()
        eval_fn = train.compile_eval_step(run.shardings, run.mesh)
        docs = pair_documents(run, "train") if run.cfg.objective.pair_task else None
        return fit(run, batch_at=lambda step: make_batch(run.cfg, run.corpus.train, step, run.mesh, docs),
                   evaluate_state=lambda state: evaluate(replace(run, state=state), eval_fn),
                   show_progress=show_progress, stop_after=stop_after)


class _FiniteCheck:
    """train.on_nonfinite=stop: raise NonFiniteError for the first step whose update was skipped."""

    def __init__(self, enabled: bool, workdir: Path, ckpt: Checkpointer):
        self.enabled, self.workdir, self.ckpt = enabled, workdir, ckpt

    def __call__(self, step: int, metrics: dict) -> None:
        if not self.enabled or not float(jax.device_get(metrics["skipped"])):
            return
        host = jax.device_get(metrics)
        self.ckpt.wait()
        kept = max(self.ckpt.steps(), default=None)
        kept_text = f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint is saved"
        raise NonFiniteError(
            f"Step {step} of {self.workdir} had a non-finite loss ({float(host['loss']):.4g}) or gradient norm "
            f"({float(host['grad_norm']):.4g}), so training stopped; {kept_text}. Lower optimizer.lr, check the "
            f"data, or set train.on_nonfinite=skip to skip such steps.")


def fit(run: Run, *, batch_at: Callable[[int], dict], evaluate_state: Callable[[train.TrainState], dict],
        show_progress: bool = True, stop_after: int | None = None,
        tokens_at: Callable[[int], int] | None = None,
        stop_when: Callable[[int, dict], bool] | None = None) -> dict:
    """THE loop, for every objective (pretraining and fine-tuning): `train.train_step` from `run.state` to
    `train.steps`, with logging to metrics.jsonl, `evaluate_state(state)` (logged with a valid_ prefix) every
    train.eval_every steps and at the end, checkpoints, and a clean stop on SIGTERM / Ctrl-C. `batch_at(step)`
    gives the global batch of a step from the step alone, so a resumed run sees the same data as an
    uninterrupted one. The caller has written the run directory's config and tokenizer.

    A step with a non-finite loss or gradient leaves the state as it was (see `train.train_step`); with
    train.on_nonfinite=skip the loop goes on and logs how many steps it skipped, with `stop` it raises
    NonFiniteError naming the step and saves nothing more. The flag of a step is read after the next step
    is dispatched, so the host never waits on the step it has just queued.

    `tokens_at(step)`: the real (non-padding) tokens of a step's batch, for tokens/s (default: batch × seq_len).
    `stop_when(step, logged)`: asked after each evaluation; True ends training there (early stopping) with a
    checkpoint, and the result's `early_stopped` is True."""
    workdir, cfg = run.workdir, run.cfg
    is_main = jax.process_index() == 0
    start, total = int(jax.device_get(run.state.step)), cfg.train.steps
    ckpt = Checkpointer(workdir, cfg.train.keep_checkpoints, tokenizer_fingerprint=run.tokenizer.fingerprint)
    writer = metrics_lib.MetricsWriter(workdir, enabled=is_main, resume_step=start)
    check_finite = _FiniteCheck(cfg.train.on_nonfinite == "stop", workdir, ckpt)
    step_fn = train.compile_train_step(run.shardings, run.mesh)
    key = jax.random.key(cfg.train.seed)
    tokens_at = tokens_at or (lambda step: cfg.train.batch_size * cfg.train.seq_len)
    summarize = functools.partial(metrics_lib.summarize, char_level=run.tokenizer.char_level,
                                  token_level=run.objective.token_level)
    # the loop carries the state unwrapped (train.unwrapped: cheaper to dispatch) and wraps it where it leaves
    state, window, last, previous = train.unwrapped(run.state, run.shardings), [], {}, None
    bar = tqdm(total=total, initial=start, desc=f"train {cfg.objective.kind}", disable=not (show_progress and is_main),
               dynamic_ncols=True)
    t_window, n_timed, n_tokens_timed = time.perf_counter(), 0, 0
    next_batch = batch_at(start) if start < total else None
    stopped_early = early_stopped = False
    try:
        with _StopFlag() as stop:
            for step in range(start, total):
                state, metrics = step_fn(state, next_batch, key)
                done = step + 1
                if done < total:  # cut the next batch while the device works on this one
                    next_batch = batch_at(done)
                if previous is not None:
                    check_finite(*previous)
                previous = (done, metrics)
                window.append(metrics)
                n_timed, n_tokens_timed = n_timed + 1, n_tokens_timed + tokens_at(step)
                if step == start:  # keep compilation out of the throughput figure (one sync per invocation)
                    jax.block_until_ready(metrics)
                    t_window, n_timed, n_tokens_timed = time.perf_counter(), 0, 0
                is_eval = cfg.train.eval_every and done % cfg.train.eval_every == 0
                stopping = stop.requested or done == stop_after
                if done % cfg.train.log_every == 0 or done == total or is_eval or stopping:
                    last = summarize(window)
                    elapsed = time.perf_counter() - t_window
                    if n_timed:
                        last["tokens_per_s"] = n_tokens_timed / max(elapsed, 1e-9)
                    if is_eval or done == total:
                        last.update({f"valid_{k}": v for k, v in
                                     evaluate_state(train.wrapped(state, run.state)).items()})
                        early_stopped = stop_when is not None and done < total and stop_when(done, last)
                        stopping = stopping or early_stopped
                    writer.write(done, last)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", tok_s=f"{last.get('tokens_per_s', 0):.0f}",
                                    refresh=False)
                    window, t_window, n_timed, n_tokens_timed = [], time.perf_counter(), 0, 0
                bar.update(1)
                if done % cfg.train.checkpoint_every == 0 or done == total or stopping:
                    check_finite(done, metrics)  # never save past a step that should have stopped the run
                    ckpt.save(train.wrapped(state, run.state))
                if stopping:
                    stopped_early = done < total and not early_stopped
                    if stop.requested:
                        log.warning("stopped at step %d; checkpoint saved, re-run the same command to resume", done)
                    break
            if previous is not None:
                check_finite(*previous)
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    run.state = state = train.wrapped(state, run.state)
    return {"step": int(jax.device_get(state.step)), **last, "preempted": stopped_early,
            "early_stopped": early_stopped, "run": run}
