"""Two JAX processes on loopback (CPU collectives) train the same run as one process with the same 4 devices."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxformer.model import cpu_attention

WORKER = Path(__file__).with_name("multiprocess_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    # Without LLVM's optimisations, as test_model compiles its gradient check: every process (the two and the one
    # they are compared with) compiles the same way, in about half the time; the run is 4 steps, so the slower
    # code costs little.
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env.update(extra)
    return env


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):  # each process: 2 local devices, 4 in all; a missing peer fails after 60 s, not 300
        env = _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                   JAXFORMER_INIT_TIMEOUT_S="60")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "multi"),
                                       str(tmp_path / "multi.npz")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    single = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "single"), str(tmp_path / "single.npz")],
                            env=_env(4), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    # both ran the C++ attention kernel (split per device by its sharding rules), where the compiler is there
    kernel = "blocked" if cpu_attention.unavailable_reason() else "cpp"
    assert all(f"attention kernel: {kernel}" in out for out in (*logs, single.stdout))
    multi, one = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert set(multi.files) == set(one.files)
    for key in multi.files:
        np.testing.assert_allclose(multi[key], one[key], rtol=1e-5, atol=1e-6)
    # process 0 wrote the run's files; both processes wrote their shards of the checkpoints
    assert (tmp_path / "multi" / "metrics.jsonl").exists()
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["2", "4"]
