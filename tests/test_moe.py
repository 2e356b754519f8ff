"""Mixture of experts against a naive per-token loop: routing, capacity drops, the load-balancing loss, axes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer.model import build_model
from jaxformer.model.layers import MLP
from jaxformer.model.moe import MoE

D, N, V, T, B, E = 16, 4, 37, 8, 2, 4

# Compiled once per configuration: cheaper than running the routing op by op for every new shape.
run_moe = nnx.jit(lambda moe, x: moe(x))


def make_cfg(**model):
    """The tiny decoder at the width, vocabulary and expert count the references here use, `model` keys on top."""
    return tiny_config("clm", vocab_size=V, model=dict(d_model=D, n_heads=N, n_experts=E) | model)


def make_moe(seed: int = 0, router_std: float = 1.0, **model):
    cfg = make_cfg(**model).model
    moe = MoE(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 1)
    moe.router[...] = jnp.asarray(rng.normal(0, router_std, moe.router[...].shape), jnp.float32)
    for name in ("up", "gate", "down"):
        p = getattr(moe, name)
        if p is not None:
            p[...] = jnp.asarray(rng.normal(0, p[...].shape[1] ** -0.5, p[...].shape), jnp.float32)
    return cfg, moe


# ------------------------------------------------------------------------------------------- reference

def gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def expert(moe, m, e: int, x_D: np.ndarray) -> np.ndarray:
    up = x_D @ np.asarray(moe.up[e], np.float64)
    if m.mlp == "gelu":
        h = gelu(up, m.gelu_approximate)
    else:
        g = x_D @ np.asarray(moe.gate[e], np.float64)
        h = (g / (1 + np.exp(-g)) if m.mlp == "swiglu" else gelu(g, m.gelu_approximate)) * up
    return h @ np.asarray(moe.down[e], np.float64)


def routing(moe, m, x_D):
    logits = x_D @ np.asarray(moe.router[...], np.float64)
    probs = np.exp(logits - logits.max())
    probs = probs / probs.sum()
    choice = np.argsort(-probs, kind="stable")[: m.moe_top_k]  # best first, ties to the lower index
    w = probs[choice]
    if m.moe_top_k > 1:
        w = w / w.sum()  # renormalised over the chosen experts; top-1 keeps the raw probability (Switch)
    return probs, choice, w


def ref_moe(moe, m, x_BxTxD, capacity: int | None):
    """Each sequence routes its own tokens: choice rank by rank (all first choices, then all second choices),
    tokens in order, an expert takes a choice while it has fewer than `capacity`; the rest get nothing."""
    x = np.asarray(x_BxTxD, np.float64)
    b, t, _ = x.shape
    y = np.zeros_like(x)
    kept = set()
    routes = [[routing(moe, m, x[bi, ti]) for ti in range(t)] for bi in range(b)]
    for bi in range(b):
        load = np.zeros(m.n_experts, int)
        for rank in range(m.moe_top_k):
            for ti in range(t):
                _, choice, w = routes[bi][ti]
                e = int(choice[rank])
                if capacity is None or load[e] < capacity:
                    load[e] += 1
                    kept.add((bi, ti, rank))
                    y[bi, ti] += w[rank] * expert(moe, m, e, x[bi, ti])
    # Switch load balancing: E * sum_e f_e P_e, f_e = share of all routed choices that picked e (before the
    # capacity cut), P_e = mean router probability of e.
    f = np.zeros(m.n_experts)
    p = np.zeros(m.n_experts)
    for bi in range(b):
        for ti in range(t):
            probs, choice, _ = routes[bi][ti]
            f[choice] += 1.0 / (b * t * m.moe_top_k)
            p += probs / (b * t)
    return y, kept, m.n_experts * float(np.sum(f * p))


# ------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("mlp,top_k", [("gelu", 2), ("swiglu", 2), ("geglu", 1), ("swiglu", 3)])
def test_moe_matches_per_token_reference_without_drops(mlp, top_k):
    cf = float(E)  # capacity >= T: nothing is dropped
    cfg, moe = make_moe(mlp=mlp, moe_top_k=top_k, moe_capacity_factor=cf)
    assert math.ceil(top_k * T * cf / E) >= T
    x = jax.random.normal(jax.random.key(0), (B, T, D))
    y, aux = run_moe(moe, x)
    ref, kept, ref_aux = ref_moe(moe, cfg, x, capacity=None)
    assert len(kept) == B * T * top_k
    assert y.shape == (B, T, D)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert float(aux) == pytest.approx(ref_aux, rel=1e-5)
    # The routing is not trivial: tokens do go to different experts.
    first = {int(routing(moe, cfg, np.asarray(x[b, t], np.float64))[1][0]) for b in range(B) for t in range(T)}
    assert len(first) > 1


@pytest.mark.parametrize("top_k,cf", [(2, 0.5), (1, 0.5), (2, 0.75)])
def test_moe_capacity_drops_match_reference(top_k, cf):
    cfg, moe = make_moe(mlp="gelu", moe_top_k=top_k, moe_capacity_factor=cf, seed=3)
    capacity = math.ceil(top_k * T * cf / E)  # choices an expert takes per sequence
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    y, aux = run_moe(moe, x)
    ref, kept, ref_aux = ref_moe(moe, cfg, x, capacity=capacity)
    assert len(kept) < B * T * top_k  # the capacity does bite here
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    assert float(aux) == pytest.approx(ref_aux, rel=1e-5)
    for b in range(B):
        for t in range(T):
            if not any((b, t, r) in kept for r in range(top_k)):
                np.testing.assert_array_equal(y[b, t], 0.0)
    # Routing groups are single sequences: a row gives the same output alone as in the batch.
    alone, _ = run_moe(moe, x[1:])
    np.testing.assert_allclose(alone[0], y[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cf,kept", [
    # C = ceil(2 * 4 * cf / 3). C=1: the first choices of t0, t1, t2 fill e0, e1, e2; t3's first choice (e0)
    # and every second choice find their expert full, so t3 gets nothing.
    (0.375, {(0, 0), (1, 0), (2, 0)}),
    # C=2: first choices t0->e0, t1->e1, t2->e2, t3->e0 (e0 full); then second choices in token order:
    # t0->e1 kept, t1->e2 kept, t2->e0 dropped (full), t3->e2 dropped (full).
    (0.75, {(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1)}),
])
def test_moe_drop_order_first_choices_first(cf, kept):
    cfg = make_cfg(n_experts=3, moe_top_k=2, moe_capacity_factor=cf).model
    moe = MoE(cfg, rngs=nnx.Rngs(0))
    router = np.zeros((D, 3), np.float32)
    router[:3, :3] = np.eye(3)  # the router logits are the first three features
    moe.router[...] = jnp.asarray(router)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 4, D)).astype(np.float32)
    x[0, :, :3] = [[2, 1, 0], [0, 2, 1], [1, 0, 2], [2, 0, 1]]  # (first, second): (0,1) (1,2) (2,0) (0,2)
    y, _ = run_moe(moe, jnp.asarray(x))
    expect = np.zeros((4, D))
    for t in range(4):
        _, choice, w = routing(moe, cfg, x[0, t].astype(np.float64))
        for rank in range(2):
            if (t, rank) in kept:
                expect[t] += w[rank] * expert(moe, cfg, int(choice[rank]), x[0, t].astype(np.float64))
    np.testing.assert_allclose(y[0], expect, rtol=1e-4, atol=1e-5)
    if cf == 0.375:
        np.testing.assert_array_equal(y[0, 3], 0.0)
    assert not np.allclose(y[0, 0], 0.0)


def test_load_balancing_loss_uniform_router_is_one():
    cfg, moe = make_moe(moe_top_k=2)
    moe.router[...] = jnp.zeros_like(moe.router[...])
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    _, aux = run_moe(moe, x)
    assert float(aux) == pytest.approx(1.0, abs=1e-5)
    _, moe = make_moe(moe_top_k=1, router_std=3.0)  # a confident, unbalanced router costs more
    _, skewed = run_moe(moe, x)
    assert float(skewed) > 1.05


def test_moe_in_model():
    cfg = make_cfg(n_layer=4, moe_every=2, mlp="swiglu")
    net = build_model(cfg)
    kinds = [type(blk.mlp) for blk in net.blocks]
    assert kinds == [MLP, MoE, MLP, MoE]  # MoE in layers k-1, 2k-1, ...
    for blk in net.blocks[1::2]:
        blk.mlp.router[...] = jnp.zeros_like(blk.mlp.router[...])
    tok = jax.random.randint(jax.random.key(3), (B, T), 0, V)
    h, aux, _ = net(tok, causal=True)
    assert h.shape == (B, T, D) and np.isfinite(np.asarray(h)).all()
    assert float(aux) == pytest.approx(2.0, abs=1e-5)  # one per MoE layer with a uniform router
    dense = build_model(make_cfg(n_layer=4, n_experts=0, mlp="swiglu"))
    assert float(dense(tok, causal=True)[1]) == 0.0

    # Parameters: each MoE layer swaps the dense MLP (3 d f, no bias here) for E experts and a d x E router.
    def count(model):
        _, params, _ = nnx.split(model, nnx.Param, ...)
        return sum(x.size for x in jax.tree.leaves(params))

    f = round(cfg.model.mlp_ratio * D)
    dense_mlp = 3 * D * f + 2 * f + D  # up, gate and down kernels, their biases
    assert count(net) - count(dense) == 2 * (E * 3 * D * f + D * E - dense_mlp)


def test_expert_params_carry_the_expert_axis():
    _, moe = make_moe(mlp="geglu")
    for name in ("up", "gate", "down"):
        param = getattr(moe, name)
        axes = param.get_metadata()["axes"]
        assert axes[0] == "expert" and param[...].shape[0] == E and len(axes) == 3, (name, axes)
    assert "expert" not in moe.router.get_metadata()["axes"]
    assert moe.router[...].shape == (D, E)
    _, gelu_moe = make_moe(mlp="gelu")
    assert gelu_moe.gate is None


def test_router_gets_gradients():
    cfg, moe = make_moe(moe_top_k=2)
    x = jax.random.normal(jax.random.key(4), (1, T, D))
    graphdef, params = nnx.split(moe, nnx.Param)

    def loss(p, aux_weight):
        y, aux = nnx.merge(graphdef, p)(x)
        return jnp.sum(y * x) + aux_weight * aux

    grad = jax.jit(jax.grad(loss))
    for aux_weight in (0.0, 1.0):  # through the combine weights, and through the balancing loss
        g = grad(params, aux_weight)
        assert float(jnp.abs(g["router"][...]).max()) > 0
