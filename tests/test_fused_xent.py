"""The fused vocabulary head + cross-entropy (`model.xent_chunk`, objectives/xent.py) against the same loss and
its gradients written out in float64 numpy: both table layouts, a vocabulary bias, padded vocabulary columns,
a ragged last chunk, fractional weights, and a cotangent other than 1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.objectives.xent import fused_xent_sums

P, E, V, U = 23, 8, 13, 16  # U - V padded vocabulary columns


def _inputs(table_axes: str, with_bias: bool):
    k = jax.random.split(jax.random.key(0), 5)
    h = jax.random.normal(k[0], (P, E))
    table = jax.random.normal(k[1], (U, E) if table_axes == "ve" else (E, U))
    bias = jax.random.normal(k[2], (U,)) if with_bias else None
    # Random targets, except the first rows' are their top logits: some predictions right, most wrong.
    table_UxE = table if table_axes == "ve" else table.T
    logits = h @ table_UxE[:V].T + (0.0 if bias is None else bias[:V])
    targets = jax.random.randint(k[3], (P,), 0, V).at[:6].set(jnp.argmax(logits[:6], -1))
    weights = jax.random.choice(k[4], jnp.array([0.0, 0.5, 1.0]), (P,))
    return h, table, bias, targets, weights


def _reference(h, table, table_axes, bias, targets, weights, scale):
    """(xent sum, correct sum, d(scale * xent sum)/d(h, table, bias)) in float64."""
    h, w = np.asarray(h, np.float64), np.asarray(weights, np.float64)
    t = np.asarray(targets)
    table_UxE = np.asarray(table, np.float64) if table_axes == "ve" else np.asarray(table, np.float64).T
    logits = h @ table_UxE[:V].T + (0.0 if bias is None else np.asarray(bias, np.float64)[:V])
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    target = logits[np.arange(P), t]
    xent = np.sum((lse - target) * w)
    correct = np.sum((target >= logits.max(-1)) * w)
    d_logits = (np.exp(logits - lse[:, None]) - np.eye(V)[t]) * w[:, None] * scale
    d_table_UxE = np.zeros((U, E))
    d_table_UxE[:V] = d_logits.T @ h
    d_bias = np.zeros(U)
    d_bias[:V] = d_logits.sum(0)
    return xent, correct, (d_logits @ table_UxE[:V], d_table_UxE if table_axes == "ve" else d_table_UxE.T, d_bias)


@pytest.mark.parametrize("table_axes,with_bias", [("ve", True), ("ev", False)])
@pytest.mark.parametrize("chunk", [5, 64])
def test_loss_and_gradients_match_float64(table_axes, with_bias, chunk):
    h, table, bias, targets, weights = _inputs(table_axes, with_bias)

    def sums(h, table, bias):
        return fused_xent_sums(h, table, table_axes, bias, targets, weights, vocab_size=V, chunk=chunk,
                               dtype=jnp.float32)

    def loss(h, table, bias):  # a nonlinear use of the sum: the backward must scale by its cotangent
        xent, correct = sums(h, table, bias)
        return xent ** 2, (xent, correct)

    (_, (xent, correct)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(h, table, bias)
    want_xent, want_correct, want_grads = _reference(h, table, table_axes, bias, targets, weights, 2 * float(xent))
    assert float(xent) == pytest.approx(want_xent, rel=1e-5)
    assert float(correct) == want_correct
    assert 0 < want_correct < float(weights.sum())  # neither none nor all right: the count is really checked
    for got, want in zip(grads, want_grads, strict=True):
        if got is None:  # no bias
            continue
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    # Undifferentiated (evaluation) it computes the same sums without the gradients.
    assert [float(x) for x in jax.jit(sums)(h, table, bias)] == [float(xent), float(correct)]


def test_bfloat16_matmuls_stay_close_to_float64():
    """The accelerator default: bf16 projections, float32 softmax, float32 table gradient."""
    h, table, bias, targets, weights = _inputs("ve", True)

    def xent(h, table, bias):
        return fused_xent_sums(h.astype(jnp.bfloat16), table, "ve", bias, targets, weights, vocab_size=V, chunk=5,
                               dtype=jnp.bfloat16)[0]

    value, (d_h, d_table, d_bias) = jax.jit(jax.value_and_grad(xent, argnums=(0, 1, 2)))(h, table, bias)
    want, _, (want_h, want_table, want_bias) = _reference(h, table, "ve", bias, targets, weights, 1.0)
    assert d_table.dtype == jnp.float32 and d_bias.dtype == jnp.float32
    assert float(value) == pytest.approx(want, rel=2e-2)
    for got, ref in ((d_h, want_h), (d_table, want_table), (d_bias, want_bias)):
        assert np.linalg.norm(np.asarray(got, np.float64) - ref) < 3e-2 * np.linalg.norm(ref)


def test_no_predicted_rows_give_zero_sums_and_gradients():
    h, table, bias, targets, weights = _inputs("ve", True)

    def xent(h, table, bias):
        return fused_xent_sums(h[:0], table, "ve", bias, targets[:0], weights[:0], vocab_size=V, chunk=8,
                               dtype=jnp.float32)[0]

    value, grads = jax.value_and_grad(xent, argnums=(0, 1, 2))(h, table, bias)
    assert float(value) == 0.0 and not any(np.asarray(g).any() for g in grads)
