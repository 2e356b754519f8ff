"""The whole model: a naive numpy forward pass, causality, variants and their parameter counts, remat, bf16,
dropout and logical axis metadata."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer.config import load_config, resolve
from jaxformer.model import build_model

D, N, V, T, B = 16, 4, 37, 8, 2


def make_cfg(kind: str = "clm", **model):
    """The tiny config at the width and vocabulary the references here use (D, N, V), `model` keys on top."""
    return tiny_config(kind, vocab_size=V, model=dict(d_model=D, n_heads=N) | model)


def randomize(module: nnx.Module, seed: int, std: float = 0.3) -> None:
    """Replace every parameter by N(0, std^2) noise (norm scales: 1 + noise), so every parameter matters."""
    rng = np.random.default_rng(seed)
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Param):
            base = 1.0 if path and path[-1] == "scale" else 0.0
            node[...] = jnp.asarray(base + rng.normal(0.0, std, node[...].shape), node[...].dtype)


def tokens(seed: int = 0, shape=(B, T)) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, V)


def n_params(model: nnx.Module) -> int:
    _, params, _ = nnx.split(model, nnx.Param, ...)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ------------------------------------------------------------------------------------------- naive reference

def arr(p) -> np.ndarray | float:
    return 0.0 if p is None else np.asarray(p[...], np.float64)


def ref_norm(x, norm, kind, eps):
    if kind == "layernorm":
        x = x - x.mean(-1, keepdims=True)
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    else:
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * arr(norm.scale) + arr(norm.bias)


def ref_gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def ref_silu(x):
    return x / (1 + np.exp(-x))


def ref_rope(x_TxNxH, theta):
    h, t = x_TxNxH.shape[-1], x_TxNxH.shape[0]
    z = x_TxNxH[..., : h // 2] + 1j * x_TxNxH[..., h // 2:]
    z = z * np.exp(1j * np.arange(t)[:, None, None] * theta ** (-2.0 * np.arange(h // 2) / h))
    return np.concatenate([z.real, z.imag], -1)


def ref_attention(x, attn, m, causal, window):
    lin = lambda name, eq, y: np.einsum(eq, y, arr(getattr(attn, name).kernel)) + arr(getattr(attn, name).bias)
    q, k, v = (lin(n, "btd,dnh->btnh", x) for n in "qkv")
    b, t = x.shape[:2]
    out = np.zeros_like(q)
    for bi in range(b):
        qb, kb = (ref_rope(q[bi], m.rope_theta), ref_rope(k[bi], m.rope_theta)) if m.positions == "rope" \
            else (q[bi], k[bi])
        for head in range(m.n_heads):
            kv = head // (m.n_heads // m.n_kv_heads)
            s = qb[:, head] @ kb[:, kv].T / math.sqrt(m.head_dim)
            for i in range(t):
                for j in range(t):
                    if (causal and j > i) or (window and abs(i - j) >= window):
                        s[i, j] = -np.inf
            p = np.exp(s - s.max(-1, keepdims=True))
            out[bi, :, head] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, kv]
    return lin("o", "btnh,nhd->btd", out)


def ref_mlp(x, mlp, m):
    up = x @ arr(mlp.up.kernel) + arr(mlp.up.bias)
    if m.mlp == "gelu":
        h = ref_gelu(up, m.gelu_approximate)
    else:
        gate = x @ arr(mlp.gate.kernel) + arr(mlp.gate.bias)
        h = (ref_silu(gate) if m.mlp == "swiglu" else ref_gelu(gate, m.gelu_approximate)) * up
    return h @ arr(mlp.down.kernel) + arr(mlp.down.bias)


def ref_forward(net, tok, causal):
    """Embeddings, blocks (pre- or post-norm), final norm and the LM head, from the parameters, in float64."""
    m = net.cfg
    tok = np.asarray(tok)
    x = arr(net.embed)[tok]
    t = tok.shape[1]
    if m.positions == "learned":
        x = x + arr(net.pos_embed)[:t]
    elif m.positions == "sinusoidal":
        pe = np.zeros((t, m.d_model))
        for p in range(t):
            for i in range(m.d_model // 2):
                pe[p, 2 * i] = math.sin(p / 10000 ** (2 * i / m.d_model))
                pe[p, 2 * i + 1] = math.cos(p / 10000 ** (2 * i / m.d_model))
        x = x + pe
    if m.embed_norm:
        x = ref_norm(x, net.embed_norm, m.norm, m.norm_eps)
    for layer, blk in enumerate(net.blocks):
        window = 0 if m.global_every and (layer + 1) % m.global_every == 0 else m.window
        norm = lambda y, which, blk=blk: ref_norm(y, getattr(blk, which), m.norm, m.norm_eps)
        if m.post_norm:
            x = norm(x + ref_attention(x, blk.attn, m, causal, window), "attn_norm")
            x = norm(x + ref_mlp(x, blk.mlp, m), "mlp_norm")
        else:
            x = x + ref_attention(norm(x, "attn_norm"), blk.attn, m, causal, window)
            x = x + ref_mlp(norm(x, "mlp_norm"), blk.mlp, m)
    if not m.post_norm:
        x = ref_norm(x, net.final_norm, m.norm, m.norm_eps)
    logits = x @ arr(net.embed).T if m.tie_embeddings else x @ arr(net.lm_head.kernel)
    return x, logits


VARIANTS = {
    # name: (objective kind, causal, model overrides)
    "gpt2": ("clm", True, dict()),
    "bert": ("mlm", False, dict(post_norm=True, embed_norm=True, gelu_approximate=False, norm_eps=1e-12)),
    "llama": ("clm", True, dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_heads=2,
                                tie_embeddings=False)),
    "geglu-window": ("mlm", False, dict(positions="sinusoidal", mlp="geglu", n_kv_heads=1, window=3,
                                        global_every=2, embed_norm=True, norm="rmsnorm")),
    "causal-window": ("clm", True, dict(positions="rope", window=2, n_kv_heads=2)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_matches_naive_reference(name):
    kind, causal, model = VARIANTS[name]
    net = build_model(make_cfg(kind, **model))
    randomize(net, 1)
    tok = tokens(1)
    h, aux, cache = net(tok, causal=causal)
    assert h.shape == (B, T, D) and cache is None and float(aux) == 0.0
    ref_h, ref_logits = ref_forward(net, tok, causal)
    np.testing.assert_allclose(h, ref_h, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(net.logits(h), ref_logits, rtol=2e-4, atol=2e-4)
    if kind == "mlm":  # BERT's MLM head: dense, GELU, norm, tied projection plus a vocabulary bias
        m = net.cfg
        y = ref_gelu(ref_h @ arr(net.mlm_transform.kernel) + arr(net.mlm_transform.bias), m.gelu_approximate)
        y = ref_norm(y, net.mlm_norm, m.norm, m.norm_eps)
        ref_mlm = (y @ arr(net.embed).T if m.tie_embeddings else y @ arr(net.lm_head.kernel)) + arr(net.mlm_bias)
        np.testing.assert_allclose(net.mlm_logits(h), ref_mlm, rtol=2e-4, atol=2e-4)
    else:
        assert net.mlm_transform is None and net.mlm_bias is None


def test_exact_gelu_and_its_gradient_match_the_erf_definition():
    """The erf form (faster on CPU than jax.nn.gelu's erfc form) against x * Phi(x) in float64, tails included."""
    from jaxformer.model.layers import gelu_exact

    x = np.linspace(-12, 12, 4801)
    phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    xs = jnp.asarray(x, jnp.float32)
    np.testing.assert_allclose(gelu_exact(xs), x * cdf, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu_exact))(xs), cdf + x * phi, atol=2e-6, rtol=1e-5)
    np.testing.assert_allclose(gelu_exact(xs), jax.nn.gelu(xs, approximate=False), atol=1e-6)


