"""`model.attention_impl=cpp`: the fused C++ attention kernel in cpu_attention.cc, for CPUs.

The kernel is compiled with the machine's C++ compiler the first time a process needs it (a few seconds), for
this CPU (`-march=native`, or `$JAXFORMER_KERNEL_MARCH`), and cached under `$JAXFORMER_KERNEL_CACHE` (default
`~/.cache/jaxformer/kernels`), keyed by the source, the JAX version (the FFI header), the CPU's feature flags
and the compiler flags. It is registered with XLA as
two FFI targets (forward, backward) and differentiated here with `jax.custom_vjp`; the forward saves each row's
log-sum-exp so the backward recomputes the probabilities instead of storing them.

Float32 only, no sliding window and no packed-document mask: `auto` picks it on a single-device CPU run when
those hold and the compiler is there (`attention_kernels.resolve`); naming it explicitly where it cannot run is
one clear error.
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


def threads() -> int:
    """The cores this process may use: the kernel's tasks are spread over all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _attrs(causal: bool) -> dict:
    return {"causal": np.int64(causal), "threads": np.int64(threads())}


def _forward(q, k, v, causal):
    b, t, n, _ = q.shape
    out, lse = jax.ffi.ffi_call("jaxformer_attention_fwd", (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                                           jax.ShapeDtypeStruct((b, n, t), jnp.float32)))(
        q, k, v, **_attrs(causal))
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention(q_BxTxNxH: jax.Array, k_BxSxGxH: jax.Array, v_BxSxGxH: jax.Array, causal: bool) -> jax.Array:
    """softmax(q k^T / sqrt(H)) v by the C++ kernel, float32 in and out: [B, T, N, H]."""
    return _forward(q_BxTxNxH, k_BxSxGxH, v_BxSxGxH, causal)[0]


def _attention_fwd(q, k, v, causal):
    out, lse = _forward(q, k, v, causal)
    return out, (q, k, v, out, lse)


def _attention_bwd(causal, residuals, dout):
    q, k, v, out, lse = residuals
    shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    return tuple(jax.ffi.ffi_call("jaxformer_attention_bwd", shapes)(q, k, v, out, lse, dout, **_attrs(causal)))


attention.defvjp(_attention_fwd, _attention_bwd)
