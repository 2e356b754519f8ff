"""Fine-tuning for sequence classification: accuracy on a separable toy task for both families, linear probe,
pooling positions, batching, resume, real data, the CLI and its refusals."""

import json
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import cli, finetune, objectives, trainer
from jaxformer import config as config_lib
from jaxformer.data.tokenizers import CLS, EOS, PAD, SEP
from jaxformer.errors import UserError
from jaxformer.model import build_model
from jaxformer.run import open_run

# Wider and longer than the tiny shape: fine-tuning keeps the pretrained seq_len (toy sentences of 3-8 words are
# cut to it) and d_model (the head is [64, 2] below); this backbone learns the toy task to > 95% in 60 steps.
PRETRAIN = ["model.d_model=64", "train.seq_len=32", "train.batch_size=16", "train.steps=20", "train.log_every=10",
            "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=20"]
# Fine-tuning settings for the toy task: evaluate once at the end, no intermediate checkpoints.
FAST = ["train.batch_size=16", "train.log_every=10", "train.eval_every=0", "train.checkpoint_every=1000",
        "optimizer.lr=1e-3", "optimizer.warmup_steps=10"]
WORDS = "the cat sat on a mat and dog ran to big red blue small house tree car bird fish green old new".split()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny encoder and decoder, each pretrained for 20 steps on the builtin corpus (char tokenizer)."""
    runs = {}
    for family, kind in (("encoder", "mlm"), ("decoder", "clm")):
        workdir = tmp_path_factory.mktemp(f"pretrained-{family}")
        trainer.train_loop(tiny_config(kind, *PRETRAIN, resolved=False), workdir, show_progress=False)
        runs[family] = workdir
    return runs


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory):
    """Separable toy task: label 1 iff the sentence contains the word "zebra" (anywhere)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("task") / "zebra.jsonl"
    with open(path, "w") as f:
        for _ in range(600):
            words = list(rng.choice(WORDS, rng.integers(3, 7)))
            label = int(rng.integers(0, 2))
            if label:
                words.insert(int(rng.integers(0, len(words) + 1)), "zebra")
            f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return path


def flat(params) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        jax.device_get(params))}


def pretrained_params(workdir) -> dict:
    return flat(open_run(workdir).state.params)


def is_head(key: str) -> bool:
    return "classifier" in key


@pytest.mark.parametrize("family,pooling", [("encoder", "cls"), ("decoder", "last")])
def test_finetune_separable_task_reaches_high_dev_accuracy(pretrained, toy_task, tmp_path, family, pooling):
    out = tmp_path / "out"
    result = finetune.finetune(pretrained[family], str(toy_task), out, FAST + ["train.steps=60"],
                               show_progress=False)
    assert (result["backbone"], result["pooling"]) == (family, pooling)  # the family's default pooling
    assert result["step"] == 60 and result["n_dev"] == 60
    assert result["dev_accuracy"] > 0.95, result
    # a normal run directory, with the head in the saved parameters
    cfg = config_lib.from_dict(json.loads((out / "config.json").read_text()))
    assert (cfg.objective.kind, cfg.objective.n_classes, cfg.objective.causal) == ("classify", 2, family == "decoder")
    assert (out / "tokenizer" / "tokenizer.json").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60 and rows[-1]["valid_accuracy"] == result["dev_accuracy"]
    tuned = pretrained_params(out)
    assert tuned["['classifier']['kernel'].value"].shape == (64, 2)
    # full fine-tuning moved the backbone too, starting from the pretrained values
    before = pretrained_params(pretrained[family])
    assert not np.array_equal(tuned["['embed'].value"], before["['embed'].value"])
    assert not any(is_head(k) for k in before) and not any(k.startswith("['mlm") for k in tuned)