# ------------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("positions,window", [("learned", 0), ("sinusoidal", 0), ("rope", 0), ("rope", 3),
                                              ("learned", 2)])
def test_causality(positions, window):
    net = build_model(make_cfg(positions=positions, window=window, n_kv_heads=2))
    randomize(net, 2)
    t = 3
    a = tokens(3)
    b = a.at[:, t + 1:].set((a[:, t + 1:] + 1 + jnp.arange(T - t - 1)) % V)  # every later token differs
    for causal in (True, False):
        la = net.logits(net(a, causal=causal)[0])
        lb = net.logits(net(b, causal=causal)[0])
        assert not np.allclose(la[:, t + 1:], lb[:, t + 1:], atol=1e-3)  # the change is visible at all
        if causal:  # decoder: positions <= t never see the future
            np.testing.assert_allclose(la[:, : t + 1], lb[:, : t + 1], rtol=1e-6, atol=1e-6)
        else:  # encoder: they do
            diff = np.abs(np.asarray(la[:, : t + 1] - lb[:, : t + 1])).max(axis=-1)  # [B, t + 1]
            assert (diff[:, t] > 1e-3).all(), diff
            if not window:
                assert (diff > 1e-3).all(), diff


# ------------------------------------------------------------------------------------------- variants

def expected_params(m, mlm_head: bool) -> int:
    """Count from the architecture, written out independently of the modules."""
    d, n, k, h, L = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.n_layer
    f = round(m.mlp_ratio * d)
    norm = d + (d if m.norm == "layernorm" and m.bias else 0)
    attn = d * n * h + 2 * d * k * h + n * h * d + ((n * h + 2 * k * h + d) if m.bias else 0)
    gated = m.mlp != "gelu"
    mlp = (3 if gated else 2) * d * f + (((2 if gated else 1) * f + d) if m.bias else 0)
    total = m.vocab_size * d + L * (attn + mlp + 2 * norm)
    total += m.max_seq_len * d if m.positions == "learned" else 0
    total += norm if m.embed_norm else 0
    total += 0 if m.post_norm else norm
    total += 0 if m.tie_embeddings else d * m.vocab_size
    if mlm_head:
        total += d * d + (d if m.bias else 0) + norm + m.vocab_size
    return total


