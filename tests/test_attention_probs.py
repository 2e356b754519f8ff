"""The inspection-only attention weights: times V they give jax.nn.dot_product_attention's output (MHA, GQA,
causal, windows, documents), and recording them changes nothing the model computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer.model import build_model
from jaxformer.model.attention import attention_mask, attention_probs
from jaxformer.model.inspect import attention_maps


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("causal,window,segments", [(True, 0, False), (False, 0, False), (True, 3, False),
                                                    (False, 0, True)])
def test_weights_times_v_is_the_kernels_output(n_kv, causal, window, segments):
    b, t, n, h = 2, 7, 4, 8
    kq, kk, kv = jax.random.split(jax.random.key(n_kv), 3)
    q = jax.random.normal(kq, (b, t, n, h))
    k, v = jax.random.normal(kk, (b, t, n_kv, h)), jax.random.normal(kv, (b, t, n_kv, h))
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1]]) if segments else None
    mask = attention_mask(pos, pos, causal=causal, window=window, q_seg_BxT=seg, k_seg_BxS=seg)
    probs_BxNxTxS = attention_probs(q, k, mask)
    np.testing.assert_allclose(probs_BxNxTxS.sum(-1), 1.0, rtol=1e-6)
    assert not np.asarray(probs_BxNxTxS * ~mask).any()  # nothing outside the mask
    out = jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS, jnp.repeat(v, n // n_kv, axis=2))
    np.testing.assert_allclose(out, jax.nn.dot_product_attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)


def test_recorded_layer_weights_reproduce_the_attention_output_and_change_nothing():
    cfg = tiny_config("clm", model=dict(n_kv_heads=2, positions="rope"))
    model = build_model(cfg)
    tokens = jnp.arange(8, 20)[None]
    hidden_before, _, _ = model(tokens, causal=True)
    maps = attention_maps(model, tokens, causal=True)
    hidden_after, _, _ = model(tokens, causal=True)
    np.testing.assert_array_equal(hidden_before, hidden_after)
    assert not any(block.attn.record_probs for block in model.blocks)
    assert maps.shape == (cfg.model.n_layer, 1, cfg.model.n_heads, 12, 12)
    assert np.allclose(np.triu(maps, k=1), 0) and np.allclose(maps.sum(-1), 1, atol=1e-5)  # the causal triangle

    # layer 0, by hand: its weights times its V, through the output projection, are the layer's attention output
    block = model.blocks[0]
    x = model.embed[...][tokens]
    pos = jnp.arange(12)[None]
    expected, _ = block.attn(block.attn_norm(x), pos, causal=True)
    attn = block.attn
    _, intermediates = nnx.capture(lambda m, y: m(y, pos, causal=True), nnx.Intermediate)(attn, block.attn_norm(x))
    assert not intermediates  # nothing is sown unless asked
    v = attn.v(block.attn_norm(x))
    manual = attn.o(jnp.einsum("bnts,bsnh->btnh", maps[0], jnp.repeat(v, 2, axis=2)))
    np.testing.assert_allclose(manual, expected, rtol=1e-5, atol=1e-5)


def test_bidirectional_maps_fill_the_square():
    model = build_model(tiny_config("mlm"))
    maps = attention_maps(model, jnp.arange(8, 18)[None], causal=False)
    assert (maps[..., 0, -1] > 0).all()  # the first query sees the last key


def test_embedding_geometry_helpers_on_a_planted_analogy():
    from jaxformer.model.inspect import analogy, nearest_neighbours, pca_2d

    # ids 0..3: king, man, woman, queen with queen = king - man + woman; id 4 points elsewhere
    man, woman, royal = np.eye(3)
    embed = np.stack([royal + man, man, woman, royal + woman, -royal])
    embed = embed / np.linalg.norm(embed, axis=1, keepdims=True)
    assert analogy(embed, 0, 1, 2, k=1)[0][0] == 3
    near = nearest_neighbours(embed, embed[0], k=2, exclude=(0,))
    assert [i for i, _ in near] == [1, 3] or [i for i, _ in near] == [3, 1]  # cos 0.707 for both
    assert nearest_neighbours(embed, embed[0], k=5, candidates=np.array([4]))[0][0] == 4
    xy, kept = pca_2d(np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0]]))
    assert xy.shape == (4, 2) and kept[0] > kept[1] and kept.sum() == pytest.approx(1.0)
