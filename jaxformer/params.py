"""Parameter and FLOP accounting per component, from `jax.eval_shape` (nothing is allocated).

    jaxformer params --preset gpt2-small [--json]

Conventions (tests/test_params.py checks them against a count written from the formulas and against XLA):

- FLOPs are matrix-multiplication FLOPs, 2 per multiply-add (Kaplan et al. 2020; PaLM's MFU). Biases, norms,
  activations, softmax, the embedding gather and the residual adds are elementwise and not counted: they are a
  few per cent of XLA's own count at these widths.
- "Per token" is per input position of a training window (`train.seq_len` positions per sequence).
- forward **executed**: what the compiled XLA program multiplies. Attention scores and values over the full T x T
  square (causal and window masks are applied after the products) — except with `model.attention_impl=blocked`,
  which stops each causal query block at its last row (`auto` is counted as the full square, whichever kernel it
  picks on the machine that runs it: the count is the config's, not the backend's) — the MLM head at its
  ceil(mask_rate x T) fixed prediction slots, MoE experts at their capacity plus the one-hot dispatch/combine
  matmuls.
  forward **ideal**: what the model needs. Each query against only the keys it may see ((T+1)/2 on average when
  causal), the MLM head at mask_rate of the positions, top_k experts per token.
- training = 3 x forward: the backward pass does two matmuls per forward one (input and weight gradients).
- The vocabulary projection (`lm_head`) costs 2 x d_model x vocab per predicted position whether or not it shares
  its matrix with the embedding; its parameters are counted once (under `embedding` when tied). With
  `model.vocab_pad_multiple` the executed count uses the padded vocabulary (the matmul XLA runs), the ideal count
  the true one; the padded rows are in `total` and reported apart under `vocab_padding`.
- `weight_matrices` counts under the GPT-3 walk-through's convention: one query, key and value matrix per head,
  one output matrix and the MLP's matrices per layer, the embedding and a separate unembedding (counted even when
  tied); no biases, norms or position tables.
"""

from __future__ import annotations

import math
from dataclasses import replace

import jax
from flax import nnx

from jaxformer import config as config_lib
from jaxformer import objectives
from jaxformer.model import attention_kernels, build_model, transformer
from jaxformer.model.moe import expert_capacity
from jaxformer.model.transformer import layer_is_moe, layer_window

# Rows of the report, in this order; the ones without parameters only cost FLOPs.
COMPONENTS = ("embedding", "positions", "token_types", "embed_proj", "attention.q", "attention.k", "attention.v", "attention.o",
              "attention.scores", "mlp", "moe.router", "experts", "moe.dispatch", "norms", "lm_head", "mlm_head",
              "classifier", "pooler", "pair_head")
HEADS = ("lm_head", "mlm_head", "classifier", "pair_head")  # the pooler is backbone, as in HF BertModel
_NORMS = ("embed_norm", "attn_norm", "mlp_norm", "final_norm")
_HEAD_KEYS = {"lm_head": "lm_head", "mlm_transform": "mlm_head", "mlm_norm": "mlm_head", "mlm_bias": "mlm_head",
              "classifier": "classifier", "pooler": "pooler", "pair_head": "pair_head",
              "type_embed": "token_types", "embed_proj": "embed_proj"}
# model.share_layers -> the block parts that one module object serves in every layer
_SHARED_PARTS = {"all": {"attn", "attn_norm", "mlp", "mlp_norm"}, "attention": {"attn", "attn_norm"},
                 "mlp": {"mlp", "mlp_norm"}, "none": set()}

# Hugging Face `BertModel` (the published 110M) has token-type (segment) embeddings for 2 segments and the pooler
# (a d x d dense + bias on [CLS]), and no MLM head; jaxformer's encoder has them only with model.type_vocab_size
# and a pair task (objective.pair_task).
BERT_TYPE_VOCAB = 2


def _keys(path) -> tuple:
    keys = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return keys[:-1] if keys[-1] == "value" else keys


