"""Bad input, through the real CLI: exit code 2, ONE sentence on stderr naming the problem, and nothing created or
overwritten in the run directory it was aimed at. One case per kind of mistake."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tiny import tiny_overrides

from jaxformer.cli import main
from jaxformer.config import DataConfig
from jaxformer.data import classification, pipeline

# The tests' tiny model with 2 heads (the messages below name its divisors); refusals happen before compiling.
TINY = tiny_overrides("model.n_heads=2", "train.seq_len=32", "train.log_every=5", "train.eval_every=10",
                      "train.eval_batches=2", "train.checkpoint_every=10")


def refused(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr containing every fragment; return that line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"jaxformer {argv[0]}: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def train_argv(workdir: Path, *overrides: str, preset: str = "decoder-tiny") -> list[str]:
    return ["train", "--preset", preset, "--workdir", str(workdir), "--no-progress", "--sample-tokens", "0",
            "--set", *TINY, "train.steps=2", *overrides]


# ---------------------------------------------------------------------------------------------- config

def test_unknown_preset(tmp_path, capsys):
    refused(capsys, ["train", "--preset", "decoder-tiyn", "--workdir", str(tmp_path / "w")],
            "Unknown preset 'decoder-tiyn': did you mean 'decoder-tiny'?")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("overrides, fragment", [
    # unknown key, with the nearest real one
    (["model.n_kv_head=2"], "Unknown config key 'model.n_kv_head': did you mean 'model.n_kv_heads'?"),
    (["trian.steps=2"], "Unknown config key 'trian.steps': did you mean 'train.steps'?"),
    (["train.steps"], "Bad override 'train.steps': write it as KEY=VALUE"),
    # wrong type of value
    (["train.steps=abc"], "Bad value 'abc' for train.steps: expected an integer."),
    (["train.steps=2.5"], "Bad value '2.5' for train.steps: expected an integer."),
    (["model.vocab_size=1e400"], "Bad value '1e400' for model.vocab_size: expected an integer."),
    (["optimizer.lr=fast"], "Bad value 'fast' for optimizer.lr: expected a finite number."),
    (["optimizer.lr=nan"], "Bad value 'nan' for optimizer.lr: expected a finite number."),
    (["model.bias=maybe"], "Bad value 'maybe' for model.bias: expected true or false."),
    (["model.positions=alibi"], "Bad value 'alibi' for model.positions: choose one of learned, sinusoidal, rope."),
    # impossible shapes
    (["model.n_heads=3"], "model.n_heads=3 does not divide model.d_model=32"),
    (["model.n_kv_heads=3"], "model.n_kv_heads=3 does not divide model.n_heads=2"),
    (["model.positions=rope", "model.n_heads=32"], "RoPE needs an even head dimension, got 1"),
    (["model.max_seq_len=16"], "train.seq_len=32 is longer than model.max_seq_len=16"),
    (["model.head_dim=-4"], "Bad value -4 for model.head_dim: it must be >= 0."),
    (["mesh.data=3"], "= 3 does not match the 8 available devices"),
    (["model.n_experts=2", "model.moe_top_k=3"], "model.moe_top_k=3 must be between 1 and model.n_experts=2."),
    # zero or negative sizes and rates
    (["train.steps=0"], "Bad value 0 for train.steps: it must be positive."),
    (["train.steps=-5"], "Bad value -5 for train.steps: it must be positive."),
    (["train.batch_size=0"], "Bad value 0 for train.batch_size: it must be positive."),
    (["train.batch_size=-8"], "Bad value -8 for train.batch_size: it must be positive."),
    (["train.seq_len=0"], "Bad value 0 for train.seq_len: it must be positive."),
    (["train.seq_len=-32"], "Bad value -32 for train.seq_len: it must be positive."),
    (["optimizer.lr=0"], "Bad value 0.0 for optimizer.lr: it must be positive."),
    (["optimizer.lr=-1e-3"], "Bad value -0.001 for optimizer.lr: it must be positive."),
    (["train.seed=-1"], "Bad value -1 for train.seed: it must be >= 0."),
    (["optimizer.b2=1"], "Bad value 1.0 for optimizer.b2: it must be in [0, 1)."),
])
def test_bad_config_value(tmp_path, capsys, overrides, fragment):
    refused(capsys, ["train", "--workdir", str(tmp_path / "w"), "--set", *TINY, *overrides], fragment)
    assert not (tmp_path / "w").exists()  # checked before anything is written


# ---------------------------------------------------------------------------------------------- data

def _random_bytes(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n))


DATA_FILES = {
    "empty.txt": b"",
    "blank.txt": b"  \n\t\n\r\n " * 500,
    "short.txt": b"far too short for one window of 33 tokens per split",
    "random.bin": _random_bytes(20_000),
    "image.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + _random_bytes(2_000, seed=1),
    "utf16.txt": ("plain words " * 200).encode("utf-16"),
}


@pytest.mark.parametrize("source, tokenizer, fragment", [
    ("text:/nonexistent.txt", "char", "No file matches '/nonexistent.txt' (data.source=text:/nonexistent.txt"),
    ("empty.txt", "char", "is empty or only whitespace (empty corpus)"),
    ("empty.txt", "byte", "is empty or only whitespace (empty corpus)"),
    ("blank.txt", "char", "is empty or only whitespace (empty corpus)"),
    ("blank.txt", "unigram", "is empty or only whitespace (empty corpus)"),
    ("short.txt", "char", "is too short for train.seq_len=32 (its train and validation splits have 45 and 6 "
                          "tokens, and each needs at least 33)"),
    ("random.bin", "char", "is not a text file (it contains NUL bytes)"),
    ("image.png", "byte", "is not a text file (it contains NUL bytes)"),
    ("utf16.txt", "char", "is not a text file (it contains NUL bytes)"),
])
def test_bad_corpus(tmp_path, capsys, source, tokenizer, fragment):
    if source in DATA_FILES:
        (tmp_path / source).write_bytes(DATA_FILES[source])
        source = f"text:{tmp_path / source}"
    workdir = tmp_path / "w"
    refused(capsys, train_argv(workdir, f"data.source={source}", f"data.tokenizer={tokenizer}"), fragment)
    # Not even the tokenizer: one trained on a refused corpus would be silently reused by the next run there.
    assert not workdir.exists()


# ---------------------------------------------------------------------------------------------- trained runs

LATIN1_TEXT = "Déjà vu: café, naïve, über, señor, £5 ± 2°.\n" * 40


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A decoder (trained on a latin-1 file) and an encoder, 2 steps each: enough to sample from, fill masks
    with and fine-tune."""
    latin1 = tmp_path_factory.mktemp("data") / "latin1.txt"
    latin1.write_bytes(LATIN1_TEXT.encode("latin-1"))
    out = {"latin1": latin1}
    for family, preset, extra in (("decoder", "decoder-tiny", [f"data.source=text:{latin1}"]),
                                  ("encoder", "encoder-tiny", [])):
        workdir = tmp_path_factory.mktemp(family) / "run"
        assert main(train_argv(workdir, *extra, preset=preset)) == 0
        out[family] = workdir
    return out


