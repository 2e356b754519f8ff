"""Hugging Face interop: logits parity with small random GPT-2 / BERT built locally, and GPT-2 export round trips.

Nothing is downloaded: the HF models are constructed from configs with random weights and saved to tmp_path.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import randomize
from tiny import tiny_config

from jaxformer import generate as gen
from jaxformer.errors import UserError
from jaxformer.hf import from_hf, load_hf_params, to_hf_gpt2
from jaxformer.model import build_model

torch = pytest.importorskip("torch", reason="HF parity tests need torch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="HF parity tests need transformers")

VOCAB, POSITIONS, TOL = 100, 64, 1e-4
TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 23))


def hf_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def torch_threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("variant", ["tied", "untied-exact-gelu"])
def test_gpt2_parity_and_round_trip(tmp_path, variant, torch_threads):
    extra = {} if variant == "tied" else dict(tie_word_embeddings=False, activation_function="gelu", n_inner=96)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=POSITIONS,
                                     bos_token_id=0, eos_token_id=0, **extra)
    hf = randomize(transformers.GPT2LMHeadModel(config))
    hf.save_pretrained(tmp_path / "hf")
    expected = hf_logits(hf, TOKENS)

    model = from_hf(tmp_path / "hf")
    assert model.cfg.model.tie_embeddings == (variant == "tied")
    got = np.asarray(model(TOKENS))
    assert got.shape == (2, TOKENS.shape[1], VOCAB)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)

    to_hf_gpt2(model.cfg, model.params, tmp_path / "back")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    np.testing.assert_allclose(hf_logits(back, TOKENS), expected, atol=TOL, rtol=0)


def test_bert_parity(tmp_path, torch_threads):
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=POSITIONS)
    hf = randomize(transformers.BertForMaskedLM(config), seed=1)
    hf.save_pretrained(tmp_path / "hf")
    expected = hf_logits(hf, TOKENS)
    model = from_hf(tmp_path / "hf" / "model.safetensors")  # the weights file alone, config.json beside it
    assert model.is_encoder
    np.testing.assert_allclose(np.asarray(model(TOKENS)), expected, atol=TOL, rtol=0)
    # The imported encoder plugs into fill-mask: its top token is the argmax of HF's MLM logits there.
    ids = TOKENS[0].copy()
    ids[5] = 4  # the HF vocabulary has no special MASK; any id works as the mask marker here
    top = gen.fill_mask(model.graphdef, model.params, ids, top_k=1, mask_id=4)
    assert top[0][0][0] == int(np.argmax(hf_logits(hf, ids[None])[0, 5]))


def test_export_of_a_trained_shape_decoder_without_biases(tmp_path, torch_threads):
    cfg = tiny_config("clm", "model.bias=false", "train.seq_len=32", vocab_size=50)  # context for 20 tokens
    model = build_model(cfg, seed=4)
    for _, node in nnx.iter_graph(model):  # move norm scales off 1 so a dropped norm would show
        if isinstance(node, nnx.Param) and node[...].ndim == 1:
            node[...] = node[...] + 0.3
    graphdef, params = nnx.split(model)
    tokens = TOKENS[:, :20] % 50
    h, _, _ = model(jnp.asarray(tokens), causal=True)
    expected = np.asarray(model.logits(h))

    to_hf_gpt2(cfg, params, tmp_path / "hf", bos_token_id=2, eos_token_id=3)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_allclose(hf_logits(hf, tokens), expected, atol=TOL, rtol=0)

    # And back again through the CLI's load path: same config shape, same logits.
    cfg2, graphdef2, params2 = load_hf_params(tmp_path / "hf")
    assert (cfg2.model.n_layer, cfg2.model.d_model, cfg2.model.vocab_size) == (2, 32, 50)
    back = nnx.merge(graphdef2, params2)
    h2, _, _ = back(jnp.asarray(tokens), causal=True)
    np.testing.assert_allclose(np.asarray(back.logits(h2)), expected, atol=TOL, rtol=0)


def test_refusals(tmp_path):
    cfg = tiny_config("clm", "model.positions=rope", vocab_size=20)
    with pytest.raises(UserError, match="RoPE|positions"):
        to_hf_gpt2(cfg, nnx.split(build_model(cfg))[1], tmp_path / "out")
    with pytest.raises(UserError, match="No weights"):
        from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="model_type"):
        from_hf(tmp_path)
