"""`jaxformer bench` and benchmarks/bench_train.py: the bench/results.json contract (fields, sane values) on tiny
shapes, and a package that never imports PyTorch. No timing thresholds: the figures depend on the machine."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxformer.cli import main

REPO = Path(__file__).resolve().parents[1]
CONTRACT = ("impl", "objective", "config", "tokens_per_s_median", "compile_s", "peak_rss_mb", "mfu")
TINY = ["--quick", "--batch-size", "2", "--seq-len", "32", "--vocab", "256", "--steps", "2", "--warmup", "1"]


@pytest.fixture(autouse=True)
def _small_roofline(monkeypatch):
    """A 512^3 roofline matmul in every cell these tests start (2048^3 took most of a tiny cell's time): the
    contract is the same, and `roofline_matmul` in the JSON says which size ran."""
    monkeypatch.setenv("JAXFORMER_ROOFLINE_N", "512")


def _bench_train():
    """benchmarks/bench_train.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_run(run: dict) -> None:
    assert all(key in run for key in CONTRACT), sorted(set(CONTRACT) - set(run))
    assert run["objective"] in ("clm", "mlm") and run["config"] == "S"
    assert run["tokens_per_s_median"] > 0 and run["peak_rss_mb"] > 0 and run["compile_s"] >= 0
    assert 0 < run["mfu"] < 1
    assert run["roofline_gflops"] > 0 and run["steps_timed"] == 2
    assert run["loss_last"] == pytest.approx(run["loss_last"])  # finite (NaN != NaN)


def test_quick_bench_writes_the_contract_json(tmp_path):
    out = tmp_path / "bench" / "results.json"
    assert main(["bench", *TINY, "--objectives", "mlm", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    _check_run(run)
    assert run["impl"] == "jaxformer" and run["compile_s"] > 0
    # MLM predicts only the masked fraction: fewer model FLOPs than a head on every position.
    assert run["flops_per_token"] < run["flops_per_token_all_positions"]
    assert run["mfu"] == pytest.approx(run["flops_per_token"] * run["tokens_per_s_median"]
                                       / (run["roofline_gflops"] * 1e9))
    assert data["errors"] == [] and data["machine"]["versions"]["jax"]
    assert data["seq_len"] == 32 and data["quick"] is True and data["roofline_matmul"] == 512


def test_bad_option_exits_2(tmp_path, capsys):
    assert main(["bench", "--steps", "0", "--out", str(tmp_path / "r.json")]) == 2
    assert "--steps" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_peer_token_ids_match_the_tokenizers():
    from jaxformer.data.tokenizers import MASK, N_SPECIAL

    bench_train = _bench_train()
    assert (bench_train.MASK, bench_train.N_SPECIAL) == (MASK, N_SPECIAL)


def test_no_jaxformer_module_imports_torch():
    """Import every module of the package in a fresh interpreter: neither torch nor transformers gets loaded."""
    code = ("import pkgutil, importlib, sys, jaxformer\n"
            "names = [m.name for m in pkgutil.walk_packages(jaxformer.__path__, 'jaxformer.')]\n"
            "for name in names:\n"
            "    importlib.import_module(name)\n"
            "assert jaxformer.__file__.startswith(sys.argv[1]), jaxformer.__file__\n"
            "print(len(names), sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_modules, loaded = proc.stdout.split(maxsplit=1)
    assert int(n_modules) > 20 and loaded.strip() == "[]"


@pytest.mark.slow
@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
                    reason="the PyTorch peers need torch and transformers")
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_peer_runs_have_the_same_fields(tmp_path, objective):
    """Every impl but torch.compile (its compile alone takes about a minute here) on one tiny cell."""
    out = tmp_path / "results.json"
    impls = ["plain-jax", "nanogpt-eager", "hf-torch"]
    assert _bench_train().main([*TINY, "--objectives", objective, "--impls", *impls, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    runs = {r["impl"]: r for r in data["runs"]}
    assert list(runs) == ["jaxformer", *impls]
    for run in runs.values():
        _check_run(run)
        # Same problem for everyone: the first loss of a fresh model is about ln(vocab) (256 here).
        assert abs(run["loss_first"] - math.log(256)) < 0.5, (run["impl"], run["loss_first"])
        assert 0 < run["mfu_jnp_dot"] < 1
    assert runs["hf-torch"]["peer_model"] == ("GPT2LMHeadModel" if objective == "clm" else "BertForMaskedLM")
    assert runs["nanogpt-eager"]["compile_s"] == 0 and runs["plain-jax"]["compile_s"] > 0
    (ratio,) = data["ratios"]
    fastest = max(("nanogpt-eager", "hf-torch"), key=lambda i: runs[i]["tokens_per_s_median"])
    assert ratio["best_peer"] == fastest
    assert ratio["tokens_per_s_ratio"] == pytest.approx(
        runs["jaxformer"]["tokens_per_s_median"] / runs[fastest]["tokens_per_s_median"], rel=1e-2)
    assert ratio["plain_jax_ratio"] == pytest.approx(
        runs["jaxformer"]["tokens_per_s_median"] / runs["plain-jax"]["tokens_per_s_median"], rel=1e-2)


def _hand_written_peers():
    """benchmarks/plain_jax.py and benchmarks/nanogpt_torch.py (the benchmarks folder is not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import nanogpt_torch
        import plain_jax
    finally:
        sys.path.pop(0)
    return plain_jax, nanogpt_torch


def test_nanogpt_peer_matches_the_plain_jax_model():
    """The two hand-written peers compute the same function: plain JAX's loss with the nanoGPT model's weights."""
    torch = pytest.importorskip("torch")
    import jax
    import numpy as np

    plain_jax, nanogpt_torch = _hand_written_peers()
    NanoGPT = nanogpt_torch.NanoGPT
    torch.manual_seed(0)
    shape = dict(vocab=50, seq_len=12, d_model=16, n_layer=2, n_heads=4)
    tokens = torch.randint(0, 50, (3, 13))
    for causal in (True, False):
        model = NanoGPT(**shape, causal=causal)
        with torch.no_grad():
            for p in model.parameters():  # non-trivial norms and biases too
                p.add_(0.05 * torch.randn_like(p))
        w = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        blocks = [{"ln1": w[f"blocks.{i}.ln_1.weight"], "ln1_b": w[f"blocks.{i}.ln_1.bias"],
                   "ln2": w[f"blocks.{i}.ln_2.weight"], "ln2_b": w[f"blocks.{i}.ln_2.bias"],
                   "qkv": w[f"blocks.{i}.qkv.weight"].T, "qkv_b": w[f"blocks.{i}.qkv.bias"],
                   "proj": w[f"blocks.{i}.proj.weight"].T, "proj_b": w[f"blocks.{i}.proj.bias"],
                   "fc": w[f"blocks.{i}.fc.weight"].T, "fc_b": w[f"blocks.{i}.fc.bias"],
                   "out": w[f"blocks.{i}.fc_out.weight"].T, "out_b": w[f"blocks.{i}.fc_out.bias"]}
                  for i in range(shape["n_layer"])]
        params = {"wte": w["wte.weight"], "wpe": w["wpe.weight"], "blocks": blocks}
        if causal:
            params.update(lnf=w["ln_f.weight"], lnf_b=w["ln_f.bias"])
        else:  # BERT-shaped: embedding norm and the MLM head's transform, norm and vocabulary bias
            params.update(lne=w["ln_emb.weight"], lne_b=w["ln_emb.bias"], head=w["head_fc.weight"].T,
                          head_b=w["head_fc.bias"], lnh=w["head_ln.weight"], lnh_b=w["head_ln.bias"],
                          vocab_b=w["head_bias"])
        assert set(plain_jax.init_params(jax.random.key(0), **shape, causal=causal)) == set(params)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        positions = None if causal else torch.tensor([[1, 5, 7]] * 3)
        if positions is not None:
            targets = torch.gather(inputs, 1, positions)
        with torch.no_grad():
            expected = float(model(inputs, targets, positions))
        # Compiled: op by op, the loss is hundreds of tiny compiles (30 s here).
        loss_fn = jax.jit(plain_jax.loss_fn, static_argnames=("n_heads", "causal"))
        got = float(loss_fn(params, np.asarray(inputs), np.asarray(targets),
                            None if positions is None else np.asarray(positions), n_heads=shape["n_heads"],
                            causal=causal))
        assert got == pytest.approx(expected, rel=1e-4)


def test_gpu_benchmark_smoke_runs_anywhere(tmp_path):
    """benchmarks/bench_gpu.py at smoke size on whatever backend this is: bf16 compute, the kernel auto picks,
    and an MFU against a stated peak (the published one on a known accelerator, else a measured roofline)."""
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    bench_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_gpu)
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--smoke", "--steps", "4", "--sync-every", "2", "--warmup", "1", "--out", str(out),
                           "--trace-dir", str(tmp_path / "trace"), "--trace-steps", "2",
                           "--variant", "model.xent_chunk=16", "--variant", "model.vocab_pad_multiple=0"]) == 0
    data = json.loads(out.read_text())
    # The variants ran in the same process with their own configs, and their ratios are against this baseline.
    reused, variant = data["variants"]
    assert data["padded_vocab_size"] == 512 and variant["padded_vocab_size"] == variant["vocab_size"] == 500
    # Same parameter shapes: the state is carried over; other shapes: a new one.
    assert not data["state_reused"] and reused["state_reused"] and not variant["state_reused"]
    assert reused["loss_last"] == pytest.approx(reused["loss_last"])  # finite after the carried-over state
    # 4 steps in windows of 2, plus 5 steps each waited for
    assert data["steps_timed"] == 4 and data["windows_timed"] == 2 and len(data["step_ms"]) == 2
    assert data["step_ms_synced_each_median"] > 0
    assert 0 < data["init_compile_s"] <= data["init_s"]  # initialising compiles its program; a reused state does not
    # every run profiled: the categories add up to the traced time; the kept trace reads back the same
    profile = reused["profile"]
    assert sum(c["ms_per_step"] for c in profile["categories"]) == pytest.approx(profile["wall_ms_per_step"],
                                                                                abs=0.5)
    spec = importlib.util.spec_from_file_location("profile_step", REPO / "benchmarks" / "profile_step.py")
    profile_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_step)
    assert profile_step.main(["--from", profile["trace"], "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["categories"] == profile["categories"] and again["overrides"] == {"model.xent_chunk": "16"}
    assert variant["tokens_per_s_ratio"] == pytest.approx(
        variant["tokens_per_s_median"] / data["tokens_per_s_median"], rel=1e-2)
    assert variant["roofline_tflops"] == data["roofline_tflops"] and data["attention_kernel"] != "auto"
    assert bench_gpu.main(["--smoke", "--variant", "model.no_such_key=1", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()  # a misspelt variant stops before anything runs
    assert data["dtype"] == "bfloat16" and data["param_dtype"] == "float32" and data["smoke"] is True
    assert data["tokens_per_s_median"] > 0 and data["peak_tflops"] > 0 and data["mfu"] > 0
    assert data["mfu"] == pytest.approx(data["flops_per_token"] * data["tokens_per_s_median"]
                                        / (data["peak_tflops"] * 1e12), rel=1e-3)
    assert data["loss_last"] == pytest.approx(data["loss_last"])  # finite
    peak, source = bench_gpu.device_peak(type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})())
    assert peak == 989.0 and "H100" in source
    assert bench_gpu.device_peak(type("D", (), {"device_kind": "NVIDIA H100 PCIe"})())[0] == 756.0


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_nanogpt_peer_has_the_benchmark_cells_parameters(objective):
    """The peer does the cell's work: GPT-2 shaped for CLM, BERT shaped for MLM (embedding norm, MLM transform
    head, vocabulary bias), to the parameter, as `jaxformer.params` counts the cell's config."""
    torch = pytest.importorskip("torch")
    from jaxformer import params, timing
    from jaxformer.config import resolve

    torch.manual_seed(0)
    model = _hand_written_peers()[1].NanoGPT(vocab=512, seq_len=64, causal=objective == "clm", **timing.CONFIGS["S"])
    cfg = resolve(timing.bench_config(objective, "S", batch_size=2, seq_len=64, vocab=512), n_devices=1)
    assert sum(p.numel() for p in model.parameters()) == params.count(cfg)["total"]


def test_steps_are_timed_in_windows_synced_once_each():
    """timing.time_steps: `sync_every` steps dispatched back to back, one sync per window (a short last window),
    one time per window; batches cycle."""
    from jaxformer import timing

    seen, synced = [], []

    def step(state, batch):
        seen.append(batch)
        return state + 1

    times, state = timing.time_steps(step, 0, ["a", "b"], 5, float("inf"), synced.append, sync_every=2)
    assert state == 5 and seen == ["a", "b", "a", "b", "a"] and synced == [2, 4, 5] and len(times) == 3
    times, _ = timing.time_steps(step, 0, ["a"], 3, float("inf"), synced.append)  # default: every step synced
    assert len(times) == 3 and synced[-3:] == [1, 2, 3]


def test_dispatch_benchmark_compares_the_two_state_forms(tmp_path):
    """benchmarks/bench_dispatch.py at a small size: both state forms timed in alternating rounds, their ratio from
    the per-round medians, the preset's leaf count; bad sizes are one sentence."""
    spec = importlib.util.spec_from_file_location("bench_dispatch", REPO / "benchmarks" / "bench_dispatch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dispatch.json"
    assert bench.main(["--preset", "decoder-tiny", "--rounds", "2", "--calls", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rounds = data["dispatch_ms_per_round"]
    assert set(rounds) == {"wrapped", "unwrapped"} and all(len(v) == 2 and min(v) > 0 for v in rounds.values())
    median = {k: sorted(v)[0] / 2 + sorted(v)[1] / 2 for k, v in rounds.items()}
    assert data["unwrapped_over_wrapped"] == pytest.approx(median["unwrapped"] / median["wrapped"], rel=0.01)
    assert data["n_layer"] == 4 and data["state_leaves"] > 4 * 16  # AdamW's two moments too
    assert bench.main(["--rounds", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