def test_latin1_corpus_trains_and_reads_back_exactly(runs):
    """Decision: a file that is not UTF-8 is read as latin-1 (each byte one character, nothing lost), so a latin-1
    (or cp1252) corpus trains (the decoder fixture did) and its text comes back exactly."""
    corpus = pipeline.load_corpus(DataConfig(source=f"text:{runs['latin1']}"), runs["decoder"], show_progress=False)
    assert corpus.tokenizer.decode(corpus.tokens) == LATIN1_TEXT
    chars = json.loads((runs["decoder"] / "tokenizer" / "tokenizer.json").read_text())["chars"]
    assert {"é", "ï", "ü", "ñ", "£", "±", "°"} <= set(chars)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family, argv, fragment", [
    ("decoder", ["sample", "--prompt", "é" * 40],
     "Prompt 0 has 40 tokens, too long for the model's context of 32 tokens: shorten it to at most 31 tokens."),
    ("decoder", ["sample", "--prompt", "é" * 20, "--max-new-tokens", "20"],
     "Prompt 0 has 20 tokens, which with max_new_tokens=20 exceeds the model's context of 32 tokens"),
    ("decoder", ["sample", "--prompt", ""], "Prompt 0 is empty"),
    ("encoder", ["sample", "--prompt", "x"], "holds an encoder run with objective.kind=mlm: sample needs a decoder run"),
    ("decoder", ["fill-mask", "a [MASK] b"], "holds a decoder run with objective.kind=clm: fill-mask needs an encoder run"),
    ("encoder", ["fill-mask", "no mask here"], "The text has no [MASK]: write [MASK] where a token should be"),
    ("encoder", ["fill-mask", "a [MASK] " + "b" * 40], "The input has 44 tokens, more than the model's context of 32"),
])
def test_bad_generation_request(runs, capsys, family, argv, fragment):
    before = _snapshot(runs[family])
    refused(capsys, [argv[0], "--workdir", str(runs[family]), *argv[1:]], fragment)
    assert _snapshot(runs[family]) == before


