"""model.attention_impl=cpp, the C++ attention kernel (jaxformer/model/cpu_attention.cc): values and gradients
against a naive float64 attention and XLA's kernel over the shapes its code paths split on (ragged query
blocks, head sizes off the vector width, GQA/MQA), under a sharded jit, and what happens without a compiler."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxformer.errors import UserError
from jaxformer.model import attention_kernels, cpu_attention
from jaxformer.model.attention import attention_mask
from tests.test_accelerator_path import _naive, require_cpp_kernel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _kernel():
    require_cpp_kernel()


def _python(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """This repository's Python in a fresh process with one CPU device (unless `env` says otherwise)."""
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONPATH": str(REPO), **env}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _inputs(b, t, n, g, h, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(keys[0], (b, t, n, h)), 2 * jax.random.normal(keys[1], (b, t, g, h)),
            jax.random.normal(keys[2], (b, t, g, h)), jax.random.normal(keys[3], (b, t, n, h)))


def _documents(kind, b, t):
    """Segment ids [B, T]: None; `packed`, contiguous documents of random lengths (as data.packing builds them),
    different in every row; `reused`, an id that comes back after another document (the kernel's key-by-key
    mask)."""
    if kind is None:
        return None
    if kind == "packed":
        starts = np.random.default_rng(0).random((b, t)) < 0.03
        return jax.numpy.asarray(np.cumsum(starts, axis=1, dtype=np.int32))
    row = np.resize(np.repeat([3, 5, 3, 7], [20, 30, 60, t]), t)
    return jax.numpy.asarray(np.stack([row, row[::-1]])[np.arange(b) % 2])


# T = 150: two whole 64-row query blocks and a ragged one; H = 24 and 8: columns off the 16/8-float vector
# width (the scalar tail of the products); H = 64: whole register tiles; G = 1, 2 and N: MQA, GQA, MHA. Sliding
# windows: crossing block edges (40, 24: blocks start and stop mid-row), wider than the sequence (100).
@pytest.mark.parametrize("causal,b,t,n,g,h,window,docs", [
    (True, 2, 150, 4, 2, 16, 0, None), (False, 2, 150, 4, 4, 24, 0, "packed"), (True, 1, 70, 3, 1, 64, 0, None),
    (False, 3, 9, 2, 1, 8, 0, None), (True, 2, 130, 4, 4, 40, 0, "reused"), (True, 2, 150, 4, 2, 16, 40, "packed"),
    (False, 2, 150, 2, 1, 24, 24, None), (False, 1, 70, 2, 2, 64, 100, None), (False, 2, 150, 4, 2, 16, 0, "reused")])
def test_values_and_gradients_match_naive_and_xla(causal, b, t, n, g, h, window, docs):
    q, k, v, dout = _inputs(b, t, n, g, h)
    segments = _documents(docs, b, t)
    positions = jax.numpy.broadcast_to(jax.numpy.arange(t), (b, t))
    mask = None if docs is None else attention_mask(positions, positions, causal=causal, window=window,
                                                    q_seg_BxT=segments, k_seg_BxS=segments)

    def attend(impl):
        return lambda *a: attention_kernels.attend(*a, impl=impl, causal=causal, window=window,
                                                   segment_ids_BxT=segments, mask=mask if impl == "xla" else None)

    out, vjp = jax.jit(lambda q, k, v: jax.vjp(attend("cpp"), q, k, v))(q, k, v)
    want_out = _naive(q, k, v, causal=causal, window=window, segment_ids=segments)
    np.testing.assert_allclose(np.asarray(out), want_out, atol=2e-5, rtol=2e-5)
    want = jax.vjp(attend("xla"), q, k, v)[1](dout)
    for got, ref in zip(vjp(dout), want, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=5e-5, rtol=5e-5)


def test_causal_windowed_or_packed_needs_as_many_keys_as_queries():
    q, k, v, _ = _inputs(1, 8, 2, 2, 16)
    for causal, window, segments in ((True, 0, None), (False, 4, None), (False, 0, jax.numpy.zeros((1, 8)))):
        with pytest.raises(UserError, match="as many keys as queries"):
            attention_kernels.attend(q, k[:, :6], v[:, :6], impl="cpp", causal=causal, window=window,
                                     segment_ids_BxT=segments)
    out = attention_kernels.attend(q, k[:, :6], v[:, :6], impl="cpp", causal=False)  # bidirectional: any S
    want = attention_kernels.attend(q, k[:, :6], v[:, :6], impl="xla", causal=False)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5)


