"""Held-out evaluation (`jaxformer eval --data`): every token scored exactly once, against a naive per-position
reference; the per-token / per-byte / per-word figures; encoders refused; PTB end to end at smoke scale."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import objectives, parallel, train
from jaxformer.cli import main
from jaxformer.data.tokenizers import EOS
from jaxformer.errors import UserError
from jaxformer.evaluation import heldout
from jaxformer.run import Run

T = 16  # tiny_config's train.seq_len


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 40, 97])
@pytest.mark.parametrize("stride", [1, 3, 8, 16])
def test_the_window_plan_scores_every_target_once_with_the_promised_context(n, stride):
    seen = np.zeros(n + 1, int)
    for start, first in heldout.window_plan(n, T, stride):
        last = min(start + T, n)  # targets s[start + 1 + first .. last]
        targets = np.arange(start + 1 + first, last + 1)
        seen[targets] += 1
        assert (targets - start >= np.minimum(targets, T - stride + 1)).all()  # left context s[start .. j - 1]
        assert start + T <= max(n, T)  # windows never run past the text (when it is at least one window long)
    assert seen[0] == 0 and (seen[1:] == 1).all()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An untrained tiny decoder on all 8 test devices (evaluation shards windows over the data axis)."""
    cfg = tiny_config("clm", n_devices=8, mesh=dict(data=8))
    mesh = parallel.make_mesh(cfg.mesh)
    state, shardings = train.init_train_state(cfg, mesh)
    return Run(tmp_path_factory.mktemp("run"), cfg, objectives.for_config(cfg), None, mesh, state, shardings)


@pytest.fixture(scope="module")
def naive_nll(tiny_run):
    """-ln P(stream[target] | the `context` ids before it): one forward pass for one position, on one device.
    The context is padded on the right to T ids (so one compilation serves every length): a causal model's
    output at the last context position does not see them."""
    params = jax.device_get(tiny_run.state.params)

    @jax.jit
    def last_log_probs(params, ctx_1xT, last):
        model = nnx.merge(tiny_run.state.graphdef, params)
        hidden, _, _ = model(ctx_1xT, causal=True)
        return jax.nn.log_softmax(model.logits(hidden[0, last]).astype(jnp.float32))

    def nll(stream: np.ndarray, target: int, context: int) -> float:
        ctx = np.zeros((1, T), np.int32)
        ctx[0, :context] = stream[target - context:target]
        return float(-last_log_probs(params, ctx, context - 1)[stream[target]])
    return nll


@pytest.mark.parametrize("stride", [1, 5, T])
def test_strided_scores_equal_a_naive_per_position_loop(tiny_run, naive_nll, stride):
    tokens = np.random.default_rng(stride).integers(8, 64, 45)
    scores = heldout.score_tokens(tiny_run, tokens, stride=stride, batch_size=3)
    stream = np.concatenate([[EOS], tokens])
    assert (scores.times_scored == 1).all()
    j = np.arange(1, len(tokens) + 1)  # target index in the stream of each token
    assert (scores.context >= np.minimum(j, T - stride + 1)).all() and (scores.context <= np.minimum(j, T)).all()
    if stride == 1:  # as much context as the window allows: independent of the plan
        np.testing.assert_array_equal(scores.context, np.minimum(j, T))
    reference = np.array([naive_nll(stream, t, c) for t, c in zip(j, scores.context, strict=True)])
    np.testing.assert_allclose(scores.nll, reference, rtol=2e-5, atol=2e-5)
    assert scores.nll.sum() == pytest.approx(reference.sum(), rel=1e-6)


def test_a_text_shorter_than_a_window_is_scored_whole(tiny_run, naive_nll):
    tokens = np.array([9, 10, 11])
    scores = heldout.score_tokens(tiny_run, tokens)
    stream = np.concatenate([[EOS], tokens])
    assert scores.context.tolist() == [1, 2, 3]
    np.testing.assert_allclose(scores.nll, [naive_nll(stream, t, t) for t in (1, 2, 3)], rtol=2e-5)


