"""Decoding: the KV-cache decoder against the no-cache reference, batching, sampling statistics, fill-mask."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
import optax
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import generate as gen
from jaxformer import objectives
from jaxformer.errors import UserError
from jaxformer.model import build_model

VOCAB = 40
PROMPTS = [[9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19, 20], [21]]  # lengths 3, 9, 1: left padding matters
NEW = 24


def tiny_model(kind: str = "clm", *overrides: str, seed: int = 0):
    """A random tiny model with a 64-token context (prompts plus NEW tokens fit) and an untied output head (so
    `peaky` scales the logits alone)."""
    cfg = tiny_config(kind, "train.seq_len=64", "model.tie_embeddings=false", *overrides, vocab_size=VOCAB)
    return build_model(cfg, seed=seed)


@functools.cache  # one graphdef per configuration, so tests that share a model share its compiled functions
def peaky(*overrides: str, scale: float = 100.0, seed: int = 0):
    """A random decoder whose logits are scaled up, so greedy choices are far apart compared to float noise."""
    model = tiny_model("clm", *overrides, seed=seed)
    model.lm_head.kernel[...] = model.lm_head.kernel[...] * scale
    return nnx.split(model)


def first_token_logits(graphdef, params, prompt) -> np.ndarray:
    model = nnx.merge(graphdef, params)
    h, _, _ = model(jnp.asarray([prompt]), causal=True)
    return np.asarray(model.logits(h[0, -1]), np.float64)


# ---------------------------------------------------------------------------------------------- cache == no cache

VARIANTS = {
    "learned": ["model.positions=learned"],
    "sinusoidal": ["model.positions=sinusoidal"],
    "rope": ["model.positions=rope"],
    "gqa": ["model.positions=rope", "model.n_kv_heads=2"],
    "mqa": ["model.positions=learned", "model.n_kv_heads=1"],
    "window": ["model.positions=rope", "model.n_kv_heads=2", "model.window=4"],
    "window-global": ["model.positions=learned", "model.window=3", "model.global_every=2"],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_cache_matches_no_cache_and_batch_matches_alone(variant):
    graphdef, params = peaky(*VARIANTS[variant])
    cached = gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
    reference = gen.generate_uncached(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
    alone = [gen.generate(graphdef, params, [p], max_new_tokens=NEW, temperature=0.0)[0] for p in PROMPTS]
    assert cached == reference
    assert cached == alone
    assert all(len(row) == NEW for row in cached)
    assert len({t for row in cached for t in row}) > 3, "degenerate model: the test would not see a bug"


# The sampling tests below reuse the rope model and NEW so that they share compiled functions.

def test_cached_sampling_matches_uncached_with_same_seed():
    graphdef, params = peaky(*VARIANTS["rope"])
    kw = dict(max_new_tokens=NEW, temperature=40.0, top_k=8, top_p=0.95, seed=7)  # flattened: real sampling
    assert gen.generate(graphdef, params, PROMPTS, **kw) == gen.generate_uncached(graphdef, params, PROMPTS, **kw)


def test_prompt_lengths_in_one_bucket_compile_once():
    graphdef, params = peaky(*VARIANTS["learned"])
    gen.generate(graphdef, params, [[5, 6, 7]], max_new_tokens=NEW, temperature=0.0)
    sizes = gen._prefill._cache_size(), gen._decode._cache_size()
    gen.generate(graphdef, params, [[5, 6, 7, 8, 9, 10]], max_new_tokens=NEW, temperature=0.0)
    gen.generate(graphdef, params, [[11] * 12], max_new_tokens=NEW, temperature=0.0)
    assert (gen._prefill._cache_size(), gen._decode._cache_size()) == sizes


def test_eos_stops_each_row():
    graphdef, params = peaky(*VARIANTS["learned"])
    full = gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
    eos = full[0][5]
    stopped = gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=0.0, eos_id=eos)
    for row_full, row in zip(full, stopped, strict=True):
        expect = row_full[: row_full.index(eos) + 1] if eos in row_full else row_full
        assert row == expect
    assert stopped[0][-1] == eos and len(stopped[0]) <= 6


# ---------------------------------------------------------------------------------------------- sampling

def test_near_zero_temperature_and_top_k_1_equal_greedy():
    graphdef, params = peaky(*VARIANTS["rope"])
    greedy = gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=0.0)
    assert gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=1e-4, seed=3) == greedy
    assert gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=5.0, top_k=1, seed=3) == greedy


def test_seeded_sampling_is_reproducible_and_varies_with_seed():
    graphdef, params = peaky(*VARIANTS["rope"])  # at temperature 50 its distribution is flat
    run = lambda seed: gen.generate(graphdef, params, PROMPTS, max_new_tokens=NEW, temperature=50.0, seed=seed)
    assert run(1) == run(1)
    assert run(1) != run(2)


N_SAMPLES = 4000


def sample_first_tokens(graphdef, params, prompt, **kw) -> np.ndarray:
    out = gen.generate(graphdef, params, [prompt] * N_SAMPLES, max_new_tokens=1, **kw)
    return np.asarray([row[0] for row in out])


def chi_square_pvalue(samples: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * samples.size
    counts = np.bincount(samples, minlength=probs.size)
    big = expected >= 5  # pool the rare tokens into one bin so the chi-square approximation holds
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
        obs = obs * (exp.sum() / obs.sum())
    stat, dof = float(((obs - exp) ** 2 / exp).sum()), obs.size - 1
    # Chi-square survival function = regularised upper incomplete gamma (jax's, so no scipy dependency).
    return float(jax.scipy.special.gammaincc(dof / 2.0, stat / 2.0))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_first_token_distribution_matches_softmax(temperature):
    graphdef, params = peaky(scale=6.0, seed=1)
    prompt = [9, 10, 11]
    logits = first_token_logits(graphdef, params, prompt)
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    assert probs.max() < 0.7 and (probs > 0.02).sum() >= 4, "need a spread-out distribution"
    samples = sample_first_tokens(graphdef, params, prompt, temperature=temperature, seed=11)
    assert chi_square_pvalue(samples, probs) > 1e-3
    uniform = np.full(VOCAB, 1.0 / VOCAB)
    assert chi_square_pvalue(samples, uniform) < 1e-6  # the statistic has the power to see a wrong distribution


def test_top_k_and_top_p_stay_in_the_allowed_set():
    graphdef, params = peaky(scale=6.0, seed=1)
    prompt = [9, 10, 11]
    logits = first_token_logits(graphdef, params, prompt)
    order = np.argsort(-logits)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()

    top3 = set(order[:3].tolist())
    got = set(sample_first_tokens(graphdef, params, prompt, temperature=1.0, top_k=3, seed=2).tolist())
    assert got == top3

    before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[before < 0.6].tolist())
    assert 2 <= len(nucleus) < VOCAB // 2
    got = set(sample_first_tokens(graphdef, params, prompt, temperature=1.0, top_p=0.6, seed=3).tolist())
    assert got == nucleus

    # Both: the nucleus of the top-5, renormalised.
    top5 = order[:5]
    p5 = probs[top5] / probs[top5].sum()
    both = set(top5[(np.cumsum(p5) - p5) < 0.5].tolist())
    got = set(sample_first_tokens(graphdef, params, prompt, temperature=1.0, top_k=5, top_p=0.5, seed=4).tolist())
    assert got == both


# ---------------------------------------------------------------------------------------------- refusals

def test_refusals():
    graphdef, params = peaky(*VARIANTS["learned"])
    with pytest.raises(UserError, match="context"):
        gen.generate(graphdef, params, [[5] * 60], max_new_tokens=5)
    with pytest.raises(UserError, match="context"):
        gen.generate_uncached(graphdef, params, [[5] * 60], max_new_tokens=5)
    with pytest.raises(UserError, match="empty"):
        gen.generate(graphdef, params, [[]], max_new_tokens=5)
    with pytest.raises(UserError, match="vocabulary"):
        gen.generate(graphdef, params, [[VOCAB]], max_new_tokens=5)
    with pytest.raises(UserError, match="MASK"):
        gen.fill_mask(*nnx.split(tiny_model("mlm")), [9, 10, 11])
    # Which runs can sample or fill masks is the objective's to say (the CLI asks it before calling these).
    with pytest.raises(UserError, match="an encoder run with objective.kind=mlm: sample needs a decoder"):
        objectives.for_config(tiny_config("mlm")).require("sample", "runs/e")
    with pytest.raises(UserError, match="a decoder run with objective.kind=clm: fill-mask needs an encoder"):
        objectives.for_config(tiny_config("clm")).require("fill-mask", "runs/d")
    assert gen.generate(graphdef, params, [[5] * 59], max_new_tokens=5, temperature=0.0)  # exactly fits


# ---------------------------------------------------------------------------------------------- fill-mask

def test_fill_mask_recovers_a_memorised_sentence():
    sentence = np.asarray([5, 17, 23, 9, 31, 12, 28, 14, 36, 19, 25, 11, 6])  # CLS ... SEP, all ids != MASK
    t = sentence.size
    model = tiny_model("mlm", seed=3)
    graphdef, params = nnx.split(model)
    # Row i masks position i: the batch covers every position, so the model memorises all of them.
    inputs = np.tile(sentence, (t, 1))
    inputs[np.arange(t), np.arange(t)] = gen.MASK_ID

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        h, _, _ = m(jnp.asarray(inputs), causal=False)
        logits = m.mlm_logits(h[jnp.arange(t), jnp.arange(t)])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(sentence)).mean()

    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state)
    assert float(loss) < 0.05

    query = sentence.copy()
    query[[3, 8]] = gen.MASK_ID
    result = gen.fill_mask(graphdef, params, query, top_k=3)
    assert len(result) == 2 and all(len(r) == 3 for r in result)
    assert [r[0][0] for r in result] == [sentence[3], sentence[8]]
    assert result[0][0][1] > 0.5 and result[0][0][1] >= result[0][1][1] >= result[0][2][1]
