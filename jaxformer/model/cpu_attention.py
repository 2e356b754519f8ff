"""`model.attention_impl=cpp`: the fused C++ attention kernel in cpu_attention.cc, for CPUs.

The kernel is compiled with the machine's C++ compiler the first time a process needs it (a few seconds), for
this CPU (`-march=native`, or `$JAXFORMER_KERNEL_MARCH`), and cached under `$JAXFORMER_KERNEL_CACHE` (default
`~/.cache/jaxformer/kernels`), keyed by the source, the JAX version (the FFI header), the CPU's feature flags
and the compiler flags. It is registered with XLA as
two FFI targets (forward, backward) and differentiated here with `jax.custom_vjp`; the forward saves each row's
log-sum-exp so the backward recomputes the probabilities instead of storing them.

Under a sharded jit both calls are split with `custom_partitioning`: each device runs the kernel on its own
batch rows and KV heads (no collective), its threads sharing the process's cores with the other local devices'.

Float32 only. Sliding windows and packed documents (segment ids: packing, or padding as a segment of its own)
are masks the kernel applies itself, and its query blocks skip the keys no row of theirs sees. `auto` picks it
on a CPU when the compute dtype is float32 and the compiler is there (`attention_kernels.resolve`); naming it
explicitly where it cannot run is one clear error.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning

SOURCE = Path(__file__).with_name("cpu_attention.cc")
TARGETS = {"fwd": "JaxformerAttentionForward", "bwd": "JaxformerAttentionBackward"}
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")


def flags() -> tuple[str, ...]:
    """Compiler flags; `JAXFORMER_KERNEL_MARCH` names the target CPU (default `native`: the vector width of the
    machine that builds it, AVX-512 or AVX2 on x86), e.g. `x86-64-v3` for a library shared by several hosts."""
    return (*FLAGS, f"-march={os.environ.get('JAXFORMER_KERNEL_MARCH') or 'native'}")


def cache_dir() -> Path:
    return Path(os.environ.get("JAXFORMER_KERNEL_CACHE") or Path.home() / ".cache" / "jaxformer" / "kernels")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _build() -> Path:
    """The compiled library's path, compiling it first when the cache has none for this source and CPU."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), jax.__version__, _cpu_flags(), compiler, *flags()])
                         .encode()).hexdigest()[:16]
    library = cache_dir() / f"cpu_attention-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename: concurrent processes (test workers) never load a half-written file.
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = Path(tmp) / library.name
        done = subprocess.run([compiler, *flags(), f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(partial)],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip().splitlines()[0]}")
        os.replace(partial, library)
    return library


@functools.cache
def unavailable_reason() -> str | None:
    """None once the kernel is built and registered with XLA in this process, else why it cannot be."""
    try:
        library = ctypes.cdll.LoadLibrary(str(_build()))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    for stage, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(f"jaxformer_attention_{stage}", jax.ffi.pycapsule(getattr(library, symbol)),
                                    platform="cpu")
    return None


