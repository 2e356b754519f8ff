"""Named experiments: every experiments/<name>.py is a valid config with its results documented, and --set wins.

(The ablation grids built on the ablation-* experiments are tested in tests/test_ablations.py.)"""

import pytest

# ---------------------------------------------------------------------------------------------- named experiments

def _experiments():
    from jaxformer import experiments

    return experiments.all_experiments()


def test_the_named_experiments_are_there():
    assert {"shakespeare-char-cpu", "shakespeare-char", "ptb-word", "compare-decoder", "compare-encoder",
            "ablation-decoder", "ablation-encoder"} <= set(_experiments())


@pytest.mark.parametrize("name", sorted(_experiments()))
def test_every_experiment_is_a_valid_config_with_its_results_documented(name):
    from jaxformer import config as config_lib
    from jaxformer.data import tokenizers

    experiment = _experiments()[name]
    for field in ("Command:", "Expected:", "Measured:"):
        assert field in experiment.doc, f"{name}: the docstring has no {field} line"
    assert f"--experiment {name} " in experiment.doc and f"make {name}" in experiment.doc
    cfg = config_lib.load_config(experiment.preset, list(experiment.overrides))
    if cfg.data.tokenizer not in tokenizers.KINDS:  # named before its tokenizer landed: everything else must hold
        assert "to be measured" in experiment.doc
        cfg = config_lib.apply_overrides(cfg, ["data.tokenizer=char"])
    config_lib.resolve(cfg, vocab_size=100, n_devices=1)


def _train_config(*argv):
    from jaxformer import cli

    return cli._load_config(cli._build_parser().parse_args(["train", "--workdir", "unused", *argv]))


def test_experiment_sets_preset_and_overrides_and_set_wins():
    cfg = _train_config("--experiment", "compare-encoder")
    assert cfg.objective.kind == "mlm" and cfg.train.steps == 300  # the preset, then the experiment's overrides
    assert cfg.data.source == "text:@data/tinyshakespeare/input.txt"
    cfg = _train_config("--experiment", "compare-encoder", "--set", "train.steps=7", "model.n_layer=1")
    assert cfg.train.steps == 7 and cfg.model.n_layer == 1  # --set wins over the experiment
    assert cfg.data.source == "text:@data/tinyshakespeare/input.txt" and cfg.objective.kind == "mlm"
    assert _train_config("--experiment", "shakespeare-char-cpu").train.batch_size == 12
    assert _train_config().model.n_layer == 4  # no experiment, no preset: the default preset


@pytest.mark.parametrize("argv,needle", [(["--experiment", "shakespeare-char-cpo"], "shakespeare-char-cpu"),
                                         (["--experiment", "nonsense"], "choose one of"),
                                         (["--experiment", "ptb-word", "--preset", "decoder-tiny"], "not both")])
def test_bad_experiment_is_one_sentence_exit_2(argv, needle, tmp_path, capsys):
    from jaxformer.cli import main

    work = tmp_path / "run"
    assert main(["train", "--workdir", str(work), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not work.exists()
