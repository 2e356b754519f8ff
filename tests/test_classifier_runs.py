"""Fine-tuned runs as researchers use them: the run's label map, eval on a test file, predict for both families,
the best checkpoint by validation accuracy, early stopping, classifier metric names and hints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxformer import config as config_lib
from jaxformer import finetune, predict, trainer
from jaxformer.cli import main
from jaxformer.errors import UserError
from jaxformer.metrics import read_metrics

PRETRAIN = ["model.n_layer=2", "model.d_model=32", "model.n_heads=2", "train.seq_len=32", "train.batch_size=8",
            "train.steps=4", "train.log_every=2", "train.eval_every=0", "train.eval_batches=1",
            "train.checkpoint_every=4"]
FAST = ["train.batch_size=16", "train.log_every=2", "train.checkpoint_every=1000", "optimizer.warmup_steps=0"]
COLOURS = ("red", "green", "blue")
FILLER = "the a cat sat on mat and dog ran to big house tree car bird fish old new".split()


def colour_rows(n: int, seed: int, colours=COLOURS) -> list[dict]:
    """A 3-class task: the label is the colour word in the sentence."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        colour = str(rng.choice(colours))
        words = list(rng.choice(FILLER, 4))
        words.insert(int(rng.integers(0, 5)), colour)
        rows.append({"text": " ".join(words), "label": colour})
    return rows


