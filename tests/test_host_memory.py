"""The host allocator policy (jaxformer/host_memory.py): under XLA:CPU a step's freed buffers are reused by the
next step instead of being unmapped and faulted in again, counted with the kernel's minor page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxformer import host_memory

# A fresh process: the policy is set by `import jaxformer`, before XLA starts its threads. Each call of the
# jitted function returns a new 64 MiB array (XLA allocates it on its own threads, as it does a step's scratch
# buffer) and the previous one is freed; the page faults of each of 48 calls are counted.
PROBE = """
import json, resource, sys
import jaxformer
from jaxformer import host_memory
import jax, jax.numpy as jnp
double = jax.jit(lambda x: x * 2.0)
x = jnp.ones((4096, 4096), jnp.float32)
y = double(x).block_until_ready()
faults = []
for _ in range(48):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del y
    y = double(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "policy": host_memory.policy_in_effect()}))
"""
PAGES = 4096 * 4096 * 4 // 4096  # 4 KiB pages in the 64 MiB result

glibc = pytest.mark.skipif(host_memory._libc() is None, reason="the allocator policy is for glibc (Linux) only")


def probe(policy: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", host_memory.ENV_VAR: policy}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_freed_buffers_are_reused_without_page_faults():
    reused = probe("auto")  # the default on a CPU backend
    assert reused["policy"] == "reuse"
    # The heap grows for the first calls (a new result does not always fit the hole the last one left once small
    # allocations have landed in it; how many depends on the threads' timing), then every call reuses pages.
    quiet = [f < PAGES // 50 for f in reused["faults"]]
    assert any(all(quiet[i:i + 4]) for i in range(len(quiet) - 3)), reused
    assert sum(reused["faults"]) < len(quiet) * PAGES // 3, reused
    # The same calls under glibc's defaults fault in (nearly) every page of every new result: the measure works.
    system = probe("system")
    assert system["policy"] == "system"
    assert min(system["faults"]) > PAGES // 2, system


def test_accelerator_backends_keep_the_system_allocator(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert host_memory.accelerator_installed()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not host_memory.accelerator_installed()
    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(host_memory, "accelerator_installed", lambda: True)
    monkeypatch.delenv(host_memory.ENV_VAR, raising=False)
    assert host_memory.apply_policy() is False and not calls  # auto + an accelerator: left alone
    monkeypatch.setenv(host_memory.ENV_VAR, "reuse")
    assert host_memory.apply_policy() is True and calls == [1]  # asked for: applied anyway


def test_an_unknown_policy_is_one_sentence_and_exit_2():
    env = {**os.environ, host_memory.ENV_VAR: "fast"}
    out = subprocess.run([sys.executable, "-m", "jaxformer.cli", "params", "--list-presets"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "jaxformer params: JAXFORMER_HOST_MALLOC='fast' is not a host allocator policy: use one of auto, reuse, "
        "system."]
    assert out.stdout == ""
