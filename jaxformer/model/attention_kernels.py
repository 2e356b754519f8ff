"""Which kernel computes softmax(QK^T)V in training: `model.attention_impl`.

- `xla`: `jax.nn.dot_product_attention(implementation="xla")`, every backend; the reference the others are
  tested against (tests/test_accelerator_path.py).
- `blocked`: plain XLA einsums laid out heads-first ([B, G, N/G x T, H], no K/V repeat for GQA); causal layers
  run in query blocks of `BLOCK` rows, each reading only the keys up to its last row, so the score and value
  products above the diagonal (3/8 of them at T = 256) are never computed. On a 2-core CPU the `xla` call
  (einsums over [B, T, N, H], the full causal square) took 2x as long for attention alone (forward + backward,
  B 16, T 256, 6 heads of 64), and whole train steps ran 1.07x faster with `blocked` (CLM, S and M) and
  1.02-1.03x (MLM): `benchmarks/bench_train.py --variant model.attention_impl=xla`, results/bench/train.json.
- `cpp`: the C++ kernel in cpu_attention.cc (jaxformer/model/cpu_attention.py), compiled for this CPU on first
  use: one task per (batch row, KV head), spread over all cores, each query block's scores -> softmax -> P V kept
  in cache, the backward recomputing the probabilities from the saved log-sum-exp. XLA:CPU runs the `blocked`
  kernel's batched products on one core; on a 2-core CPU attention forward + backward (B 16, T 256, 6 heads of
  64) ran 1.2-1.4x (bidirectional) and 1.6x (causal) faster than `blocked`. Float32; it applies sliding windows
  and packed documents (segment ids) itself, each query block reading only the keys some row of it sees.
- `cudnn`: the same call with `implementation="cudnn"`: cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16).
- `pallas`: a Pallas flash-attention kernel from jax's own Pallas ops: the Triton kernel on GPUs, the Mosaic
  kernel on TPUs, and the GPU kernel in interpret mode on CPU (slow; there for numerics tests only).
- `auto` (default): `cudnn` on a GPU when the compute dtype is half precision (cuDNN's flash path needs it),
  `pallas` on a TPU, `cpp` on a CPU where it can run (float32 and a C++ compiler; a sharded step runs it on
  each device's shard of batch rows and KV heads), else `blocked`; `xla` otherwise.
  `jax.nn.dot_product_attention`'s own default (`implementation=None`) picks XLA in this JAX version, so without
  this setting nothing would run a flash kernel.

The fused kernels take no explicit mask: causal, sliding window (cuDNN and cpp) and document boundaries
(segment ids; cpp and Pallas, not cuDNN in this JAX) are arguments. Decoding with a KV cache always uses `xla`
(one query row per step gains nothing from a flash kernel, and the cache needs a position mask).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxformer.errors import UserError
from jaxformer.model import cpu_attention

HALF = ("bfloat16", "float16")

IMPLS = ("auto", "xla", "blocked", "cpp", "cudnn", "pallas")
# Query rows per block of the `blocked` kernel: 64 beat 32, 128 and one block in a 6-layer d384 T256 train step
# on a 2-core CPU (32 loses to per-block overhead, 128 skips less of the upper triangle). cpu_attention.cc's BQ
# is the same, so both skip the same products.
BLOCK = 64
# cpu_attention.cc widens each block's key range to whole multiples of this many keys (its KP).
KEY_PANEL = 16


def resolve(impl: str, dtype: str, *, window: int = 0, segment_ids: bool = False, backend: str | None = None) -> str:
    """`auto` -> the fastest kernel that can run this call here; other values unchanged."""
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "gpu" and dtype in HALF and not segment_ids:
        return "cudnn"
    if backend == "tpu" and not window:
        return "pallas"
    if backend != "cpu":
        return "xla"
    if dtype not in HALF and cpu_attention.unavailable_reason() is None:
        return "cpp"
    return "blocked"


def resolve_for(cfg) -> str:
    """The kernel a run's (resolved) Config trains with, for the records benchmarks write."""
    return resolve(cfg.model.attention_impl, cfg.model.dtype, window=cfg.model.window, segment_ids=cfg.data.packing)