def test_linear_probe_keeps_backbone_bit_identical_and_trains_head(pretrained, toy_task, tmp_path):
    out = tmp_path / "probe"
    result = finetune.finetune(pretrained["encoder"], str(toy_task), out,
                               FAST + ["train.steps=8", "objective.linear_probe=true", "optimizer.lr=1e-2"],
                               show_progress=False)
    assert result["linear_probe"] and result["step"] == 8
    before, after = pretrained_params(pretrained["encoder"]), pretrained_params(out)
    run_cfg = result["run"].cfg
    head_init = np.asarray(build_model(run_cfg, run_cfg.train.seed).classifier.kernel[...])  # as the run began
    backbone = [k for k in after if not is_head(k)]
    assert len(backbone) == len([k for k in before if not k.startswith("['mlm")])
    for key in backbone:  # weight decay, clipping or a leaked gradient would all show here
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert np.abs(after["['classifier']['kernel'].value"] - head_init).max() > 1e-3


def _ragged_tokens(t: int, lengths: list[int], causal: bool) -> jnp.ndarray:
    rng = np.random.default_rng(1)
    rows = np.full((len(lengths), t), PAD, np.int32)
    for i, n in enumerate(lengths):
        body = rng.integers(8, 40, n - (1 if causal else 2))
        row = np.concatenate([body, [EOS]]) if causal else np.concatenate([[CLS], body, [SEP]])
        rows[i, :n] = row
    return jnp.asarray(rows)


@pytest.mark.parametrize("causal", [False, True])
def test_pooling_picks_the_right_positions(causal):
    lengths, t = [3, 6, 8, 2], 8
    tokens = _ragged_tokens(t, lengths, causal)
    longer = jnp.pad(tokens, ((0, 0), (0, t)), constant_values=PAD)  # twice the length (= model.max_seq_len)
    cfg = tiny_config("classify", objective=dict(n_classes=3, causal=causal, pooling="mean"), vocab_size=40)
    model = build_model(cfg, seed=0)

    def prepared(toks, pooling):
        objective = objectives.for_config(replace(cfg, objective=replace(cfg.objective, pooling=pooling)))
        return objective.prepare({"tokens": toks, "labels": jnp.zeros(4, jnp.int32)}, jax.random.key(0))

    ex, ex_long = prepared(tokens, "mean"), prepared(longer, "mean")
    # compiled (one program per length): eager ops were each compiled on their own, most of this test's time
    forward = nnx.jit(lambda model, tokens, segment_ids: model(tokens, causal=causal, segment_ids_BxT=segment_ids)[0])
    hidden = np.asarray(forward(model, ex["inputs"], ex["segment_ids"]))
    hidden_long = forward(model, ex_long["inputs"], ex_long["segment_ids"])
    for pooling in ("cls", "last", "mean") if not causal else ("last", "mean"):
        pooled = np.asarray(objectives.pool(jnp.asarray(hidden), prepared(tokens, pooling)["pool_weights"]))
        naive = {"cls": [hidden[b, 0] for b in range(4)],
                 "last": [hidden[b, n - 1] for b, n in enumerate(lengths)],
                 "mean": [hidden[b, :n].mean(0) for b, n in enumerate(lengths)]}[pooling]
        if pooling == "mean":
            np.testing.assert_allclose(pooled, np.stack(naive), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(pooled, np.stack(naive))
        # padding is invisible: the same rows padded to twice the length pool to the same vector
        pooled_long = objectives.pool(hidden_long, prepared(longer, pooling)["pool_weights"])
        np.testing.assert_allclose(pooled_long, pooled, rtol=1e-4, atol=1e-5)


def test_interrupted_finetune_resumes_exactly(pretrained, toy_task, tmp_path):
    args = (pretrained["decoder"], str(toy_task))
    settings = FAST + ["train.steps=4", "train.checkpoint_every=2"]
    whole = finetune.finetune(*args, tmp_path / "whole", settings, show_progress=False)
    first = finetune.finetune(*args, tmp_path / "resumed", settings, show_progress=False, stop_after=2)
    assert first["step"] == 2
    resumed = finetune.finetune(*args, tmp_path / "resumed", settings, show_progress=False)
    assert resumed["step"] == 4 and resumed["pretrained_step"] == 20
    a, b = flat(resumed["run"].state.params), flat(whole["run"].state.params)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed["dev_accuracy"] == whole["dev_accuracy"]


def test_real_task_feeds_the_pipeline(pretrained, shared_data, tmp_path):
    result = finetune.finetune(pretrained["encoder"], "rt-polarity", tmp_path / "rt",
                               ["train.steps=3", "train.batch_size=64", "train.log_every=1", "train.eval_every=0"],
                               show_progress=False)
    assert (result["n_train"], result["n_dev"], result["step"]) == (9596, 1066, 3)
    assert 0.0 <= result["dev_accuracy"] <= 1.0 and np.isfinite(result["dev_loss"])


def test_task_under_the_data_root_is_recorded_as_written(pretrained, toy_task, tmp_path, monkeypatch):
    """`@data/...` stays in the run's config (portable), and the run resumes under another data root."""
    for root in ("one", "two"):
        (tmp_path / root / "tasks").mkdir(parents=True)
        (tmp_path / root / "tasks" / "zebra.jsonl").write_bytes(toy_task.read_bytes())
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path / "one"))
    args = (pretrained["encoder"], "@data/tasks/zebra.jsonl", tmp_path / "out")
    first = finetune.finetune(*args, FAST + ["train.steps=2"], show_progress=False, stop_after=1)
    assert first["n_train"] == 540
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["objective"]["task"] == "@data/tasks/zebra.jsonl"
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path / "two"))
    assert finetune.finetune(*args, FAST + ["train.steps=2"], show_progress=False)["step"] == 2


