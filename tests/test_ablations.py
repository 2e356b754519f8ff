"""Ablation grids: records, reuse of finished runs only when identical, FLOPs from params.py, matched MLP
parameters and MoE active FLOPs (against hand counts), the common mask rate, and the report's tables and plots."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_overrides

from experiments import ablations, report
from experiments import results as results_lib
from jaxformer import config as config_lib
from jaxformer import params

REPO = Path(__file__).resolve().parents[1]
# One layer, two steps (one evaluation after each: two curve points), one eval batch.
TINY = tiny_overrides("model.n_layer=1", "train.log_every=1", "train.eval_batches=1")
RECORD_FIELDS = {"grid", "variant", "cell", "seed", "scale", "run_key", "cell_key", "overrides", "config", "params",
                 "active_params", "steps", "tokens", "tokens_with_loss", "train_flops", "train_flops_per_token",
                 "train_loss", "valid_loss", "valid_loss_own", "valid_accuracy", "wall_s", "tokens_per_s", "curve"}


def _main(tmp: Path, *argv: str) -> int:
    return ablations.main([*argv, "--steps", "2", "--out", str(tmp / "runs"), "--results", str(tmp / "results"),
                           "--no-progress", "--set", *TINY])


def _lines(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "results" / "mask-rate.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The mask-rate grid at smoke size, one seed, then the report."""
    tmp = tmp_path_factory.mktemp("grid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAXFORMER_CACHE_DIR", str(tmp / "cache"))
        assert _main(tmp, "mask-rate", "--seeds", "0") == 0
    written = report.render(tmp / "results", log=pytest.fail)
    return tmp, _lines(tmp), written


def test_every_run_appends_one_complete_record(grid):
    tmp, records, _ = grid
    assert [r["variant"] for r in records] == ["mask-0.15", "mask-0.3", "mask-0.4"]
    for r in records:
        assert RECORD_FIELDS <= set(r), RECORD_FIELDS - set(r)
        cfg = config_lib.from_dict(r["config"])  # the full resolved config, the run's own config.json
        workdir = tmp / "runs" / "mask-rate" / r["variant"] / f"seed0-{r['run_key']}"
        assert json.loads((workdir / "config.json").read_text()) == r["config"]
        assert cfg.model.vocab_size > 0 and cfg.train.seed == r["seed"] == 0 and r["steps"] == 2
        assert [p["step"] for p in r["curve"]] == [1, 2]
        assert 0 < r["curve"][0]["tokens_with_loss"] < r["curve"][1]["tokens_with_loss"] == r["tokens_with_loss"]
        assert r["tokens_with_loss"] < r["tokens"]  # MLM: only the masked positions carry loss
        assert r["params"] == params.count(cfg)["total"]
    assert len({r["run_key"] for r in records}) == 3


def test_recorded_flops_are_params_py_counts(grid):
    _, records, _ = grid
    for r in records:
        cfg = config_lib.from_dict(r["config"])
        per_token = params.count(cfg)["training_flops_per_token"]
        window = cfg.train.batch_size * cfg.train.seq_len
        assert r["train_flops"] == per_token["executed"] * window * 2
        assert r["train_flops_ideal"] == per_token["ideal"] * window * 2
        assert [p["train_flops"] for p in r["curve"]] == [per_token["executed"] * window * s for s in (1, 2)]
    # the MLM head runs at ceil(rate x T) slots: more FLOPs at a higher mask rate
    assert records[0]["train_flops"] < records[1]["train_flops"] < records[2]["train_flops"]


def test_mask_rate_cells_are_evaluated_at_the_common_rate(grid):
    _, records, _ = grid
    # The same validation windows and the same fixed-seed masks at 0.15: every cell scores the same tokens ...
    assert len({r["valid_n_tokens"] for r in records}) == 1
    # ... while at its own rate a cell scores more tokens the higher the rate.
    own = [r["valid_n_tokens_own"] for r in records]
    assert own[0] == records[0]["valid_n_tokens"] < own[1] < own[2]
    assert records[0]["valid_loss"] == records[0]["valid_loss_own"]  # at 0.15 both evaluations are one
    assert all(r["eval_overrides"] == {"objective.mask_rate": 0.15} for r in records)
    assert [r["tokens_with_loss"] for r in records] == sorted(r["tokens_with_loss"] for r in records)


