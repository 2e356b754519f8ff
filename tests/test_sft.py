"""Instruction tuning (objective.kind=sft): the loss covers response tokens only (against a naive per-pair
computation), packing keeps attention and positions inside each pair, a tiny model memorises pairs and answers
them exactly, the GSM8K answer rule, the data files and their refusals."""

import json

import jax
import numpy as np
import pytest
from tiny import tiny_config

from jaxformer import cli, objectives, sft, trainer
from jaxformer import config as config_lib
from jaxformer.data.sft import (
    DEFAULT_TEMPLATE,
    Pair,
    PairColumns,
    Template,
    build_rows,
    encode_pair,
    final_answer,
    is_exact_match,
    read_pairs,
)
from jaxformer.data.tokenizers import CharTokenizer
from jaxformer.errors import UserError
from jaxformer.model import build_model

PAIRS = [Pair("2+2", "four"), Pair("capital of France", "Paris"), Pair("colour of the sky", "blue"),
         Pair("opposite of hot", "cold")]
TEMPLATE = "Q: {prompt}\\nA: {response}"  # written as on the command line: \n is a newline


@pytest.fixture(scope="module")
def tokenizer():
    return CharTokenizer.train("".join(p.prompt + p.response for p in PAIRS) + "QA:\n #")


def sft_cfg(tokenizer, *extra):
    cfg = tiny_config("clm", "train.seq_len=127", *extra, resolved=False)
    cfg = config_lib.apply_overrides(cfg, {"objective.kind": "sft", "objective.task": "pairs.jsonl",
                                           "objective.template": TEMPLATE})
    return config_lib.resolve(cfg, vocab_size=tokenizer.vocab_size, n_devices=1)


def rows_of(pairs, tokenizer, *, packing, length=128):
    template = Template.parse(TEMPLATE)
    return build_rows([encode_pair(tokenizer, template, p) for p in pairs], length, packing=packing,
                      fill_id=tokenizer.special_ids.fill, seed=0)


def test_template_parts_and_refusals():
    t = Template.parse(TEMPLATE)
    assert (t.prompt_part("x"), t.response_part("y")) == ("Q: x\nA: ", "y")
    assert Template.parse(DEFAULT_TEMPLATE).prompt_part("p") == "### Question:\np\n### Answer:\n"
    for bad in ("{prompt} only", "{response} before {prompt}", "{prompt}{prompt}{response}"):
        with pytest.raises(UserError, match="objective.template"):
            Template.parse(bad)


