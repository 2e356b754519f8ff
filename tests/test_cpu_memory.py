"""XLA:CPU's memory-aware scheduler (`train.CPU_MEMORY_SCHEDULER`, README "Memory on CPUs"): the compiled train
step needs less scratch memory with it than under XLA:CPU's default, and a run asking for `model.remat` without
it is told that remat saves nothing there."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax

from jaxformer import parallel, train
from tests.tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
# The train step of a 6-layer d128 decoder on 16 x 256 tokens, compiled (never run): XLA's scratch bytes.
PROGRAM = """
import json, jax
from jaxformer import parallel, train
from tests.tiny import tiny_config
cfg = tiny_config("clm", model=dict(n_layer=6, d_model=128, n_heads=4, max_seq_len=256),
                  train=dict(seq_len=256, batch_size=16))
mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
abstract = train.abstract_state(cfg)
batch = {"tokens": jax.ShapeDtypeStruct((16, 257), jax.numpy.int32)}
step = train.compile_train_step(train.state_shardings(abstract, mesh), mesh)
compiled = step.lower(abstract, batch, jax.random.key(0)).compile()
print(json.dumps({"temp": compiled.memory_analysis().temp_size_in_bytes}))
"""


def _scratch_bytes(extra_flag: str) -> int:
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(FLAG))
    env = {**os.environ, "XLA_FLAGS": f"{flags} {extra_flag}".strip(), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["temp"]


def test_the_memory_aware_scheduler_needs_less_scratch():
    memory, default = _scratch_bytes(train.CPU_MEMORY_SCHEDULER), _scratch_bytes("")
    assert train.CPU_MEMORY_SCHEDULER.startswith(FLAG)
    assert memory < 0.85 * default, (memory, default)


def test_remat_on_cpu_without_the_scheduler_is_one_warning(monkeypatch, caplog):
    mesh = parallel.make_mesh(tiny_config("clm").mesh, jax.devices()[:1])
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert "XLA_FLAGS=" + train.CPU_MEMORY_SCHEDULER in train.remat_warning(tiny_config("clm", model=dict(remat=True)),
                                                                            mesh)
    assert train.remat_warning(tiny_config("clm"), mesh) is None
    with caplog.at_level(logging.WARNING, logger="jaxformer.train"):
        cfg = tiny_config("clm", model=dict(remat=True))
        train.compile_train_step(train.state_shardings(train.abstract_state(cfg), mesh), mesh)
    assert [r.getMessage() for r in caplog.records] == [train.remat_warning(cfg, mesh)]
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {train.CPU_MEMORY_SCHEDULER}")
    assert train.remat_warning(cfg, mesh) is None