def test_report_tables_and_plots(grid):
    import matplotlib.pyplot as plt

    tmp, records, written = grid
    out = tmp / "results"
    assert written["mask-rate"] == [out / "mask-rate.md", out / "mask-rate-cpu.png"]
    md = (out / "mask-rate.md").read_text()
    rows = [line for line in md.splitlines() if line.replace("*", "").startswith("| mask-")]
    assert len(rows) == 3
    header = next(line for line in md.splitlines() if line.startswith("| cell |"))
    assert all(row.count(" | ") == header.count(" | ") for row in rows)
    assert "valid loss (own rate)" in header
    starred = [row for row in rows if "★" in row]
    best = min(records, key=lambda r: r["valid_loss"])
    assert len(starred) == 1 and starred[0].startswith(f"| **{best['variant']}** ★")
    assert f"{best['valid_loss']:.4f}" in starred[0]
    image = plt.imread(out / "mask-rate-cpu.png")
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
    index = (out / "README.md").read_text()
    assert "| [mask-rate](mask-rate.md) | run | 3 | 3 | cpu |" in index
    assert all(f"| {name} | not run |" in index for name in ablations.GRIDS if name != "mask-rate")


def test_identical_rerun_is_skipped_other_seed_or_setting_is_not(grid, capsys, monkeypatch):
    tmp, records, _ = grid
    monkeypatch.setenv("JAXFORMER_CACHE_DIR", str(tmp / "cache"))
    capsys.readouterr()
    assert _main(tmp, "mask-rate", "--seeds", "0") == 0
    assert len(_lines(tmp)) == 3 and capsys.readouterr().out.count("done already, skipped") == 3

    assert _main(tmp, "mask-rate", "--seeds", "0", "1", "--cell", "0") == 0  # seed 0 done, seed 1 new
    after = _lines(tmp)
    assert len(after) == 4 and (after[-1]["variant"], after[-1]["seed"]) == ("mask-0.15", 1)
    assert after[-1]["run_key"] not in {r["run_key"] for r in records}
    assert after[-1]["cell_key"] == records[0]["cell_key"]  # the same cell, another seed
    assert after[-1]["valid_loss"] != records[0]["valid_loss"]
    assert len(list((tmp / "runs" / "mask-rate" / "mask-0.15").iterdir())) == 2

    # Any setting that changes results gives other keys and directories; cadence and mesh do not.
    def keys(*extra, steps=2):
        return [c.key for c in ablations.cells("mask-rate", seeds=(0,), steps=steps, extra=[*TINY, *extra])]
    same = keys()
    assert same == [r["run_key"] for r in records]
    assert keys("train.log_every=2", "mesh.data=1", "mesh.tensor=8") == same
    for changed in (keys(steps=3), keys("optimizer.lr=1e-2"), keys("data.valid_fraction=0.2")):
        assert not set(changed) & set(same)


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    path = tmp_path / "grid.jsonl"
    writer = ("import sys; from pathlib import Path; from experiments.results import append_record\n"
              "for i in range(40): append_record(Path(sys.argv[1]), {'writer': sys.argv[2], 'i': i, 'pad': 'x' * 9000})")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), str(w)], cwd=REPO) for w in range(4)]
    assert all(p.wait() == 0 for p in procs)
    records = results_lib.read_records(path, on_bad_line=lambda n, text: pytest.fail(f"line {n} torn"))
    assert sorted((r["writer"], r["i"]) for r in records) == sorted((str(w), i) for w in range(4) for i in range(40))


def _base(grid: str):
    return ablations.base_config(grid, scale="cpu", extra=TINY)