def keys_multiplied(t: int, *, causal: bool, impl: str, window: int = 0) -> float:
    """Average number of keys per query whose products the kernel `impl` (resolved) computes in a window of t
    positions: `blocked` and `cpp` stop each causal query block at its last row, and in a sliding `window`
    `cpp` reads only the keys some row of the block sees, widened to whole multiples of KEY_PANEL keys; the others
    compute the full square (the fused kernels skip masked tiles too, but by their own tiling, so T stays their
    upper bound). Packed documents, which `cpp` also skips, depend on the data: not counted, an upper bound."""
    window = window if impl == "cpp" else 0
    if impl not in ("blocked", "cpp") or not (causal or window):
        return float(t)
    total = 0
    for start in range(0, t, BLOCK):
        stop = min(start + BLOCK, t)
        first = max(0, start - window + 1) if window else 0
        last = stop if causal else min(t, stop - 1 + window)
        total += (stop - start) * (min(t, -(-last // KEY_PANEL) * KEY_PANEL) - first // KEY_PANEL * KEY_PANEL)
    return total / t


def check(impl: str, *, window: int, segment_ids: bool, dtype: str = "float32") -> None:
    """One sentence when `impl` cannot express the masking or dtype a run asks for (config validation)."""
    if impl == "cpp" and dtype in HALF:
        raise UserError(f"model.attention_impl=cpp computes float32 attention, and this run sets model.dtype={dtype}; "
                        f"use auto or blocked.")
    if impl == "cudnn" and segment_ids:
        raise UserError("model.attention_impl=cudnn cannot keep packed documents apart in this JAX version "
                        "(data.packing=true); use auto, xla or pallas.")
    if impl == "pallas" and window:
        raise UserError("model.attention_impl=pallas has no sliding window (model.window); use auto, xla or cudnn.")


def attend(q_BxTxNxH: jax.Array, k_BxSxGxH: jax.Array, v_BxSxGxH: jax.Array, *, impl: str, causal: bool,
           window: int = 0, segment_ids_BxT: jax.Array | None = None, mask=None) -> jax.Array:
    """Attention output [B, T, N, H] by the kernel `impl` (already resolved). `mask` (a full [B, 1, T, S]
    boolean mask) is only for `xla` (the cached decode path, packed cuDNN-less runs) and `blocked`."""
    if impl == "cudnn" and jax.default_backend() != "gpu":  # at trace time: `jaxformer params` may name it anywhere
        raise UserError(f"model.attention_impl=cudnn needs an NVIDIA GPU (this backend is "
                        f"{jax.default_backend()}); use auto or xla.")
    if impl == "pallas":
        return _pallas(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, causal=causal, segment_ids_BxT=segment_ids_BxT)
    if impl == "cpp":
        return _cpp(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, causal=causal, window=window, segment_ids_BxT=segment_ids_BxT)
    if impl == "blocked":
        return _blocked(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, causal=causal, window=window, mask=mask)
    if mask is not None:
        return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, mask=mask, implementation=impl)
    left = window - 1 if window else None
    local = None if left is None else (left, 0 if causal else left)
    return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, is_causal=causal, local_window_size=local,
                                        implementation=impl)


def _cpp(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, *, causal, window, segment_ids_BxT):
    """The C++ kernel, after the checks only the traced call can make (backend, dtype, compiler)."""
    if jax.default_backend() != "cpu":
        raise UserError(f"model.attention_impl=cpp runs on CPUs (this backend is {jax.default_backend()}); "
                        f"use auto.")
    check("cpp", window=window, segment_ids=segment_ids_BxT is not None, dtype=str(q_BxTxNxH.dtype))
    if (causal or window or segment_ids_BxT is not None) and k_BxSxGxH.shape[1] != q_BxTxNxH.shape[1]:
        raise UserError(f"model.attention_impl=cpp takes causal, windowed or packed attention over as many keys as "
                        f"queries (training), got {q_BxTxNxH.shape[1]} queries and {k_BxSxGxH.shape[1]} keys; "
                        f"use xla.")
    if (reason := cpu_attention.unavailable_reason()) is not None:
        raise UserError(f"model.attention_impl=cpp could not build its kernel ({reason}); use auto or blocked.")
    return cpu_attention.attention(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, causal, window, segment_ids_BxT)


def _blocked(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, *, causal, window, mask):
    """Heads-first XLA attention; causal: query block [a, b) reads keys [0, b) only.

    Skipping the keys after a block's last row is exact for every causal mask training builds (positions grow
    along the row inside a document, and packed documents are contiguous), and `mask` (packed documents) is
    sliced to the same keys. Fully masked rows get the most negative finite score, as the `xla` kernel does.
    The R query heads that share a KV head are folded into the query rows (M = R x block rows), so each product
    is a plain batched matmul [B, G, M, H] x [B, G, S, H]: a separate size-1 head axis in the einsums made the
    same products 1.3x slower on a 2-core CPU (forward + backward, B 16, T 256, 6 heads of 64).
    """
    b, t, n, h = q_BxTxNxH.shape
    s, g = k_BxSxGxH.shape[1], k_BxSxGxH.shape[2]
    r = n // g
    q_BxGxRxTxH = (q_BxTxNxH * h**-0.5).reshape(b, t, g, r, h).transpose(0, 2, 3, 1, 4)
    k_BxGxSxH, v_BxGxSxH = k_BxSxGxH.transpose(0, 2, 1, 3), v_BxSxGxH.transpose(0, 2, 1, 3)
    starts = range(0, t, BLOCK) if causal else (0,)
    outs = []
    for start in starts:
        stop = min(start + BLOCK, t) if causal else t
        keys = stop if causal else s
        rows = stop - start
        q_BxGxMxH = q_BxGxRxTxH[:, :, :, start:stop].reshape(b, g, r * rows, h)
        scores_BxGxMxK = jnp.einsum("bgmh,bgsh->bgms", q_BxGxMxH, k_BxGxSxH[:, :, :keys],
                                    preferred_element_type=jnp.float32)
        if causal or window or mask is not None:  # an all-true mask still costs a pass over the scores
            row, col = jnp.tile(jnp.arange(start, stop), r)[:, None], jnp.arange(keys)[None, :]
            visible = jnp.ones((1, 1, 1, 1), bool)
            if causal:
                visible &= col <= row
            if window:
                visible &= jnp.abs(row - col) < window
            if mask is not None:  # [B, 1, T, S] -> [B, 1, R x rows, keys]
                visible &= jnp.tile(mask[:, :, start:stop, :keys], (1, 1, r, 1))
            scores_BxGxMxK = jnp.where(visible, scores_BxGxMxK, jnp.finfo(jnp.float32).min)
        probs_BxGxMxK = jax.nn.softmax(scores_BxGxMxK, axis=-1).astype(v_BxGxSxH.dtype)
        out_BxGxMxH = jnp.einsum("bgms,bgsh->bgmh", probs_BxGxMxK, v_BxGxSxH[:, :, :keys])
        outs.append(out_BxGxMxH.reshape(b, g, r, rows, h))
    out_BxGxRxTxH = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out_BxGxRxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q_BxTxNxH.dtype)