def test_eval_on_a_binary_data_file(runs, tmp_path, capsys):
    (tmp_path / "random.bin").write_bytes(DATA_FILES["random.bin"])
    before = _snapshot(runs["decoder"])
    refused(capsys, ["eval", "--workdir", str(runs["decoder"]), "--data", f"text:{tmp_path / 'random.bin'}"],
            "is not a text file (it contains NUL bytes)")
    assert _snapshot(runs["decoder"]) == before


def test_eval_data_on_an_encoder_or_with_a_bad_stride(runs, tmp_path, capsys):
    (tmp_path / "held-out.txt").write_text("some held-out text\n")
    data = ["--data", f"text:{tmp_path / 'held-out.txt'}"]
    refused(capsys, ["eval", "--workdir", str(runs["encoder"]), *data], "held-out evaluation of every token (--data) "
            "needs a decoder")
    refused(capsys, ["eval", "--workdir", str(runs["decoder"]), *data, "--stride", "0"], "--stride 0 must be between 1")


# ---------------------------------------------------------------------------------------------- classification tasks

def _tsv(rows: list[tuple[str, str]], header: str = "text\tlabel") -> str:
    return header + "\n" + "".join(f"{a}\t{b}\n" for a, b in rows)


def _jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _good(i: int) -> dict:
    return {"text": f"sentence number {i}", "label": i % 2}


TASKS = {
    "no-label.tsv": (_tsv([(f"s{i}", str(i % 2)) for i in range(20)], header="text\tstars"),
                     "has no label column (found: text, stars): name it one of label, labels, class, sentiment, or pass "
                     "--label-column NAME."),
    "no-label.jsonl": (_jsonl([{"text": f"s{i}", "stars": i % 2} for i in range(20)]),
                       "has no label column (found: text, stars)"),
    "short-row.tsv": (_tsv([(f"s{i}", str(i % 2)) for i in range(20)]).replace("s3\t1\n", "s3\n"),
                      "short-row.tsv:5 has 1 tab-separated fields, but the header names 2"),
    "empty-label.tsv": (_tsv([(f"s{i}", "" if i == 3 else str(i % 2)) for i in range(20)]),
                        "empty-label.tsv:5 has the label '', which is neither an integer class id nor a class name"),
    "null-label.jsonl": (_jsonl([{**_good(i), "label": None} if i == 3 else _good(i) for i in range(20)]),
                         "null-label.jsonl:4 has the label None, which is neither"),
    "list-label.jsonl": (_jsonl([{**_good(i), "label": [1]} if i == 3 else _good(i) for i in range(20)]),
                         "list-label.jsonl:4 has the label [1], which is neither"),
    "half-label.jsonl": (_jsonl([{**_good(i), "label": 0.5} if i == 3 else _good(i) for i in range(20)]),
                         "half-label.jsonl:4 has the label 0.5, which is neither"),
    "missing-label.jsonl": (_jsonl([{"text": "s3"} if i == 3 else _good(i) for i in range(20)]),
                            "missing-label.jsonl:4 has no 'label' field"),
    "mixed-labels.jsonl": (_jsonl([{**_good(i), "label": "pos"} if i == 3 else _good(i) for i in range(20)]),
                           "mixes integer labels (", "with class names ("),
    "not-an-object.jsonl": (_jsonl([["s", 1]] + [_good(i) for i in range(20)]),
                            "not-an-object.jsonl:1 is a JSON list, not an object"),
    "one-class.tsv": (_tsv([(f"s{i}", "1") for i in range(20)]),
                      "has training labels [1]: classification needs the integers 0..n-1 with n >= 2"),
    "bad-json.jsonl": (_jsonl([_good(0)]) + "{not json\n", "bad-json.jsonl:2 is not valid JSON"),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_bad_classification_task(runs, tmp_path, capsys, name):
    content, *fragments = TASKS[name]
    task = tmp_path / name
    task.write_text(content)
    out = tmp_path / "out"
    refused(capsys, ["finetune", "--workdir", str(runs["encoder"]), "--task", str(task), "--out", str(out),
                     "--no-progress", "--set", "train.steps=2"], *fragments)
    assert not out.exists()


def test_latin1_task_file_is_read(tmp_path):
    task = tmp_path / "latin1.tsv"
    task.write_bytes(_tsv([("très bon", "1"), ("mauvais café", "0")]).encode("latin-1"))
    texts, labels = classification.load_task(str(task), "train")
    assert texts == ["très bon", "mauvais café"] and labels.tolist() == [1, 0]
