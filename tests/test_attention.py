"""Attention against a naive numpy reference: masks, GQA/MQA, sliding windows, segments and the KV cache."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer.model import build_model
from jaxformer.model.attention import Attention, attention_mask, init_cache

B, T, D, N, HD = 2, 8, 16, 4, 4  # batch, length, d_model, heads, head_dim
VOCAB = 37

# Cached steps, compiled once per configuration and chunk length (cheaper than op by op for each new shape).
attend_cached = nnx.jit(lambda attn, x, pos, cache: attn(x, pos, causal=True, cache=cache))
model_cached = nnx.jit(lambda net, tok, pos, cache: net(tok, causal=True, positions_BxT=pos, cache=cache))


def model_cfg(kind: str = "clm", **model):
    """The tiny config at the width and vocabulary the references here use (D, N, VOCAB), `model` keys on top."""
    return tiny_config(kind, vocab_size=VOCAB, model=dict(d_model=D, n_heads=N) | model)


def randomize(module: nnx.Module, seed: int, std: float) -> None:
    """Replace every parameter by N(0, std^2) noise (norm scales: 1 + noise), so biases matter too."""
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Param):
            noise = rng.normal(0.0, std, node[...].shape)
            base = 1.0 if path and path[-1] == "scale" else 0.0
            node[...] = jnp.asarray(base + noise, node[...].dtype)


def make_attention(window: int = 0, seed: int = 0, **model):
    cfg = model_cfg(**model).model
    attn = Attention(cfg, window=window, rngs=nnx.Rngs(seed))
    randomize(attn, seed + 1, std=D ** -0.5)
    return cfg, attn


# ------------------------------------------------------------------------------------------- reference

def np_params(attn: Attention) -> dict:
    out = {}
    for name in ("q", "k", "v", "o"):
        lin = getattr(attn, name)
        out[name] = np.asarray(lin.kernel[...], np.float64)
        out[name + "_b"] = np.asarray(lin.bias[...], np.float64) if lin.bias is not None else 0.0
    return out


def ref_rope(x_TxNxH: np.ndarray, pos_T: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE as complex multiplication: (x[i] + j x[i + H/2]) * exp(j p theta^(-2i/H))."""
    h = x_TxNxH.shape[-1]
    z = x_TxNxH[..., : h // 2] + 1j * x_TxNxH[..., h // 2:]
    freq = theta ** (-2.0 * np.arange(h // 2) / h)
    z = z * np.exp(1j * pos_T[:, None, None] * freq)
    return np.concatenate([z.real, z.imag], axis=-1)


def visible(tq: int, tk: int, pos: np.ndarray, causal: bool, window: int, seg: np.ndarray | None) -> bool:
    """May the query at position pos[tq] see the key at position pos[tk]? Written from the definitions."""
    if pos[tk] < 0:
        return False
    if causal and pos[tk] > pos[tq]:
        return False
    if window and abs(int(pos[tq]) - int(pos[tk])) >= window:
        return False
    return not (seg is not None and seg[tq] != seg[tk])


def ref_attention(x_BxTxD, params, *, n_heads, n_kv_heads, causal, window=0, seg_BxT=None, pos_BxT=None,
                  rope_theta=None):
    """softmax(q k^T / sqrt(h) + mask) v, one batch row and one head at a time, in float64."""
    x = np.asarray(x_BxTxD, np.float64)
    b, t, _ = x.shape
    pos_BxT = np.broadcast_to(np.arange(t), (b, t)) if pos_BxT is None else np.asarray(pos_BxT)
    q = np.einsum("btd,dnh->btnh", x, params["q"]) + params["q_b"]
    k = np.einsum("btd,dnh->btnh", x, params["k"]) + params["k_b"]
    v = np.einsum("btd,dnh->btnh", x, params["v"]) + params["v_b"]
    hd = q.shape[-1]
    group = n_heads // n_kv_heads
    out = np.zeros_like(q)
    for bi in range(b):
        qb, kb = q[bi], k[bi]
        if rope_theta is not None:
            qb, kb = ref_rope(qb, pos_BxT[bi], rope_theta), ref_rope(kb, pos_BxT[bi], rope_theta)
        seg = None if seg_BxT is None else np.asarray(seg_BxT)[bi]
        mask = np.array([[visible(i, j, pos_BxT[bi], causal, window, seg) for j in range(t)] for i in range(t)])
        for head in range(n_heads):
            kv = head // group  # query heads [g*group, (g+1)*group) share KV head g
            scores = qb[:, head] @ kb[:, kv].T / np.sqrt(hd)
            scores = np.where(mask, scores, -np.inf)
            scores = scores - scores.max(-1, keepdims=True)
            p = np.exp(scores)
            p = p / p.sum(-1, keepdims=True)
            out[bi, :, head] = p @ v[bi, :, kv]
    return np.einsum("btnh,nhd->btd", out, params["o"]) + params["o_b"]


def segments(b: int, t: int) -> np.ndarray:
    seg = np.zeros((b, t), np.int32)
    seg[0, 4:] = 1  # two documents
    seg[0, 7:] = 2  # and a third
    seg[1, 6:] = 5
    return seg


# ------------------------------------------------------------------------------------------- tests

CASES = {
    "causal-mha": dict(causal=True),
    "bidirectional-mha": dict(causal=False),
    "causal-gqa": dict(causal=True, n_kv_heads=2),
    "bidirectional-gqa": dict(causal=False, n_kv_heads=2),
    "causal-mqa": dict(causal=True, n_kv_heads=1),
    "bidirectional-mqa": dict(causal=False, n_kv_heads=1),
    "causal-window": dict(causal=True, window=3),
    "bidirectional-window": dict(causal=False, window=3),
    "causal-window-gqa-nobias": dict(causal=True, window=4, n_kv_heads=2, bias=False),
    "causal-segments": dict(causal=True, segments=True),
    "bidirectional-segments": dict(causal=False, segments=True),
    "causal-segments-window-mqa": dict(causal=True, segments=True, window=2, n_kv_heads=1),
    "bidirectional-segments-window": dict(causal=False, segments=True, window=3),
    "causal-rope-gqa": dict(causal=True, n_kv_heads=2, positions="rope"),
    "bidirectional-rope-window": dict(causal=False, window=3, positions="rope"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_attention_matches_naive_reference(name):
    case = dict(CASES[name])
    causal, window, use_seg = case.pop("causal"), case.pop("window", 0), case.pop("segments", False)
    cfg, attn = make_attention(window=window, **case)
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    seg = segments(B, T) if use_seg else None
    out, cache = attn(x, pos, causal=causal, segment_ids_BxT=None if seg is None else jnp.asarray(seg))
    assert cache is None and out.shape == (B, T, D)
    ref = ref_attention(x, np_params(attn), n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, causal=causal,
                        window=window, seg_BxT=seg, rope_theta=cfg.rope_theta if cfg.positions == "rope" else None)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4)


def test_gqa_projects_only_kv_heads():
    for kv in (4, 2, 1):
        cfg, attn = make_attention(n_kv_heads=kv)
        assert attn.q.kernel[...].shape == (D, N, HD)
        assert attn.k.kernel[...].shape == attn.v.kernel[...].shape == (D, kv, HD)
        assert attn.o.kernel[...].shape == (N, HD, D)


def test_masking_is_not_vacuous():
    """The reference masks do matter for these inputs: causal, window and segments change the outputs."""
    _, attn = make_attention()
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    full, _ = attn(x, pos, causal=False)
    causal, _ = attn(x, pos, causal=True)
    seg, _ = attn(x, pos, causal=False, segment_ids_BxT=jnp.asarray(segments(B, T)))
    assert not np.allclose(full, causal, atol=1e-3)
    assert not np.allclose(full, seg, atol=1e-3)
    # The last query of a causal layer sees everything: it equals the bidirectional one there.
    np.testing.assert_allclose(full[:, -1], causal[:, -1], rtol=1e-5, atol=1e-5)
    _, wattn = make_attention(window=2)
    windowed, _ = wattn(x, pos, causal=False)
    assert not np.allclose(full, windowed, atol=1e-3)


def test_segment_ids_all_equal_match_the_unmasked_fast_path():
    for causal, window in [(True, 0), (False, 0), (True, 3), (False, 3)]:
        _, attn = make_attention(window=window, n_kv_heads=2)
        x = jax.random.normal(jax.random.key(3), (B, T, D))
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        fast, _ = attn(x, pos, causal=causal)
        masked, _ = attn(x, pos, causal=causal, segment_ids_BxT=jnp.zeros((B, T), jnp.int32))
        np.testing.assert_allclose(fast, masked, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- attention_mask

@pytest.mark.parametrize("causal,window,with_seg", list(itertools.product([True, False], [0, 1, 3], [False, True])))
def test_attention_mask_semantics(causal, window, with_seg):
    rng = np.random.default_rng(0)
    tq, sk = 5, 7
    q_pos = np.stack([np.arange(2, 2 + tq), rng.permutation(np.arange(-1, tq - 1))])
    k_pos = np.stack([np.arange(sk) - 1, rng.integers(-1, 6, sk)])  # -1: an empty slot
    q_seg = rng.integers(0, 2, (2, tq)) if with_seg else None
    k_seg = rng.integers(0, 2, (2, sk)) if with_seg else None
    mask = attention_mask(jnp.asarray(q_pos), jnp.asarray(k_pos), causal=causal, window=window,
                          q_seg_BxT=None if q_seg is None else jnp.asarray(q_seg),
                          k_seg_BxS=None if k_seg is None else jnp.asarray(k_seg))
    assert mask.shape == (2, 1, tq, sk) and mask.dtype == jnp.bool_
    for b, i, j in itertools.product(range(2), range(tq), range(sk)):
        expect = k_pos[b, j] >= 0
        expect &= not causal or k_pos[b, j] <= q_pos[b, i]
        expect &= not window or abs(int(q_pos[b, i]) - int(k_pos[b, j])) < window
        expect &= not with_seg or q_seg[b, i] == k_seg[b, j]
        assert bool(mask[b, 0, i, j]) == bool(expect), (b, i, j)


def test_attention_mask_examples():
    pos = jnp.arange(4)[None]
    causal = attention_mask(pos, pos, causal=True, window=0)[0, 0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), bool)))
    band = attention_mask(pos, pos, causal=True, window=2)[0, 0]
    np.testing.assert_array_equal(band, np.tril(np.ones((4, 4), bool)) & np.triu(np.ones((4, 4), bool), -1))
    both = attention_mask(pos, pos, causal=False, window=2)[0, 0]
    np.testing.assert_array_equal(both, np.triu(np.tril(np.ones((4, 4), bool), 1), -1))
    seg = jnp.asarray([[0, 0, 1, 1]])
    blocks = attention_mask(pos, pos, causal=False, window=0, q_seg_BxT=seg, k_seg_BxS=seg)[0, 0]
    np.testing.assert_array_equal(blocks, np.kron(np.eye(2, dtype=bool), np.ones((2, 2), bool)))
    empty = attention_mask(pos, jnp.asarray([[0, -1, 2, -1]]), causal=False, window=0)[0, 0]
    np.testing.assert_array_equal(empty, np.tile([True, False, True, False], (4, 1)))


# ------------------------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("model,window,cache_len,prefill", [
    (dict(), 0, T, 4),
    (dict(n_kv_heads=2, positions="rope"), 0, 16, 3),
    (dict(n_kv_heads=1, positions="rope"), 3, T, 1),
    (dict(n_kv_heads=2), 4, 6, 5),  # ring buffer: the cache holds only the last 6 positions, window is 4
])
def test_kv_cache_prefill_then_decode_matches_full_forward(model, window, cache_len, prefill):
    cfg, attn = make_attention(window=window, **model)
    x = jax.random.normal(jax.random.key(4), (B, T, D))
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    full, _ = attn(x, pos, causal=True)
    ref = ref_attention(x, np_params(attn), n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, causal=True,
                        window=window, rope_theta=cfg.rope_theta if cfg.positions == "rope" else None)
    np.testing.assert_allclose(full, ref, rtol=1e-4, atol=1e-4)

    cache = init_cache(cfg, B, cache_len)
    out, cache = attend_cached(attn, x[:, :prefill], pos[:, :prefill], cache)
    outs = [out]
    for t in range(prefill, T):
        out, cache = attend_cached(attn, x[:, t:t + 1], pos[:, t:t + 1], cache)
        assert out.shape == (B, 1, D)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), ref, rtol=1e-4, atol=1e-4)
    assert cache["k"].shape == (B, cache_len, cfg.n_kv_heads, cfg.head_dim)
    expect_pos = [-1] * max(cache_len - T, 0) + list(range(T - min(cache_len, T), T))
    assert sorted(np.asarray(cache["pos"][0]).tolist()) == expect_pos