def _block(t: int) -> int:
    """The largest power-of-two block (16..128) dividing the sequence length, as the kernels need."""
    for block in (128, 64, 32, 16):
        if t % block == 0:
            return block
    raise UserError(f"model.attention_impl=pallas needs train.seq_len divisible by 16, got {t}; use xla.")


def _pallas(q, k, v, *, causal, segment_ids_BxT):
    n, g, h, t = q.shape[2], k.shape[2], q.shape[3], q.shape[1]
    if g != n:  # the kernels take one K/V head per query head: GQA/MQA heads are repeated, as XLA's kernel does
        k, v = jnp.repeat(k, n // g, axis=2), jnp.repeat(v, n // g, axis=2)
    scale = h**-0.5
    block = _block(t)
    if jax.default_backend() == "tpu":
        from jax.experimental.pallas.ops.tpu import flash_attention as tpu

        segments = None if segment_ids_BxT is None else tpu.SegmentIds(segment_ids_BxT, segment_ids_BxT)
        out = tpu.flash_attention(*(z.swapaxes(1, 2) for z in (q, k, v)), segment_ids=segments, causal=causal,
                                  sm_scale=scale)
        return out.swapaxes(1, 2)
    from jax.experimental.pallas.ops.gpu import attention as gpu

    sizes = gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=min(block, 32), block_kv_dkv=min(block, 32),
                           block_q_dq=min(block, 32), block_kv_dq=min(block, 32))
    kernel = functools.partial(gpu.mha, sm_scale=scale, causal=causal, block_sizes=sizes,
                               interpret=jax.default_backend() == "cpu")
    return kernel(q, k, v, segment_ids_BxT)
