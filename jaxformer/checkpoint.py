"""Checkpoints with orbax: save every N steps (async), keep K, restore the newest checkpoint that verifies.

Orbax restores whatever is on disk without checking it (an empty newest step directory or overwritten bytes
restore silently), so each step also saves a digest of every array, and `restore_latest` falls back to an
older step when a restore fails or its digest does not match. Existing checkpoints are never modified; a step
is written to a temporary directory and renamed into place when complete, so a write that fails or is killed
leaves the previous steps as they were.

Each step's metadata also records the checkpoint format (a newer one is refused, not misread) and the
tokenizer's fingerprint (a run whose tokenizer files were swapped is refused, not silently mis-decoded).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxformer.errors import CheckpointWriteError, UserError
from jaxformer.train import TrainState

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the saved tree changes; older readers refuse newer checkpoints


def _saved_tree(state: TrainState) -> dict:
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state}


@jax.jit
def _digest(tree) -> list:
    """Two wrapping uint32 sums per array (plain and position-weighted): any changed or moved word shows."""
    def one(x):
        x = jnp.asarray(x)
        bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[
            x.dtype.itemsize]) if x.dtype != jnp.bool_ else x
        u = bits.astype(jnp.uint32).reshape(-1)
        return jnp.stack([u.sum(dtype=jnp.uint32),
                          (u * (jnp.arange(u.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1)).sum(dtype=jnp.uint32)])
    return [one(x) for x in jax.tree.leaves(tree)]


def tree_digest(tree) -> list[list[int]]:
    return [[int(v) for v in np.asarray(d)] for d in jax.device_get(_digest(tree))]


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int = 3, *, tokenizer_fingerprint: str = "", create: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.tokenizer_fingerprint = tokenizer_fingerprint
        if create and jax.process_index() == 0:  # a write that was killed left a temporary dir: never a checkpoint
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState) -> bool:
        """Start writing `state` (async); a failure raises CheckpointWriteError now or at the next save/wait."""
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        tree = _saved_tree(state)
        meta = {"step": step, "format": FORMAT, "tokenizer": self.tokenizer_fingerprint, "digest": tree_digest(tree)}
        try:
            return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                                   meta=ocp.args.JsonSave(meta)))
        except Exception as err:
            raise self._write_error(step, err) from err

    def _write_error(self, step: int, err: BaseException) -> CheckpointWriteError:
        done = [s for s in self.manager.all_steps() if s != step]
        previous = f"the newest complete checkpoint (step {max(done)}) is intact" if done else "no earlier checkpoint"
        return CheckpointWriteError(f"Could not write checkpoint step {step} in {self.directory} ({_reason(err)}): "
                                    f"{previous}; fix the storage (space, permissions) and re-run the same command "
                                    f"to resume.")

    def _meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _check_meta(self, step: int, meta: dict) -> None:
        """Refusals that an older step would not cure: a newer format, another tokenizer."""
        if meta.get("format", 1) > FORMAT:
            raise UserError(f"Checkpoint step {step} in {self.directory} has format {meta['format']}, newer than "
                            f"this jaxformer reads ({FORMAT}): upgrade jaxformer to use this run.")
        saved = meta.get("tokenizer", "")
        if saved and self.tokenizer_fingerprint and saved != self.tokenizer_fingerprint:
            raise UserError(f"Checkpoint step {step} in {self.directory} was trained with another tokenizer "
                            f"({saved[:12]}) than the one in the run directory ({self.tokenizer_fingerprint[:12]}): "
                            f"restore the run's tokenizer files or start a new --workdir.")

    def restore_latest(self, target: TrainState, shardings: TrainState, *,
                       only_step: int | None = None) -> TrainState | None:
        """The newest checkpoint that restores and verifies, placed in `shardings`; None if there is none.
        `only_step`: that step or nothing (a distillation teacher is pinned to one checkpoint)."""
        abstract = jax.tree.map(  # shardings is a prefix of target: one sharding per Variable
            lambda s, sub: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sub),
            _saved_tree(shardings), _saved_tree(target))
        failures = []
        candidates = [s for s in self.steps() if only_step is None or s == only_step]
        for step in reversed(candidates):
            try:
                meta = self._meta(step)
            except Exception as err:  # a partial or corrupt step: try the next older one
                failures.append(f"step {step}: {_reason(err)}")
                continue
            self._check_meta(step, meta)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                tree = restored["state"]
                if meta["digest"] != tree_digest(tree):
                    raise ValueError("digest mismatch")
            except Exception as err:
                failures.append(f"step {step}: {_reason(err)}")
                log.warning("checkpoint step %d in %s does not verify (%s); trying an older one",
                            step, self.directory, failures[-1])
                continue
            if failures:
                log.warning("resumed from step %d after skipping %s", step, "; ".join(failures))
            return target.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
        if failures:
            raise UserError(f"No checkpoint in {self.directory} verifies ({'; '.join(failures)}): "
                            f"move that directory away to start fresh, or restore it from a backup.")
        return None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            raise self._write_error(self.manager.latest_step() or -1, err) from err

    def close(self) -> None:
        self.wait()
        self.manager.close()


def restore_newest(workdir: str | Path, target: TrainState, shardings: TrainState, *,
                   tokenizer_fingerprint: str, only_step: int | None = None) -> TrainState | None:
    """`Checkpointer.restore_latest` for a directory that this process only reads (nothing is created)."""
    ckpt = Checkpointer(workdir, tokenizer_fingerprint=tokenizer_fingerprint, create=False)
    try:
        return ckpt.restore_latest(target, shardings, only_step=only_step)
    finally:
        ckpt.manager.close()