@pytest.mark.parametrize("n,g", [(4, 4), (4, 2), (4, 1)])
def test_a_sharded_step_runs_the_kernel_per_shard(n, g):
    """Over 8 devices, batch over `data` and KV heads over `tensor` (MHA, GQA, MQA), packed documents: each
    device runs the kernel on its own shard (no all-gather in the compiled program; the per-head outputs stay
    split where the heads are) and values and gradients equal one device's."""
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "tensor"))
    heads = "tensor" if g > 1 else None
    q_sh = NamedSharding(mesh, P("data", None, heads, None))
    kv_sh = NamedSharding(mesh, P("data", None, heads, None))
    q, k, v, dout = _inputs(8, 32, n, g, 16)
    segments = _documents("packed", 8, 32)

    def value_and_grads(q, k, v, segments, dout):
        out, vjp = jax.vjp(lambda *a: cpu_attention.attention(*a, True, 0, segments), q, k, v)
        return out, vjp(dout)

    sharded = jax.jit(value_and_grads, in_shardings=(q_sh, kv_sh, kv_sh, NamedSharding(mesh, P("data")), q_sh))
    program = sharded.lower(q, k, v, segments, dout).compile().as_text()
    assert "all-gather" not in program and "all-to-all" not in program
    assert program.count("jaxformer_attention_fwd") == 1 and program.count("jaxformer_attention_bwd") == 1
    out, grads = sharded(q, k, v, segments, dout)
    assert out.sharding.is_equivalent_to(q_sh, out.ndim)  # stays split: nothing was gathered
    want_out, want_grads = jax.jit(value_and_grads)(*(jax.device_put(x, jax.devices()[0])
                                                      for x in (q, k, v, segments, dout)))
    for got, want in zip((out, *grads), (want_out, *want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


@pytest.mark.parametrize("causal,window", [(True, 0), (True, 40), (False, 24), (False, 0), (False, 300)])
def test_the_flop_count_follows_the_keys_each_block_reads(causal, window):
    """`keys_multiplied` (jaxformer params' executed FLOPs) against the blocks read off the naive mask: each
    BLOCK-row block multiplies the keys from the first to the last one any of its rows sees, widened to whole
    multiples of KEY_PANEL keys."""
    t = 150
    i = np.arange(t)
    visible = np.ones((t, t), bool)
    if causal:
        visible &= i[None, :] <= i[:, None]
    if window:
        visible &= np.abs(i[:, None] - i[None, :]) < window
    block, panel, keys = attention_kernels.BLOCK, attention_kernels.KEY_PANEL, 0
    for start in range(0, t, block):
        cols = np.flatnonzero(visible[start:start + block].any(axis=0))
        lo, hi = cols.min() // panel * panel, min(t, -(-(cols.max() + 1) // panel) * panel)
        keys += min(block, t - start) * (hi - lo)
    assert attention_kernels.keys_multiplied(t, causal=causal, impl="cpp", window=window) == keys / t


def test_the_library_is_cached_per_source_and_cpu():
    library = cpu_attention._build()
    assert library.parent == cpu_attention.cache_dir() and library.exists()
    built = library.stat().st_mtime_ns
    assert cpu_attention._build() == library and library.stat().st_mtime_ns == built  # not compiled again


def test_without_a_compiler_auto_falls_back_and_cpp_is_one_sentence(tmp_path):
    code = """
import jax, jax.numpy as jnp
from jaxformer.errors import UserError
from jaxformer.errors import UserError
from jaxformer.model import attention_kernels, cpu_attention
from jaxformer.model.attention import attention_mask
print("reason:", cpu_attention.unavailable_reason())
print("auto:", attention_kernels.resolve("auto", "float32", backend="cpu"))
x = jnp.ones((1, 4, 2, 8))
try:
    attention_kernels.attend(x, x, x, impl="cpp", causal=True)
except UserError as err:
    print("error:", err)
"""
    done = _python(["-c", code], CXX=str(tmp_path / "no-such-compiler"), JAXFORMER_KERNEL_CACHE=str(tmp_path))
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert "no-such-compiler" in lines["reason"]
    assert lines["auto"] == "blocked"
    assert lines["error"].startswith("model.attention_impl=cpp could not build its kernel")
    assert not list(tmp_path.glob("*.so"))


def test_a_single_device_train_step_runs_the_kernel_by_default():
    """In a one-device process (a CPU run as users start it) `auto` compiles the train step around the C++
    kernel, and the step's loss and gradient norm are those of the `blocked` XLA kernel."""
    code = """
import jax, jax.numpy as jnp
from flax import nnx
from jaxformer import train
from jaxformer.model import build_model
from tests.tiny import tiny_config
batch = {"tokens": jax.random.randint(jax.random.key(1), (8, 17), 8, 64)}
for impl in ("auto", "blocked"):
    cfg = tiny_config("clm", model=dict(attention_impl=impl))
    tx = train.make_optimizer(cfg)
    graphdef, params = nnx.split(build_model(cfg, 0), nnx.Param)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                             graphdef=graphdef, tx=tx, cfg=cfg)
    step = jax.jit(train.train_step).lower(state, batch, jax.random.key(2))
    _, m = step.compile()(state, batch, jax.random.key(2))
    print(impl, jax.device_count(), "jaxformer_attention_bwd" in step.as_text(), float(m["loss"]),
          float(m["grad_norm"]))
"""
    done = _python(["-c", code])
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert rows["auto"][:2] == ["1", "True"] and rows["blocked"][:2] == ["1", "False"]
    for got, want in zip(rows["auto"][2:], rows["blocked"][2:], strict=True):
        assert float(got) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64-v3 (AVX2) is an x86 target")
def test_the_avx2_build_matches_naive_and_xla(tmp_path):
    """The kernel's other vector width: built for x86-64-v3 (AVX2, the 8-float tiles; what a Zen 3 or older
    Xeon builds natively) in a fresh cache, then this file's value-and-gradient test over all its shapes."""
    cases = len(test_values_and_gradients_match_naive_and_xla.pytestmark[0].args[1])
    done = _python(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                    f"{__file__}::test_values_and_gradients_match_naive_and_xla"],
                   JAXFORMER_KERNEL_MARCH="x86-64-v3", JAXFORMER_KERNEL_CACHE=str(tmp_path))
    assert f"{cases} passed" in done.stdout  # run, not skipped for want of a kernel
    assert len(list(tmp_path.glob("cpu_attention-*.so"))) == 1
