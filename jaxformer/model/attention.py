"""Multi-head attention with grouped KV heads, RoPE, sliding windows and an optional KV cache.

`n_kv_heads` = `n_heads` is MHA, 1 is MQA, anything between is GQA; only the KV heads are projected and cached.
The kernel is chosen by `model.attention_impl` (jaxformer/model/attention_kernels.py: XLA, cuDNN or Pallas flash).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer.config import ModelConfig
from jaxformer.model import attention_kernels
from jaxformer.model.layers import Linear, residual_std
from jaxformer.model.positions import apply_rope

KVCache = dict  # {"k": [B, S, G, H], "v": [B, S, G, H], "pos": [B, S] int32 (-1 = empty slot)}


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype),
            "pos": jnp.full((batch, length), -1, jnp.int32)}


def attention_mask(q_pos_BxT: jax.Array, k_pos_BxS: jax.Array, *, causal: bool, window: int,
                   q_seg_BxT: jax.Array | None = None, k_seg_BxS: jax.Array | None = None) -> jax.Array:
    """Boolean [B, 1, T, S] mask from positions: the one definition of causal / window / segment visibility."""
    q, k = q_pos_BxT[:, None, :, None], k_pos_BxS[:, None, None, :]
    mask = jnp.broadcast_to(k >= 0, jnp.broadcast_shapes(q.shape, k.shape))  # [B, 1, T, S] even when bidirectional
    if causal:
        mask &= k <= q
    if window:
        mask &= jnp.abs(q - k) < window
    if q_seg_BxT is not None:
        mask &= q_seg_BxT[:, None, :, None] == k_seg_BxS[:, None, None, :]
    return mask


def attention_probs(q_BxTxNxH: jax.Array, k_BxSxGxH: jax.Array, mask_Bx1xTxS: jax.Array) -> jax.Array:
    """Inspection only: the softmax weights [B, N, T, S] that `jax.nn.dot_product_attention` applies to V, written
    out in float32 (query head i reads KV head i // (N / G), as the kernel groups them). Training never calls it:
    the kernel keeps its own, fused computation."""
    n, g, h = q_BxTxNxH.shape[2], k_BxSxGxH.shape[2], q_BxTxNxH.shape[3]
    k_BxSxNxH = jnp.repeat(k_BxSxGxH, n // g, axis=2)
    scores_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH.astype(jnp.float32),
                                k_BxSxNxH.astype(jnp.float32)) / jnp.sqrt(jnp.float32(h))
    scores_BxNxTxS = jnp.where(mask_Bx1xTxS, scores_BxNxTxS, -jnp.inf)
    return jax.nn.softmax(scores_BxNxTxS, axis=-1)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, window: int, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.window, self.positions, self.rope_theta = window, cfg.positions, cfg.rope_theta
        self.impl, self.dtype = cfg.attention_impl, cfg.dtype
        # Inspection (jaxformer/model/inspect.py) sets this on a model copy to sow the attention weights; False,
        # the call below traces exactly as without it.
        self.record_probs = False
        self.q = Linear("btd,dnh->btnh", (d, n, h), ("embed", "heads", "head_dim"), bias_shape=(n, h),
                        bias_axes=("heads", "head_dim"), cfg=cfg, rngs=rngs)
        self.k = Linear("btd,dkh->btkh", (d, k, h), ("embed", "kv_heads", "head_dim"), bias_shape=(k, h),
                        bias_axes=("kv_heads", "head_dim"), cfg=cfg, rngs=rngs)
        self.v = Linear("btd,dkh->btkh", (d, k, h), ("embed", "kv_heads", "head_dim"), bias_shape=(k, h),
                        bias_axes=("kv_heads", "head_dim"), cfg=cfg, rngs=rngs)
        self.o = Linear("btnh,nhd->btd", (n, h, d), ("heads", "head_dim", "embed"), bias_shape=(d,),
                        bias_axes=("norm",), cfg=cfg, rngs=rngs, std=residual_std(cfg))

    def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, *, causal: bool,
                 segment_ids_BxT: jax.Array | None = None, cache: KVCache | None = None,
                 query_rows_BxR: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """`query_rows_BxR`: queries (and the output) at these positions only, [B, R, D]; keys and values at all
        T (training only: no cache)."""
        q_positions_BxR, q_segment_ids_BxR, x_BxRxD = positions_BxT, segment_ids_BxT, x_BxTxD
        if query_rows_BxR is not None:
            if cache is not None:
                raise ValueError("query rows are for training steps, not for decoding with a KV cache")
            q_positions_BxR = jnp.take_along_axis(positions_BxT, query_rows_BxR, axis=1)
            if segment_ids_BxT is not None:
                q_segment_ids_BxR = jnp.take_along_axis(segment_ids_BxT, query_rows_BxR, axis=1)
            x_BxRxD = jnp.take_along_axis(x_BxTxD, query_rows_BxR[..., None], axis=1)
        q_BxRxNxH, k_BxTxGxH, v_BxTxGxH = self.q(x_BxRxD), self.k(x_BxTxD), self.v(x_BxTxD)
        if self.positions == "rope":
            q_BxRxNxH = apply_rope(q_BxRxNxH, q_positions_BxR, self.rope_theta)
            k_BxTxGxH = apply_rope(k_BxTxGxH, positions_BxT, self.rope_theta)
        if self.record_probs and cache is None:
            mask = attention_mask(q_positions_BxR, positions_BxT, causal=causal, window=self.window,
                                  q_seg_BxT=q_segment_ids_BxR, k_seg_BxS=segment_ids_BxT)
            self.sow(nnx.Intermediate, "probs", attention_probs(q_BxRxNxH, k_BxTxGxH, mask))
        if cache is not None:
            out, cache = self._attend_cached(q_BxRxNxH, k_BxTxGxH, v_BxTxGxH, positions_BxT, causal, cache)
        elif query_rows_BxR is not None:
            out = self._attend_rows(q_BxRxNxH, k_BxTxGxH, v_BxTxGxH, q_positions_BxR, positions_BxT, causal,
                                    q_segment_ids_BxR, segment_ids_BxT)
        else:
            impl = attention_kernels.resolve(self.impl, self.dtype, window=self.window,
                                             segment_ids=segment_ids_BxT is not None)
            # Without documents to keep apart no mask is built, so a fused kernel applies causal + window itself.
            # The XLA kernels get packed documents (or padding) as a mask; cpp and Pallas take the segment ids
            # as they are (cuDNN cannot here).
            mask = None
            if segment_ids_BxT is not None and impl in ("xla", "blocked"):
                mask = attention_mask(positions_BxT, positions_BxT, causal=causal, window=self.window,
                                      q_seg_BxT=segment_ids_BxT, k_seg_BxS=segment_ids_BxT)
            out = attention_kernels.attend(q_BxRxNxH, k_BxTxGxH, v_BxTxGxH, impl=impl, causal=causal,
                                           window=self.window, segment_ids_BxT=segment_ids_BxT, mask=mask)
        return self.o(out), cache

    def _attend_rows(self, q_BxRxNxH, k_BxTxGxH, v_BxTxGxH, q_positions_BxR, positions_BxT, causal,
                     q_segment_ids_BxR, segment_ids_BxT):
        """Queries at some rows against every key. The fused kernels place query i at position i, so a mask
        (causal, window, documents) is written out from the positions for the `xla` kernel: R x T scores per head,
        few next to a layer's T x T. Without one, `blocked` and `cpp` take R queries over T keys as they are
        (cuDNN and Pallas, not run that way yet, leave them to `xla`)."""
        if not (causal or self.window or segment_ids_BxT is not None):
            impl = attention_kernels.resolve(self.impl, self.dtype)
            return attention_kernels.attend(q_BxRxNxH, k_BxTxGxH, v_BxTxGxH, causal=False,
                                            impl=impl if impl in ("blocked", "cpp") else "xla")
        mask = attention_mask(q_positions_BxR, positions_BxT, causal=causal, window=self.window,
                              q_seg_BxT=q_segment_ids_BxR, k_seg_BxS=segment_ids_BxT)
        return attention_kernels.attend(q_BxRxNxH, k_BxTxGxH, v_BxTxGxH, impl="xla", causal=False, mask=mask)

    def _attend_cached(self, q, k, v, positions_BxT, causal, cache):
        """Write this chunk's K/V at its slots, then attend over every filled slot the mask allows.

        Slots are `positions % S` per row, so prefill (T > 1) and one-token decode share this path, and rows
        that were left-padded (position -1 is never written) need no special case.
        """
        b, s = cache["pos"].shape
        slot_BxT = jnp.where(positions_BxT >= 0, positions_BxT % s, s)  # s: out of range, dropped
        rows = jnp.arange(b)[:, None]
        cache = {"k": cache["k"].at[rows, slot_BxT].set(k.astype(cache["k"].dtype), mode="drop"),
                 "v": cache["v"].at[rows, slot_BxT].set(v.astype(cache["v"].dtype), mode="drop"),
                 "pos": cache["pos"].at[rows, slot_BxT].set(positions_BxT, mode="drop")}
        mask = attention_mask(positions_BxT, cache["pos"], causal=causal, window=self.window)
        out = attention_kernels.attend(q, cache["k"].astype(q.dtype), cache["v"].astype(q.dtype), impl="xla",
                                       causal=causal, mask=mask)
        return out, cache
