"""CLM targets and MLM dynamic masking statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.config import ObjectiveConfig
from jaxformer.data.tokenizers import CLS, MASK, N_SPECIAL, PAD, SEP
from jaxformer.objectives import CausalLM, MaskedLM

V = 100


def _tokens(rng, b, t):
    toks = rng.integers(N_SPECIAL, V, size=(b, t)).astype(np.int32)
    toks[:, 0] = CLS  # special tokens sprinkled in: they must never be chosen
    toks[:, t // 2] = SEP
    toks[:, -5:] = PAD
    return toks


def test_clm_shifts_by_one_and_ignores_pad():
    toks = jnp.asarray([[10, 11, 12, PAD]], jnp.int32)
    ex = CausalLM(ObjectiveConfig(kind="clm"), V).prepare({"tokens": toks}, jax.random.key(0))
    np.testing.assert_array_equal(ex["inputs"], [[10, 11, 12]])
    np.testing.assert_array_equal(ex["targets"], [[11, 12, PAD]])
    np.testing.assert_array_equal(ex["weights"], [[1, 1, 0]])


def test_mlm_masking_statistics_over_many_draws():
    obj = ObjectiveConfig(kind="mlm", mask_rate=0.15, mask_token_frac=0.8, random_token_frac=0.1)
    toks = jnp.asarray(_tokens(np.random.default_rng(0), 64, 128))
    draw = jax.jit(lambda r: MaskedLM(obj, V).mask_tokens(toks, r))
    ordinary = np.asarray(toks >= N_SPECIAL)
    n_chosen = n_ordinary = n_mask = n_random = n_keep = 0
    hits = np.zeros(toks.shape)
    for i in range(40):
        ex = jax.device_get(draw(jax.random.key(i)))
        w = ex["weights"] > 0
        pos, tgt = ex["mask_positions"], ex["targets"]
        rows = np.broadcast_to(np.arange(toks.shape[0])[:, None], pos.shape)
        # Chosen positions are ordinary tokens, targets are the original ids, unchosen inputs unchanged.
        assert ordinary[rows[w], pos[w]].all()
        np.testing.assert_array_equal(tgt, np.take_along_axis(np.asarray(toks), pos, 1))
        changed = np.asarray(ex["inputs"]) != np.asarray(toks)
        chosen_map = np.zeros(toks.shape, bool)
        chosen_map[rows[w], pos[w]] = True
        assert not (changed & ~chosen_map).any()
        assert (np.asarray(ex["inputs"])[~ordinary] == np.asarray(toks)[~ordinary]).all()
        new = np.asarray(ex["inputs"])[rows[w], pos[w]]
        n_mask += (new == MASK).sum()
        n_keep += (new == tgt[w]).sum()
        n_random += ((new != MASK) & (new != tgt[w])).sum()
        assert ((new == MASK) | (new >= N_SPECIAL)).all()  # random replacements are ordinary tokens
        n_chosen += w.sum()
        n_ordinary += ordinary.sum()
        hits[rows[w], pos[w]] += 1
    assert abs(n_chosen / n_ordinary - 0.15) < 0.005
    assert abs(n_mask / n_chosen - 0.8) < 0.02
    # a random replacement may equal the original by chance (1/92): counted as "keep"
    assert abs(n_random / n_chosen - 0.1 * (1 - 1 / (V - N_SPECIAL))) < 0.015
    assert abs(n_keep / n_chosen - (0.1 + 0.1 / (V - N_SPECIAL))) < 0.015
    assert hits[~ordinary].sum() == 0
    # every ordinary position gets chosen at roughly the same rate (no positional bias)
    per_position = hits[:, :].sum(0)[np.asarray(ordinary).all(0)] / (40 * toks.shape[0])
    assert per_position.std() < 0.03 and abs(per_position.mean() - 0.15) < 0.01


def test_mlm_masks_depend_on_rng_only():
    obj = ObjectiveConfig(kind="mlm")
    toks = jnp.asarray(_tokens(np.random.default_rng(1), 4, 64))
    a = MaskedLM(obj, V).mask_tokens(toks, jax.random.key(3))
    b = MaskedLM(obj, V).mask_tokens(toks, jax.random.key(3))
    c = MaskedLM(obj, V).mask_tokens(toks, jax.random.key(4))
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert (np.asarray(a["mask_positions"]) != np.asarray(c["mask_positions"])).any()


def test_scattered_special_ids_are_never_masked_nor_drawn():
    """An imported vocabulary (BERT-like: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103): the random
    replacements cover every ordinary id and no special one; jaxformer's table keeps randint(N_SPECIAL, V)."""
    from jaxformer.data.tokenizers import DEFAULT_SPECIALS, SpecialIds
    from jaxformer.objectives.mlm import is_ordinary, random_ordinary_ids

    bert = SpecialIds(pad=0, unk=100, cls=101, sep=102, mask=103, bos=None, eos=102, reserved=())
    assert SpecialIds.parse(bert.spec()) == bert and SpecialIds.parse("") == DEFAULT_SPECIALS
    draws = np.asarray(random_ordinary_ids(jax.random.key(0), (20000,), 110, bert))
    assert set(draws.tolist()) == set(range(110)) - {0, 100, 101, 102, 103}
    tokens = jnp.arange(110)
    assert np.flatnonzero(~np.asarray(is_ordinary(tokens, bert))).tolist() == [0, 100, 101, 102, 103]
    key = jax.random.key(3)
    np.testing.assert_array_equal(random_ordinary_ids(key, (64,), 300, DEFAULT_SPECIALS),
                                  jax.random.randint(key, (64,), N_SPECIAL, 300))
    assert np.flatnonzero(~np.asarray(is_ordinary(tokens, DEFAULT_SPECIALS))).tolist() == list(range(N_SPECIAL))


def test_objectives_read_special_ids_from_the_config():
    from jaxformer.config import load_config, resolve
    from jaxformer.errors import UserError
    from jaxformer.objectives import for_config

    spec = "unk=0,bos=0,eos=0"  # GPT-2-like: one <|endoftext|>, no PAD
    cfg = resolve(load_config("decoder-tiny", []), vocab_size=50, n_devices=1, special_ids=spec)
    objective = for_config(cfg)
    assert objective.specials.pad is None and objective.specials.eos == 0
    tokens = jnp.array([[5, 0, 6, 0, 7]])  # id 0 is a real target here (EOS), not padding
    assert np.asarray(objective.prepare({"tokens": tokens}, jax.random.key(0))["weights"]).tolist() == [[1] * 4]
    with pytest.raises(UserError, match="needs a \\[MASK\\] token"):
        resolve(load_config("encoder-tiny", []), vocab_size=50, n_devices=1, special_ids=spec)
    with pytest.raises(UserError, match="data.special_ids"):
        resolve(load_config("decoder-tiny", ["data.special_ids=pad=zero"]), vocab_size=50, n_devices=1)
