"""benchmarks/profile_step.py: the categories add up to the traced wall time, and the matmul FLOPs it reads
from the compiled HLO equal the model FLOPs `jaxformer.params.count` derives from the config."""

import json
import sys
from pathlib import Path

import jax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # noqa: E402

from jaxformer import params as params_lib  # noqa: E402
from jaxformer import timing  # noqa: E402
from jaxformer.config import resolve  # noqa: E402


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's thunk names")
def test_profile_of_a_small_step(tmp_path, capsys):
    out = tmp_path / "profile.json"
    # vocab 320 is no other dimension of the S cell (a vocab-sized dot is told apart by that size). `xla` attention
    # computes the full T x T square, the convention params.count charges.
    argv = ["--config", "S", "--batch-size", "2", "--seq-len", "32", "--vocab", "320", "--steps", "2",
            "--set", "model.attention_impl=xla", "--out", str(out)]
    assert profile_step.main(argv) == 0
    result = json.loads(out.read_text())
    categories = {r["category"]: r for r in result["categories"]}
    # the categories (each rounded to 0.1 ms) add up to the traced wall time
    assert sum(r["ms_per_step"] for r in result["categories"]) == pytest.approx(result["wall_ms_per_step"], abs=0.5)
    assert {"matmul: dense", "matmul: vocab", "matmul: attention"} <= set(categories)
    cfg = resolve(timing.bench_config("clm", "S", batch_size=2, seq_len=32, vocab=320,
                                      overrides={"model.attention_impl": "xla"}), n_devices=1)
    expected = params_lib.count(cfg)["training_flops_per_token"]["executed"] * 2 * 32
    assert result["matmul_flops_per_step"] == pytest.approx(expected, rel=0.01)
    assert "matmul: dense" in capsys.readouterr().out


def test_concurrent_thunks_share_the_time_and_gaps_are_idle():
    """Hand-made trace: one step of 100 us; `a` runs 10-60, `b` 40-70 (overlap 40-60 charged half to each), nothing
    runs 0-10 and 70-100 (idle, the tail included); an event that is no HLO instruction is ignored."""
    info = {"op": "fusion", "shape": "f32[2]", "flops": 0.0, "ops": ["add"], "batched_dot": False, "dot_dims": [],
            "op_name": "jvp(x)"}
    events = [{"ph": "X", "name": "ThunkExecutor::Execute (wait for completion)", "ts": 0, "dur": 100},
              {"ph": "X", "name": "a", "ts": 10, "dur": 50}, {"ph": "X", "name": "b", "ts": 40, "dur": 30},
              {"ph": "X", "name": "PjitFunction(step)", "ts": 0, "dur": 100}]
    got = profile_step.attribute(events, {"a": info, "b": info})
    assert got["per_thunk_us"] == {"a": 30 + 10, "b": 10 + 10}
    assert got["idle_us"] == 10 + 30 and got["wall_us"] == 100 and got["steps"] == 1


def test_bad_sizes_are_one_sentence(capsys):
    assert profile_step.main(["--steps", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