def test_kv_cache_left_padded_rows():
    """A left-padded row (positions -1 on the pads) decodes like the same sequence without the pads."""
    cfg, attn = make_attention(n_kv_heads=2, positions="rope")
    pad, t = 3, 6
    x = jax.random.normal(jax.random.key(5), (2, pad + t, D))
    pos = jnp.asarray([[-1] * pad + list(range(t)), list(range(pad + t))])
    cache = init_cache(cfg, 2, 16)
    prefill = pad + 2
    out, cache = attend_cached(attn, x[:, :prefill], pos[:, :prefill], cache)
    outs = [out]
    for i in range(prefill, pad + t):
        out, cache = attend_cached(attn, x[:, i:i + 1], pos[:, i:i + 1], cache)
        outs.append(out)
    got = jnp.concatenate(outs, axis=1)
    params = np_params(attn)
    ref0 = ref_attention(x[:1, pad:], params, n_heads=N, n_kv_heads=2, causal=True, rope_theta=cfg.rope_theta)
    ref1 = ref_attention(x[1:], params, n_heads=N, n_kv_heads=2, causal=True, rope_theta=cfg.rope_theta)
    np.testing.assert_allclose(got[0, pad:], ref0[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], ref1[0], rtol=1e-4, atol=1e-4)
    assert (np.asarray(cache["pos"][0]) >= -1).all() and np.asarray(cache["pos"][0]).max() == t - 1


@pytest.mark.parametrize("model", [
    dict(positions="learned"),
    dict(positions="rope", n_kv_heads=2, window=3, global_every=2),
    dict(positions="sinusoidal", n_kv_heads=1, mlp="swiglu", norm="rmsnorm", bias=False),
])
def test_model_kv_cache_decode_matches_full_forward(model):
    cfg = model_cfg(**model)
    net = build_model(cfg, seed=3)
    randomize(net, 7, std=0.3)
    tokens = jax.random.randint(jax.random.key(6), (B, T), 0, VOCAB)
    h, _, none = net(tokens, causal=True)
    assert none is None
    full = net.logits(h)
    prefill = 4
    cache = net.init_cache(B, 16)
    assert len(cache) == cfg.model.n_layer
    h, _, cache = model_cached(net, tokens[:, :prefill], jnp.broadcast_to(jnp.arange(prefill), (B, prefill)), cache)
    logits = [net.logits(h)]
    for t in range(prefill, T):
        h, _, cache = model_cached(net, tokens[:, t:t + 1], jnp.full((B, 1), t), cache)
        logits.append(net.logits(h))
    np.testing.assert_allclose(jnp.concatenate(logits, axis=1), full, rtol=2e-4, atol=2e-4)
