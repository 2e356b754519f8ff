"""The ablation runner: every variant trains through the same step and lands in one results table."""

import json

import pytest
from tiny import tiny_overrides

from experiments import ablations

# One layer: two variants each compile a train and an eval step, and the runner does not care about depth.
TINY = tiny_overrides("model.n_layer=1", "train.log_every=2", "train.eval_every=2", "train.eval_batches=1",
                      "mesh.data=1", "mesh.tensor=8")


@pytest.mark.slow
def test_objective_grid_runs_both_families(tmp_path):
    assert ablations.main(["objective", "--steps", "2", "--out", str(tmp_path), "--no-progress", "--set", *TINY]) == 0
    report = json.loads((tmp_path / "objective" / "results.json").read_text())
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {"decoder-clm", "encoder-mlm"}
    assert all(r["step"] == 2 and r["valid_loss"] > 0 for r in runs.values())
    assert runs["encoder-mlm"]["params"] > runs["decoder-clm"]["params"]  # the MLM head
    assert (tmp_path / "objective" / "loss.png").stat().st_size > 0


def test_every_grid_variant_is_a_valid_config():
    from jaxformer import config as config_lib

    for grid in ablations.GRIDS.values():
        for overrides in grid["variants"].values():
            config_lib.resolve(config_lib.load_config(grid["preset"], overrides), vocab_size=100, n_devices=1)
