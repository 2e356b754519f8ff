"""`jaxformer distill`: train a student run against a frozen teacher run's soft targets (knowledge distillation).

    distill(teacher_dir, preset_cfg, overrides, workdir)   # -> trainer.fit's result (the Run under "run")

- The student is an ordinary clm or mlm run of the teacher's kind: the preset's model, train and optimizer
  settings, the teacher's tokenizer and vocabulary (the soft targets are distributions over the teacher's ids),
  the teacher's data source unless `--set data.source=...` names another. Its loss and weights are
  `objectives.distill` (objective.distill_alpha, objective.temperature, objective.distill_hidden).
- The teacher is restored from its run directory straight into the student's mesh, each parameter placed by the
  same logical-axis rules (parallel.RULES), and rides in `TrainState.teacher` into THE train step: its forward
  pass runs inside the same jit as the student's, it gets no gradient and has no optimizer state.
- The student's checkpoints hold the student only. Its config records the teacher (objective.teacher: the
  directory, teacher_step: the checkpoint, teacher_fingerprint: a digest of those parameters); a resumed run
  reloads exactly that checkpoint and refuses a teacher whose parameters changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import jax

from jaxformer import config as config_lib
from jaxformer import objectives, parallel, rundir, train, trainer
from jaxformer.checkpoint import restore_newest, tree_digest
from jaxformer.config import Config
from jaxformer.data.tokenizers import Tokenizer, load_tokenizer
from jaxformer.errors import UserError
from jaxformer.objectives import DISTILLED, Teacher
from jaxformer.run import open_run

# Recorded from the teacher, never taken from --set.
TEACHER_KEYS = ("objective.teacher", "objective.teacher_step", "objective.teacher_fingerprint")
VOCABULARY_KEYS = ("data.tokenizer", "data.vocab_size", "data.special_ids", "model.vocab_size")


def student_config(teacher_cfg: Config, teacher_dir: Path, base: Config, overrides: list[str]) -> Config:
    """`base` (a preset) with the teacher's vocabulary and data, then the user's overrides; unresolved, with
    objective.teacher set (step and fingerprint are added once the teacher is loaded)."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in TEACHER_KEYS:
            raise UserError(f"{key} is recorded by distill from --teacher, not taken from --set: leave it out.")
        if key in VOCABULARY_KEYS:
            raise UserError(f"{key} comes from the teacher in {teacher_dir}: a student learns the teacher's "
                            f"distributions over the teacher's vocabulary, so it keeps the teacher's tokenizer; "
                            f"leave {key} out.")
    kind = teacher_cfg.objective.kind
    if kind not in DISTILLED:
        raise UserError(f"{teacher_dir} holds an objective.kind={kind} run: distill from a language model "
                        f"(objective.kind {' or '.join(DISTILLED)}).")
    cfg = replace(base, data=teacher_cfg.data, model=replace(base.model, vocab_size=teacher_cfg.model.vocab_size))
    cfg = config_lib.apply_overrides(cfg, overrides)
    cfg = replace(cfg, objective=replace(cfg.objective, teacher=str(teacher_dir)))
    if cfg.objective.kind != kind:
        raise UserError(f"The teacher in {teacher_dir} is an objective.kind={kind} run but the student's config "
                        f"trains objective.kind={cfg.objective.kind}: pick a preset of the teacher's kind or add "
                        f"--set objective.kind={kind}.")
    t, s = teacher_cfg.model, cfg.model
    if cfg.objective.distill_hidden and s.d_model != t.d_model:
        raise UserError(f"objective.distill_hidden compares final hidden states, which needs the student's "
                        f"model.d_model ({s.d_model}) to equal the teacher's ({t.d_model}): set "
                        f"model.d_model={t.d_model} or objective.distill_hidden=0.")
    if t.positions == "learned" and cfg.train.seq_len > t.max_seq_len:
        raise UserError(f"train.seq_len={cfg.train.seq_len} is longer than the teacher's {t.max_seq_len} learned "
                        f"positions: set train.seq_len={t.max_seq_len} or less.")
    return cfg


def params_fingerprint(params) -> str:
    """A short digest of parameter values (which array, which bits): equal only for the same teacher."""
    return hashlib.sha256(json.dumps(tree_digest(params)).encode()).hexdigest()[:16]


def load_teacher(teacher_dir: Path, teacher_cfg: Config, tokenizer: Tokenizer, mesh: jax.sharding.Mesh, *,
                 step: int | None = None) -> tuple[Teacher, int]:
    """(teacher, its step): the newest verified checkpoint of `teacher_dir` (or exactly `step`), its parameters
    restored straight into `mesh` by the logical-axis rules; the optimizer state is dropped."""
    abstract = train.abstract_state(teacher_cfg)
    shardings = train.state_shardings(abstract, mesh)
    state = restore_newest(teacher_dir, abstract, shardings, tokenizer_fingerprint=tokenizer.fingerprint,
                           only_step=step)
    if state is None:
        if step is None:
            raise UserError(f"No checkpoint in {teacher_dir / 'checkpoints'}: train the teacher first, or point "
                            f"--teacher at a run (or an import-hf run) that has one.")
        raise UserError(f"The teacher checkpoint step {step} that this student distills from is no longer in "
                        f"{teacher_dir / 'checkpoints'}: the teacher changed, so the student cannot resume; start a "
                        f"new --workdir.")
    return Teacher(params=state.params, graphdef=abstract.graphdef, cfg=teacher_cfg), int(state.step)


