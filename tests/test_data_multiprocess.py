"""Two real JAX processes on loopback: each feeds only its rows, and together they form the global batch.

Run under a hard subprocess timeout: a process whose peer never starts blocks ~300 s in initialize().
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxformer.data import batching
from jaxformer.data.tokenizers import EOS

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120
GLOBAL_BATCH, SEQ_LEN, SEED, STEP = 8, 16, 42, 7

WORKER = textwrap.dedent(f"""
    import sys
    import numpy as np
    import jax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec
    from jaxformer.data import batching

    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{{port}}", num_processes=2, process_id=pid,
                               initialization_timeout=60)
    tokens = np.load(out + "/tokens.npy")
    local = batching.batch_at(tokens, batch_size={GLOBAL_BATCH}, seq_len={SEQ_LEN}, seed={SEED}, step={STEP},
                              process_index=jax.process_index(), process_count=jax.process_count(), packing=True)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    arrays = batching.global_batch(local, NamedSharding(mesh, PartitionSpec("data")))
    result = {{"local_" + k: v for k, v in local.items()}}
    for key, array in arrays.items():
        assert array.shape == ({GLOBAL_BATCH}, {SEQ_LEN} + 1), array.shape
        result["global_" + key] = np.asarray(multihost_utils.process_allgather(array, tiled=True))
    np.savez(f"{{out}}/process{{pid}}.npz", process_count=jax.process_count(), **result)
    jax.distributed.shutdown()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_tile_the_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(8, 500, size=5_000).astype(np.uint16)
    tokens[rng.choice(len(tokens), size=100, replace=False)] = EOS
    np.save(tmp_path / "tokens.npy", tokens)
    (tmp_path / "worker.py").write_text(WORKER)

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}  # 2 local devices: rows split twice
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), port, str(pid), str(tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    logs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            logs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"two-process run did not finish within {TIMEOUT_S}s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]

    full = batching.batch_at(tokens, batch_size=GLOBAL_BATCH, seq_len=SEQ_LEN, seed=SEED, step=STEP, packing=True)
    results = [np.load(tmp_path / f"process{pid}.npz") for pid in range(2)]
    assert all(int(r["process_count"]) == 2 for r in results)
    for key in ("tokens", "segment_ids", "positions"):
        halves = [r["local_" + key] for r in results]
        assert all(h.shape == (GLOBAL_BATCH // 2, SEQ_LEN + 1) for h in halves)
        np.testing.assert_array_equal(np.concatenate(halves), full[key])  # the slices tile the batch
        for r in results:  # and the assembled global array is that batch, seen from either process
            np.testing.assert_array_equal(r["global_" + key], full[key])