def test_summary_figures_from_a_summed_nll():
    out = heldout.summary(10.0, 4, {"n_bytes": 20, "n_words": 5})
    assert out["loss"] == 2.5 and out["perplexity"] == pytest.approx(math.exp(2.5))
    assert out["bits_per_byte"] == pytest.approx(10 / math.log(2) / 20)
    assert out["perplexity_per_word"] == pytest.approx(math.exp(2.0))
    docs = [" a b \n c\n", "d e"]  # 5 words + 3 lines + 1 document boundary
    assert heldout.text_counts(docs) == {"n_bytes": 12, "n_words": 9}


def test_encoders_are_refused_with_one_sentence(tiny_run):
    cfg = tiny_config("mlm")
    encoder = Run(tiny_run.workdir, cfg, objectives.for_config(cfg), None, tiny_run.mesh, tiny_run.state,
                  tiny_run.shardings)
    with pytest.raises(UserError, match="needs a decoder"):
        heldout.evaluate_text(encoder, "text:whatever.txt")


def _train_word_run(tmp_path, text: str, steps: int = 3) -> str:
    from tiny import tiny_overrides

    corpus = tmp_path / "train.txt"
    corpus.write_text(text)
    work = str(tmp_path / "run")
    overrides = tiny_overrides(f"data.source=text:{corpus}", "data.tokenizer=word", f"train.steps={steps}",
                               "train.eval_every=1000", "train.checkpoint_every=1000", "train.eval_batches=1",
                               "data.valid_fraction=0.05")
    assert main(["train", "--workdir", work, "--no-progress", "--sample-tokens", "0", "--set", *overrides]) == 0
    return work


@pytest.mark.slow
def test_eval_data_reports_every_figure_and_the_ngram_baseline(tmp_path, capsys):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "<unk>"]
    lines = lambda k: "".join(" " + " ".join(rng.choice(words, rng.integers(3, 9))) + " \n" for _ in range(k))  # noqa: E731
    work = _train_word_run(tmp_path, lines(300))
    held_out = tmp_path / "test.txt"
    held_out.write_text(lines(20) + " zebra cat\n")
    capsys.readouterr()
    assert main(["eval", "--workdir", work, "--data", f"text:{held_out}", "--stride", "4", "--ngram", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    text = held_out.read_text()
    n_words = len(text.split()) + len(text.splitlines())
    assert out["n_tokens"] == out["n_words"] == n_words  # word level: one token per word and per line end
    assert out["n_unk"] == text.split().count("<unk>") + 1  # + zebra
    assert out["perplexity_per_word"] == pytest.approx(out["perplexity"])
    assert out["bits_per_byte"] == pytest.approx(out["loss"] * n_words / math.log(2) / len(text.encode()))
    assert out["min_context"] == 16 - 4 + 1 and out["stride"] == 4  # past the first window
    assert out["ngram"]["order"] == 2 and 1.0 < out["ngram"]["perplexity"] < 8  # 6 words + line end + UNK
    assert 1.0 < out["perplexity"] < 2 * 16  # 3 steps from a uniform guess over 16 ids: finite and sane
    assert main(["eval", "--workdir", work, "--ngram", "2"]) == 2  # --ngram without --data


@pytest.mark.slow
def test_ptb_word_level_pipeline_on_a_slice(tmp_path, shared_data, capsys):
    """The README's PTB figure at smoke scale: a word-level run on a slice of the training file, then every token
    of a slice of the test file, next to the Kneser-Ney trigram counted on the same training split."""
    train_lines = (shared_data / "ptb" / "ptb.train.txt").read_text().splitlines(keepends=True)[:3000]
    work = _train_word_run(tmp_path, "".join(train_lines), steps=4)
    test = tmp_path / "ptb.test.slice.txt"
    test.write_text("".join((shared_data / "ptb" / "ptb.test.txt").read_text().splitlines(keepends=True)[:200]))
    capsys.readouterr()
    assert main(["eval", "--workdir", work, "--data", f"text:{test}", "--ngram", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    vocab = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())["vocab_size"]
    assert out["n_tokens"] == out["n_words"]  # PTB: whitespace words + one end of line per line
    assert np.isfinite(out["perplexity"]) and 1 < out["perplexity"] < 2 * vocab
    assert 1 < out["ngram"]["perplexity"] < out["perplexity"]  # 4 steps do not beat a trigram
    assert 0 < out["ngram"]["bits_per_byte"] < 8