def _pinned_step(workdir: Path, saved: Config | None, teacher_dir: Path, tokenizer: Tokenizer) -> int | None:
    """The teacher checkpoint a resumed student must use (None: a new student takes the newest), after one
    sentence for each way the directory can disagree with this teacher (rundir.check_resume then checks every
    other setting)."""
    saved_tokenizer = load_tokenizer(workdir)
    if saved_tokenizer is not None and saved_tokenizer.fingerprint != tokenizer.fingerprint:
        raise UserError(f"{workdir} holds a run with another tokenizer than the teacher's in {teacher_dir}: a "
                        f"student must share its teacher's vocabulary; use a new --workdir.")
    if saved is None:
        return None
    o = saved.objective
    if not o.teacher:
        raise UserError(f"{workdir} holds a run that was not distilled (no objective.teacher): use a new --workdir "
                        f"for the student.")
    if o.teacher != str(teacher_dir):
        raise UserError(f"{workdir} distills from the teacher in {o.teacher}, not {teacher_dir}: pass --teacher "
                        f"{o.teacher} to resume it, or use a new --workdir.")
    return o.teacher_step


def _check_fingerprint(workdir: Path, saved: Config | None, teacher_dir: Path, fingerprint: str) -> None:
    if saved is None:
        return
    o = saved.objective
    if o.teacher_fingerprint != fingerprint:
        raise UserError(f"The teacher in {teacher_dir} at step {o.teacher_step} is not the one {workdir} started "
                        f"from (parameters {fingerprint}, recorded {o.teacher_fingerprint}): the teacher changed, "
                        f"so the student cannot resume; start a new --workdir.")


def distill(teacher_dir: str | Path, base: Config, overrides: list[str], workdir: str | Path, *,
            show_progress: bool = True, stop_after: int | None = None) -> dict:
    """Distill the teacher run in `teacher_dir` into a student built from `base` (a preset) and `overrides`,
    trained in `workdir` (resumed if it holds the same student). Returns `trainer.fit`'s result."""
    teacher_dir, workdir = Path(teacher_dir).absolute(), Path(workdir)
    if workdir.absolute() == teacher_dir:
        raise UserError(f"--workdir {workdir} is the teacher's directory: give the student its own --workdir.")
    teacher_cfg = rundir.read_config(teacher_dir)
    tokenizer = load_tokenizer(teacher_dir)
    if tokenizer is None:
        raise UserError(f"{teacher_dir} has no saved tokenizer: it is not a complete jaxformer run directory.")
    cfg = student_config(teacher_cfg, teacher_dir, base, list(overrides))
    resolved = config_lib.resolve(cfg, n_devices=jax.device_count(), special_ids=tokenizer.special_ids.spec())
    objectives.for_config(resolved).validate_config(resolved)  # the distillation weights
    with rundir.WorkdirLock(workdir, enabled=jax.process_index() == 0):
        saved = rundir.read_config(workdir) if (workdir / rundir.CONFIG_FILE).exists() else None
        pinned = _pinned_step(workdir, saved, teacher_dir, tokenizer)
        mesh = parallel.make_mesh(resolved.mesh)  # the mesh open_run builds from the same config
        teacher, step = load_teacher(teacher_dir, teacher_cfg, tokenizer, mesh, step=pinned)
        fingerprint = params_fingerprint(teacher.params)
        _check_fingerprint(workdir, saved, teacher_dir, fingerprint)
        cfg = replace(cfg, objective=replace(cfg.objective, teacher_step=step, teacher_fingerprint=fingerprint))
        run = open_run(workdir, cfg, tokenizer=tokenizer, show_progress=show_progress)
        teacher_shardings = teacher.replace(params=parallel.tree_shardings(teacher.params, run.mesh))
        run.state = run.state.replace(teacher=jax.device_put(teacher, teacher_shardings))
        run.shardings = run.shardings.replace(teacher=teacher_shardings)
        run.write_run_files()
        eval_fn = train.compile_eval_step(run.shardings, run.mesh)
        return trainer.fit(run, batch_at=lambda s: trainer.make_batch(run.cfg, run.corpus.train, s, run.mesh),
                           evaluate_state=lambda state: trainer.evaluate(replace(run, state=state), eval_fn),
                           show_progress=show_progress, stop_after=stop_after)