def _component(keys: tuple) -> str:
    """The report row of one parameter, from its path in the module tree."""
    top = keys[0]
    if top == "embed":
        return "embedding"
    if top == "pos_embed":
        return "positions"
    if top in _HEAD_KEYS:
        return _HEAD_KEYS[top]
    if any(k in _NORMS for k in keys):
        return "norms"
    if "attn" in keys:
        return f"attention.{keys[keys.index('attn') + 1]}"
    if "mlp" in keys:
        tail = keys[keys.index("mlp") + 1:]
        if tail == ("router",):
            return "moe.router"
        return "experts" if len(tail) == 1 else "mlp"  # MoE weights are bare Params, the dense MLP's are Linears
    raise ValueError(f"no accounting rule for parameter {'/'.join(map(str, keys))}")


def _visible_keys(t: int, causal: bool, window: int) -> float:
    """Average number of keys a query may attend to in a window of t positions."""
    if not window:
        return (t + 1) / 2 if causal else t
    if causal:
        return sum(min(i + 1, window) for i in range(t)) / t
    return sum(min(i + window - 1, t - 1) - max(i - window + 1, 0) + 1 for i in range(t)) / t


def _predicted_fraction(cfg: config_lib.Config, head: str) -> tuple[float, float]:
    """(executed, ideal) fraction of the positions that go through the objective's head."""
    t = cfg.train.seq_len
    if head == "mlm":
        from jaxformer.objectives.mlm import n_mask_slots

        return n_mask_slots(cfg.objective.mask_rate, t) / t, cfg.objective.mask_rate
    if head in ("classifier", "pair_head"):
        return 1 / t, 1 / t  # one pooled vector per sequence
    return 1.0, 1.0


def last_block_skips_rows(cfg: config_lib.Config) -> bool:
    """Whether training computes the last block at the positions its loss reads only (model.last_block_slots_only:
    masked LM, or a classifier pooling [CLS] or the last token, whose last block is not MoE)."""
    return objectives.for_config(cfg).last_block_at_slots and transformer.last_block_skips_rows(cfg.model)


