"""The host allocator under XLA:CPU: a train step's scratch memory stays mapped from one step to the next.

XLA:CPU mallocs each execution's temporary buffer (the activations a step keeps for its backward pass: ~1.7 GB
for the CLM M benchmark cell) on one of its worker threads and frees it when the step ends. glibc serves a block
that large from a fresh `mmap` (a worker thread's arena cannot hold it, whatever `M_MMAP_THRESHOLD` says) and
`munmap`s it on free, so every step writes to new pages and the kernel zero-fills each 4 KiB page on first touch:
~433,000 page faults and ~0.85 s of system time per ~3 s step on the CLM M cell (`getrusage` around the step).

`reuse_freed_memory()` sets glibc's `mallopt` so that one arena serves every thread, nothing is `mmap`ed and
nothing is trimmed: a freed buffer stays in the process and the next step's buffer is the same pages (0 faults
per step once the heap has settled: it may grow by a step's scratch once or twice first, when small allocations
land in the hole the last buffer left). Measured on the benchmark cells: steps 1.13-1.24x faster. The costs:
resident memory stays at its peak instead of shrinking after it (as with jemalloc's or XLA's own GPU memory
pools), and XLA's compiles take ~15-35% longer, its compiler threads sharing the one arena.

It must run before XLA starts its CPU backend: a thread keeps the arena it first allocated from. `import
jaxformer` applies it (see `apply_policy`) unless `JAXFORMER_HOST_MALLOC=system` or an accelerator backend is
installed (there the step's buffers live in device memory and the host's threads keep glibc's defaults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
import warnings

ENV_VAR = "JAXFORMER_HOST_MALLOC"
POLICIES = ("auto", "reuse", "system")

# glibc's <malloc.h> parameter numbers; a trim threshold of -1 turns trimming off (mallopt(3)).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
NEVER_TRIM = -1

applied = False  # whether this process runs with the reuse settings
invalid = ""  # the sentence for a JAXFORMER_HOST_MALLOC value that is not a policy (the CLI exits with it)


def _libc():
    """glibc, or None elsewhere (musl, macOS, Windows: their allocators are left alone)."""
    if not hasattr(os, "confstr"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
    except (ValueError, OSError):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def accelerator_installed() -> bool:
    """Whether JAX could start a GPU or TPU backend here (a PJRT plugin or libtpu is installed), judged without
    importing jax so that the allocator is set before any XLA thread exists. `JAX_PLATFORMS` decides when set."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() != "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins  # noqa: F401  (the namespace package JAX's PJRT plugins install into)

        if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("libtpu") is not None


def backend_started() -> bool:
    """Whether JAX has already started a backend in this process (its threads then keep their own arenas)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def reuse_freed_memory() -> bool:
    """Set glibc's allocator to keep freed memory mapped (one arena, no mmap, no trim); False where it is not
    glibc or mallopt refused a setting."""
    global applied
    libc = _libc()
    if libc is None:
        return False
    if backend_started():
        warnings.warn("jaxformer was imported after JAX started its backend, so XLA's threads keep glibc's "
                      "per-thread arenas and a step's scratch memory is still unmapped after every step: import "
                      "jaxformer before running anything with JAX.", stacklevel=3)
    ok = all(libc.mallopt(param, value) == 1
             for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)))
    applied = applied or ok
    return ok


def apply_policy() -> bool:
    """`JAXFORMER_HOST_MALLOC`: `auto` (default) reuses freed memory when no accelerator backend is installed,
    `reuse` always, `system` never. Returns whether the reuse settings are now on. An unknown value changes
    nothing and is kept in `invalid` (this runs at import, where raising would give a traceback)."""
    global invalid
    policy = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if policy not in POLICIES:
        invalid = f"{ENV_VAR}={policy!r} is not a host allocator policy: use one of {', '.join(POLICIES)}."
        return False
    if policy == "system" or (policy == "auto" and accelerator_installed()):
        return False
    return reuse_freed_memory()


def policy_in_effect() -> str:
    """"reuse" when this process runs with the reuse settings, else "system" (for benchmark records)."""
    return "reuse" if applied else "system"
