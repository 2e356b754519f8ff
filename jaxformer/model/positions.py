"""Position information: sinusoidal table (added to embeddings) and rotary embeddings (applied to q, k)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sinusoidal(positions_BxT: jax.Array, d_model: int) -> jax.Array:
    """Vaswani et al.: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    i = jnp.arange(d_model // 2, dtype=jnp.float32)
    inv_freq = 1.0 / (10000.0 ** (2.0 * i / d_model))
    angle_BxTxF = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    pe = jnp.stack([jnp.sin(angle_BxTxF), jnp.cos(angle_BxTxF)], axis=-1).reshape(*positions_BxT.shape, -1)
    if d_model % 2:
        pe = jnp.pad(pe, [(0, 0)] * (pe.ndim - 1) + [(0, 1)])
    return pe


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, "rotate half" layout (GPT-NeoX / LLaMA): pairs (x[i], x[i + H/2]) rotate by p*theta^(-2i/H)."""
    h = x_BxTxNxH.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, h // 2, dtype=jnp.float32) * 2.0 / h)
    angle_BxTx1xF = (positions_BxT[..., None].astype(jnp.float32) * inv_freq)[:, :, None, :]
    cos, sin = jnp.cos(angle_BxTx1xF), jnp.sin(angle_BxTx1xF)
    x32 = x_BxTxNxH.astype(jnp.float32)
    x1, x2 = x32[..., : h // 2], x32[..., h // 2:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxH.dtype)
