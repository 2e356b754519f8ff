"""GPT-2 (`GPT2LMHeadModel`) <-> jaxformer: config and weight names, both ways.

GPT-2 uses `Conv1D`, whose weight is [in, out] like jaxformer's kernels, so only the fused q/k/v projection is
split and the head axes are split out ([D, N, H] for q/k/v, [N, H, D] for the output projection), which matches
HF's `view(..., n_head, head_dim)`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxformer.config import Config, ModelConfig
from jaxformer.errors import UserError
from jaxformer.hf.files import activation_is_tanh
from jaxformer.model.layers import mlp_hidden

PREFIX = "transformer."
HEAD, EMBED = "lm_head.weight", "wte.weight"


def model_settings(hf: dict, tied: bool) -> dict:
    """jaxformer model.* values of a GPT-2 config (objective clm)."""
    for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                    ("add_cross_attention", False), ("scale_attn_weights", True)):
        if hf.get(key, ok) != ok:
            raise UserError(f"GPT-2 config has {key}={hf[key]}, which jaxformer does not implement.")
    d = hf["n_embd"]
    return dict(vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], d_model=d, n_heads=hf["n_head"], mlp="gelu",
                mlp_ratio=(hf.get("n_inner") or 4 * d) / d,
                gelu_approximate=activation_is_tanh(hf.get("activation_function", "gelu_new")), norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), post_norm=False, embed_norm=False, positions="learned",
                max_seq_len=hf["n_positions"], dropout=0.0, bias=True, tie_embeddings=tied,
                init_std=hf.get("initializer_range", 0.02))


def to_jaxformer(t: dict[str, np.ndarray], m: ModelConfig) -> dict[str, np.ndarray]:
    """jaxformer parameter path -> value, from GPT-2 tensor names (prefix already stripped)."""
    d = m.d_model
    out = {"embed": t["wte.weight"], "pos_embed": t["wpe.weight"],
           "final_norm.scale": t["ln_f.weight"], "final_norm.bias": t["ln_f.bias"]}
    if not m.tie_embeddings:
        out["lm_head.kernel"] = t["lm_head.weight"].T
    for i in range(m.n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        qkv_w, qkv_b = t[h + "attn.c_attn.weight"], t[h + "attn.c_attn.bias"]
        for j, name in enumerate("qkv"):
            out[b + f"attn.{name}.kernel"] = qkv_w[:, j * d:(j + 1) * d].reshape(d, m.n_heads, m.head_dim)
            out[b + f"attn.{name}.bias"] = qkv_b[j * d:(j + 1) * d].reshape(m.n_heads, m.head_dim)
        out.update({
            b + "attn.o.kernel": t[h + "attn.c_proj.weight"].reshape(m.n_heads, m.head_dim, d),
            b + "attn.o.bias": t[h + "attn.c_proj.bias"],
            b + "attn_norm.scale": t[h + "ln_1.weight"], b + "attn_norm.bias": t[h + "ln_1.bias"],
            b + "mlp_norm.scale": t[h + "ln_2.weight"], b + "mlp_norm.bias": t[h + "ln_2.bias"],
            b + "mlp.up.kernel": t[h + "mlp.c_fc.weight"], b + "mlp.up.bias": t[h + "mlp.c_fc.bias"],
            b + "mlp.down.kernel": t[h + "mlp.c_proj.weight"], b + "mlp.down.bias": t[h + "mlp.c_proj.bias"],
        })
    return out


def export_problems(m: ModelConfig, head: str) -> list[str]:
    """What keeps a jaxformer model from being a GPT-2 (empty: it is one)."""
    return [what for what, bad in (
        ("a non-causal-LM objective (GPT-2 is a causal LM)", head != "lm"),
        ("positions other than learned", m.positions != "learned"), ("RMSNorm", m.norm != "layernorm"),
        ("post-norm", m.post_norm), ("an embedding norm", m.embed_norm), ("a gated MLP", m.mlp != "gelu"),
        ("grouped KV heads", m.n_kv_heads != m.n_heads),
        ("head_dim * n_heads != d_model", m.head_dim * m.n_heads != m.d_model),
        ("a sliding window", m.window > 0), ("mixture of experts", m.n_experts > 0)) if bad]


def from_jaxformer(get: Callable[[str], np.ndarray], maybe: Callable[[str, tuple], np.ndarray],
                   m: ModelConfig) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel tensors from jaxformer parameters (`maybe`: zeros where a model has no such bias)."""
    d, f = m.d_model, mlp_hidden(m)
    t = {"transformer.wte.weight": get("embed"), "transformer.wpe.weight": get("pos_embed"),
         "transformer.ln_f.weight": get("final_norm.scale"), "transformer.ln_f.bias": maybe("final_norm.bias", d)}
    if not m.tie_embeddings:
        t["lm_head.weight"] = get("lm_head.kernel").T
    for i in range(m.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        t[h + "attn.c_attn.weight"] = np.concatenate([get(b + f"attn.{n}.kernel").reshape(d, d) for n in "qkv"], 1)
        t[h + "attn.c_attn.bias"] = np.concatenate([maybe(b + f"attn.{n}.bias", (m.n_heads, m.head_dim)).reshape(d)
                                                    for n in "qkv"])
        t.update({
            h + "attn.c_proj.weight": get(b + "attn.o.kernel").reshape(d, d),
            h + "attn.c_proj.bias": maybe(b + "attn.o.bias", d),
            h + "ln_1.weight": get(b + "attn_norm.scale"), h + "ln_1.bias": maybe(b + "attn_norm.bias", d),
            h + "ln_2.weight": get(b + "mlp_norm.scale"), h + "ln_2.bias": maybe(b + "mlp_norm.bias", d),
            h + "mlp.c_fc.weight": get(b + "mlp.up.kernel"), h + "mlp.c_fc.bias": maybe(b + "mlp.up.bias", f),
            h + "mlp.c_proj.weight": get(b + "mlp.down.kernel"), h + "mlp.c_proj.bias": maybe(b + "mlp.down.bias", d),
        })
    return t


def hf_config(cfg: Config, *, bos_token_id: int | None, eos_token_id: int | None,
              pad_token_id: int | None = None) -> dict:
    m = cfg.model
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
        "n_positions": m.max_seq_len, "n_embd": m.d_model, "n_layer": m.n_layer, "n_head": m.n_heads,
        "n_inner": mlp_hidden(m), "activation_function": "gelu_new" if m.gelu_approximate else "gelu",
        "layer_norm_epsilon": m.norm_eps, "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout,
        "initializer_range": m.init_std, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": m.tie_embeddings, "use_cache": True,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id, "dtype": "float32",
    }
