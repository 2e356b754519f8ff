"""Reading a saved Hugging Face model folder: config.json and every tensor of its weights, as float32 numpy.

safetensors is read through its numpy API (no torch); a `pytorch_model.bin` needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxformer.errors import UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MODEL_TYPES = ("gpt2", "bert")


def weights_file(path: Path) -> tuple[Path, Path]:
    """(config.json, weights file) for a model directory or a weights file with config.json beside it."""
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).exists():
                return path / "config.json", path / name
        raise UserError(f"No weights in {path}: expected one of {', '.join(WEIGHT_FILES)}.")
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


def read_config(path: str | Path) -> dict:
    """The HF config dict of a model folder (or of the folder holding a weights file), its model_type checked."""
    config_path, weights_path = weights_file(Path(path))
    if not config_path.exists():
        raise UserError(f"No config.json next to {weights_path}: it is needed for the head count and layer sizes.")
    try:
        hf_config = json.loads(config_path.read_text())
    except ValueError:
        raise UserError(f"{config_path} is not valid JSON: restore the model folder's config.json.") from None
    model_type(hf_config)  # refuse an unsupported model before reading (maybe gigabytes of) weights
    return hf_config


def read_hf(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The HF config dict and every tensor (as float32 numpy) of a saved model."""
    hf_config = read_config(path)
    _, weights_path = weights_file(Path(path))
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


def model_type(hf_config: dict) -> str:
    kind = hf_config.get("model_type", "")
    if kind not in MODEL_TYPES:
        raise UserError(f"Unsupported Hugging Face model_type '{kind}': only gpt2 (GPT2LMHeadModel) and bert "
                        "(BertForMaskedLM) can be imported.")
    return kind


def activation_is_tanh(name: str) -> bool:
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return True
    if name == "gelu":
        return False
    raise UserError(f"Unsupported activation '{name}' in the Hugging Face config: only GELU variants are supported.")


def strip(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Drop the wrapper prefix (`transformer.`, `bert.`) and old `gamma`/`beta` LayerNorm names."""
    out = {}
    for key, value in tensors.items():
        key = key[len(prefix):] if key.startswith(prefix) else key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[key] = value
    return out


def tied(tensors: dict[str, np.ndarray], head: str, embed: str, hf_config: dict) -> bool:
    """Whether the output projection is the input embedding (absent from the file, or saved identical)."""
    if head not in tensors:
        return True
    return bool(hf_config.get("tie_word_embeddings", True)) and np.array_equal(tensors[head], tensors[embed])


def write_hf(out: Path, hf_config: dict, tensors: dict[str, np.ndarray]) -> Path:
    """config.json + model.safetensors, as `from_pretrained` reads them."""
    from safetensors.numpy import save_file

    from jaxformer import atomic

    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    with atomic.replacing(out / "model.safetensors") as tmp:
        # HF refuses safetensors files without a "format" entry in the metadata.
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "pt"})
    return out