def count(cfg: config_lib.Config) -> dict:
    """The accounting of a config: parameters and forward FLOPs per token for each component, totals per token
    forward and per training token (executed and ideal), and the walk-through's weight-matrix count."""
    cfg = config_lib.resolve(cfg, vocab_size=cfg.model.vocab_size or 256)
    m, t = cfg.model, cfg.train.seq_len
    objective = objectives.for_config(cfg)
    head = objective.head
    executed_fraction, ideal_fraction = _predicted_fraction(cfg, head)
    capacity = expert_capacity(m, t) if m.n_experts else 0
    # The last block at the head's positions (and [CLS] with a pair task) only: its row-wise matmuls (all but the
    # key and value projections) and its queries' attention run at that fraction of the positions, the attention
    # over all T keys (the XLA kernel with a mask where one is needed).
    last_rows = last_block_skips_rows(cfg)
    cls_row = 1 / t if cfg.objective.pair_task else 0.0
    rows_fraction = (executed_fraction + cls_row, ideal_fraction + cls_row)

    params = {name: 0 for name in COMPONENTS}
    executed = {name: 0.0 for name in COMPONENTS}
    ideal = {name: 0.0 for name in COMPONENTS}
    matrices, matrix_weights = 0, 0

    # Layers repeat with the period of the MoE pattern, so one period of blocks has every parameter shape; tracing
    # all of GPT-3's 96 blocks would take tens of seconds (the trace's cost grows with its square). With shared
    # layers the whole stack is traced: the state then holds each shared part once (under the first block).
    period = min(m.moe_every if m.n_experts else 1, m.n_layer) if m.share_layers == "none" else m.n_layer
    shared_parts = _SHARED_PARTS[m.share_layers]
    abstract = nnx.eval_shape(lambda: build_model(replace(cfg, model=replace(m, n_layer=period))))
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(abstract, nnx.Param))[0]:
        keys = _keys(path)
        name = _component(keys)
        # A block of the period stands for every layer at its place in the period.
        layers = len(range(keys[1], m.n_layer, period)) if keys[0] == "blocks" else 1
        size = math.prod(leaf.shape) * layers
        params[name] += size
        if keys[0] == "blocks" and keys[2] in shared_parts:  # one copy, run by every layer
            size = math.prod(leaf.shape) * m.n_layer
        if keys[-1] in ("bias", "scale", "mlm_bias") or name in ("embedding", "positions", "token_types", "norms",
                                                                      "lm_head"):
            continue  # elementwise, a gather, or (lm_head) counted once below from the config
        if name == "experts":  # [E, d, f] or [E, f, d]: top_k experts per token ideally, E x capacity slots run
            executed[name] += 2 * size * capacity / t
            ideal[name] += 2 * size * m.moe_top_k / m.n_experts
            matrices, matrix_weights = matrices + leaf.shape[0] * layers, matrix_weights + size
            continue
        per_token = 2 * size
        fraction = ((executed_fraction, ideal_fraction) if name in ("lm_head", "mlm_head", "classifier")
                    else (1 / t, 1 / t) if name in ("pooler", "pair_head") else (1.0, 1.0))
        executed[name] += per_token * fraction[0]
        ideal[name] += per_token * fraction[1]
        if last_rows and name in ("attention.q", "attention.o", "mlp") and (
                keys[2] in shared_parts or (m.n_layer - 1 - keys[1]) % period == 0):  # this leaf runs the last layer
            last_layer = 2 * math.prod(leaf.shape)
            executed[name] -= last_layer * (1 - rows_fraction[0])
            ideal[name] -= last_layer * (1 - rows_fraction[1])
        # Walk-through convention: one matrix per query/key/value head, one per other kernel.
        per_leaf = leaf.shape[1] if name in ("attention.q", "attention.k", "attention.v") else 1
        matrices += per_leaf * layers
        matrix_weights += size

    e = m.embed_dim or m.d_model
    # From the embedding width (the MLM head's dense ends at width E); the matmul XLA runs is padded_vocab_size
    # wide (model.vocab_pad_multiple), what the model needs is vocab_size wide.
    vocab_projection = {"executed": 2 * e * m.padded_vocab_size, "ideal": 2 * e * m.vocab_size}
    if head == "lm" and e != m.d_model:
        for kind in vocab_projection:
            vocab_projection[kind] += 2 * m.d_model * e  # back through the tied embedding projection first
    if head in ("lm", "mlm"):
        executed["lm_head"] = vocab_projection["executed"] * executed_fraction
        ideal["lm_head"] = vocab_projection["ideal"] * ideal_fraction
    matrices += 2  # the embedding and the unembedding (counted as its own matrix even when tied)
    matrix_weights += 2 * m.vocab_size * e

    d_attn = m.n_heads * m.head_dim
    impl = "xla" if m.attention_impl == "auto" else m.attention_impl
    for layer in range(m.n_layer):
        # q.k over the keys, then the weighted sum of values: 2 x 2 x d_attn FLOPs per (query, key) pair.
        window = layer_window(m, layer)
        if last_rows and layer == m.n_layer - 1:
            executed["attention.scores"] += 4 * d_attn * rows_fraction[0] * t
            ideal["attention.scores"] += 4 * d_attn * rows_fraction[1] * _visible_keys(t, objective.causal, window)
        else:
            executed["attention.scores"] += 4 * d_attn * attention_kernels.keys_multiplied(
                t, causal=objective.causal, impl=impl, window=window)
            ideal["attention.scores"] += 4 * d_attn * _visible_keys(t, objective.causal, window)
        if layer_is_moe(m, layer):
            e, c, k, d = m.n_experts, capacity, m.moe_top_k, m.d_model
            executed["moe.dispatch"] += 2 * e * c * d * 2 + 2 * k * e * c  # dispatch, combine, combine weights

    components = [{"name": name, "params": params[name], "forward_flops_executed": round(executed[name]),
                   "forward_flops_ideal": round(ideal[name])}
                  for name in COMPONENTS if params[name] or executed[name] or ideal[name]]
    total = sum(params.values())
    inactive = 0
    if m.n_experts:  # per token only top_k of n_experts experts run
        inactive = params["experts"] * (m.n_experts - m.moe_top_k) // m.n_experts
    active = total - inactive
    forward = {"executed": round(sum(executed.values())), "ideal": round(sum(ideal.values()))}
    training = {kind: 3 * value for kind, value in forward.items()}
    report = {
        "total": total,
        "by_component": {c["name"]: c["params"] for c in components if c["params"]},
        "components": components,
        "backbone": total - sum(params[h] for h in HEADS),
        "active_per_token": active,
        "non_embedding": active - params["embedding"] - params["positions"],
        "seq_len": t,
        "objective": cfg.objective.kind,
        "causal": objective.causal,
        "predicted_fraction": {"executed": executed_fraction, "ideal": ideal_fraction},
        "attention_impl": m.attention_impl,
        "forward_flops_per_token": forward,
        "training_flops_per_token": training,
        "flops_per_token": training["executed"],  # kept for readers of earlier reports
        "weight_matrices": {"matrices": matrices, "weights": matrix_weights},
    }
    if m.padded_vocab_size != m.vocab_size:
        # Zero rows that are never read: in `total` (they are allocated), in no published count.
        rows, width = m.padded_vocab_size - m.vocab_size, m.embed_dim or m.d_model
        per_row = width * (1 + (not m.tie_embeddings)) + (head == "mlm")  # embedding, untied LM head, MLM bias
        report["vocab_padding"] = {"vocab_size": m.vocab_size, "padded_vocab_size": m.padded_vocab_size,
                                   "padded_params": rows * per_row,
                                   "total_without_padding": total - rows * per_row}
    if not objective.causal:
        # BertModel has vocab_size embedding rows (export-hf drops the padding), so its count leaves them out.
        embed_padding = (m.padded_vocab_size - m.vocab_size) * (m.embed_dim or m.d_model)
        report["bertmodel_convention"] = bert_model_convention(
            {**report, "backbone": report["backbone"] - embed_padding}, m.d_model, has_types=m.type_vocab_size > 0,
            has_pooler=params["pooler"] > 0)
    return report


