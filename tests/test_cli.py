"""The command line: the DESIGN.md contract (commands, keys, JSON fields) and exit codes."""

import json
import os
import subprocess
import sys

import pytest
from tiny import tiny_overrides

from jaxformer.cli import main

# seq_len 32: room for the 20 tokens sampled during training and the 12 after a 4-character prompt.
TINY = tiny_overrides("train.seq_len=32", "train.log_every=5", "train.eval_every=10", "train.eval_batches=2",
                      "train.checkpoint_every=10")


def test_eval_without_a_run_exits_2(tmp_path, capsys):
    """(Every other kind of bad input has its case in tests/test_bad_input.py.)"""
    assert main(["eval", "--workdir", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_params_json_total_matches_gpt2_small(capsys):
    assert main(["params", "--preset", "gpt2-small", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 124_439_808  # published GPT-2 small count (tied embeddings, 1024 positions)


@pytest.mark.slow
def test_decoder_train_resume_eval_sample(tmp_path, capsys):
    work = str(tmp_path / "dec")
    assert main(["train", "--workdir", work, "--no-progress", "--sample-tokens", "20", "--set", *TINY,
                 "train.steps=10"]) == 0
    out = capsys.readouterr().out  # where the run is and what to try next on a decoder
    assert f"run directory: {os.path.abspath(work)}" in out
    assert f"jaxformer eval --workdir {work}" in out and f"jaxformer sample --workdir {work}" in out
    assert "fill-mask" not in out
    longer = ["train", "--workdir", work, "--no-progress", "--sample-tokens", "0", "--set", *TINY, "train.steps=20"]
    assert main(longer) == 2  # more steps change the schedule: only on purpose
    err = capsys.readouterr().err
    assert "train.steps 10 -> 20" in err and "--extend" in err and len(err.strip().splitlines()) == 1
    assert main([*longer, "--extend"]) == 0  # resumes at 10
    lines = [json.loads(line) for line in open(os.path.join(work, "metrics.jsonl"))]
    assert [m["step"] for m in lines] == [5, 10, 15, 20]
    assert all("loss" in m for m in lines) and "valid_loss" in lines[-1] and "bpc" in lines[-1]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["10", "20"]
    for name in ("config.json", "samples.txt", "tokenizer", "tensorboard"):
        assert os.path.exists(os.path.join(work, name)), name
    capsys.readouterr()
    assert main(["eval", "--workdir", work]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 20 and isinstance(result["loss"], float)
    assert main(["sample", "--workdir", work, "--prompt", "The ", "--max-new-tokens", "12", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("The ")
    # no --max-new-tokens: as many as the 32-token context leaves after the prompt (not a refusal)
    assert main(["sample", "--workdir", work, "--prompt", "The ", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The ") and len(out.rstrip("\n")) <= 32


@pytest.mark.slow
def test_encoder_train_and_fill_mask(tmp_path, capsys):
    work = str(tmp_path / "enc")
    assert main(["train", "--preset", "encoder-tiny", "--workdir", work, "--no-progress", "--set", *TINY,
                 "train.steps=10"]) == 0
    out = capsys.readouterr().out  # an encoder's next commands: eval and fill-mask, no sampling
    assert f"jaxformer fill-mask --workdir {work} 'The [MASK] of" in out and "jaxformer sample" not in out
    assert main(["fill-mask", "--workdir", work, "def [MASK]():", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("[MASK] #") == 1 and len(out.strip().splitlines()) == 4


def test_console_script_help_runs():
    """The installed entry point answers --help for every command (a fresh process, no XLA flags needed)."""
    for command in ("train", "eval", "sample", "fill-mask", "finetune", "predict", "params"):
        result = subprocess.run([sys.executable, "-m", "jaxformer.cli", command, "--help"], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0 and "usage:" in result.stdout, result.stderr