def test_gpt2_style_param_count():
    """GPT-2 layout (learned positions, LayerNorm with bias, GELU 4x, tied): V d + T d + L (12 d^2 + 13 d) + 2 d."""
    cfg = make_cfg(n_layer=3, d_model=24, n_heads=3)
    m = cfg.model
    d, L = m.d_model, m.n_layer
    net = nnx.eval_shape(lambda: build_model(cfg))  # shapes only: no allocation, no compilation
    assert n_params(net) == V * d + m.max_seq_len * d + L * (12 * d * d + 13 * d) + 2 * d
    # GPT-2 small, without allocating it: the published 124,439,808.
    big = resolve(load_config("gpt2-small", []), n_devices=1)
    abstract = nnx.eval_shape(lambda: build_model(big))
    d, L = 768, 12
    assert n_params(abstract) == 50257 * d + 1024 * d + L * (12 * d * d + 13 * d) + 2 * d == 124_439_808


PARAM_VARIANTS = {
    "mha": dict(),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "swiglu": dict(mlp="swiglu"),
    "swiglu-8/3": dict(mlp="swiglu", mlp_ratio=8 / 3, abstract=True),
    "geglu-nobias": dict(mlp="geglu", bias=False),
    "rmsnorm": dict(norm="rmsnorm"),
    "rmsnorm-nobias-untied": dict(norm="rmsnorm", bias=False, tie_embeddings=False),
    "layernorm-nobias": dict(bias=False),
    "untied": dict(tie_embeddings=False),
    "post-embed-norm": dict(post_norm=True, embed_norm=True),
    "rope-headdim": dict(positions="rope", head_dim=6, n_kv_heads=2, abstract=True),
    "deep-wide": dict(n_layer=5, d_model=48, n_heads=6, n_kv_heads=3, mlp_ratio=3.0, abstract=True),
}


