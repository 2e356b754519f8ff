"""The fused attention kernels on a GPU (`model.attention_impl=cudnn|pallas`), against a float64 reference and
against XLA: values, gradients and a whole bf16 train step. The CPU suite checks Pallas in interpret mode
(tests/test_accelerator_path.py); these tests run the compiled kernels and skip, with the reason, on a machine
without a GPU (run them there with `python -m pytest -n 0 tests/test_gpu_kernels.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import train
from jaxformer.model import attention_kernels, build_model
from tests.test_accelerator_path import _naive
from tests.test_accelerator_path import _qkv as qkv
from tests.tiny import tiny_config

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason=f"needs a GPU (this backend is {jax.default_backend()})")


def _qkv(seed: int, n_kv: int, dtype):
    """Fresh random inputs per check (T 256, head dim 64): the kernels must compute the same function on any input."""
    return qkv(n_kv, 256, h=64, dtype=dtype, seed=seed)


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.isfinite(got).all()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("causal,window,n_kv", [(True, 0, 4), (True, 0, 1), (False, 0, 2), (True, 96, 4)])
def test_cudnn_matches_float64_attention(causal, window, n_kv):
    """cuDNN's flash kernel in bf16: relative error of bf16 rounding (1e-3..1e-2), never more."""
    q, k, v = _qkv(1 + n_kv + window, n_kv, jnp.bfloat16)
    out = attention_kernels.attend(q, k, v, impl="cudnn", causal=causal, window=window)
    assert out.dtype == jnp.bfloat16
    assert _rel(out, _naive(q, k, v, causal=causal, window=window)) < 1e-2


@pytest.mark.parametrize("impl", ["cudnn", "pallas"])
def test_fused_gradients_match_xla_in_float32(impl):
    """The kernels' backward passes: bf16 gradients against XLA's float32 gradients of the same inputs."""
    q, k, v = _qkv(7, 2, jnp.bfloat16)
    weights = jax.random.normal(jax.random.key(8), q.shape, jnp.float32)

    def grads(impl, *qkv):
        return jax.grad(lambda *a: jnp.sum(weights * attention_kernels.attend(*a, impl=impl, causal=True)
                                           .astype(jnp.float32)), argnums=(0, 1, 2))(*qkv)

    want = grads("xla", *(z.astype(jnp.float32) for z in (q, k, v)))
    for got, ref in zip(grads(impl, q, k, v), want, strict=True):
        assert _rel(got, ref) < 2e-2


def test_pallas_matches_float64_attention():
    q, k, v = _qkv(3, 4, jnp.float32)
    out = attention_kernels.attend(q, k, v, impl="pallas", causal=True)
    assert _rel(out, _naive(q, k, v, causal=True)) < 5e-3  # float32 operands may run as tf32 in Triton's dots


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_bf16_train_step_agrees_across_kernels(kind):
    """A whole bf16 step with fp32 master weights: loss and gradient norm within bf16 rounding of XLA's."""
    batch = {"tokens": jax.random.randint(jax.random.key(1), (8, 129), 8, 64)}
    metrics = {}
    for impl in ("xla", "cudnn", "pallas"):
        cfg = tiny_config(kind, model=dict(attention_impl=impl, dtype="bfloat16", param_dtype="float32",
                                           d_model=128, n_heads=2, max_seq_len=128), train=dict(seq_len=128))
        tx = train.make_optimizer(cfg)
        graphdef, params = nnx.split(build_model(cfg, 0), nnx.Param)
        state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 graphdef=graphdef, tx=tx, cfg=cfg)
        _, metrics[impl] = jax.jit(train.train_step)(state, batch, jax.random.key(2))
    for impl in ("cudnn", "pallas"):
        for name in ("loss", "grad_norm"):
            assert float(metrics[impl][name]) == pytest.approx(float(metrics["xla"][name]), rel=2e-2)
