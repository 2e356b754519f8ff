"""Positions: RoPE against complex-number and rotation-matrix references, its relative-position property,
and the sinusoidal table against the Vaswani et al. formula."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer.model import build_model
from jaxformer.model.positions import apply_rope, sinusoidal


def rope_complex(x_BxTxNxH: np.ndarray, pos_BxT: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE: the pair (x[i], x[i + H/2]) is the complex number x[i] + j x[i + H/2], turned by
    the angle p * theta^(-2i/H)."""
    h = x_BxTxNxH.shape[-1]
    z = x_BxTxNxH[..., : h // 2].astype(np.float64) + 1j * x_BxTxNxH[..., h // 2:]
    angle = pos_BxT[:, :, None, None].astype(np.float64) * theta ** (-2.0 * np.arange(h // 2) / h)
    z = z * np.exp(1j * angle)
    return np.concatenate([z.real, z.imag], axis=-1)


def rope_matrix(p: float, h: int, theta: float) -> np.ndarray:
    """The explicit H x H rotation: a 2x2 block [[cos, -sin], [sin, cos]] acting on coordinates (i, i + H/2)."""
    r = np.zeros((h, h))
    for i in range(h // 2):
        a = p * theta ** (-2.0 * i / h)
        r[i, i], r[i, i + h // 2] = math.cos(a), -math.sin(a)
        r[i + h // 2, i], r[i + h // 2, i + h // 2] = math.sin(a), math.cos(a)
    return r


@pytest.mark.parametrize("h,theta", [(8, 10000.0), (16, 500.0), (2, 10000.0)])
def test_rope_matches_complex_reference(h, theta):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, h)).astype(np.float32)
    pos = np.array([[0, 1, 2, 3, 4], [7, 300, 2, 41, 1000]])  # arbitrary, per row
    got = apply_rope(jnp.asarray(x), jnp.asarray(pos), theta)
    assert got.shape == x.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), rope_complex(x, pos, theta), rtol=1e-4, atol=1e-4)


def test_rope_matches_rotation_matrices():
    rng = np.random.default_rng(1)
    h, theta = 8, 10000.0
    x = rng.normal(size=(1, 4, 2, h)).astype(np.float32)
    pos = np.array([[0, 3, 17, 250]])
    got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), theta))
    for t, n in itertools.product(range(4), range(2)):
        expect = rope_matrix(float(pos[0, t]), h, theta) @ x[0, t, n]
        np.testing.assert_allclose(got[0, t, n], expect, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[0, 0], x[0, 0], rtol=0, atol=0)  # position 0: identity
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_relative_position_property():
    """<rope(q, m), rope(k, n)> depends only on m - n."""
    rng = np.random.default_rng(2)
    h = 16
    q, k = rng.normal(size=h).astype(np.float32), rng.normal(size=h).astype(np.float32)

    def score(m: int, n: int) -> float:
        qs = apply_rope(jnp.asarray(q)[None, None, None], jnp.asarray([[m]]), 10000.0)
        ks = apply_rope(jnp.asarray(k)[None, None, None], jnp.asarray([[n]]), 10000.0)
        return float(jnp.sum(qs * ks))

    base = {(m, n): score(m, n) for m, n in [(0, 0), (5, 2), (2, 5), (9, 0), (3, 10)]}
    for (m, n), s0 in base.items():
        for shift in (1, 7, 64, 1000):
            assert score(m + shift, n + shift) == pytest.approx(s0, rel=1e-4, abs=1e-4), (m, n, shift)
    # ...and it does depend on m - n (a rope that did nothing would pass the check above).
    offsets = [base[(0, 0)], base[(5, 2)], base[(2, 5)], base[(9, 0)], base[(3, 10)]]
    assert min(abs(a - b) for a, b in itertools.combinations(offsets, 2)) > 1e-3
    assert base[(0, 0)] == pytest.approx(float(q @ k), rel=1e-5)


def test_rope_keeps_dtype():
    x = jax.random.normal(jax.random.key(0), (1, 3, 2, 8)).astype(jnp.bfloat16)
    out = apply_rope(x, jnp.arange(3)[None], 10000.0)
    assert out.dtype == jnp.bfloat16
    ref = rope_complex(np.asarray(x.astype(jnp.float32)), np.arange(3)[None], 10000.0)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("d", [8, 32])
def test_sinusoidal_matches_vaswani(d):
    pos = np.array([[0, 1, 2, 50], [9, 3, 1000, 7]])
    got = np.asarray(sinusoidal(jnp.asarray(pos), d))
    assert got.shape == (2, 4, d)
    expect = np.zeros((2, 4, d))
    for b, t in itertools.product(range(2), range(4)):
        p = float(pos[b, t])
        for i in range(d // 2):
            expect[b, t, 2 * i] = math.sin(p / 10000 ** (2 * i / d))
            expect[b, t, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / d))
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- in the model

def tiny(positions: str, **model):
    """A tiny decoder 16 wide with a 16-token context (the learned table below is 16 x 16)."""
    return tiny_config("clm", vocab_size=37, model=dict(d_model=16, positions=positions) | model)


def test_rope_model_sees_only_relative_positions():
    """A RoPE model has no absolute position signal: shifting every position by a constant changes nothing;
    learned and sinusoidal models do change."""
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 37)
    pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
    for positions in ("rope", "learned", "sinusoidal"):
        net = build_model(tiny(positions, n_kv_heads=2))
        h0, _, _ = net(tokens, causal=True, positions_BxT=pos)
        h_default, _, _ = net(tokens, causal=True)
        np.testing.assert_allclose(h0, h_default, rtol=1e-6, atol=1e-6)
        h1, _, _ = net(tokens, causal=True, positions_BxT=pos + 5)
        if positions == "rope":
            np.testing.assert_allclose(h1, h0, rtol=1e-4, atol=1e-4)
        else:
            assert not np.allclose(h1, h0, atol=1e-3), positions


def test_position_params():
    """Learned positions own a [max_seq_len, d] table; sinusoidal and rope add no parameters."""
    counts = {}
    for positions in ("learned", "sinusoidal", "rope"):
        net = build_model(tiny(positions))
        _, params, _ = nnx.split(net, nnx.Param, ...)
        counts[positions] = sum(x.size for x in jax.tree.leaves(params))
        assert (net.pos_embed is not None) == (positions == "learned")
    assert net.pos_embed is None
    assert counts["learned"] - counts["sinusoidal"] == 16 * 16
    assert counts["sinusoidal"] == counts["rope"]