def zebra_rows(n: int, seed: int, *, inverted: bool = False) -> list[dict]:
    """Label 1 iff the sentence holds "zebra"; `inverted` flips every label (a validation set that gets worse
    as the model learns)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        words, label = list(rng.choice(FILLER, 4)), int(rng.integers(0, 2))
        if label:
            words.insert(int(rng.integers(0, 5)), "zebra")
        rows.append({"text": " ".join(words), "label": 1 - label if inverted else label})
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    runs = {}
    for family, preset in (("encoder", "encoder-tiny"), ("decoder", "decoder-tiny")):
        workdir = tmp_path_factory.mktemp(f"pre-{family}")
        trainer.train_loop(config_lib.load_config(preset, PRETRAIN), workdir, show_progress=False)
        runs[family] = workdir
    return runs


@pytest.fixture(scope="module")
def tuned(pretrained, tmp_path_factory):
    """Both families fine-tuned on the 3-class colour task for a few steps (accuracy is beside the point)."""
    folder = tmp_path_factory.mktemp("colours")
    task = write_jsonl(folder / "train.jsonl", colour_rows(200, seed=0))
    runs = {}
    for family in ("encoder", "decoder"):
        out = folder / family
        finetune.finetune(pretrained[family], task, out, FAST + ["train.steps=4", "train.eval_every=2"],
                          show_progress=False)
        runs[family] = out
    return {**runs, "folder": folder}


def cli_json(capsys, argv) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def refused(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_label_map_is_saved_with_the_run(tuned):
    saved = json.loads((tuned["encoder"] / "labels.json").read_text())
    assert saved == {"names": ["blue", "green", "red"], "integer": False}


def test_eval_on_a_test_file_missing_a_class(tuned, capsys):
    """The test file has no "blue" (id 0): numbered on its own, green and red would become 0 and 1."""
    rows = colour_rows(40, seed=5, colours=("green", "red"))
    test = write_jsonl(tuned["folder"] / "test-no-blue.jsonl", rows)
    out = cli_json(capsys, ["eval", "--workdir", str(tuned["encoder"]), "--data", test])
    assert out["checkpoint"] == "best" and out["n_examples"] == 40
    assert set(out["class_accuracy"]) == {"green", "red"}
    assert {"accuracy", "macro_f1", "loss"} <= set(out)
    # the same model's predictions, compared by name, give the same accuracy: ids were not renumbered
    clf = predict.open_classifier(tuned["encoder"])
    names = [p["label"] for p in clf.predictions(clf.log_probabilities([r["text"] for r in rows]))]
    assert out["accuracy"] == pytest.approx(np.mean([n == r["label"] for n, r in zip(names, rows, strict=True)]))
    for colour in ("green", "red"):
        mine = [n == colour for n, r in zip(names, rows, strict=True) if r["label"] == colour]
        assert out["class_accuracy"][colour] == pytest.approx(np.mean(mine))
    # without --data: the run's own validation split, scored by the kept model
    own = cli_json(capsys, ["eval", "--workdir", str(tuned["encoder"])])
    logged = [r for r in read_metrics(tuned["encoder"]) if r["step"] == own["step"]][0]
    assert own["accuracy"] == pytest.approx(logged["valid_accuracy"]) and own["n_examples"] == 20


def test_an_unseen_label_exits_2(tuned, capsys):
    test = write_jsonl(tuned["folder"] / "purple.jsonl", colour_rows(5, seed=1) + [{"text": "x", "label": "purple"}])
    err = refused(capsys, ["eval", "--workdir", str(tuned["encoder"]), "--data", test])
    assert "purple.jsonl:6 has the label 'purple', which is not one of the run's classes (blue, green, red)" in err


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_predict_writes_one_prediction_per_line(tuned, capsys, tmp_path, family):
    lines = ["the red car", "", "a blue bird and a green tree", "très vieux"]
    text = tmp_path / "in.txt"
    text.write_bytes("\n".join(lines).encode("latin-1"))
    assert main(["predict", "--workdir", str(tuned[family]), str(text)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == len(lines)
    for p in printed:
        assert set(p["probabilities"]) == set(COLOURS)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--workdir", str(tuned[family]), str(text), "--out", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == printed
    assert capsys.readouterr().out == ""


def test_classifier_metrics_and_hints(tuned, pretrained, capsys):
    rows = read_metrics(tuned["decoder"])
    assert rows and all("n_examples" in r and "n_tokens" not in r and "perplexity" not in r for r in rows)
    assert all(r["n_examples"] == 2 * 16 for r in rows)  # a log window of 2 steps of 16 examples
    assert all("valid_macro_f1" in r and "valid_perplexity" not in r for r in rows if "valid_accuracy" in r)
    err = refused(capsys, ["sample", "--workdir", str(tuned["decoder"]), "--prompt", "a"])
    assert "holds a fine-tuned classifier" in err and "use jaxformer predict with this one" in err
    err = refused(capsys, ["fill-mask", "--workdir", str(tuned["encoder"]), "a [MASK]"])
    assert "use jaxformer predict with this one" in err
    err = refused(capsys, ["predict", "--workdir", str(pretrained["decoder"]), str(tuned["folder"] / "train.jsonl")])
    assert "predict needs a fine-tuned classifier" in err and "use jaxformer sample with this one" in err


def test_classification_metrics_by_hand():
    from jaxformer.data.labels import LabelMap

    labels = LabelMap(("a", "b", "c"), integer=False)
    gold = np.array([0, 0, 0, 1, 1])
    guess = np.array([0, 0, 1, 1, 2])  # c is predicted once but never the answer
    log_probs = np.log(np.eye(3)[guess] * 0.98 + 0.01)
    m = predict.classification_metrics(log_probs, gold, labels)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["n_examples"] == 5
    assert m["class_accuracy"] == pytest.approx({"a": 2 / 3, "b": 1 / 2})
    f1_a, f1_b, f1_c = 2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 0.5 / 1.0, 0.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)


@pytest.mark.slow
def test_keeps_the_best_checkpoint_and_stops_early(pretrained, tmp_path, capsys):
    """The validation labels are the task's, inverted: the better the model learns the task, the worse it
    validates, so the best checkpoint is an early one and patience runs out."""
    task = write_jsonl(tmp_path / "zebra.jsonl", zebra_rows(300, seed=0))
    valid = write_jsonl(tmp_path / "inverted.jsonl", zebra_rows(64, seed=1, inverted=True))
    test = write_jsonl(tmp_path / "test.jsonl", zebra_rows(64, seed=2))
    out = tmp_path / "out"
    argv = ["finetune", "--workdir", str(pretrained["encoder"]), "--task", task, "--valid", valid, "--test", test,
            "--out", str(out), "--no-progress", "--set", *FAST, "train.steps=40", "train.eval_every=4",
            "optimizer.lr=3e-3", "train.early_stop_patience=3"]
    result = cli_json(capsys, argv)
    logged = [(r["step"], r["valid_accuracy"]) for r in read_metrics(out) if "valid_accuracy" in r]
    accuracies = [a for _, a in logged]
    best = logged[int(np.argmax(accuracies))]  # the first of equal maxima
    assert result["best_step"] == best[0] and result["dev_accuracy"] == best[1]
    assert result["early_stopped"] and result["step"] == logged[-1][0] < 40
    assert logged[-1][0] - best[0] == 3 * 4  # three evaluations without improvement
    assert accuracies[-1] < best[1]
    assert result["n_dev"] == 64 and result["model"] == "best"
    # the test figure and eval/predict all come from the best step, not the last
    again = cli_json(capsys, ["eval", "--workdir", str(out), "--data", test])
    assert again["step"] == best[0] and again["accuracy"] == pytest.approx(result["test"]["accuracy"])
    own = cli_json(capsys, ["eval", "--workdir", str(out)])
    assert own["accuracy"] == pytest.approx(best[1])
    # re-running the finished command trains nothing more
    assert cli_json(capsys, argv)["step"] == result["step"]
    # the patience decides where the run ends: it may not change on resume
    assert "train.early_stop_patience" in refused(capsys, argv[:-1] + ["train.early_stop_patience=5"])
    assert "train.eval_every" in refused(capsys, [a.replace("train.eval_every=4", "train.eval_every=8") for a in argv])


def test_early_stopping_settings_are_validated():
    from dataclasses import replace

    with pytest.raises(UserError, match="train.early_stop_patience applies to fine-tuning only"):
        config_lib.resolve(config_lib.load_config("decoder-tiny", ["train.early_stop_patience=2"]), vocab_size=40)
    classify = replace(config_lib.load_config("decoder-tiny", []),
                       objective=config_lib.ObjectiveConfig(kind="classify", n_classes=2, causal=True))
    with pytest.raises(UserError, match="must be >= 0"):
        config_lib.resolve(config_lib.apply_overrides(classify, ["train.early_stop_patience=-1"]), vocab_size=40)
    with pytest.raises(UserError, match="train.eval_every=0 evaluates only at the end"):
        config_lib.resolve(config_lib.apply_overrides(classify, ["train.early_stop_patience=2", "train.eval_every=0"]),
                           vocab_size=40)
    config_lib.resolve(config_lib.apply_overrides(classify, ["train.early_stop_patience=2"]), vocab_size=40)
