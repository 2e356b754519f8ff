"""Cross-entropy sums for the vocabulary heads: from whole logits, or fused with the vocabulary projection in chunks
(`model.xent_chunk`).

The fused form is a linear + cross-entropy with its own gradient: `chunk` predicted slots at a time it projects
them onto the vocabulary, takes the loss, and, when differentiated, turns that chunk's logits straight into the
gradients of its inputs (softmax - one-hot, through the two matmuls) before the next chunk. The [P, V] float32
logits never exist at once, forward or backward, nothing is recomputed (a rematerialised chunk would run its
head matmul a second time), the softmax is computed once, and the backward pass only scales the saved
gradients [P, E] and [U, E] by the loss's cotangent (the scheme of Liger-Kernel's fused linear cross-entropy).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def xent_sums(logits_xV: jax.Array, targets_x: jax.Array, weights_x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(summed weighted cross-entropy, summed weighted "target is the top logit") over any leading shape."""
    logits_xV = logits_xV.astype(jnp.float32)
    xent = optax.softmax_cross_entropy_with_integer_labels(logits_xV, targets_x)
    # "target logit is the max" reuses the max that the log-softmax computes (an argmax would be a second
    # pass over [..., V]: ~5% of a small CLM step); ties count as correct.
    target_logit = jnp.take_along_axis(logits_xV, targets_x[..., None], axis=-1)[..., 0]
    correct = (target_logit >= logits_xV.max(-1)).astype(jnp.float32)
    return jnp.sum(xent * weights_x), jnp.sum(correct * weights_x)


def fused_xent_sums(h_PxE: jax.Array, table: jax.Array, table_axes: str, bias_U: jax.Array | None,
                    targets_P: jax.Array, weights_P: jax.Array, *, vocab_size: int, chunk: int,
                    dtype) -> tuple[jax.Array, jax.Array]:
    """`xent_sums` of the logits `h_PxE @ table (+ bias_U)` cut to `vocab_size` columns (the model's
    `vocab_logits`), computed `chunk` rows at a time, the last chunk padded with weight 0.

    `table` is the vocabulary matrix as the model stores it, `table_axes` its einsum axes ("ve": [U, E], "ev":
    [E, U]); the matmuls run in `dtype` (the model's compute dtype) and the softmax in float32. Differentiable in
    `h_PxE`, `table` and `bias_U` (the returned accuracy count has no gradient)."""
    # A chunk longer than the rows would only pad them (MLM predicts ~15% of the slots); no rows: one padded row.
    spec = _FusedHead(table_axes, vocab_size, max(1, min(chunk, h_PxE.shape[0])), jnp.dtype(dtype))
    return _fused_head(spec, h_PxE, table, bias_U, targets_P, weights_P)


class _FusedHead(NamedTuple):
    table_axes: str  # "ve" or "ev"
    vocab_size: int
    chunk: int
    dtype: jnp.dtype


def _chunks(spec: _FusedHead, h_PxE, targets_P, weights_P):
    """[P, ...] -> [C, chunk, ...], the ragged tail padded (weight 0 drops it from every sum and gradient)."""
    pad = -h_PxE.shape[0] % spec.chunk
    return (jnp.pad(h_PxE, ((0, pad), (0, 0))).reshape(-1, spec.chunk, h_PxE.shape[1]),
            jnp.pad(targets_P, (0, pad)).reshape(-1, spec.chunk),
            jnp.pad(weights_P, (0, pad)).reshape(-1, spec.chunk))


