"""Test setup: 8 fake CPU devices for the sharding tests and XLA's fastest-compiling settings (set before JAX
initialises), the data root (JAXFORMER_DATA) at ../shared/data beside the repository when that folder exists,
and one XLA compilation cache per test session."""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The suite compiles far more than it runs: XLA's backend at -O0 compiles faster (the whole suite on 2 cores:
# 19.5 -> 16.6 minutes, same tests passing) and computes the same functions; a few training-heavy tests run
# slower. An explicit level in XLA_FLAGS wins (XLA_FLAGS=--xla_backend_optimization_level=2 for the optimised one).
# For the same reason, XLA:CPU's older elemental emitters for fused loops: at -O0 a tiny train step compiles in
# 1.1-1.5 s with them against 1.6-2.2 s with the newer fusion emitters (test_cli + test_distill + test_albert in
# one process: 89 -> 67 s). Not for speed: at -O2 they compile 2-3x slower and the benchmark steps run 0.88-0.96x.
FAST_COMPILE_FLAGS = {"--xla_backend_optimization_level": "0", "--xla_cpu_use_fusion_emitters": "false"}
for flag, value in FAST_COMPILE_FLAGS.items():
    if flag not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += f" {flag}={value}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if SHARED_DATA.is_dir():  # before any test module computes data_root()
    os.environ["JAXFORMER_DATA"] = str(SHARED_DATA)


XLA_CACHE = "JAXFORMER_TEST_XLA_CACHE"  # the session's cache folder, made by the controller, read by the workers


def pytest_configure(config):
    """Most of the suite's time is XLA compiling tiny train and eval steps, and many tests compile the very same
    program again (the same tiny config through another run, a random backbone beside a pretrained one). JAX's
    persistent cache, in a folder of this session only and shared by the xdist workers, compiles each distinct
    program once; a cache hit is the executable a compile would give, so no test proves less. Subprocesses the
    tests start (CLI commands, notebooks, multi-process runs) do not use it."""
    import jax

    if not hasattr(config, "workerinput") or XLA_CACHE not in os.environ:  # the controller, or `-n 0`
        os.environ[XLA_CACHE] = config.made_xla_cache = tempfile.mkdtemp(prefix="jaxformer-tests-xla-")
    jax.config.update("jax_compilation_cache_dir", os.environ[XLA_CACHE])
    # Only programs that take 0.3 s or more to compile: caching every eager op too (threshold 0) made test files
    # 8-12% slower (test_finetune + test_classifier_runs, one process: 127 s at 0, 112 s at 0.3, 116 s at 1.0).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    # A size limit turns on the cache's file lock: two workers never read an entry the other is still writing.
    jax.config.update("jax_compilation_cache_max_size", 4 << 30)


def pytest_unconfigure(config):
    if made := getattr(config, "made_xla_cache", None):  # after the workers: the controller made it
        shutil.rmtree(made, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The data root holding the real data sets; the test skips when there is none."""
    from jaxformer.data import data_root

    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data sets not found: the data root {root} does not exist (set JAXFORMER_DATA, or put "
                    f"the shared data sets at ../shared/data beside the repo)")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Token caches go to a per-session temp dir, never to the user's ~/.cache."""
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jaxformer-cache"))
