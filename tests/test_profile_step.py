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


GPU_HLO = """HloModule jit_train_step, is_scheduled=true

%fused_add (param_0: bf16[4,8]) -> bf16[4,8] {
  %param_0 = bf16[4,8]{1,0} parameter(0)
  ROOT %add.0 = bf16[4,8]{1,0} add(%param_0, %param_0), metadata={op_name="jit(train_step)/jvp()/add"}
}

%body (p: (s32[], bf16[4,8])) -> (s32[], bf16[4,8]) {
  %p = (s32[], bf16[4,8]{1,0}) parameter(0)
  %x = bf16[4,8]{1,0} get-tuple-element(%p), index=1
  %w = bf16[8,8]{1,0} constant({...})
  %custom-call.2 = (bf16[4,8]{1,0}, s8[1024]{0}) custom-call(%x, %w), custom_call_target="__cublas$gemm", \
backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],\
"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %t = (s32[], bf16[4,8]{1,0}) tuple(%x, %x)
}

ENTRY %main.9 (a: bf16[4,8], b: bf16[8,8]) -> bf16[4,8] {
  %a = bf16[4,8]{1,0} parameter(0)
  %b = bf16[8,8]{1,0} parameter(1)
  %custom-call.1 = (bf16[4,8]{1,0}, s8[1024]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", \
backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],\
"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %loop_add_fusion.3 = bf16[4,8]{1,0} fusion(%a), kind=kLoop, calls=%fused_add, \
metadata={op_name="jit(train_step)/jvp()/add"}
  %fmha.4 = (bf16[4,8]{1,0}, u8[0]{0}) custom-call(%a, %a, %a), custom_call_target="__cudnn$fmhaSoftmax"
  %while.5 = (s32[], bf16[4,8]{1,0}) while(%a), condition=%cond, body=%body, \
backend_config={"known_trip_count":{"n":"3"}}
}
""".replace("\\\n", "").replace("[4,8]", "[4096,8192]").replace("[8,8]", "[8192,8192]")


def test_gpu_trace_kernels_map_to_instructions_and_library_calls():
    """Hand-made GPU trace and HLO (the shapes XLA:GPU writes): a fusion's kernel is named after it with `.` -> `_`
    and its `hlo_op` is a command buffer's; cuBLAS / cuDNN kernels are told apart by name; a cuBLAS GEMM's FLOPs
    come from its dimension numbers and count once per trip of the while loop it sits in."""
    hlo = profile_step.parse_hlo(GPU_HLO)
    gemm = 2 * 4096 * 8192 * 8192  # per GEMM: once in the entry, 3 times in the loop body
    assert hlo["custom-call.1"]["flops"] == hlo["custom-call.2"]["flops"] == gemm
    assert hlo["custom-call.2"]["runs"] == 3 and hlo["custom-call.1"]["runs"] == 1
    assert hlo["fmha.4"]["shape"].startswith("(bf16[4096,8192]")
    gpu = {"pid": 1, "ph": "X", "args": {"hlo_op": "command_buffer_1"}}
    ms = 1000  # trace times are in microseconds
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
              {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/host:CPU"}},
              {**gpu, "name": "loop_add_fusion_3", "ts": 0, "dur": 10 * ms},
              {**gpu, "name": "nvjet_sm90_tst_128x128_64x6_2x1_v_bz_TNT", "ts": 10 * ms, "dur": 30 * ms},
              {**gpu, "name": "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "ts": 40 * ms, "dur": 20 * ms},
              {**gpu, "name": "some_unknown_kernel", "ts": 60 * ms, "dur": 5 * ms},
              {"pid": 7, "ph": "X", "name": "loop_add_fusion.3", "ts": 0, "dur": 100 * ms, "args": {}},  # host side
              {**gpu, "name": "loop_add_fusion_3", "ts": 90 * ms, "dur": 10 * ms}]
    attributed = profile_step.attribute(events, hlo, steps=1)
    got = profile_step.table(attributed, hlo, vocab=50, top=5)
    rows = {r["category"]: r for r in got["categories"]}
    assert rows["elementwise: forward"]["ms_per_step"] == 20 and attributed["per_thunk_us"] == {
        "loop_add_fusion.3": 20 * ms, "<matmul: library>": 30 * ms, "<attention kernel>": 20 * ms}
    assert attributed["idle_us"] == 30 * ms and got["wall_ms_per_step"] == 100  # the unknown kernel's time is idle
    assert got["matmul_flops_per_step"] == gemm * (1 + 3)
    assert rows["matmul: library"]["gflops_per_s"] == pytest.approx(gemm * 4 / 30e-3 / 1e9, rel=0.01)
    assert rows["attention kernel"]["ms_per_step"] == 20


def test_the_cpu_attention_kernel_is_an_attention_kernel():
    """model.attention_impl=cpp's FFI calls (forward and backward) are one category, not elementwise work."""
    for stage in ("fwd", "bwd"):
        info = {"op": "custom-call", "target": f"jaxformer_attention_{stage}", "flops": 0.0, "ops": ["custom-call"],
                "batched_dot": False, "dot_dims": [], "op_name": "jit(train_step)/jvp()/ffi_call"}
        assert profile_step.categorize(info, vocab=50) == "attention kernel"
    assert profile_step.categorize({**info, "target": "some_other_call"}, vocab=50) != "attention kernel"


def test_an_asynchronous_dot_lasts_until_its_end_event():
    """XLA:CPU's plain Eigen `dot` thunk returns at once and computes until its `end:` event: that time is the
    dot's, not idle. A fusion's late `end:` event (executor bookkeeping) does not stretch the fusion."""
    dot = {"op": "dot", "shape": "f32[4,4]", "flops": 128.0, "ops": ["dot"], "batched_dot": False,
           "dot_dims": [4], "op_name": "transpose(jvp(x))", "runs": 1}
    fusion = {**dot, "op": "fusion", "flops": 0.0, "ops": ["add"], "dot_dims": []}
    events = [{"ph": "X", "name": "ThunkExecutor::Execute (wait for completion)", "ts": 0, "dur": 100},
              {"ph": "X", "name": "dot.1", "ts": 0, "dur": 2}, {"ph": "X", "name": "end: dot.1", "ts": 60, "dur": 1},
              {"ph": "X", "name": "fusion.2", "ts": 60, "dur": 10},
              {"ph": "X", "name": "end: fusion.2", "ts": 95, "dur": 1}]
    got = profile_step.attribute(events, {"dot.1": dot, "fusion.2": fusion})
    assert got["per_thunk_us"] == {"dot.1": 60, "fusion.2": 10} and got["idle_us"] == 30