def _chunk_sums(spec: _FusedHead, h_KxE, table, bias_U, targets_K, weights_K, *, with_grads: bool):
    """One chunk's (xent sum, correct sum), and with_grads: the xent sum's gradients (h [K, E], table, bias)."""
    tax = spec.table_axes
    table_c = table.astype(spec.dtype)
    logits_KxU = jnp.einsum(f"ke,{tax}->kv", h_KxE.astype(spec.dtype), table_c)
    if bias_U is not None:
        logits_KxU = logits_KxU + bias_U.astype(spec.dtype)
    logits_KxU = logits_KxU.astype(jnp.float32)
    if spec.vocab_size < logits_KxU.shape[1]:
        # Padded vocabulary columns at -inf: out of the softmax, zero gradient, and no [K, V] slice and pad-back
        # copies (on an H200 the pad alone was ~5% of a GPT-2 small step).
        logits_KxU = jnp.where(jnp.arange(logits_KxU.shape[1]) < spec.vocab_size, logits_KxU, -jnp.inf)
    max_K = logits_KxU.max(-1)
    exp_KxU = jnp.exp(logits_KxU - max_K[:, None])
    sum_K = exp_KxU.sum(-1)
    target_K = jnp.take_along_axis(logits_KxU, targets_K[:, None], axis=-1)[:, 0]
    xent = jnp.sum((max_K + jnp.log(sum_K) - target_K) * weights_K)
    correct = jnp.sum((target_K >= max_K).astype(jnp.float32) * weights_K)  # ties count, as in xent_sums
    if not with_grads:
        return (xent, correct), None
    # d xent / d logits = weight * (softmax - one-hot)
    onehot_KxU = jax.nn.one_hot(targets_K, logits_KxU.shape[1], dtype=jnp.float32)
    dlogits_KxU = (exp_KxU / sum_K[:, None] - onehot_KxU) * weights_K[:, None]
    d_c = dlogits_KxU.astype(spec.dtype)
    f32 = jnp.float32
    dh_KxE = jnp.einsum(f"kv,{tax}->ke", d_c, table_c, preferred_element_type=f32)
    dtable = jnp.einsum(f"kv,ke->{tax}", d_c, h_KxE.astype(spec.dtype), preferred_element_type=f32)
    dbias_U = None if bias_U is None else dlogits_KxU.sum(0)
    return (xent, correct), (dh_KxE, dtable, dbias_U)


def _scan_chunks(spec: _FusedHead, h_PxE, table, bias_U, targets_P, weights_P, *, with_grads: bool):
    """Sums over every chunk; with_grads: also the gradients, the table's and bias' accumulated in float32."""
    zero = jnp.zeros((), jnp.float32)
    grad_zeros = (jnp.zeros(table.shape, jnp.float32),
                  None if bias_U is None else jnp.zeros(bias_U.shape, jnp.float32)) if with_grads else None

    def body(carry, xs):
        (xent_acc, correct_acc), grad_acc = carry
        (xent, correct), grads = _chunk_sums(spec, xs[0], table, bias_U, *xs[1:], with_grads=with_grads)
        if with_grads:
            dh_KxE, dtable, dbias_U = grads
            grad_acc = (grad_acc[0] + dtable, None if dbias_U is None else grad_acc[1] + dbias_U)
            grads = dh_KxE
        return ((xent_acc + xent, correct_acc + correct), grad_acc), grads

    ((xent, correct), grad_acc), dh_CxKxE = jax.lax.scan(
        body, ((zero, zero), grad_zeros), _chunks(spec, h_PxE, targets_P, weights_P))
    if not with_grads:
        return (xent, correct), None
    dh_PxE = dh_CxKxE.reshape(-1, h_PxE.shape[1])[:h_PxE.shape[0]]
    return (xent, correct), (dh_PxE, *grad_acc)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_head(spec, h_PxE, table, bias_U, targets_P, weights_P):
    return _scan_chunks(spec, h_PxE, table, bias_U, targets_P, weights_P, with_grads=False)[0]


def _fused_head_fwd(spec, h_PxE, table, bias_U, targets_P, weights_P):
    sums, (dh_PxE, dtable, dbias_U) = _scan_chunks(spec, h_PxE, table, bias_U, targets_P, weights_P,
                                                     with_grads=True)
    # Saved in the inputs' dtypes, which are the cotangents' dtypes.
    return sums, (dh_PxE.astype(h_PxE.dtype), dtable.astype(table.dtype),
                  None if bias_U is None else dbias_U.astype(bias_U.dtype))


def _fused_head_bwd(spec, residuals, cotangents):
    g = cotangents[0]  # the xent sum's; the accuracy count is not differentiable
    return (*((g * grad).astype(grad.dtype) if grad is not None else None for grad in residuals), None, None)


_fused_head.defvjp(_fused_head_fwd, _fused_head_bwd)