@pytest.mark.parametrize("kind,name", [("clm", name) for name in PARAM_VARIANTS] + [
    ("mlm", name) for name in ("mha", "post-embed-norm", "rmsnorm-nobias-untied")])  # + the MLM head
def test_variant_params_and_structure(name, kind):
    model = dict(PARAM_VARIANTS[name])
    abstract = model.pop("abstract", False)  # odd shapes: count them without allocating or running
    cfg = make_cfg(kind, **model)
    m = cfg.model
    net = nnx.eval_shape(lambda: build_model(cfg)) if abstract else build_model(cfg)
    assert n_params(net) == expected_params(m, mlm_head=kind == "mlm")
    paths = {path: node for path, node in nnx.iter_graph(net) if isinstance(node, nnx.Param)}
    names = {p[-1] for p in paths}
    blk = net.blocks[0]
    d, n, h = m.d_model, m.n_heads, m.head_dim
    assert blk.attn.q.kernel.shape == (d, n, h)
    assert blk.attn.k.kernel.shape == blk.attn.v.kernel.shape == (d, m.n_kv_heads, h)
    assert blk.attn.o.kernel.shape == (n, h, d)
    assert (blk.mlp.gate is None) == (m.mlp == "gelu")
    assert blk.mlp.up.kernel.shape == (d, round(m.mlp_ratio * d))
    assert ("bias" in names) == m.bias  # no bias parameter anywhere when off
    assert (blk.attn_norm.bias is not None) == (m.norm == "layernorm" and m.bias)
    assert (net.lm_head is not None) == (not m.tie_embeddings)
    assert (net.final_norm is None) == m.post_norm
    assert (net.embed_norm is not None) == m.embed_norm
    if not m.tie_embeddings:
        assert net.lm_head.kernel.shape == (d, V) and net.lm_head.bias is None
    if abstract:
        return
    h_out, _, _ = net(tokens(), causal=kind == "clm")
    logits = net.logits(h_out)
    assert logits.shape == (B, T, V) and np.isfinite(np.asarray(logits)).all()
    w = arr(net.embed).T if m.tie_embeddings else arr(net.lm_head.kernel)
    np.testing.assert_allclose(logits, np.asarray(h_out, np.float64) @ w, rtol=1e-4, atol=1e-5)


def test_post_norm_output_is_normalised():
    """Post-norm blocks end with a norm: with unit scale and zero bias every hidden row is standardised."""
    net = build_model(make_cfg("mlm", post_norm=True))
    h, _, _ = net(tokens(), causal=False)
    np.testing.assert_allclose(np.asarray(h).mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(h).std(-1), 1.0, atol=1e-3)
    pre = build_model(make_cfg("mlm", post_norm=False))
    assert not np.allclose(pre(tokens(), causal=False)[0], h, atol=1e-3)


def test_layer_windows():
    net = build_model(make_cfg(n_layer=4, window=3, global_every=2))
    assert [blk.attn.window for blk in net.blocks] == [3, 0, 3, 0]
    net = build_model(make_cfg(n_layer=2, window=3))
    assert [blk.attn.window for blk in net.blocks] == [3, 3]


# ------------------------------------------------------------------------------------------- remat, bf16, dropout

