"""BERT (`BertForMaskedLM`) <-> jaxformer: config and weight names, both ways.

BERT uses `nn.Linear`, whose weight is [out, in]: transposed to and from jaxformer's [in, out] kernels. Its
token-type embedding is folded into the position table on import (type 0 for every token, as HF does when no
`token_type_ids` are passed); export writes the positions as they are and zero token-type rows, the same
function. `to_jaxformer` can also fill a model that has segment embeddings and the NSP head (BertForPreTraining's
weights; tests/test_pairs.py checks its logits against HF), but `import-hf` still builds the folded MLM model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxformer.config import Config, ModelConfig
from jaxformer.errors import UserError
from jaxformer.hf.files import activation_is_tanh
from jaxformer.model.layers import mlp_hidden

PREFIX = "bert."
HEAD, EMBED = "cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"
_E, _P = "embeddings.", "cls.predictions."
_QKV = (("q", "query"), ("k", "key"), ("v", "value"))


def model_settings(hf: dict, tied: bool) -> dict:
    """jaxformer model.* values of a BERT config (objective mlm)."""
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"BERT position_embedding_type '{hf['position_embedding_type']}' is not supported: only "
                        "absolute (learned) positions.")
    if hf.get("is_decoder", False):
        raise UserError("This BERT config has is_decoder=true: only the bidirectional BertForMaskedLM is supported.")
    d = hf["hidden_size"]
    return dict(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], d_model=d,
                n_heads=hf["num_attention_heads"], mlp="gelu", mlp_ratio=hf["intermediate_size"] / d,
                gelu_approximate=activation_is_tanh(hf.get("hidden_act", "gelu")), norm="layernorm",
                norm_eps=hf.get("layer_norm_eps", 1e-12), post_norm=True, embed_norm=True, positions="learned",
                max_seq_len=hf["max_position_embeddings"], dropout=0.0, bias=True, tie_embeddings=tied,
                init_std=hf.get("initializer_range", 0.02))


def to_jaxformer(t: dict[str, np.ndarray], m: ModelConfig, *, pair_head: bool = False) -> dict[str, np.ndarray]:
    """jaxformer parameter path -> value, from BertForMaskedLM tensor names (`bert.` prefix stripped).

    A model with `model.type_vocab_size` gets the token-type table itself (else row 0 is folded into the
    positions); `pair_head` (a model with objective.pair_task=nsp) maps BertForPreTraining's pooler and
    next-sentence head too."""
    d = m.d_model
    types = t[_E + "token_type_embeddings.weight"]
    out = {"embed": t[_E + "word_embeddings.weight"],
           "pos_embed": t[_E + "position_embeddings.weight"] + (0 if m.type_vocab_size else types[0]),
           "embed_norm.scale": t[_E + "LayerNorm.weight"], "embed_norm.bias": t[_E + "LayerNorm.bias"],
           "mlm_transform.kernel": t[_P + "transform.dense.weight"].T,
           "mlm_transform.bias": t[_P + "transform.dense.bias"],
           "mlm_norm.scale": t[_P + "transform.LayerNorm.weight"], "mlm_norm.bias": t[_P + "transform.LayerNorm.bias"],
           "mlm_bias": t[_P + "bias"] if _P + "bias" in t else t[_P + "decoder.bias"]}
    if not m.tie_embeddings:
        out["lm_head.kernel"] = t[HEAD].T
    if m.type_vocab_size:  # a model with segment embeddings takes BERT's table as it is
        out["type_embed"] = types
    if pair_head:  # BertForPreTraining: the pooler and the next-sentence head
        out.update({"pooler.kernel": t["pooler.dense.weight"].T, "pooler.bias": t["pooler.dense.bias"],
                    "pair_head.kernel": t["cls.seq_relationship.weight"].T,
                    "pair_head.bias": t["cls.seq_relationship.bias"]})
    for i in range(m.n_layer):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for name, hf_name in _QKV:
            out[b + f"attn.{name}.kernel"] = t[h + f"attention.self.{hf_name}.weight"].T.reshape(d, m.n_heads,
                                                                                                  m.head_dim)
            out[b + f"attn.{name}.bias"] = t[h + f"attention.self.{hf_name}.bias"].reshape(m.n_heads, m.head_dim)
        out.update({
            b + "attn.o.kernel": t[h + "attention.output.dense.weight"].T.reshape(m.n_heads, m.head_dim, d),
            b + "attn.o.bias": t[h + "attention.output.dense.bias"],
            b + "attn_norm.scale": t[h + "attention.output.LayerNorm.weight"],
            b + "attn_norm.bias": t[h + "attention.output.LayerNorm.bias"],
            b + "mlp.up.kernel": t[h + "intermediate.dense.weight"].T, b + "mlp.up.bias": t[h + "intermediate.dense.bias"],
            b + "mlp.down.kernel": t[h + "output.dense.weight"].T, b + "mlp.down.bias": t[h + "output.dense.bias"],
            b + "mlp_norm.scale": t[h + "output.LayerNorm.weight"], b + "mlp_norm.bias": t[h + "output.LayerNorm.bias"],
        })
    return out


def export_problems(m: ModelConfig, head: str) -> list[str]:
    """What keeps a jaxformer model from being a BertForMaskedLM (empty: it is one)."""
    return [what for what, bad in (
        ("a non-masked-LM objective (BertForMaskedLM is a masked LM)", head != "mlm"),
        ("pre-norm blocks (BERT is post-norm: model.post_norm=true)", not m.post_norm),
        ("no embedding norm (BERT has one: model.embed_norm=true)", not m.embed_norm),
        ("positions other than learned", m.positions != "learned"), ("RMSNorm", m.norm != "layernorm"),
        ("a gated MLP", m.mlp != "gelu"), ("grouped KV heads", m.n_kv_heads != m.n_heads),
        ("head_dim * n_heads != d_model", m.head_dim * m.n_heads != m.d_model),
        ("a sliding window", m.window > 0), ("mixture of experts", m.n_experts > 0),
        ("factorised embeddings (model.embed_dim: that is ALBERT)", bool(m.embed_dim) and m.embed_dim != m.d_model),
        ("layers that share parameters (model.share_layers: that is ALBERT)", m.share_layers != "none")) if bad]


def from_jaxformer(get: Callable[[str], np.ndarray], maybe: Callable[[str, tuple], np.ndarray],
                   m: ModelConfig) -> dict[str, np.ndarray]:
    """BertForMaskedLM tensors from jaxformer parameters (`maybe`: zeros where a model has no such bias)."""
    d, f = m.d_model, mlp_hidden(m)
    e, p = "bert.embeddings.", "cls.predictions."
    mlm_bias = get("mlm_bias")
    t = {e + "word_embeddings.weight": get("embed"), e + "position_embeddings.weight": get("pos_embed"),
         e + "token_type_embeddings.weight": get("type_embed") if m.type_vocab_size else np.zeros((2, d), np.float32),
         e + "LayerNorm.weight": get("embed_norm.scale"), e + "LayerNorm.bias": maybe("embed_norm.bias", d),
         p + "transform.dense.weight": get("mlm_transform.kernel").T,
         p + "transform.dense.bias": maybe("mlm_transform.bias", d),
         p + "transform.LayerNorm.weight": get("mlm_norm.scale"), p + "transform.LayerNorm.bias": maybe("mlm_norm.bias", d),
         p + "bias": mlm_bias,
         p + "decoder.weight": get("embed") if m.tie_embeddings else get("lm_head.kernel").T,
         p + "decoder.bias": mlm_bias}
    for i in range(m.n_layer):
        h, b = f"bert.encoder.layer.{i}.", f"blocks.{i}."
        for name, hf_name in _QKV:
            t[h + f"attention.self.{hf_name}.weight"] = get(b + f"attn.{name}.kernel").reshape(d, d).T
            t[h + f"attention.self.{hf_name}.bias"] = maybe(b + f"attn.{name}.bias", (m.n_heads, m.head_dim)).reshape(d)
        t.update({
            h + "attention.output.dense.weight": get(b + "attn.o.kernel").reshape(d, d).T,
            h + "attention.output.dense.bias": maybe(b + "attn.o.bias", d),
            h + "attention.output.LayerNorm.weight": get(b + "attn_norm.scale"),
            h + "attention.output.LayerNorm.bias": maybe(b + "attn_norm.bias", d),
            h + "intermediate.dense.weight": get(b + "mlp.up.kernel").T, h + "intermediate.dense.bias": maybe(b + "mlp.up.bias", f),
            h + "output.dense.weight": get(b + "mlp.down.kernel").T, h + "output.dense.bias": maybe(b + "mlp.down.bias", d),
            h + "output.LayerNorm.weight": get(b + "mlp_norm.scale"), h + "output.LayerNorm.bias": maybe(b + "mlp_norm.bias", d),
        })
    return t


def hf_config(cfg: Config, *, pad_token_id: int | None) -> dict:
    m = cfg.model
    return {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": m.vocab_size,
        "hidden_size": m.d_model, "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_heads,
        "intermediate_size": mlp_hidden(m), "hidden_act": "gelu_new" if m.gelu_approximate else "gelu",
        "max_position_embeddings": m.max_seq_len, "type_vocab_size": m.type_vocab_size or 2, "layer_norm_eps": m.norm_eps,
        "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.dropout,
        "initializer_range": m.init_std, "position_embedding_type": "absolute", "is_decoder": False,
        "tie_word_embeddings": m.tie_embeddings, "pad_token_id": pad_token_id if pad_token_id is not None else 0,
        "dtype": "float32",
    }
