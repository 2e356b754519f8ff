"""`make compare` (experiments/compare.py): FLOP matching against a count written by hand, run keys, and a
smoke-size comparison end to end whose output files must be complete and well-formed."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from experiments import compare
from experiments.compare_report import FILES

TINY = compare.Scale(model=("model.n_layer=2", "model.d_model=32", "model.n_heads=4"),
                     data=("data.source=builtin", "data.tokenizer=char"),
                     pretrain=("train.seq_len=16", "train.batch_size=8"), decoder_steps=10, finetune=())


def hand_count(*, layers, d, t, v, mask_rate=None):
    """Executed training FLOPs per token: 3 x forward, 2 FLOPs per multiply-add; per layer q, k, v, o (4 d x d),
    the MLP (d x 4d and 4d x d) and the full T x T square of scores and values; then the vocabulary projection
    (decoder: every position; encoder: BERT's d x d transform + projection at ceil(rate x T) slots per row). The
    encoder's last layer computes its slot rows only: all of it but the k and v projections at that fraction."""
    per_layer = 2 * 4 * d * d + 2 * 2 * 4 * d * d + 2 * 2 * d * t
    if mask_rate is None:
        return 3 * (layers * per_layer + 2 * d * v)
    slots = math.ceil(mask_rate * t) / t
    kv = 2 * 2 * d * d
    last_layer = kv + slots * (per_layer - kv)
    return 3 * ((layers - 1) * per_layer + last_layer + (2 * d * d + 2 * d * v) * slots)


def test_encoder_steps_match_the_decoder_flops_of_a_hand_count():
    dec, enc = compare.plan_pretraining(TINY, vocab_size=64, seeds=(0,))
    assert dec.flops_per_token == hand_count(layers=2, d=32, t=16, v=64)
    assert enc.flops_per_token == round(hand_count(layers=2, d=32, t=16, v=64, mask_rate=0.15))
    assert (dec.family, dec.steps, dec.tokens_per_step) == ("decoder", 10, 8 * 16)
    budget = 10 * 8 * 16 * hand_count(layers=2, d=32, t=16, v=64)
    per_step = 8 * 16 * enc.flops_per_token
    # The encoder's head and last layer compute 3 of 16 positions, so it is cheaper per step and gets more steps:
    # the step count whose FLOPs are nearest the decoder's.
    assert enc.steps == round(budget / per_step) > dec.steps
    assert abs(enc.training_flops - dec.training_flops) <= per_step / 2
    assert enc.cfg.train.steps == enc.steps and dec.cfg.train.steps == 10
    assert enc.cfg.model == dec.cfg.model  # same shape, same tokenizer and corpus
    assert enc.cfg.data == dec.cfg.data


def test_a_changed_seed_or_setting_gets_its_own_run_key():
    base = {p.family: p.key for p in compare.plan_pretraining(TINY, 64, (0,))}
    assert base == {p.family: p.key for p in compare.plan_pretraining(TINY, 64, (0,))}  # stable
    seed1 = {p.family: p.key for p in compare.plan_pretraining(TINY, 64, (1,))}
    longer = {p.family: p.key for p in compare.plan_pretraining(replace(TINY, decoder_steps=11), 64, (0,))}
    lr = {p.family: p.key for p in compare.plan_pretraining(
        replace(TINY, pretrain=(*TINY.pretrain, "optimizer.lr=1e-4")), 64, (0,))}
    for other in (seed1, longer, lr):
        assert all(other[f] != base[f] for f in base)
    assert len(set(base.values())) == 2


# ---------------------------------------------------------------------------------------------- end to end

def _task_file(path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = {0: ["bad", "dull", "awful"], 1: ["good", "fine", "great"]}
    rows = [f"the film was {rng.choice(words[i % 2])} and {rng.choice(words[i % 2])}\t{i % 2}" for i in range(80)]
    path.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    task = str(_task_file(root / "task.tsv"))
    summary = compare.run_compare("smoke", root / "work", root / "out", seeds=(0,), tasks=(task,),
                                  show_progress=False)
    return root, task, summary


@pytest.mark.slow
def test_smoke_compare_writes_complete_well_formed_results(smoke):
    root, task, summary = smoke
    out = root / "out"
    assert all((out / name).is_file() for name in FILES)
    runs = json.loads((out / "runs.json").read_text())["runs"]
    kinds = [(r["kind"], r["family"], r["init"]) for r in runs]
    for family in ("decoder", "encoder"):
        for init in ("pretrained", "random"):
            assert kinds.count(("pretrain", family, init)) == 1
            assert kinds.count(("finetune", family, init)) == 1
            assert sorted(r["pooling"] for r in runs if (r["kind"], r["family"], r["init"]) ==
                          ("probe", family, init)) == ["cls", "last", "mean"]
    assert kinds.count(("bow", "bag-of-words", "-")) == 1
    for r in runs:
        assert {"config", "seed", "params", "training_flops", "metrics", "wall_s", "key"} <= set(r)
        if r["kind"] != "pretrain":
            assert 0.0 <= r["metrics"]["dev_accuracy"] <= 1.0 and r["task"] == task
    pre = {(r["family"], r["init"]): r for r in runs if r["kind"] == "pretrain"}
    dec, enc = pre["decoder", "pretrained"], pre["encoder", "pretrained"]
    assert enc["steps"] > dec["steps"]
    assert abs(enc["training_flops"] - dec["training_flops"]) <= enc["flops_per_token"] * 8 * 16 / 2
    assert dec["curve"][-1]["training_flops"] == dec["training_flops"]
    assert math.isclose(dec["metrics"]["valid_perplexity"], math.exp(dec["metrics"]["valid_loss"]), rel_tol=1e-6)
    assert len(dec["metrics"]["samples"]) == len(compare.SAMPLE_PROMPTS)
    for init in ("pretrained", "random"):  # top-1 over the evaluation's masks is the logged MLM accuracy
        m = pre["encoder", init]["metrics"]
        assert m["fill_mask_top1"] == pytest.approx(m["valid_accuracy"], abs=1e-6)
        assert m["fill_mask_top1"] <= m["fill_mask_top5"] <= 1.0 and m["fill_mask_n"] > 0
    table = (out / "table.md").read_text()
    for label in ("bag of words", "decoder pretrained · fine-tune (last)", "encoder random · fine-tune (cls)",
                  "encoder pretrained · probe (mean)", "decoder random · probe (cls)"):
        assert label in table
    assert "nan" not in table
    import matplotlib.pyplot as plt

    for name in FILES[2:]:
        assert plt.imread(out / name).ndim == 3


@pytest.mark.slow
def test_a_second_invocation_reads_finished_runs_back(smoke):
    root, task, first = smoke
    folders = sorted(p for p in (root / "work").glob("*/*") if p.is_dir())
    again = compare.run_compare("smoke", root / "work", root / "out2", seeds=(0,), tasks=(task,), show_progress=False)
    assert sorted(p for p in (root / "work").glob("*/*") if p.is_dir()) == folders
    assert [r["wall_s"] for r in again["runs"]] == [r["wall_s"] for r in first["runs"]]


@pytest.mark.slow
def test_pooled_features_match_each_text_run_alone(smoke):
    """Padding changes nothing and each pooling picks what it says: features of a padded batch against the
    model run on every text alone (no padding), pooled in numpy."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxformer import objectives
    from jaxformer.data.classification_batches import encode_examples
    from jaxformer.features import pooled_features
    from jaxformer.run import open_run

    root, _, summary = smoke
    for backbone in (r for r in summary["runs"] if r["kind"] == "pretrain" and r["init"] == "random"):
        run = open_run(backbone["workdir"])
        causal = objectives.for_config(run.cfg).causal
        tokens = encode_examples(["a b", "the film was", "x"], run.tokenizer, 16, causal=causal)
        feats = pooled_features(run, tokens, causal=causal, batch_size=4)
        # one compiled forward per text length; run eagerly, every op was compiled on its own for each length
        alone = nnx.jit(lambda model, tokens_1xT, causal=causal: model(tokens_1xT, causal=causal)[0][0])
        model = run.state.model()
        fill = run.tokenizer.special_ids.fill
        for i, row in enumerate(tokens):
            real = row[row != fill]
            h = np.asarray(alone(model, jnp.asarray(real[None])))
            np.testing.assert_allclose(feats["cls"][i], h[0], atol=1e-5)
            np.testing.assert_allclose(feats["last"][i], h[-1], atol=1e-5)
            np.testing.assert_allclose(feats["mean"][i], h.mean(0), atol=1e-5)
