"""Hugging Face weights <-> jaxformer parameters for the families in FAMILIES (GPT-2, BERT).

Import builds the matching jaxformer `Config` and writes every tensor into an abstract (`nnx.eval_shape`) model,
checking each shape, so nothing is initialised twice and a missing or misshapen weight is an error rather than
a silently random parameter. Vocabulary ids are kept as they are: an imported model speaks its own tokenizer's
ids (see data/hf_tokenizer.py), not jaxformer's special-id table.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import objectives
from jaxformer.config import Config, apply_overrides, resolve
from jaxformer.errors import UserError
from jaxformer.hf import bert, gpt2
from jaxformer.hf.files import model_type, read_hf, strip, tied, write_hf
from jaxformer.model import build_model

FAMILIES = {"gpt2": (gpt2, "clm"), "bert": (bert, "mlm")}  # model_type -> (name maps, objective.kind)


def config_for(model: dict, objective: str, tokenizer: str = "hf") -> Config:
    """A resolved jaxformer Config for an imported model (dropout off: the import is for inference)."""
    # HF tables have exactly vocab_size rows: no automatic padding here (import-hf --set pads them afterwards)
    overrides = {"model.vocab_pad_multiple": 0, **{f"model.{k}": v for k, v in model.items()}}
    overrides.update({"objective.kind": objective, "data.tokenizer": tokenizer,
                      "data.vocab_size": model["vocab_size"], "train.seq_len": model["max_seq_len"]})
    return resolve(apply_overrides(Config(), overrides), n_devices=1)


def _walk(module, path: str):
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def _walk_or_none(module, path: str):
    try:
        return _walk(module, path)
    except (AttributeError, IndexError):
        return None


def _params_paths(model) -> list[str]:
    return [".".join(map(str, path)) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)]


def _vocab_axis(var) -> int | None:
    """Which axis of a parameter is the vocabulary (padded by model.vocab_pad_multiple), if any."""
    axes = var.get_metadata().get("axes") or ()
    return axes.index("vocab") if "vocab" in axes else None


def _fill(cfg: Config, values: dict[str, np.ndarray], source: str):
    """Write `values` into an abstract model for cfg; every parameter must be given, with its exact shape (a
    vocabulary axis of vocab_size rows is padded with zeros to the model's padded size)."""
    model = nnx.eval_shape(lambda: build_model(cfg))
    dtype = jnp.dtype(cfg.model.param_dtype)
    missing = sorted(set(_params_paths(model)) - set(values))
    if missing:
        raise UserError(f"{source} lacks weights for jaxformer parameters {missing[:3]}: is it a complete model?")
    for path, value in values.items():
        var = _walk(model, path)
        axis = _vocab_axis(var)
        if axis is not None and value.shape[axis] == cfg.model.vocab_size != var.shape[axis]:
            widths = [(0, 0)] * value.ndim
            widths[axis] = (0, var.shape[axis] - value.shape[axis])
            value = np.pad(value, widths)
        if tuple(var.shape) != value.shape:
            raise UserError(f"{source}: weight for {path} has shape {value.shape}, expected {tuple(var.shape)}.")
        var.set_value(jnp.asarray(value, dtype))
    return nnx.split(model)


def load_hf_params(path: str | Path) -> tuple[Config, nnx.GraphDef, nnx.State]:
    """(Config, graphdef, params) of a saved GPT2LMHeadModel or BertForMaskedLM (directory or .safetensors)."""
    hf_config, tensors = read_hf(path)
    kind = model_type(hf_config)
    family, objective = FAMILIES[kind]
    try:
        tensors = strip(tensors, family.PREFIX)
        cfg = config_for(family.model_settings(hf_config, tied(tensors, family.HEAD, family.EMBED, hf_config)),
                         objective)
        values = family.to_jaxformer(tensors, cfg.model)
    except KeyError as err:
        raise UserError(f"{path} has no tensor {err} that a {kind} model needs: is it a {kind} checkpoint?") from None
    graphdef, params = _fill(cfg, values, str(path))
    return cfg, graphdef, params


def repad_vocab(cfg: Config, graphdef: nnx.GraphDef, params: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
    """An imported (unpadded) model's parameters for `cfg`, whose model.vocab_pad_multiple may pad its
    vocabulary tables (with zero rows)."""
    model = nnx.merge(graphdef, params)
    values = {path: np.asarray(_walk(model, path)[...]) for path in _params_paths(model)}
    return _fill(cfg, values, "the imported model")


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

def _getters(cfg: Config, params: nnx.State) -> tuple[Callable, Callable]:
    """(get(path), maybe(path, shape)) reading float32 numpy out of `params`; maybe gives zeros where the model
    has no such parameter (a model trained with model.bias=false exports zero biases: the same function)."""
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))[0]
    model = nnx.merge(graphdef, params)

    def get(path: str) -> np.ndarray:
        var = _walk(model, path)
        value = np.asarray(jax.device_get(var[...]), np.float32)
        axis = _vocab_axis(var)  # HF tables have exactly vocab_size rows: model.vocab_pad_multiple's go
        return value if axis is None else np.take(value, np.arange(cfg.model.vocab_size), axis=axis)

    maybe = lambda path, shape: get(path) if _walk_or_none(model, path) is not None else np.zeros(shape, np.float32)
    return get, maybe


def _check_exportable(cfg: Config, family_name: str) -> None:
    family, _ = FAMILIES[family_name]
    problems = family.export_problems(cfg.model, objectives.for_config(cfg).head)
    if problems:
        label = {"gpt2": "GPT-2", "bert": "BERT"}[family_name]
        raise UserError(f"This model cannot be exported as {label} because it uses {', '.join(problems)}.")


def to_hf_gpt2(cfg: Config, params: nnx.State, out_dir: str | Path, *, bos_token_id: int | None = None,
               eos_token_id: int | None = None, pad_token_id: int | None = None) -> Path:
    """Write `config.json` + `model.safetensors` that `GPT2LMHeadModel.from_pretrained(out_dir)` loads."""
    _check_exportable(cfg, "gpt2")
    tensors = gpt2.from_jaxformer(*_getters(cfg, params), cfg.model)
    return write_hf(Path(out_dir), gpt2.hf_config(cfg, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                                                  pad_token_id=pad_token_id), tensors)


def to_hf_bert(cfg: Config, params: nnx.State, out_dir: str | Path, *, pad_token_id: int | None = None) -> Path:
    """Write `config.json` + `model.safetensors` that `BertForMaskedLM.from_pretrained(out_dir)` loads."""
    _check_exportable(cfg, "bert")
    tensors = bert.from_jaxformer(*_getters(cfg, params), cfg.model)
    return write_hf(Path(out_dir), bert.hf_config(cfg, pad_token_id=pad_token_id), tensors)