def test_gated_mlps_match_gelu_parameters_by_hand_count():
    base = _base("mlp")  # d 32, 1 layer, bias on
    d, n_layer = base.model.d_model, base.model.n_layer
    gelu = n_layer * (2 * d * 4 * d + 4 * d + d)  # up and down matrices, their biases

    def gated(f):  # gate, up and down matrices; gate and up biases of f, down bias of d
        return n_layer * (3 * d * f + 2 * f + d)

    variants = ablations.GRIDS["mlp"].variants("cpu", base)
    for kind in ("gelu", "swiglu", "geglu"):
        cfg = config_lib.apply_overrides(base, variants[kind])
        counted = params.count(cfg)["by_component"]["mlp"]
        if kind == "gelu":
            assert counted == gelu
            continue
        f = round(cfg.model.mlp_ratio * d)
        assert counted == gated(f)
        assert abs(gated(f) - gelu) <= min(abs(gated(f - 1) - gelu), abs(gated(f + 1) - gelu))  # the closest width
        assert abs(counted - gelu) / gelu < 0.01


def test_moe_cells_match_dense_active_flops_by_hand_count():
    base = _base("moe")
    d, n_layer, seq = base.model.d_model, base.model.n_layer, base.train.seq_len
    dense_mlp = n_layer * 2 * (2 * d * 4 * d)  # forward FLOPs per token of the dense MLP's two matrices
    variants = ablations.GRIDS["moe"].variants("cpu", base)
    dense = params.count(config_lib.apply_overrides(base, variants["dense"]))
    assert {c["name"]: c["forward_flops_ideal"] for c in dense["components"]}["mlp"] == dense_mlp
    for name in ("moe-4e-top1", "moe-8e-top2"):
        cfg = config_lib.apply_overrides(base, variants[name])
        m = cfg.model
        f = round(m.mlp_ratio * d)
        active_experts = n_layer * m.moe_top_k * 2 * (2 * d * f)
        assert active_experts == dense_mlp
        counted = params.count(cfg)
        ideal = {c["name"]: c["forward_flops_ideal"] for c in counted["components"]}
        assert ideal["experts"] == active_experts and "mlp" not in ideal
        router = n_layer * 2 * d * m.n_experts
        assert ideal["moe.router"] == router
        # Everything else is the same model: the training FLOPs differ by the router alone.
        assert counted["training_flops_per_token"]["ideal"] - dense["training_flops_per_token"]["ideal"] == 3 * router
        assert seq == base.train.seq_len


def test_cell_out_of_range_is_one_sentence(capsys, tmp_path):
    assert ablations.main(["positions", "--cell", "3", "--results", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cells 0..2" in err
    assert not list(tmp_path.iterdir())


def test_every_grid_resolves_at_every_scale():
    for name in ablations.GRIDS:
        for scale in ablations.SCALES:
            found = ablations.cells(name, scale=scale, seeds=ablations.DEFAULT_SEEDS)
            assert len(found) >= 2 * 3 and len({c.key for c in found}) == len(found)
            assert len({c.cell_key for c in found}) == len(found) // 3
    sizes = [params.count(c.cfg)["total"] for c in ablations.cells("size", seeds=(0,))]
    assert len(sizes) >= 3 and sizes == sorted(sizes)


def test_markdown_table_marks_the_best_mean():
    records = [{"run_key": f"k{i}", "cell": c, "loss": v} for i, (c, v) in enumerate([("a", 2.0), ("a", 2.2),
                                                                                   ("b", 1.9), ("b", 2.5)])]
    summaries = results_lib.summarize(records, cell_of=lambda r: r["cell"], label_of=lambda r: r["cell"])
    table = results_lib.markdown_table(summaries, [results_lib.Column("cell", lambda s: s.label, "left"),
                                                   results_lib.Column("loss", lambda s: results_lib.mean_std(s, "loss"))],
                                       best_by="loss")
    # a: mean 2.1, std 0.1414; b: mean 2.2, std 0.4243 -> a is best
    assert re.search(r"\| \*\*a\*\* ★ \| \*\*2\.1000 ± 0\.1414\*\* \|", table)
    assert "| b | 2.2000 ± 0.4243 |" in table
