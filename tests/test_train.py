"""The shared train step: overfitting, sharding equivalence on 8 CPU devices, gradient accumulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import VOCAB, tiny_config

from jaxformer import config as config_lib
from jaxformer import parallel, train
from jaxformer.config import MeshConfig

V = VOCAB  # the vocabulary of tiny_config: token ids below are drawn from [8, V)
NO_WARMUP = ["optimizer.warmup_steps=0"]  # full learning rate from step 0, so two steps move the parameters


def make_cfg(kind="clm", extra=(), mesh=(1, 1, 1, 1)):
    sizes = dict(zip(["data", "fsdp", "tensor", "expert"], mesh, strict=True))
    return tiny_config(kind, *NO_WARMUP, *extra, mesh=sizes)


def fixed_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {"tokens": jnp.asarray(rng.integers(8, V, (cfg.train.batch_size, cfg.train.seq_len + 1)), jnp.int32)}


def run_steps(cfg, n, devices=None, batch=None):
    mesh = parallel.make_mesh(cfg.mesh, devices)
    state, shardings = train.init_train_state(cfg, mesh)
    step = train.compile_train_step(shardings, mesh)
    batch = batch or fixed_batch(cfg)
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    losses = []
    for _ in range(n):
        state, metrics = step(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    return state, losses


def flat_params(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def repeated_batch(cfg, distinct=2, seed=0):
    """A fixed batch of `distinct` random sequences, each repeated: memorisable by both objectives."""
    rows = np.random.default_rng(seed).integers(8, V, (distinct, cfg.train.seq_len + 1))
    return {"tokens": jnp.asarray(np.tile(rows, (cfg.train.batch_size // distinct, 1)), jnp.int32)}


@pytest.mark.parametrize("preset", ["decoder-tiny", "encoder-tiny"])
def test_tiny_presets_overfit_one_batch(preset):
    """The presets' own model shapes (4 layers, d 128) memorise a fixed batch with their objective."""
    cfg = config_lib.load_config(preset, ["train.seq_len=32", "train.batch_size=8", "optimizer.warmup_steps=10",
                                          "optimizer.weight_decay=0", "train.steps=150", "mesh.data=1"])
    cfg = config_lib.resolve(cfg, vocab_size=V, n_devices=1)
    _, losses = run_steps(cfg, 150, jax.devices()[:1], batch=repeated_batch(cfg))
    assert losses[0] > 3.5  # ~ln(64) at init
    assert max(losses[-10:]) < 0.3, losses[-10:]


def test_encoder_and_decoder_compile_the_same_function():
    for kind in ("clm", "mlm"):
        cfg = make_cfg(kind)
        mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
        _, shardings = train.init_train_state(cfg, mesh)
        assert train.compile_train_step(shardings, mesh).__wrapped__ is train.train_step


CASES = {
    "clm": ("clm", []),
    "mlm": ("mlm", []),
    "moe": ("clm", ["model.n_experts=4", "model.moe_top_k=2", "model.mlp=swiglu"]),
    "gqa-rope": ("clm", ["model.n_kv_heads=2", "model.positions=rope"]),
}


@functools.cache
def one_device_run(case):
    kind, extra = CASES[case]
    state, losses = run_steps(make_cfg(kind, extra), 2, jax.devices()[:1])
    return flat_params(state), losses


MESHES = {"2x2x2": (2, 2, 2, 1), "8x1x1": (8, 1, 1, 1), "2x1x2x2e": (2, 1, 2, 2)}


@pytest.mark.parametrize("case,mesh", [("clm", "2x2x2"), ("clm", "8x1x1"), ("mlm", "2x2x2"), ("mlm", "8x1x1"),
                                       ("moe", "2x2x2"), ("moe", "2x1x2x2e"), ("gqa-rope", "2x2x2")])