def bert_model_convention(report: dict, d_model: int, *, has_types: bool = False, has_pooler: bool = False
                          ) -> dict:
    """The count Hugging Face `BertModel` (or `AlbertModel`) would give an encoder of these shapes: our backbone
    (no heads) plus the pieces this model does NOT have (token types, pooler), listed separately so nobody mistakes
    them for ours."""
    added = {}
    if not has_types:
        added["token_type_embeddings"] = BERT_TYPE_VOCAB * d_model
    if not has_pooler:
        added["pooler"] = d_model * d_model + d_model
    return {"params": report["backbone"] + sum(added.values()), "backbone": report["backbone"],
            "not_in_this_model": added}


def print_table(counts: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    fwd = counts["forward_flops_per_token"]
    table = Table(title=f"parameters and forward FLOPs per token (seq {counts['seq_len']}, "
                        f"objective {counts['objective']})")
    for col in ("component", "params", "share", "fwd FLOPs executed", "fwd FLOPs ideal", "share (ideal)"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for c in counts["components"]:
        table.add_row(c["name"], f"{c['params']:,}", f"{100 * c['params'] / counts['total']:.1f}%",
                      f"{c['forward_flops_executed']:,}", f"{c['forward_flops_ideal']:,}",
                      f"{100 * c['forward_flops_ideal'] / max(fwd['ideal'], 1):.1f}%")
    table.add_row("total", f"{counts['total']:,}", "100%", f"{fwd['executed']:,}", f"{fwd['ideal']:,}", "100%",
                  style="bold")
    console = Console(width=max(Console().width, 140))  # the 175B numbers do not fit 80 columns
    console.print(table)
    train = counts["training_flops_per_token"]
    wm = counts["weight_matrices"]
    console.print(f"active per token: {counts['active_per_token']:,}   non-embedding: {counts['non_embedding']:,}   "
                  f"backbone (no head): {counts['backbone']:,}")
    console.print(f"training FLOPs per token (3 x forward): {train['executed']:,} executed, {train['ideal']:,} ideal")
    console.print(f"weight matrices (per-head q/k/v, untied unembedding, no biases/norms/positions): "
                  f"{wm['matrices']:,} matrices, {wm['weights']:,} weights")
    if "vocab_padding" in counts:
        pad = counts["vocab_padding"]
        console.print(f"vocabulary padded {pad['vocab_size']:,} -> {pad['padded_vocab_size']:,} rows "
                      f"(model.vocab_pad_multiple): {pad['padded_params']:,} of the parameters are zero padding; "
                      f"{pad['total_without_padding']:,} without it. The LM head's executed FLOPs are at the padded "
                      f"width, the ideal ones at the true vocabulary.")
    if "bertmodel_convention" in counts:
        bert = counts["bertmodel_convention"]
        extra = ", ".join(f"{k} {v:,}" for k, v in bert["not_in_this_model"].items())
        added = f" + pieces this model does not have ({extra})" if extra else " (token types and pooler included)"
        console.print(f"Hugging Face BertModel convention: {bert['params']:,} = backbone {bert['backbone']:,}{added}")
