"""One way to open a run directory: `open_run(workdir, ...) -> Run`, for training (new or resumed), evaluation,
sampling, fill-mask, fine-tuning and notebooks.

    run = open_run("runs/d")                        # a finished run: its config, tokenizer, newest checkpoint
    run = open_run("runs/d", cfg)                   # a run to train: new, or resumed if the config still matches
    run.objective.require("sample", run.workdir)    # one sentence if this run cannot do that

A run to train is checked before anything is written: the directory is a run (or new/empty), its saved config
matches in everything that changes results (`rundir.check_resume`), and its tokenizer is the one the
checkpoints were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import jax

from jaxformer import config as config_lib
from jaxformer import objectives, parallel, rundir, train
from jaxformer.checkpoint import restore_newest
from jaxformer.data.pipeline import Corpus, load_corpus
from jaxformer.data.tokenizers import Tokenizer, load_tokenizer
from jaxformer.errors import UserError


@dataclass
class Run:
    """A run directory's config (resolved), objective, tokenizer, data (pretraining runs being trained), mesh
    and sharded state (at its newest verified checkpoint, or freshly initialised)."""

    workdir: Path
    cfg: config_lib.Config
    objective: objectives.Objective
    tokenizer: Tokenizer
    mesh: jax.sharding.Mesh
    state: train.TrainState
    shardings: train.TrainState
    corpus: Corpus | None = None

    @property
    def step(self) -> int:
        return int(jax.device_get(self.state.step))

    def write_run_files(self) -> None:
        """config.json and the tokenizer, written by process 0 (atomically; re-written identically on resume)."""
        if jax.process_index() == 0:
            rundir.save_config(self.workdir, self.cfg)
            self.tokenizer.save(self.workdir)


def open_run(workdir: str | Path, cfg: config_lib.Config | None = None, *, tokenizer: Tokenizer | None = None,
             extend: bool = False, show_progress: bool = True) -> Run:
    """`cfg=None`: the run saved in `workdir` at its newest verified checkpoint, on this host's devices (all on
    the data axis, whatever mesh it trained on: orbax reshards on restore).

    `cfg` given: a run to train in `workdir`. Objectives that train on a corpus (`reads_corpus`: clm, mlm)
    tokenize `cfg.data` (cached) with the given `tokenizer` (distillation: the teacher's) or else the one
    `cfg.data` names; fine-tuning and instruction tuning pass the pretrained run's `tokenizer` and bring their own
    examples. The config is resolved for this host and checked against the directory's (`extend`: train.steps
    may grow, see `rundir.check_resume`); the state is restored from the newest verified checkpoint, else
    initialised."""
    workdir = Path(workdir)
    if cfg is None:
        return _open_saved(workdir)
    rundir.check_is_run_or_new(workdir)
    corpus = None
    if objectives.OBJECTIVES[cfg.objective.kind].reads_corpus:
        corpus = load_corpus(cfg.data, workdir, show_progress=show_progress, seq_len=cfg.train.seq_len,
                             tokenizer=tokenizer)
        tokenizer = corpus.tokenizer
    if tokenizer is None:
        raise UserError(f"objective.kind={cfg.objective.kind} trains on a tokenizer it is given: fine-tune with "
                        f"`jaxformer finetune` instead of `jaxformer train`.")
    cfg = config_lib.resolve(cfg, vocab_size=tokenizer.vocab_size, n_devices=jax.device_count(),
                             special_ids=tokenizer.special_ids.spec())
    rundir.check_resume(workdir, cfg, extend=extend)
    _check_tokenizer(workdir, cfg, tokenizer)
    mesh = parallel.make_mesh(cfg.mesh)
    state, shardings = train.init_train_state(cfg, mesh)
    restored = restore_newest(workdir, state, shardings, tokenizer_fingerprint=tokenizer.fingerprint)
    return Run(workdir, cfg, objectives.for_config(cfg), tokenizer, mesh,
               restored if restored is not None else state, shardings, corpus)


def _open_saved(workdir: Path) -> Run:
    cfg = rundir.read_config(workdir)
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
        raise UserError(f"{workdir} has no saved tokenizer: it is not a complete jaxformer run directory.")
    _check_tokenizer(workdir, cfg, tokenizer)
    cfg = replace(cfg, mesh=config_lib.MeshConfig(data=jax.device_count()))
    mesh = parallel.make_mesh(cfg.mesh)
    abstract = train.abstract_state(cfg)
    shardings = train.state_shardings(abstract, mesh)
    state = restore_newest(workdir, abstract, shardings, tokenizer_fingerprint=tokenizer.fingerprint)
    if state is None:
        raise UserError(f"No checkpoint in {workdir / 'checkpoints'}: train first, or point --workdir at a "
                        f"finished run.")
    return Run(workdir, cfg, objectives.for_config(cfg), tokenizer, mesh, state, shardings)


def _check_tokenizer(workdir: Path, cfg: config_lib.Config, tokenizer: Tokenizer) -> None:
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(f"The tokenizer in {workdir} has {tokenizer.vocab_size} tokens but the run's model has "
                        f"model.vocab_size={cfg.model.vocab_size}: the tokenizer files do not belong to this run; "
                        f"restore them or start a new --workdir.")
    spec = tokenizer.special_ids.spec()
    if cfg.data.special_ids != spec:
        raise UserError(f"The tokenizer in {workdir} has its special tokens at {spec or 'the standard ids'!r} but the "
                        f"run's config records data.special_ids={cfg.data.special_ids!r}: the tokenizer files do "
                        f"not belong to this run; restore them or start a new --workdir.")
