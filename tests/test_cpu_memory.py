"""XLA:CPU's memory-aware scheduler, which `import jaxformer` selects (jaxformer/__init__.py) unless XLA_FLAGS
already chooses: the compiled train step needs less scratch memory than under XLA:CPU's own default."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_jaxformer_selects_the_memory_aware_cpu_scheduler():
    default, concurrency = _scratch_bytes(""), _scratch_bytes(f"{FLAG}=true")
    assert default < 0.85 * concurrency, (default, concurrency)
