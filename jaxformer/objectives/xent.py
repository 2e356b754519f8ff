"""Cross-entropy sums for the vocabulary heads, whole or in chunks (`model.xent_chunk`).

The chunked form projects `chunk` predicted slots at a time inside a `lax.scan` whose body is rematerialised
(`jax.checkpoint`): the [P, V] float32 logits never exist at once, forward or backward, only [chunk, V]. That is
the memory of a fused linear + cross-entropy (large vocabularies, long sequences on accelerators) at the cost of
recomputing each chunk's head matmul once in the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable

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


def chunked_xent_sums(head: Callable[[jax.Array], jax.Array], h_PxD: jax.Array, targets_P: jax.Array,
                      weights_P: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """`xent_sums(head(h_PxD), ...)` computed `chunk` rows at a time (the last chunk padded with weight 0)."""
    p, d = h_PxD.shape
    pad = -p % chunk
    h_CxKxD = jnp.pad(h_PxD, ((0, pad), (0, 0))).reshape(-1, chunk, d)
    targets_CxK = jnp.pad(targets_P, (0, pad)).reshape(-1, chunk)
    weights_CxK = jnp.pad(weights_P, (0, pad)).reshape(-1, chunk)

    @jax.checkpoint
    def one_chunk(h_KxD, targets_K, weights_K):
        return xent_sums(head(h_KxD), targets_K, weights_K)

    def body(carry, xs):
        xent, correct = one_chunk(*xs)
        return (carry[0] + xent, carry[1] + correct), None

    zero = jnp.zeros((), jnp.float32)
    (xent_sum, correct_sum), _ = jax.lax.scan(body, (zero, zero), (h_CxKxD, targets_CxK, weights_CxK))
    return xent_sum, correct_sum
