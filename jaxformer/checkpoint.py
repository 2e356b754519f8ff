"""Checkpoints with orbax: save every N steps (async), keep K, resume from the newest checkpoint that verifies.

Orbax restores whatever is on disk without checking it (an empty newest step directory or overwritten bytes
restore silently), so each step also saves a digest of every array, and `restore_latest` falls back to an
older step when a restore fails or its digest does not match. Existing checkpoints are never modified.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxformer.errors import UserError
from jaxformer.train import TrainState

log = logging.getLogger(__name__)


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


class Checkpointer:
    def __init__(self, workdir: str | Path, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState) -> bool:
        step = int(jax.device_get(state.step))
        if step in self.manager.all_steps():
            return False
        tree = _saved_tree(state)
        meta = {"step": step, "digest": tree_digest(tree)}
        return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                               meta=ocp.args.JsonSave(meta)))

    def restore_latest(self, target: TrainState, shardings: TrainState) -> TrainState | None:
        """The newest checkpoint that restores and verifies, placed in `shardings`; None if there is none."""
        abstract = jax.tree.map(  # shardings is a prefix of target: one sharding per Variable
            lambda s, sub: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sub),
            _saved_tree(shardings), _saved_tree(target))
        failures = []
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                tree, meta = restored["state"], restored["meta"]
                if meta["digest"] != tree_digest(tree):
                    raise ValueError("digest mismatch")
            except Exception as err:  # a partial, corrupt or mismatched step: try the next older one
                reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
                failures.append(f"step {step}: {reason}")
                log.warning("checkpoint step %d in %s does not verify (%s); trying an older one",
                            step, self.directory, reason)
                continue
            if failures:
                log.warning("resumed from step %d after skipping %s", step, "; ".join(failures))
            return target.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"])
        if failures:
            raise UserError(f"No checkpoint in {self.directory} verifies ({'; '.join(failures)}): "
                            f"move that directory away to start fresh, or restore it from a backup.")
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_run(workdir: str | Path, cfg=None):
    """(cfg, mesh, state, shardings) of the newest verified checkpoint in a run directory, on this host's devices.

    The mesh is rebuilt for the devices at hand (all of them on the data axis), whatever the run trained on:
    orbax reshards on restore.
    """
    from dataclasses import replace

    from jaxformer import parallel, rundir, train
    from jaxformer.config import MeshConfig

    cfg = cfg or rundir.read_config(workdir)
    if not (Path(workdir) / "checkpoints").is_dir():
        raise UserError(f"No checkpoint in {Path(workdir) / 'checkpoints'}: train first, or point --workdir at a "
                        f"finished run.")
    cfg = replace(cfg, mesh=MeshConfig(data=jax.device_count()))
    mesh = parallel.make_mesh(cfg.mesh)
    abstract = train.abstract_state(cfg)
    shardings = train.state_shardings(abstract, mesh)
    state = Checkpointer(workdir, cfg.train.keep_checkpoints).restore_latest(abstract, shardings)
    if state is None:
        raise UserError(f"No checkpoint in {Path(workdir) / 'checkpoints'}: train first, or point --workdir at a "
                        f"finished run.")
    return cfg, mesh, state, shardings


def load_for_inference(workdir: str | Path):
    """(cfg, tokenizer, graphdef, params) of a trained run, for sampling, fill-mask and evaluation."""
    from jaxformer.data.tokenizers import load_tokenizer

    cfg, _, state, _ = restore_run(workdir)
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
        raise UserError(f"{workdir} has no saved tokenizer: it is not a complete jaxformer run directory.")
    return cfg, tokenizer, state.graphdef, state.params