def test_sharded_step_matches_one_device(case, mesh):
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by tests/conftest.py)")
    kind, extra = CASES[case]
    params_one, losses_one = one_device_run(case)
    many, losses_many = run_steps(make_cfg(kind, extra, MESHES[mesh]), 2)
    np.testing.assert_allclose(losses_many, losses_one, rtol=2e-5)
    # atol: where a true gradient is (nearly) zero — the key bias, weights of an expert few tokens reached — Adam
    # divides float noise by its own size, so the sum order of another mesh moves such weights by up to ~1e-5
    # (seen 1.2e-5 on an AMD EPYC for MoE); a sharding bug moves weights by a whole update, ~lr = 2e-3 per step.
    for a, b in zip(flat_params(many), params_one, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=4e-5)
    # the parameters really are sharded over the mesh
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(many.params)}
    assert any(s != "PartitionSpec()" for s in specs), specs


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_gradient_accumulation_equals_full_batch(kind):
    whole, losses_whole = run_steps(make_cfg(kind), 2, jax.devices()[:1])
    accum, losses_accum = run_steps(make_cfg(kind, ["train.grad_accum=4"]), 2, jax.devices()[:1])
    np.testing.assert_allclose(losses_accum, losses_whole, rtol=1e-5)
    for a, b in zip(flat_params(accum), flat_params(whole), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_rules_table_shards_what_divides_and_replicates_the_rest():
    mesh = parallel.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2, expert=1))
    assert parallel.logical_to_spec(("vocab", "embed"), (64, 32), mesh) == jax.sharding.PartitionSpec("tensor", "fsdp")
    # 65 characters do not split over tensor=2: replicated on that dim
    assert parallel.logical_to_spec(("vocab", "embed"), (65, 32), mesh) == jax.sharding.PartitionSpec(None, "fsdp")
    # a mesh axis is used once per array
    assert parallel.logical_to_spec(("mlp", "heads"), (8, 8), mesh) == jax.sharding.PartitionSpec("tensor", None)


def test_the_loop_carries_the_state_unwrapped_and_wraps_it_back():
    """train.unwrapped: the state's arrays without their nnx Variables (what trainer.fit passes through the jitted
    step), the same step results, still unwrapped after a step, and train.wrapped restores the Variables."""
    from flax import nnx

    def variables(tree):
        return [x for x in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
                if isinstance(x, nnx.Variable)]

    cfg = make_cfg("clm")
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    state, shardings = train.init_train_state(cfg, mesh)
    like = jax.tree.map(lambda x: x, state)  # the structure to wrap back into (the step donates the arrays)
    assert len(variables(state)) > 0
    plain = train.unwrapped(state, shardings)
    assert variables(plain) == [] and len(jax.tree.leaves(plain)) == len(jax.tree.leaves(state))
    step = train.compile_train_step(shardings, mesh)
    batch = jax.device_put(fixed_batch(cfg), parallel.batch_sharding(mesh))
    expected_state, expected = step(jax.tree.map(jnp.copy, state), batch, jax.random.key(0))
    got_state, got = step(plain, batch, jax.random.key(0))
    assert float(got["loss"]) == float(expected["loss"]) and float(got["grad_norm"]) == float(expected["grad_norm"])
    assert variables(got_state) == []  # the output keeps the input's (unwrapped) structure
    back = train.wrapped(got_state, like)
    assert jax.tree.structure(back) == jax.tree.structure(expected_state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(expected_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_training_loop_dispatches_the_unwrapped_state(tmp_path, monkeypatch):
    """trainer.fit passes every step the unwrapped state, and hands the run back wrapped (nnx Variables)."""
    from flax import nnx

    from jaxformer import trainer

    def n_variables(tree):
        return sum(isinstance(x, nnx.Variable) for x in jax.tree.leaves(
            tree, is_leaf=lambda x: isinstance(x, nnx.Variable)))

    seen, real = [], train.compile_train_step

    def spy(shardings, mesh):
        step = real(shardings, mesh)

        def call(state, batch, key):
            seen.append(n_variables(state))
            return step(state, batch, key)
        return call

    monkeypatch.setattr(train, "compile_train_step", spy)
    cfg = tiny_config("clm", "train.log_every=1", "train.eval_every=0", "train.steps=2", "train.checkpoint_every=2",
                      "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=8", resolved=False)
    out = trainer.train_loop(cfg, tmp_path / "run", show_progress=False)
    assert out["step"] == 2 and seen == [0, 0] and n_variables(out["run"].state) > 0