@pytest.mark.parametrize("packing", [False, True])
def test_loss_counts_response_tokens_only_against_a_naive_per_pair_computation(tokenizer, packing):
    """Response tokens and the closing EOS carry weight exactly 1, prompt, template and padding exactly 0; the
    loss equals the mean, over response tokens, of a per-pair numpy cross-entropy (each pair run on its own)."""
    cfg = sft_cfg(tokenizer, f"data.packing={packing}")
    objective = objectives.for_config(cfg)
    model = build_model(cfg, seed=3)
    rows = rows_of(PAIRS, tokenizer, packing=packing)
    assert rows.n_rows == (1 if packing else len(PAIRS))
    ex = objective.prepare(jax.tree.map(np.asarray, rows.rows(np.arange(rows.n_rows))), jax.random.key(0))
    loss_sum, stats = jax.jit(lambda ex: objective.loss_sums(model, ex, rng=None))(ex)
    weights = np.asarray(ex["weights"])
    assert set(np.unique(weights)) <= {0.0, 1.0}
    # The weighted targets, read in row order, are exactly each response and its EOS.
    targets = np.asarray(ex["targets"])[weights == 1]
    eos = tokenizer.special_ids.eos
    expected = [ids for p in (PAIRS if not packing else [PAIRS[i] for i in np.random.default_rng(0).permutation(4)])
                for ids in [*tokenizer.encode(p.response), eos]]
    assert targets.tolist() == expected

    # Naive: each pair's text alone in its own row (causal, so what follows it does not matter), the
    # cross-entropy by hand in float64, the response found from the strings.
    texts = [("Q: " + p.prompt + "\nA: ", p.response) for p in PAIRS]
    ids_per_pair = [np.concatenate([tokenizer.encode(q), tokenizer.encode(r), [eos]]) for q, r in texts]
    inputs = np.zeros((len(PAIRS), 64), np.int32)
    for i, ids in enumerate(ids_per_pair):
        inputs[i, :len(ids) - 1] = ids[:-1]
    all_logits = np.asarray(jax.jit(lambda x: model.logits(model(x, causal=True)[0]))(inputs), np.float64)
    naive_sum, naive_n = 0.0, 0
    for (prompt_text, _), ids, logits in zip(texts, ids_per_pair, all_logits, strict=True):
        top = logits.max(-1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        for t in range(len(tokenizer.encode(prompt_text)), len(ids)):  # target t is predicted at t - 1
            naive_sum -= log_probs[t - 1, ids[t]]
            naive_n += 1
    assert float(stats["n_tokens"]) == naive_n
    np.testing.assert_allclose(float(loss_sum), naive_sum, rtol=2e-5)


def test_packed_pairs_never_attend_across_pairs_and_restart_positions(tokenizer):
    cfg = sft_cfg(tokenizer, "data.packing=true")
    objective, model = objectives.for_config(cfg), build_model(cfg, seed=1)
    first, second = Pair("2+2", "four"), Pair("colour of the sky", "blue")
    changed = Pair("9-9", "nine")  # same lengths as `first`, other tokens
    template = Template.parse(TEMPLATE)
    n1 = len(encode_pair(tokenizer, template, first).ids)
    n2 = len(encode_pair(tokenizer, template, second).ids)

    packed_logits = jax.jit(lambda ex: objective.logits(model, ex)[0][0])

    def logits(pairs):
        rows = rows_of(pairs, tokenizer, packing=True, length=n1 + n2 + 3)  # one row: both pairs, 3 padding
        batch = jax.tree.map(np.asarray, rows.rows(np.arange(rows.n_rows)))
        return batch, np.asarray(packed_logits(objective.prepare(batch, jax.random.key(0))))

    batch, packed = logits([first, second])
    assert batch["tokens"].shape[0] == 1
    tokens, seg, pos = batch["tokens"][0], batch["segment_ids"][0], batch["positions"][0]
    # The seeded order decides which pair comes first (the same for `changed`, of the same length).
    starts_with_first = (tokens[:n1] == encode_pair(tokenizer, template, first).ids).all()
    other, at = (np.arange(n1), n1 + np.arange(n2)) if starts_with_first else (n2 + np.arange(n1), np.arange(n2))
    np.testing.assert_array_equal(tokens[at], encode_pair(tokenizer, template, second).ids)
    np.testing.assert_array_equal(pos[at], np.arange(n2))  # positions restart in each pair
    np.testing.assert_array_equal(pos[other], np.arange(n1))
    assert len(set(seg[at])) == len(set(seg[other])) == 1 and seg[at[0]] != seg[other[0]] and seg[at[0]] > 0
    assert (seg[n1 + n2:] == 0).all() and batch["loss_mask"][0, n1 + n2:].sum() == 0  # padding: no loss
    _, packed_changed = logits([changed, second])
    assert not np.allclose(packed[other[:-1]], packed_changed[other[:-1]])  # the change is visible in its pair
    np.testing.assert_array_equal(packed[at[:-1]], packed_changed[at[:-1]])  # and nowhere else
    # ... and the second pair's logits in the packed row are what it gives alone.
    alone = encode_pair(tokenizer, template, second).ids
    alone_logits = jax.jit(lambda x: model.logits(model(x, causal=True)[0])[0])(alone[None, :-1])
    np.testing.assert_allclose(packed[at[:-1]], np.asarray(alone_logits), atol=1e-5)


def test_final_answer_and_exact_match():
    assert final_answer("so 48+24 = 72 clips.\n#### 72") == "72"
    assert final_answer("#### 1,000.") == "1000"
    assert final_answer("#### -3.5\n#### 7") == "-3.5"  # the first answer line counts
    assert final_answer("no answer line") is None
    assert is_exact_match("it is\n#### 1,000", "steps...\n#### 1000")
    assert not is_exact_match("#### 100", "#### 1000")
    assert not is_exact_match("1000", "#### 1000")  # a number without its #### line is no answer
    assert is_exact_match(" Paris\n", "Paris") and not is_exact_match("Paris!", "Paris")  # no #### in reference


def write_lines(path, lines: list[str], encoding="utf-8"):
    path.write_bytes("\n".join(lines).encode(encoding) if lines else b"")
    return str(path)


def test_pair_files_columns_and_refusals(tmp_path):
    good = write_lines(tmp_path / "a.jsonl", [json.dumps({"q": "hi", "a": "yo", "x": 1}), "",
                                              json.dumps({"q": "b", "a": "c"})])
    assert read_pairs(good, columns=PairColumns("q", "a"))[1] == Pair("b", "c", f"{good}:3")
    usual = write_lines(tmp_path / "u.jsonl", [json.dumps({"instruction": "i", "output": "o"})])
    assert (read_pairs(usual)[0].prompt, read_pairs(usual)[0].response) == ("i", "o")
    cases = {
        "missing": ([json.dumps({"prompt": "p", "response": "r"}), json.dumps({"prompt": "p"})],
                    r"m\.jsonl:2 has no response field"),
        "empty": ([], "has no prompt/response pairs"),
        "notjson": (["{'prompt': 1}"], r":1 is not valid JSON"),
        "notstring": ([json.dumps({"prompt": "p", "response": 3})], "has a int as its 'response'"),
    }
    for name, (lines, message) in cases.items():
        path = write_lines(tmp_path / f"{name[0]}.jsonl", lines)
        with pytest.raises(UserError, match=message):
            read_pairs(path)
    latin = write_lines(tmp_path / "l.jsonl", [json.dumps({"prompt": "café", "response": "r"}, ensure_ascii=False)],
                        encoding="latin-1")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        read_pairs(latin)
    with pytest.raises(UserError, match="no 'q' field"):
        read_pairs(usual, columns=PairColumns(prompt="q"))
    with pytest.raises(UserError, match="Unknown instruction data"):
        read_pairs("gsm9k")


def test_sft_objective_needs_pairs_and_a_decoder(tmp_path):
    cfg = config_lib.apply_overrides(tiny_config("clm", resolved=False), {"objective.kind": "sft"})
    with pytest.raises(UserError, match="jaxformer sft"):  # `jaxformer train --set objective.kind=sft`
        config_lib.resolve(cfg, vocab_size=64, n_devices=1)
    from jaxformer import rundir

    rundir.save_config(tmp_path, tiny_config("mlm"))
    with pytest.raises(UserError, match="needs a decoder run"):
        sft.sft(tmp_path, "x.jsonl", tmp_path / "out")


def test_gsm8k_is_a_named_task(shared_data):
    train, test = read_pairs("gsm8k", "train"), read_pairs("gsm8k", "test")
    assert (len(train), len(test)) == (7473, 1319)  # the published split
    assert train[0].prompt.startswith("Natalia sold clips") and final_answer(train[0].response) == "72"
    assert all(final_answer(p.response) is not None for p in test)
    assert all(is_exact_match(p.response, p.response) for p in test)


@pytest.mark.slow
def test_tiny_decoder_memorises_pairs_and_answers_them_exactly(tmp_path_factory, capsys):
    """2 steps of pretraining, 100 of SFT on 4 pairs: greedy decoding gives each response exactly, through
    `sft`, `jaxformer eval` and `jaxformer sample --chat`; bad pair files are one sentence, exit 2."""
    root = tmp_path_factory.mktemp("memorise")
    data = write_lines(root / "pairs.jsonl", [json.dumps({"prompt": p.prompt, "response": p.response})
                                              for p in PAIRS])
    (root / "corpus.txt").write_text(" ".join(p.prompt + " " + p.response for p in PAIRS) * 20 + "Q:A\n")
    trainer.train_loop(tiny_config("clm", f"data.source=text:{root / 'corpus.txt'}", "train.seq_len=32",
                                   "train.steps=2", "train.eval_every=0", "train.eval_batches=1",
                                   "train.checkpoint_every=2", resolved=False), root / "pre", show_progress=False)
    out = root / "sft"
    result = sft.sft(root / "pre", data, out, ["train.steps=100", "optimizer.lr=1e-2", "optimizer.warmup_steps=10",
                                               "train.batch_size=8", "train.eval_every=0", "train.log_every=50",
                                               f"objective.template={TEMPLATE}"],
                     valid=data, eval_limit=4, show_progress=False)
    assert result["exact_match"] == 1.0, result
    assert result["valid_accuracy"] == 1.0 and result["n_train"] == 4

    assert cli.main(["eval", "--workdir", str(out), "--data", data, "--limit", "0"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert (scores["exact_match"], scores["n_exact_match"], scores["n_examples"]) == (1.0, 4, 4)
    assert scores["loss"] < 0.1 and scores["step"] == 100
    assert cli.main(["sample", "--workdir", str(out), "--chat", "--temperature", "0", "--max-new-tokens", "8",
                     "--prompt", PAIRS[1].prompt]) == 0
    assert capsys.readouterr().out == "Paris\n"

    bad = write_lines(root / "bad.jsonl", [json.dumps({"prompt": "p"})])
    assert cli.main(["sft", "--workdir", str(root / "pre"), "--data", bad, "--out", str(root / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no response field" in err
    assert not (root / "bad").exists()  # nothing written
