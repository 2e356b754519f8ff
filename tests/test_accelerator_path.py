"""The accelerator path on a CPU: every attention kernel that can run here (`model.attention_impl`; Pallas in
interpret mode) agrees with a naive attention and with XLA (values and gradients), `auto` picks by backend,
impossible combinations are one sentence, and `model.dtype=auto` is bf16 only where bf16 is fast."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import objectives, train
from jaxformer.config import validate
from jaxformer.data import batching
from jaxformer.errors import UserError
from jaxformer.model import attention_kernels, build_model, cpu_attention
from jaxformer.model.attention import attention_mask
from tests.tiny import tiny_config


def require_cpp_kernel():
    """The C++ kernel is built with the machine's compiler; where there is none, its tests say so and skip."""
    from jaxformer.model import cpu_attention

    if (reason := cpu_attention.unavailable_reason()) is not None:
        pytest.skip(f"model.attention_impl=cpp cannot be built here: {reason}")


def _qkv(n_kv: int, t: int = 32, *, h: int = 16, dtype=jnp.float32, seed: int = 0):
    """Random q [2, t, 4, h] and k, v [2, t, n_kv, h]."""
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (2, t, 4, h), dtype), jax.random.normal(kk, (2, t, n_kv, h), dtype),
            jax.random.normal(kv, (2, t, n_kv, h), dtype))


