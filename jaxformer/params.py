"""Parameter and FLOP accounting per component, from `jax.eval_shape` (nothing is allocated)."""

from __future__ import annotations

import math

import jax
from flax import nnx

from jaxformer import config as config_lib
from jaxformer.model import build_model

_COMPONENTS = {  # top-level or per-block attribute name -> component
    "pos_embed": "positions", "embed": "embedding", "embed_norm": "norms", "attn_norm": "norms",
    "mlp_norm": "norms", "final_norm": "norms", "attn": "attention", "mlp": "mlp", "lm_head": "lm_head",
    "mlm_transform": "mlm_head", "mlm_norm": "mlm_head", "mlm_bias": "mlm_head", "classifier": "classifier",
}


def _component(keys: tuple) -> str:
    if "mlp" in keys and keys[-1] in ("router", "up", "gate", "down"):  # MoE weights are bare Params
        return "moe"
    return next((_COMPONENTS[k] for k in keys if k in _COMPONENTS), "other")


def count(cfg: config_lib.Config) -> dict:
    """{"total", "by_component", "active_per_token", "flops_per_token", ...} for a config."""
    cfg = config_lib.resolve(cfg, vocab_size=cfg.model.vocab_size or 256)
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    params = nnx.state(abstract, nnx.Param)
    by_component: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)
        keys = keys[:-1] if keys[-1] == "value" else keys
        name = _component(keys)
        by_component[name] = by_component.get(name, 0) + math.prod(leaf.shape)
    total = sum(by_component.values())
    m = cfg.model
    moe_layers = sum(1 for i in range(m.n_layer) if m.n_experts and (i + 1) % m.moe_every == 0)
    # Per token only top_k of n_experts experts run: the rest of the MoE weights are inactive.
    inactive = 0
    if moe_layers:
        expert_params = by_component.get("moe", 0) - moe_layers * m.d_model * m.n_experts  # minus routers
        inactive = expert_params * (m.n_experts - m.moe_top_k) // m.n_experts
    active = total - inactive
    non_embedding = active - by_component.get("embedding", 0) - by_component.get("positions", 0)
    t = cfg.train.seq_len
    # Kaplan/PaLM: 6 FLOPs per matmul parameter per token (fwd + bwd) + attention scores/values 12*L*d_attn*T.
    attn_flops = 12 * m.n_layer * m.n_heads * m.head_dim * t
    lm_head = m.d_model * m.vocab_size
    flops = 6 * (non_embedding + lm_head) + attn_flops
    return {"total": total, "by_component": by_component, "active_per_token": active,
            "non_embedding": non_embedding, "flops_per_token": flops, "seq_len": t}


def print_table(counts: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="parameters")
    table.add_column("component")
    table.add_column("params", justify="right")
    table.add_column("share", justify="right")
    for name, n in sorted(counts["by_component"].items(), key=lambda kv: -kv[1]):
        table.add_row(name, f"{n:,}", f"{100 * n / counts['total']:.1f}%")
    table.add_row("total", f"{counts['total']:,}", "100%", style="bold")
    console = Console()
    console.print(table)
    console.print(f"active per token: {counts['active_per_token']:,}   non-embedding: {counts['non_embedding']:,}   "
                  f"training FLOPs per token (seq {counts['seq_len']}): {counts['flops_per_token']:.3e}")
