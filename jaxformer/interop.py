"""Hugging Face interop: import `GPT2LMHeadModel` / `BertForMaskedLM` weights, export a decoder as GPT-2.

Import reads `config.json` and the weights (safetensors through its numpy API, so no torch is needed; a
`pytorch_model.bin` needs torch), builds the matching jaxformer `Config`, and writes every tensor into an
abstract (`nnx.eval_shape`) model, checking each shape, so nothing is initialised twice and a missing or
misshapen weight is an error rather than a silently random parameter. Vocabulary ids are kept as they are:
an imported model speaks its own tokenizer's ids, not jaxformer's special-id convention.

Layout notes (why the transposes): GPT-2 uses `Conv1D`, whose weight is [in, out] like jaxformer's kernels;
BERT uses `nn.Linear`, whose weight is [out, in]. jaxformer splits the head axes out of the kernels
([D, N, H] for q/k/v, [N, H, D] for the output projection), which matches HF's `view(..., n_head, head_dim)`.
BERT's token-type embedding is folded into the position table (type 0 for every token, as HF does when no
`token_type_ids` are passed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import objectives
from jaxformer.config import Config, ModelConfig, apply_overrides, resolve
from jaxformer.errors import UserError
from jaxformer.model import build_model
from jaxformer.model.layers import mlp_hidden

# ---------------------------------------------------------------------------------------------- reading files

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _weights_file(path: Path) -> tuple[Path, Path]:
    """(config.json, weights file) for a model directory or a weights file with config.json beside it."""
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).exists():
                return path / "config.json", path / name
        raise UserError(f"No weights in {path}: expected one of {', '.join(_WEIGHT_FILES)}.")
    if not path.exists():
        raise UserError(f"{path} does not exist: give a saved Hugging Face model directory or its .safetensors file.")
    return path.parent / "config.json", path


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated / foreign files
        raise UserError(f"Could not read {path} as safetensors ({err}): is the file complete?") from None
    return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise UserError(f"{path.name} is a PyTorch pickle, which needs torch: install torch or save the model "
                        "with safetensors.") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.detach().float().numpy() for k, v in state.items()}


def read_hf(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The HF config dict and every tensor (as float32 numpy) of a saved model."""
    config_path, weights_path = _weights_file(Path(path))
    if not config_path.exists():
        raise UserError(f"No config.json next to {weights_path}: it is needed for the head count and layer sizes.")
    hf_config = json.loads(config_path.read_text())
    _model_type(hf_config)  # refuse an unsupported model before reading (maybe gigabytes of) weights
    if weights_path.name.endswith(".index.json"):  # sharded safetensors
        shards = sorted(set(json.loads(weights_path.read_text())["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_safetensors(weights_path.parent / shard))
    elif weights_path.suffix == ".bin":
        tensors = _read_torch_bin(weights_path)
    else:
        tensors = _read_safetensors(weights_path)
    return hf_config, tensors


def _model_type(hf_config: dict) -> str:
    kind = hf_config.get("model_type", "")
    if kind not in ("gpt2", "bert"):
        raise UserError(f"Unsupported Hugging Face model_type '{kind}': only gpt2 (GPT2LMHeadModel) and bert "
                        "(BertForMaskedLM) can be imported.")
    return kind


def _activation_is_tanh(name: str) -> bool:
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return True
    if name == "gelu":
        return False
    raise UserError(f"Unsupported activation '{name}' in the Hugging Face config: only GELU variants are supported.")


def _strip(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Drop the wrapper prefix (`transformer.`, `bert.`) and old `gamma`/`beta` LayerNorm names."""
    out = {}
    for key, value in tensors.items():
        key = key[len(prefix):] if key.startswith(prefix) else key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- configs

def _config(model: dict, objective: str, tokenizer: str) -> Config:
    """A resolved jaxformer Config for an imported model (dropout off: the import is for inference)."""
    overrides = {f"model.{k}": v for k, v in model.items()}
    overrides.update({"objective.kind": objective, "data.tokenizer": tokenizer,
                      "data.vocab_size": model["vocab_size"], "train.seq_len": model["max_seq_len"]})
    return resolve(apply_overrides(Config(), overrides), n_devices=1)


def gpt2_config(hf: dict, tied: bool) -> Config:
    for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                    ("add_cross_attention", False), ("scale_attn_weights", True)):
        if hf.get(key, ok) != ok:
            raise UserError(f"GPT-2 config has {key}={hf[key]}, which jaxformer does not implement.")
    d = hf["n_embd"]
    return _config(dict(vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], d_model=d, n_heads=hf["n_head"],
                        mlp="gelu", mlp_ratio=(hf.get("n_inner") or 4 * d) / d,
                        gelu_approximate=_activation_is_tanh(hf.get("activation_function", "gelu_new")),
                        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), post_norm=False,
                        embed_norm=False, positions="learned", max_seq_len=hf["n_positions"], dropout=0.0,
                        bias=True, tie_embeddings=tied, init_std=hf.get("initializer_range", 0.02)),
                   objective="clm", tokenizer="bpe")


def bert_config(hf: dict, tied: bool) -> Config:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"BERT position_embedding_type '{hf['position_embedding_type']}' is not supported: only "
                        "absolute (learned) positions.")
    if hf.get("is_decoder", False):
        raise UserError("This BERT config has is_decoder=true: only the bidirectional BertForMaskedLM is supported.")
    d = hf["hidden_size"]
    return _config(dict(vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], d_model=d,
                        n_heads=hf["num_attention_heads"], mlp="gelu", mlp_ratio=hf["intermediate_size"] / d,
                        gelu_approximate=_activation_is_tanh(hf.get("hidden_act", "gelu")), norm="layernorm",
                        norm_eps=hf.get("layer_norm_eps", 1e-12), post_norm=True, embed_norm=True,
                        positions="learned", max_seq_len=hf["max_position_embeddings"], dropout=0.0, bias=True,
                        tie_embeddings=tied, init_std=hf.get("initializer_range", 0.02)),
                   objective="mlm", tokenizer="unigram")


# ---------------------------------------------------------------------------------------------- weight maps

def _heads_in(w_DxD: np.ndarray, m: ModelConfig) -> np.ndarray:
    return w_DxD.reshape(m.d_model, m.n_heads, m.head_dim)


def gpt2_params(t: dict[str, np.ndarray], m: ModelConfig) -> dict[str, np.ndarray]:
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
            out[b + f"attn.{name}.kernel"] = _heads_in(qkv_w[:, j * d:(j + 1) * d], m)
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


def bert_params(t: dict[str, np.ndarray], m: ModelConfig) -> dict[str, np.ndarray]:
    """jaxformer parameter path -> value, from BertForMaskedLM tensor names (`bert.` prefix stripped)."""
    d = m.d_model
    e, p = "embeddings.", "cls.predictions."
    mlm_bias = t[p + "bias"] if p + "bias" in t else t[p + "decoder.bias"]
    out = {"embed": t[e + "word_embeddings.weight"],
           "pos_embed": t[e + "position_embeddings.weight"] + t[e + "token_type_embeddings.weight"][0],
           "embed_norm.scale": t[e + "LayerNorm.weight"], "embed_norm.bias": t[e + "LayerNorm.bias"],
           "mlm_transform.kernel": t[p + "transform.dense.weight"].T,
           "mlm_transform.bias": t[p + "transform.dense.bias"],
           "mlm_norm.scale": t[p + "transform.LayerNorm.weight"], "mlm_norm.bias": t[p + "transform.LayerNorm.bias"],
           "mlm_bias": mlm_bias}
    if not m.tie_embeddings:
        out["lm_head.kernel"] = t[p + "decoder.weight"].T
    for i in range(m.n_layer):
        h, b = f"encoder.layer.{i}.", f"blocks.{i}."
        for name, hf_name in (("q", "query"), ("k", "key"), ("v", "value")):
            out[b + f"attn.{name}.kernel"] = _heads_in(t[h + f"attention.self.{hf_name}.weight"].T, m)
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


def _tied(tensors: dict[str, np.ndarray], head: str, embed: str, hf_config: dict) -> bool:
    """Whether the output projection is the input embedding (absent from the file, or saved identical)."""
    if head not in tensors:
        return True
    return bool(hf_config.get("tie_word_embeddings", True)) and np.array_equal(tensors[head], tensors[embed])


def _walk(module, path: str):
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _params_paths(model) -> list[str]:
    return [".".join(map(str, path)) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)]


def _fill(cfg: Config, values: dict[str, np.ndarray], source: str):
    """Write `values` into an abstract model for cfg; every parameter must be given, with its exact shape."""
    model = nnx.eval_shape(lambda: build_model(cfg))
    dtype = jnp.dtype(cfg.model.param_dtype)
    missing = sorted(set(_params_paths(model)) - set(values))
    if missing:
        raise UserError(f"{source} lacks weights for jaxformer parameters {missing[:3]}: is it a complete model?")
    for path, value in values.items():
        var = _walk(model, path)
        if tuple(var.shape) != value.shape:
            raise UserError(f"{source}: weight for {path} has shape {value.shape}, expected {tuple(var.shape)}.")
        var.set_value(jnp.asarray(value, dtype))
    return nnx.split(model)


def load_hf_params(path: str | Path) -> tuple[Config, nnx.GraphDef, nnx.State]:
    """(Config, graphdef, params) of a saved GPT2LMHeadModel or BertForMaskedLM (directory or .safetensors)."""
    hf_config, tensors = read_hf(path)
    kind = _model_type(hf_config)
    try:
        if kind == "gpt2":
            tensors = _strip(tensors, "transformer.")
            cfg = gpt2_config(hf_config, _tied(tensors, "lm_head.weight", "wte.weight", hf_config))
            values = gpt2_params(tensors, cfg.model)
        else:
            tensors = _strip(tensors, "bert.")
            tied = _tied(tensors, "cls.predictions.decoder.weight", "embeddings.word_embeddings.weight", hf_config)
            cfg = bert_config(hf_config, tied)
            values = bert_params(tensors, cfg.model)
    except KeyError as err:
        raise UserError(f"{path} has no tensor {err} that a {kind} model needs: is it a {kind} checkpoint?") from None
    graphdef, params = _fill(cfg, values, str(path))
    return cfg, graphdef, params


# ---------------------------------------------------------------------------------------------- the imported model

@functools.partial(jax.jit, static_argnames=("graphdef", "objective"))
def _all_logits(graphdef, params, tokens_BxT, *, objective: objectives.Objective):
    model = nnx.merge(graphdef, params)
    h_BxTxD, _, _ = model(tokens_BxT, causal=objective.causal)
    return objective.head_logits(model, h_BxTxD)


@dataclasses.dataclass
class ImportedModel:
    """An imported HF model: `model(tokens_BxT)` -> logits [B, T, V] in the HF vocabulary order.

    GPT-2: causal next-token logits at every position. BERT: bidirectional, the MLM head at every position.
    `graphdef` / `params` plug into `jaxformer.generate` (GPT-2) or `fill_mask` (BERT) directly.
    """

    cfg: Config
    graphdef: nnx.GraphDef
    params: nnx.State

    @property
    def objective(self) -> objectives.Objective:
        return objectives.for_config(self.cfg)

    @property
    def is_encoder(self) -> bool:
        return self.objective.family == "encoder"

    def __call__(self, tokens_BxT) -> jax.Array:
        tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
        if tokens_BxT.ndim != 2 or tokens_BxT.shape[1] > self.cfg.model.max_seq_len:
            raise UserError(f"Expected int token ids [B, T] with T <= {self.cfg.model.max_seq_len}, got shape "
                            f"{tuple(tokens_BxT.shape)}.")
        return _all_logits(self.graphdef, self.params, tokens_BxT, objective=self.objective)

    def module(self):
        return nnx.merge(self.graphdef, self.params)


def from_hf(path: str | Path) -> ImportedModel:
    """Import a saved GPT2LMHeadModel or BertForMaskedLM (directory with config.json, or its .safetensors)."""
    return ImportedModel(*load_hf_params(path))


# ---------------------------------------------------------------------------------------------- export

def _check_gpt2_shaped(m: ModelConfig, objective: objectives.Objective) -> None:
    problems = [what for what, bad in (
        (f"a {objective.kind} objective (GPT-2 is a causal LM)", objective.head != "lm"), ("positions other than learned", m.positions != "learned"),
        ("RMSNorm", m.norm != "layernorm"), ("post-norm", m.post_norm), ("an embedding norm", m.embed_norm),
        ("a gated MLP", m.mlp != "gelu"), ("grouped KV heads", m.n_kv_heads != m.n_heads),
        ("head_dim * n_heads != d_model", m.head_dim * m.n_heads != m.d_model),
        ("a sliding window", m.window > 0), ("mixture of experts", m.n_experts > 0)) if bad]
    if problems:
        raise UserError(f"This model cannot be exported as GPT-2 because it uses {', '.join(problems)}.")


def to_hf_gpt2(cfg: Config, params: nnx.State, out_dir: str | Path, *, bos_token_id: int | None = None,
               eos_token_id: int | None = None) -> Path:
    """Write `config.json` + `model.safetensors` that `GPT2LMHeadModel.from_pretrained(out_dir)` loads.

    A model trained without biases (`model.bias=false`) exports zeros for GPT-2's biases: the same function.
    """
    from safetensors.numpy import save_file

    m = cfg.model
    _check_gpt2_shaped(m, objectives.for_config(cfg))
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))[0]
    model = nnx.merge(graphdef, params)
    d, f = m.d_model, mlp_hidden(m)
    get: Callable[[str], np.ndarray] = lambda path: np.asarray(_walk(model, path)[...], np.float32)
    maybe = lambda path, shape: get(path) if _walk_or_none(model, path) is not None else np.zeros(shape, np.float32)

    t = {"transformer.wte.weight": get("embed"), "transformer.wpe.weight": get("pos_embed"),
         "transformer.ln_f.weight": get("final_norm.scale"), "transformer.ln_f.bias": maybe("final_norm.bias", d)}
    if not m.tie_embeddings:
        t["lm_head.weight"] = get("lm_head.kernel").T
    for i in range(m.n_layer):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        t[h + "attn.c_attn.weight"] = np.concatenate(
            [get(b + f"attn.{n}.kernel").reshape(d, d) for n in "qkv"], axis=1)
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
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": m.vocab_size,
        "n_positions": m.max_seq_len, "n_embd": d, "n_layer": m.n_layer, "n_head": m.n_heads, "n_inner": f,
        "activation_function": "gelu_new" if m.gelu_approximate else "gelu", "layer_norm_epsilon": m.norm_eps,
        "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout,
        "initializer_range": m.init_std, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": m.tie_embeddings, "use_cache": True,
        "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "dtype": "float32",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    # HF refuses safetensors files without a "format" entry in the metadata.
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def _walk_or_none(module, path: str):
    try:
        return _walk(module, path)
    except (AttributeError, IndexError):
        return None
