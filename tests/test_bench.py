"""`jaxformer bench`: the bench/results.json contract (fields, sane values) on tiny shapes. No timing thresholds:
the figures depend on the machine and its load."""

import json

import pytest

from jaxformer import bench
from jaxformer.cli import main

CONTRACT = ("impl", "objective", "config", "tokens_per_s_median", "compile_s", "peak_rss_mb", "mfu")
TINY = ["--quick", "--batch-size", "2", "--seq-len", "32", "--vocab", "256", "--steps", "2", "--warmup", "1"]


def _check_run(run: dict) -> None:
    assert all(key in run for key in CONTRACT), sorted(set(CONTRACT) - set(run))
    assert run["objective"] in ("clm", "mlm") and run["config"] == "S"
    assert run["tokens_per_s_median"] > 0 and run["peak_rss_mb"] > 0 and run["compile_s"] >= 0
    assert 0 < run["mfu"] < 1
    assert run["roofline_gflops"] > 0 and run["steps_timed"] == 2
    assert run["loss_last"] == pytest.approx(run["loss_last"])  # finite (NaN != NaN)


def test_quick_bench_writes_the_contract_json(tmp_path):
    out = tmp_path / "bench" / "results.json"
    assert main(["bench", *TINY, "--objectives", "mlm", "--no-peers", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    _check_run(run)
    assert run["impl"] == "jaxformer" and run["compile_s"] > 0
    # MLM predicts only the masked fraction: fewer model FLOPs than a head on every position.
    assert run["flops_per_token"] < run["flops_per_token_all_positions"]
    assert data["errors"] == [] and data["machine"]["versions"]["jax"]
    assert data["seq_len"] == 32 and data["quick"] is True


def test_bad_option_exits_2(tmp_path, capsys):
    assert main(["bench", "--steps", "0", "--out", str(tmp_path / "r.json")]) == 2
    assert "--steps" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_peer_token_ids_match_the_tokenizers():
    from jaxformer.data.tokenizers import MASK, N_SPECIAL

    assert (bench.MASK, bench.N_SPECIAL) == (MASK, N_SPECIAL)


@pytest.mark.slow
@pytest.mark.skipif(not bench.peers_available(), reason="the PyTorch peers need torch and transformers")
def test_peer_runs_have_the_same_fields(tmp_path):
    out = tmp_path / "results.json"
    assert main(["bench", *TINY, "--objectives", "clm", "--peers", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["impl"] for r in data["runs"]] == ["jaxformer", "hf-torch"]
    for run in data["runs"]:
        _check_run(run)
    assert data["runs"][1]["peer_model"] == "GPT2LMHeadModel" and data["runs"][1]["compile_s"] == 0
    (ratio,) = data["ratios"]
    assert ratio["tokens_per_s_ratio"] > 0
