"""Test setup: 8 fake CPU devices for the sharding tests (must be set before JAX initialises), and the data
root (JAXFORMER_DATA) at ../shared/data beside the repository when that folder exists."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if SHARED_DATA.is_dir():  # before any test module computes data_root()
    os.environ["JAXFORMER_DATA"] = str(SHARED_DATA)


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