def test_cli_finetune_end_to_end_and_refusals(pretrained, toy_task, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["finetune", "--workdir", str(pretrained["decoder"]), "--task", str(toy_task), "--set",
                     *FAST, "train.steps=3", "objective.pooling=mean", "--out", str(out), "--no-progress"])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 3 and 0.0 <= last["dev_accuracy"] <= 1.0 and last["pooling"] == "mean"
    assert (out / "checkpoints" / "3").is_dir() and (out / "config.json").exists()

    def refused(task, workdir=pretrained["encoder"], extra=()):
        code = cli.main(["finetune", "--workdir", str(workdir), "--task", str(task), *extra,
                         "--out", str(tmp_path / "refused")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    assert "Unknown task 'no-such-task'" in refused("no-such-task")
    bad_labels = tmp_path / "bad.jsonl"
    bad_labels.write_text("".join(json.dumps({"text": f"t{i}", "label": 1 + i % 2}) + "\n" for i in range(20)))
    assert "0..n-1" in refused(bad_labels)
    assert "pooling=cls" in refused(toy_task, workdir=pretrained["decoder"], extra=["--set", "objective.pooling=cls"])
    assert "objective.kind" in refused(toy_task, extra=["--set", "objective.kind=clm"])
    assert not (tmp_path / "refused" / "checkpoints").exists()


def test_missing_pretrained_checkpoint_is_refused(pretrained, toy_task, tmp_path):
    import shutil

    workdir = tmp_path / "no-ckpt"
    workdir.mkdir()
    shutil.copy(pretrained["encoder"] / "config.json", workdir / "config.json")
    shutil.copytree(pretrained["encoder"] / "tokenizer", workdir / "tokenizer")
    with pytest.raises(UserError, match="No checkpoint"):
        finetune.finetune(workdir, str(toy_task), tmp_path / "out", FAST)
    with pytest.raises(UserError, match="No run in"):
        finetune.finetune(tmp_path / "nothing", str(toy_task), tmp_path / "out", FAST)
    with pytest.raises(UserError, match="linear_probe"):
        config_lib.resolve(config_lib.load_config("decoder-tiny", ["objective.linear_probe=true"]), vocab_size=40)
