"""Checkpoints: exact save/restore, fallback past corrupt steps, and resume == uninterrupted run."""

import logging

import jax
import numpy as np
import pytest
from test_train import fixed_batch, flat_params, make_cfg
from tiny import tiny_config

from jaxformer import parallel, train, trainer
from jaxformer.checkpoint import Checkpointer
from jaxformer.errors import UserError


def _setup(cfg, devices=None):
    mesh = parallel.make_mesh(cfg.mesh, devices)
    state, shardings = train.init_train_state(cfg, mesh)
    return mesh, state, shardings, train.compile_train_step(shardings, mesh)


def _corrupt_largest_file(step_dir):
    files = sorted((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    target = files[-1]
    data = bytearray(target.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(255 - b for b in data[mid:mid + 16])
    target.write_bytes(bytes(data))


def test_save_restore_next_step_identical(tmp_path):
    cfg = make_cfg("mlm")
    mesh, state, shardings, step = _setup(cfg, jax.devices()[:1])
    batch = jax.device_put(fixed_batch(cfg), parallel.batch_sharding(mesh))
    state, _ = step(state, batch, jax.random.key(0))
    ckpt = Checkpointer(tmp_path)
    ckpt.save(state)
    ckpt.wait()
    expected, m_expected = step(state, batch, jax.random.key(0))
    expected_params = flat_params(expected)
    fresh, _ = train.init_train_state(cfg, mesh)
    restored = Checkpointer(tmp_path).restore_latest(fresh, shardings)
    assert int(restored.step) == 1
    got, m_got = step(restored, batch, jax.random.key(0))
    assert float(m_got["loss"]) == float(m_expected["loss"])
    for a, b in zip(flat_params(got), expected_params, strict=True):
        np.testing.assert_array_equal(a, b)


def test_restore_onto_another_mesh(tmp_path):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 CPU devices (tests/conftest.py)")
    cfg8 = make_cfg("clm", mesh=(2, 2, 2, 1))
    _, state, _, _ = _setup(cfg8)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(state)
    ckpt.wait()
    cfg1 = make_cfg("clm")
    mesh1, fresh, shardings1, _ = _setup(cfg1, jax.devices()[:1])
    restored = Checkpointer(tmp_path).restore_latest(fresh, shardings1)
    for a, b in zip(flat_params(restored), flat_params(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(restored.params))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
    cfg = make_cfg("clm")
    mesh, state, shardings, step = _setup(cfg, jax.devices()[:1])
    batch = jax.device_put(fixed_batch(cfg), parallel.batch_sharding(mesh))
    ckpt = Checkpointer(tmp_path)
    for _ in range(2):
        state, _ = step(state, batch, jax.random.key(0))
        ckpt.save(state)
        ckpt.wait()
    assert ckpt.steps() == [1, 2]
    _corrupt_largest_file(tmp_path / "checkpoints" / "2")
    fresh, _ = train.init_train_state(cfg, mesh)
    with caplog.at_level(logging.WARNING):
        restored = Checkpointer(tmp_path).restore_latest(fresh, shardings)
    assert int(restored.step) == 1
    assert "step 2" in caplog.text
    assert (tmp_path / "checkpoints" / "2").exists()  # the bad step is left for the user to inspect

    _corrupt_largest_file(tmp_path / "checkpoints" / "1")
    with pytest.raises(UserError, match="No checkpoint"):
        Checkpointer(tmp_path).restore_latest(fresh, shardings)


RUN = ["train.log_every=2", "train.eval_every=0", "train.eval_batches=1", "mesh.data=1", "mesh.fsdp=1"]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """Stop after 3 steps, resume to 6: same parameters as 6 steps in one go (data position included)."""
    if jax.device_count() != 8:
        pytest.skip("mesh sizes below assume the 8 test devices")
    cfg6 = tiny_config("clm", *RUN, "train.steps=6", "train.checkpoint_every=3", "mesh.tensor=8", resolved=False)
    whole = trainer.train_loop(cfg6, tmp_path / "whole", show_progress=False)
    # interrupted after step 3 (as a preemption would), then the same command again
    first = trainer.train_loop(cfg6, tmp_path / "resumed", show_progress=False, stop_after=3)
    assert first["step"] == 3
    resumed = trainer.train_loop(cfg6, tmp_path / "resumed", show_progress=False)
    assert resumed["step"] == 6
    for a, b in zip(flat_params(resumed["run"].state), flat_params(whole["run"].state), strict=True):
        np.testing.assert_array_equal(a, b)