def threads(devices: int = 1) -> int:
    """Threads for one kernel call: the cores this process may use, shared between the `devices` calls that run
    at once (one per local device of a sharded step)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // devices)


def _attrs(causal: bool, window: int, devices: int) -> dict:
    return {"causal": np.int64(causal), "window": np.int64(window), "threads": np.int64(threads(devices))}


def _forward_call(q, k, v, ids, causal, window, devices=1):
    b, t, n, _ = q.shape
    return jax.ffi.ffi_call("jaxformer_attention_fwd", (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                                       jax.ShapeDtypeStruct((b, n, t), jnp.float32)))(
        q, k, v, ids, **_attrs(causal, window, devices))


def _backward_call(q, k, v, ids, out, lse, dout, causal, window, devices=1):
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    return tuple(jax.ffi.ffi_call("jaxformer_attention_bwd", shapes)(q, k, v, ids, out, lse, dout,
                                                                      **_attrs(causal, window, devices)))


# How a sharded step splits the two calls (Shardy rules): every (batch row, KV head) is independent, so batch and
# KV heads may be sharded and each device runs the kernel on its own shard, with no collective. A query head
# belongs to its KV head's group (N = G x R, query head i reads KV head i // R), so only G, never R, is split;
# positions, keys and the head dimension stay whole (and the segment ids [B, S] with the keys). Without this XLA
# gathers every operand onto every device.
_FWD_RULE = "b t {q} h, b s g h, b s g h, b s -> b t {q} h, b {q} t"
_BWD_RULE = "b t {q} h, b s g h, b s g h, b s, b t {q} h, b {q} t, b t {q} h -> b t {q} h, b s g h, b s g h"


def _rule(template: str):
    def rule(causal, window, mesh, operand_types, result_types):
        n, g = operand_types[0].shape[2], operand_types[1].shape[2]
        if g == n:  # MHA: query head i reads KV head i
            return template.format(q="g"), {"need_replication_factors": ("t", "h", "s")}
        # factors listed in their order of first appearance, as Shardy requires
        replicated = {"need_replication_factors": ("t", "r", "h", "s")}
        if g == 1:  # MQA: Shardy takes no size-1 factor inside a compound one, so the query heads are r alone
            return template.format(q="r"), replicated
        return template.format(q="(g r)"), {**replicated, "r": n // g}
    return rule


def _local_devices(mesh) -> int:
    """How many of the mesh's devices belong to this process: the kernel calls that share its cores."""
    devices = getattr(mesh, "devices", None)
    if devices is None:
        return jax.local_device_count()
    return max(1, sum(d.process_index == jax.process_index() for d in np.asarray(devices).flat))


def _per_shard(call):
    def partition(causal, window, mesh, arg_shapes, result_shape):
        devices = _local_devices(mesh)
        arg_shardings = tuple(a.sharding for a in arg_shapes)
        result_shardings = tuple(r.sharding for r in result_shape)
        return mesh, lambda *args: call(*args, causal, window, devices), result_shardings, arg_shardings
    return partition


@functools.partial(custom_partitioning, static_argnums=(4, 5))
def _forward(q, k, v, ids, causal, window):
    return _forward_call(q, k, v, ids, causal, window)


@functools.partial(custom_partitioning, static_argnums=(7, 8))
def _backward(q, k, v, ids, out, lse, dout, causal, window):
    return _backward_call(q, k, v, ids, out, lse, dout, causal, window)


_forward.def_partition(_per_shard(_forward_call), sharding_rule=_rule(_FWD_RULE))
_backward.def_partition(_per_shard(_backward_call), sharding_rule=_rule(_BWD_RULE))


def attention(q_BxTxNxH: jax.Array, k_BxSxGxH: jax.Array, v_BxSxGxH: jax.Array, causal: bool, window: int = 0,
              segment_ids_BxS: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(H)) v by the C++ kernel, float32 in and out: [B, T, N, H]. `window`: a query sees
    the keys less than `window` positions away (0: all); `segment_ids_BxS`: only the keys of its own segment
    (needs S == T; None: one segment), as `attention_mask` defines both."""
    if segment_ids_BxS is None:
        segment_ids_BxS = jnp.zeros(k_BxSxGxH.shape[:2], jnp.int32)
    return _attention(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, segment_ids_BxS.astype(jnp.int32), causal, window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, ids, causal, window):
    return _forward(q, k, v, ids, causal, window)[0]


def _attention_fwd(q, k, v, ids, causal, window):
    out, lse = _forward(q, k, v, ids, causal, window)
    return out, (q, k, v, ids, out, lse)


def _attention_bwd(causal, window, residuals, dout):
    return (*_backward(*residuals, dout, causal, window), None)  # segment ids: integers, no gradient


_attention.defvjp(_attention_fwd, _attention_bwd)
