"""The Kneser-Ney baseline against probabilities computed by hand on a toy corpus, and normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxformer.data.tokenizers import EOS
from jaxformer.evaluation.ngram import KneserNey, estimated_discount

A, B, V = 4, 5, 6  # two words; ids 0..3 are specials (EOS = 3 pads the stream), vocabulary of 6 ids


@pytest.fixture(scope="module")
def bigram():
    """Corpus "a b a b b", padded to EOS a b a b b. Bigram counts: (EOS,a) 1, (a,b) 2, (b,a) 1, (b,b) 1.
    Continuation counts: a follows {EOS, b} -> 2, b follows {a, b} -> 2; 4 bigram types, 2 word types.
    With D = 0.5:
      P1(a) = P1(b) = (2 - .5)/4 + .5 * 2/4 * 1/6 = 3/8 + 1/24 = 5/12;  P1(x) = 1/24 for the 4 unseen ids
      P(b | a)   = (2 - .5)/2 + .5 * 1/2 * 5/12 = 3/4 + 5/48 = 41/48
      P(a | a)   =          0 + .5 * 1/2 * 5/12 = 5/48
      P(a | b)   = (1 - .5)/2 + .5 * 2/2 * 5/12 = 1/4 + 5/24 = 11/24
      P(a | EOS) = (1 - .5)/1 + .5 * 1/1 * 5/12 = 1/2 + 5/24 = 17/24
      P(w | x) for an unseen history x = P1(w)"""
    return KneserNey.fit(np.array([A, B, A, B, B]), vocab_size=V, order=2, discount=0.5)


def test_bigram_probabilities_match_the_hand_computation(bigram):
    assert bigram.prob([], A) == pytest.approx(17 / 24)  # history EOS
    assert bigram.prob([A], B) == pytest.approx(41 / 48)
    assert bigram.prob([A], A) == pytest.approx(5 / 48)
    assert bigram.prob([B], A) == pytest.approx(11 / 24)
    assert bigram.prob([0], A) == pytest.approx(5 / 12)  # id 0 never seen as a history: the unigram
    assert bigram.prob([0], 1) == pytest.approx(1 / 24)


def test_nll_of_a_stream_is_the_sum_of_its_conditionals(bigram):
    nll = bigram.nll(np.array([A, B, B]))
    assert nll.tolist() == pytest.approx([-math.log(17 / 24), -math.log(41 / 48), -math.log(bigram.prob([B], B))])


def test_unigram_order_is_the_continuation_distribution():
    uni = KneserNey.fit(np.array([A, B, A, B, B]), vocab_size=V, order=1, discount=0.5)
    # order 1 counts raw unigrams: a 2, b 3 (5 tokens, 2 types): (c - .5)/5 + .5 * 2/5 * 1/6
    assert uni.prob([], A) == pytest.approx(1.5 / 5 + 1 / 30)
    assert uni.prob([], B) == pytest.approx(2.5 / 5 + 1 / 30)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_every_history_gives_a_distribution(order):
    rng = np.random.default_rng(order)
    vocab = 12
    corpus = rng.integers(8, vocab, 400) * (rng.random(400) < 0.9) + 8 * (rng.random(400) >= 0.9)
    model = KneserNey.fit(corpus, vocab_size=vocab, order=order)
    histories = [list(corpus[i:i + order - 1]) for i in range(0, 60, 7)] + [[0] * (order - 1), [9, 0, 11][:order - 1]]
    for history in histories:
        total = sum(model.prob(history, w) for w in range(vocab))
        assert total == pytest.approx(1.0, abs=1e-12), history


def test_discount_estimate_and_a_trigram_beats_a_unigram_on_repetitive_text():
    assert estimated_discount(np.array([1, 1, 1, 2, 5])) == pytest.approx(3 / (3 + 2))
    text = np.tile(np.array([8, 9, 10, 11, 9, 8]), 50)
    tri = KneserNey.fit(text, vocab_size=12, order=3)
    uni = KneserNey.fit(text, vocab_size=12, order=1)
    assert tri.nll(text[:60]).mean() < 0.5 * uni.nll(text[:60]).mean()
    assert EOS == 3  # the padding id the docstrings above count with