def _naive(q, k, v, *, causal, segment_ids=None, window=0):
    """softmax(QK^T / sqrt(H)) V written out in numpy, query head i reading KV head i // (N / G)."""
    q, k, v = (np.asarray(z, np.float64) for z in (q, k, v))
    n, g, t = q.shape[2], k.shape[2], q.shape[1]
    k, v = np.repeat(k, n // g, axis=2), np.repeat(v, n // g, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    allowed = np.ones((q.shape[0], 1, t, t), bool)
    if causal:
        allowed &= np.tril(np.ones((t, t), bool))
    if window:
        idx = np.arange(t)
        allowed &= np.abs(idx[:, None] - idx[None, :]) < window
    if segment_ids is not None:
        seg = np.asarray(segment_ids)
        allowed &= seg[:, None, :, None] == seg[:, None, None, :]
    scores = np.where(allowed, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("bnts,bsnh->btnh", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("impl", ["xla", "blocked", "cpp", "pallas"])
@pytest.mark.parametrize("causal,n_kv,packed", [(True, 4, False), (False, 2, False), (True, 1, True)])
def test_kernel_matches_the_naive_attention(impl, causal, n_kv, packed):
    if impl == "cpp":
        require_cpp_kernel()
    q, k, v = _qkv(n_kv)
    segments = jnp.asarray(np.repeat([[0] * 20 + [1] * 12], 2, axis=0)) if packed else None
    mask = None
    if packed and impl in ("xla", "blocked"):  # XLA takes documents as a mask (the model builds it with attention_mask)
        positions = jnp.broadcast_to(jnp.arange(32), (2, 32))
        mask = attention_mask(positions, positions, causal=causal, window=0, q_seg_BxT=segments,
                              k_seg_BxS=segments)
    out = attention_kernels.attend(q, k, v, impl=impl, causal=causal, segment_ids_BxT=segments, mask=mask)
    np.testing.assert_allclose(np.asarray(out), _naive(q, k, v, causal=causal, segment_ids=segments),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("causal,window,n_kv", [(True, 0, 2), (True, 40, 4), (False, 24, 1), (False, 0, 4)])
def test_blocked_kernel_over_several_blocks(causal, window, n_kv):
    """T = 150 is two whole query blocks and a ragged one: every block must read exactly its visible keys (a
    sliding window crossing block edges, GQA groups without repeated K/V); values and gradients vs naive/XLA."""
    assert attention_kernels.BLOCK < 150 < 3 * attention_kernels.BLOCK
    q, k, v = _qkv(n_kv, t=150)
    # compiled as training runs it; eagerly, every op of the block loop and its gradient was compiled on its own
    out = jax.jit(lambda *a: attention_kernels.attend(*a, impl="blocked", causal=causal, window=window))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), _naive(q, k, v, causal=causal, window=window),
                               atol=2e-5, rtol=2e-5)

    def grads(impl):
        return jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(attention_kernels.attend(*a, impl=impl, causal=causal,
                                                                                    window=window))),
                                argnums=(0, 1, 2)))(q, k, v)

    for got, want in zip(grads("blocked"), grads("xla"), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


def test_pallas_gradients_match_xla():
    q, k, v = _qkv(2)

    def loss(impl):
        return jax.grad(lambda *a: jnp.sum(jnp.sin(attention_kernels.attend(*a, impl=impl, causal=True))),
                        argnums=(0, 1, 2))(q, k, v)

    for got, want in zip(loss("pallas"), loss("xla"), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_train_step_loss_is_the_same_across_kernels(kind):
    """The whole model: same parameters, same batch, the step's loss and gradient norm agree across kernels
    (the MLM batch packs documents: segment ids and positions from EOS tokens, as data.packing=true builds)."""
    tokens = np.array(jax.random.randint(jax.random.key(1), (8, 17), 8, 64))
    batch = {"tokens": tokens}
    if kind == "mlm":
        tokens[:, [5, 11]] = tokens[::2, [3]] = 2  # documents of several lengths, different in every row
        batch = {"tokens": tokens, **batching.packing_arrays(tokens, eos_id=2)}
        assert len(np.unique(batch["segment_ids"])) == 4
    metrics = {}
    require_cpp_kernel()
    for impl in ("xla", "blocked", "cpp", "pallas"):
        cfg = tiny_config(kind, model=dict(attention_impl=impl))
        tx = train.make_optimizer(cfg)
        graphdef, params = nnx.split(build_model(cfg, 0), nnx.Param)
        state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 graphdef=graphdef, tx=tx, cfg=cfg)
        _, metrics[impl] = jax.jit(train.train_step)(state, batch, jax.random.key(2))
        assert objectives.for_config(cfg).kind == kind
    for impl in ("blocked", "cpp", "pallas"):
        for name in ("loss", "grad_norm"):
            assert float(metrics[impl][name]) == pytest.approx(float(metrics["xla"][name]), rel=1e-5)


def test_auto_picks_by_backend_and_masking(monkeypatch):
    resolve = attention_kernels.resolve
    require_cpp_kernel()
    assert jax.device_count() > 1  # the tests' 8 CPU devices: a sharded step runs the kernel per shard
    assert resolve("auto", "float32", backend="cpu") == resolve("auto", "auto", backend="cpu") == "cpp"
    monkeypatch.setattr(cpu_attention, "unavailable_reason", lambda: "no C++ compiler found")
    assert resolve("auto", "float32", backend="cpu") == "blocked"
    monkeypatch.undo()
    assert resolve("auto", "float32", backend="cpu", window=8) == "cpp"  # blocks skip the keys out of reach
    assert resolve("auto", "float32", backend="cpu", segment_ids=True) == "cpp"  # it masks documents itself
    assert resolve("auto", "bfloat16", backend="cpu") == "blocked"
    assert resolve("auto", "bfloat16", backend="gpu") == "cudnn"
    assert resolve("auto", "float32", backend="gpu") == "xla"  # cuDNN's flash path is half precision only
    assert resolve("auto", "bfloat16", backend="gpu", segment_ids=True) == "xla"
    assert resolve("auto", "bfloat16", backend="tpu") == "pallas"
    assert resolve("auto", "bfloat16", backend="tpu", window=64) == "xla"
    assert resolve("pallas", "float32", backend="cpu") == "pallas"


def test_impossible_choices_are_one_sentence():
    with pytest.raises(UserError, match="sliding window"):
        validate(tiny_config("clm", model=dict(attention_impl="pallas", window=4), resolved=False))
    with pytest.raises(UserError, match="packed documents"):
        validate(tiny_config("clm", model=dict(attention_impl="cudnn"), data=dict(packing=True), resolved=False))
    with pytest.raises(UserError, match="model.attention_impl"):
        validate(tiny_config("clm", model=dict(attention_impl="flash"), resolved=False))
    with pytest.raises(UserError, match="attention_impl=cpp computes float32"):
        validate(tiny_config("clm", model=dict(attention_impl="cpp", dtype="bfloat16"), resolved=False))
    if jax.default_backend() != "gpu":
        q, k, v = _qkv(4)
        with pytest.raises(UserError, match="needs an NVIDIA GPU"):
            attention_kernels.attend(q, k, v, impl="cudnn", causal=True)


def test_dtype_auto_is_float32_on_cpu_and_explicit_values_stay():
    from jaxformer.config import get_preset, resolve

    assert get_preset("gpt2-small").model.dtype == "auto"
    resolved = resolve(get_preset("decoder-tiny"), vocab_size=64, n_devices=1)
    assert resolved.model.dtype == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    assert resolved.model.param_dtype == "float32"  # master weights stay fp32 either way
    explicit = tiny_config("clm", model=dict(dtype="bfloat16"))
    assert explicit.model.dtype == "bfloat16"


@pytest.mark.parametrize("backend, chunk, pad", [("cpu", 0, 0), ("gpu", 8192, 128), ("tpu", 8192, 128)])
def test_auto_fused_head_and_vocab_padding_on_accelerators_only(monkeypatch, backend, chunk, pad):
    from jaxformer.config import apply_overrides, get_preset, resolve

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    preset = get_preset("gpt2-small").model
    assert preset.xent_chunk == -1 and preset.vocab_pad_multiple == -1
    resolved = resolve(get_preset("gpt2-small"), n_devices=1).model
    assert resolved.xent_chunk == chunk and resolved.vocab_pad_multiple == pad
    assert resolved.padded_vocab_size == (50304 if pad else 50257)
    assert preset.padded_vocab_size == 50257  # unresolved auto pads nothing
    explicit = apply_overrides(get_preset("decoder-tiny"), {"model.xent_chunk": "64", "model.vocab_pad_multiple": "0"})
    kept = resolve(explicit, vocab_size=64, n_devices=1).model  # set values stay
    assert kept.xent_chunk == 64 and kept.vocab_pad_multiple == 0
    # an imported Hugging Face model keeps its tables' exact rows (import-hf --set pads them on request)
    from jaxformer.hf.convert import config_for

    imported = config_for({"vocab_size": 100, "max_seq_len": 32, "n_layer": 1, "d_model": 16, "n_heads": 2}, "clm")
    assert imported.model.vocab_pad_multiple == 0 and imported.model.xent_chunk == chunk
    for key in ("model.xent_chunk", "model.vocab_pad_multiple"):
        with pytest.raises(UserError, match=key):
            resolve(apply_overrides(get_preset("decoder-tiny"), {key: "-2"}), vocab_size=64, n_devices=1)


def _step_metrics_and_grads(cfg, batch):
    graphdef, params = nnx.split(build_model(cfg, 0), nnx.Param)
    objective = objectives.for_config(cfg)

    def loss(params):
        ex = objective.prepare(batch, jax.random.key(3))
        loss_sum, stats = objective.loss_sums(nnx.merge(graphdef, params), ex, rng=None)
        return loss_sum, stats

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_chunked_cross_entropy_equals_the_whole_one(kind):
    """model.xent_chunk: same loss sum, accuracy count and gradients, with a chunk that leaves a ragged tail."""
    batch = {"tokens": jax.random.randint(jax.random.key(1), (8, 17), 8, 64)}
    (whole, stats_whole), grads_whole = _step_metrics_and_grads(tiny_config(kind), batch)
    (chunked, stats), grads = _step_metrics_and_grads(tiny_config(kind, model=dict(xent_chunk=5)), batch)
    assert float(chunked) == pytest.approx(float(whole), rel=1e-5)
    assert float(stats["correct"]) == float(stats_whole["correct"])
    assert float(stats["n_tokens"]) == float(stats_whole["n_tokens"])
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_whole), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=1e-4)


def test_chunked_cross_entropy_never_holds_all_logits():
    """XLA's own memory analysis of the compiled gradient: with a big vocabulary the chunked head needs far less
    scratch memory than the [B*T, V] fp32 logits (8 x 64 x 16384 x 4 B = 32 MiB, and their gradient)."""
    batch = {"tokens": jax.random.randint(jax.random.key(1), (8, 65), 8, 16384)}
    temp = {}
    for chunk in (0, 64):
        cfg = tiny_config("clm", train=dict(seq_len=64), model=dict(xent_chunk=chunk), vocab_size=16384)
        graphdef, params = nnx.split(build_model(cfg, 0), nnx.Param)
        objective = objectives.for_config(cfg)

        def loss(params, cfg=cfg, graphdef=graphdef, objective=objective):
            ex = objective.prepare(batch, jax.random.key(3))
            return objective.loss_sums(nnx.merge(graphdef, params), ex, rng=None)[0]

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
    logits_bytes = 8 * 64 * 16384 * 4
    assert temp[0] >= logits_bytes
    assert temp[64] < logits_bytes / 2