def loss_and_grads(net, tok):
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)

    def loss_fn(p):
        model = nnx.merge(graphdef, p, rest)
        h, aux, _ = model(tok[:, :-1], causal=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(model.logits(h), tok[:, 1:])
        return ce.mean() + aux

    # Compiled without backend optimisations: the same numbers to test, a fraction of the compile time.
    step = jax.jit(jax.value_and_grad(loss_fn)).lower(params).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return step(params), jax.make_jaxpr(jax.grad(loss_fn))(params)


def test_remat_same_loss_and_gradients():
    tok = tokens(4, (B, T + 1))
    results = {}
    for remat in (False, True):
        net = build_model(make_cfg(remat=remat, n_kv_heads=2, positions="rope"), seed=5)
        randomize(net, 3)
        (loss, grads), jaxpr = loss_and_grads(net, tok)
        results[remat] = loss, grads
        assert bool(re.search(r"\b(remat|checkpoint)", str(jaxpr))) == remat  # remat really is in the graph
    np.testing.assert_allclose(results[True][0], results[False][0], rtol=1e-6)
    flat_a, flat_b = jax.tree.leaves(results[True][1]), jax.tree.leaves(results[False][1])
    assert len(flat_a) == len(flat_b) > 0
    for a, b in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in flat_a)


def test_bf16_compute_close_to_fp32():
    tok = tokens(5)
    out = {}
    for dtype in ("float32", "bfloat16"):
        net = build_model(make_cfg(dtype=dtype, positions="rope", mlp="swiglu"), seed=2)
        h, _, _ = net(tok, causal=True)
        out[dtype] = h, net.logits(h)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
    h32, l32 = out["float32"]
    h16, l16 = out["bfloat16"]
    assert h16.dtype == jnp.bfloat16 and l16.dtype == jnp.bfloat16 and h32.dtype == jnp.float32
    err = np.abs(np.asarray(h16, np.float32) - np.asarray(h32))
    assert 0 < err.mean() < 2e-2 and err.max() < 0.15, (err.mean(), err.max())
    lerr = np.abs(np.asarray(l16, np.float32) - np.asarray(l32)).max()
    assert lerr < 0.05 * np.abs(np.asarray(l32)).max() + 1e-2


def test_dropout_only_with_rng():
    tok = tokens(6)
    net = build_model(make_cfg(dropout=0.3), seed=1)
    plain = build_model(make_cfg(dropout=0.0), seed=1)  # the same parameters
    k1, k2 = jax.random.key(1), jax.random.key(2)
    det = net(tok, causal=True)[0]
    np.testing.assert_array_equal(det, net(tok, causal=True)[0])
    np.testing.assert_allclose(det, plain(tok, causal=True)[0], rtol=1e-6, atol=1e-6)  # no rng: no dropout
    d1 = net(tok, causal=True, rng=k1)[0]
    assert not np.allclose(d1, det, atol=1e-3)
    np.testing.assert_array_equal(d1, net(tok, causal=True, rng=k1)[0])
    assert not np.allclose(d1, net(tok, causal=True, rng=k2)[0], atol=1e-3)
    # With rate 0, an rng changes nothing.
    np.testing.assert_array_equal(plain(tok, causal=True, rng=k1)[0], plain(tok, causal=True)[0])


# ------------------------------------------------------------------------------------------- logical axes

@pytest.mark.parametrize("kind,model", [
    ("clm", dict()),
    ("mlm", dict(embed_norm=True, tie_embeddings=False, mlp="swiglu")),
    ("clm", dict(n_experts=4, moe_every=2, mlp="geglu", positions="rope", n_kv_heads=2)),
])
def test_every_param_has_logical_axes(kind, model):
    net = build_model(make_cfg(kind, **model))
    seen = 0
    for path, node in nnx.iter_graph(net):
        if isinstance(node, nnx.Param):
            seen += 1
            axes = node.get_metadata().get("axes")
            assert isinstance(axes, tuple), (path, axes)
            assert len(axes) == node[...].ndim, (path, axes, node[...].shape)
            assert all(a is None or isinstance(a, str) for a in axes), (path, axes)
    assert seen > 10
