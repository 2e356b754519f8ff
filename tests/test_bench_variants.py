"""`--variant KEY=VALUE`: a config change timed beside its baseline in the same benchmark window."""

import argparse

import pytest

from jaxformer import timing
from jaxformer.errors import UserError


def _args(*argv):
    p = argparse.ArgumentParser()
    timing.add_arguments(p)
    return p.parse_args(list(argv))


def test_variants_follow_their_baseline_in_every_cell():
    args = _args("--configs", "S", "M", "--variant", "model.attention_impl=xla",
                 "--variant", "model.xent_chunk=64,model.remat=true")
    specs = timing.plan(args, ["jaxformer", "plain-jax"])
    names = [(s["config"], s["objective"], s["impl"]) for s in specs]
    assert names[:4] == [("S", "clm", "jaxformer"), ("S", "clm", "jaxformer[model.attention_impl=xla]"),
                         ("S", "clm", "jaxformer[model.xent_chunk=64,model.remat=true]"), ("S", "clm", "plain-jax")]
    assert len(specs) == 2 * 2 * 4
    assert specs[2]["overrides"] == {"model.xent_chunk": "64", "model.remat": "true"}
    assert "overrides" not in specs[0] and "overrides" not in specs[3]
    cfg = timing.bench_config("clm", "S", batch_size=2, seq_len=8, vocab=64, overrides=specs[2]["overrides"])
    assert cfg.model.xent_chunk == 64 and cfg.model.remat is True


def test_variant_ratio_is_over_the_same_cells_baseline():
    runs = [{"impl": "jaxformer", "objective": "clm", "config": "S", "tokens_per_s_median": 100.0,
             "tokens_per_s_best": 110.0},
            {"impl": "jaxformer", "objective": "clm", "config": "M", "tokens_per_s_median": 50.0,
             "tokens_per_s_best": 55.0},
            {"impl": "jaxformer[x=1]", "objective": "clm", "config": "M", "overrides": {"x": "1"},
             "tokens_per_s_median": 60.0, "tokens_per_s_best": 55.0}]
    assert timing.variant_ratios(runs) == [{"variant": "jaxformer[x=1]", "objective": "clm", "config": "M",
                                            "tokens_per_s_ratio": 1.2, "tokens_per_s_best_ratio": 1.0}]


@pytest.mark.parametrize("text,match", [("model.attention_imp=xla", "did you mean"),
                                        ("model.attention_impl=flash", "choose one of"),
                                        ("model.attention_impl", "KEY=VALUE")])
def test_a_bad_variant_is_one_sentence_before_any_cell_runs(text, match):
    with pytest.raises(UserError, match=match):
        timing.check_sizes(_args("--variant", text))


def _benchmark(name="ab_step"):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("variant,same_math", [("model.dot_grads=xla", True), ("optimizer.lr=0.05", False)])
def test_ab_step_alternates_both_programs_in_one_process(tmp_path, variant, same_math):
    """benchmarks/ab_step.py at smoke size: one ratio per pair; a variant that does not change the math ends on
    the baseline's loss (both programs ran on the same states and batches), one that does (a 50x learning rate)
    does not (the variant really was compiled with its setting)."""
    import json

    out = tmp_path / "ab.json"
    assert _benchmark().main(["--variant", variant, "--configs", "S", "--objectives", "clm", "--pairs", "3",
                              "--batch-size", "2", "--seq-len", "16", "--vocab", "64", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (cell,) = result["cells"]
    assert result["variant"] == variant and cell["overrides"] == dict([variant.split("=")])
    assert cell["pairs"] == 3 and 0 < cell["ratio_q1"] <= cell["ratio_median"] <= cell["ratio_q3"]
    assert cell["baseline_step_ms_median"] > 0 and cell["variant_step_ms_median"] > 0
    same = cell["variant_loss_last"] == pytest.approx(cell["baseline_loss_last"], rel=1e-5)
    assert same == same_math, (cell["baseline_loss_last"], cell["variant_loss_last"])


def test_ab_step_set_changes_both_programs(tmp_path):
    """`--set` applies to the baseline and the variant alike: with a sliding window set, the two attention
    kernels (the C++ one and blocked) compute the same windowed loss, and it is not the unwindowed one."""
    import json

    def last_losses(*extra):
        out = tmp_path / "ab.json"
        assert _benchmark().main(["--variant", "model.attention_impl=blocked", *extra, "--configs", "S",
                                  "--objectives", "clm", "--pairs", "1", "--batch-size", "2", "--seq-len", "16",
                                  "--vocab", "64", "--out", str(out)]) == 0
        (cell,) = json.loads(out.read_text())["cells"]
        return cell["base"], cell["baseline_loss_last"], cell["variant_loss_last"]

    base, windowed, windowed_blocked = last_losses("--set", "model.window=4")
    assert base == {"model.window": "4"} and windowed == pytest.approx(windowed_blocked, rel=1e-5)
    assert last_losses()[1] != pytest.approx(windowed, rel=1e-5)


def test_ab_step_refuses_a_bad_variant_in_one_sentence(capsys):
    assert _benchmark().main(["--variant", "model.dot_grad=xla"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_packed_cells_carry_their_documents():
    """With `data.packing=true` a benchmark cell's windows hold several documents, with the segment ids and
    positions the data pipeline gives packed batches (a new document after every EOS)."""
    import numpy as np

    from jaxformer.data.tokenizers import EOS

    spec = {"objective": "clm", "config": "S", "batch_size": 2, "seq_len": 256, "vocab": 64,
            "overrides": {"data.packing": "true"}}
    cfg, _, _, _, (batch,) = timing.cell_inputs(spec, n_batches=1)
    tokens, segments, positions = (np.asarray(batch[key]) for key in ("tokens", "segment_ids", "positions"))
    assert cfg.data.packing and (tokens == EOS).sum() >= 2
    np.testing.assert_array_equal(np.diff(segments, axis=1), tokens[:, :-1] == EOS)
    np.testing.assert_array_equal(positions[:, 1:] == 0, tokens[:, :-1] == EOS)


def test_ab_gate_up_times_the_same_mlp_in_both_forms(tmp_path):
    """benchmarks/ab_gate_up.py at smoke size: the one-product form computes the two-product MLP's loss and
    input gradient (so its ratio compares the same math), one ratio per pair."""
    import json

    out = tmp_path / "gate_up.json"
    assert _benchmark("ab_gate_up").main(["--batch-size", "2", "--seq-len", "8", "--d", "16", "--f", "24",
                                          "--pairs", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 3 and 0 < result["ratio_q1"] <= result["ratio_median"] <= result["ratio_q3"]
    assert result["loss_one"] == pytest.approx(result["loss_two"], rel=1e-5) and result["loss_two"] > 0
    assert result["input_grad_max_abs_diff"] < 1e-5
