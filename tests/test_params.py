"""`jaxformer params`: published parameter counts, FLOPs per component against a count written here from the
formulas, and against what XLA actually multiplies in the forward pass of a small model."""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import config as config_lib
from jaxformer import objectives
from jaxformer import params as params_lib
from jaxformer.cli import main
from jaxformer.model import build_model


def report(preset: str, *overrides: str) -> dict:
    return params_lib.count(config_lib.load_config(preset, list(overrides)))


def row(counts: dict, name: str) -> dict:
    return next((c for c in counts["components"] if c["name"] == name),
                {"params": 0, "forward_flops_executed": 0, "forward_flops_ideal": 0})


# ---------------------------------------------------------------------------------------------- published counts

def test_gpt3_175b_weight_matrices_as_in_the_walkthrough():
    """Per-head query/key/value matrices, one output and two MLP matrices per layer, embedding and unembedding:
    96 x (3 x 96 + 1 + 2) + 2 matrices; 12 d^2 per layer + 2 V d weights."""
    wm = report("gpt3-175b")["weight_matrices"]
    assert wm == {"matrices": 27_938, "weights": 175_181_291_520}
    d, L, V = 12288, 96, 50257
    assert wm["weights"] == L * 12 * d * d + 2 * V * d


def test_gpt2_small_published_total():
    counts = report("gpt2-small")
    assert counts["total"] == 124_439_808
    assert counts["by_component"]["embedding"] == 50257 * 768 and counts["by_component"]["positions"] == 1024 * 768


def test_bert_base_bertmodel_convention():
    """Hugging Face BertModel (109,482,240) = our encoder without its MLM head + token-type embeddings (2 x 768)
    + pooler (768 x 768 + 768): two pieces a model without segment types and pair task does not have, added here
    by hand, not by the model. (bert-base itself has both: tests/test_pairs.py.)"""
    counts = report("bert-base", "model.type_vocab_size=0", "objective.pair_task=")
    heads = counts["by_component"]["mlm_head"]
    assert heads == 768 * 768 + 768 + 2 * 768 + 30522  # transform, its norm, the output bias (decoder is tied)
    backbone = counts["total"] - heads
    assert counts["backbone"] == backbone
    token_type, pooler = 2 * 768, 768 * 768 + 768
    assert backbone + token_type + pooler == 109_482_240
    assert counts["bertmodel_convention"]["params"] == 109_482_240
    assert counts["bertmodel_convention"]["not_in_this_model"] == {"token_type_embeddings": token_type,
                                                                   "pooler": pooler}
    assert "bertmodel_convention" not in report("gpt2-small")  # a decoder gets no BERT-convention line


def test_total_matches_the_full_module_tree():
    """The report traces one period of layers; its total must equal the full model's parameter count."""
    cfg = tiny_config("clm", model=dict(n_layer=5, n_experts=4, moe_every=2, mlp="swiglu", n_kv_heads=2))
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    full = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert params_lib.count(cfg)["total"] == full


# ---------------------------------------------------------------------------------------------- FLOPs from formulas

def naive_forward_flops(cfg, *, causal: bool, head: str, mask_rate: float = 0.0, executed: bool) -> float:
    """Matmul FLOPs per token of one forward pass, written out from the architecture (2 per multiply-add)."""
    m = cfg.model
    d, n, k, h, L, V, T = m.d_model, m.n_heads, m.n_kv_heads or m.n_heads, m.head_dim or m.d_model // m.n_heads, \
        m.n_layer, m.vocab_size, cfg.train.seq_len
    f = round(m.mlp_ratio * d)
    qkvo = 2 * (d * n * h + 2 * d * k * h + n * h * d)
    mlp = 2 * (3 if m.mlp != "gelu" else 2) * d * f
    keys = T if executed or not causal else (T + 1) / 2
    scores = 2 * 2 * n * h * keys
    if head != "mlm":
        return L * (qkvo + mlp + scores) + 2 * d * V
    predicted = math.ceil(mask_rate * T) / T if executed else mask_rate
    head_flops = predicted * (2 * d * d + 2 * d * V)
    if not m.last_block_slots_only:
        return L * (qkvo + mlp + scores) + head_flops
    # the last block at the masked positions only: all but its key and value projections
    kv = 2 * 2 * d * k * h
    return (L - 1) * (qkvo + mlp + scores) + kv + predicted * (qkvo - kv + mlp + scores) + head_flops


def test_untied_lm_head_is_counted_once():
    """The bug: an untied head's matrix was counted as a non-embedding parameter AND as the head (gpt2-small
    855 M vs 1,087 M training FLOPs per token for the same matmuls)."""
    tied, untied = report("gpt2-small"), report("gpt2-small", "model.tie_embeddings=false")
    assert untied["total"] - tied["total"] == 768 * 50257  # the extra matrix is a parameter...
    assert untied["training_flops_per_token"] == tied["training_flops_per_token"]  # ...but not extra work
    d, L, V, T = 768, 12, 50257, 1024
    assert tied["training_flops_per_token"]["executed"] == 6 * (12 * L * d * d + d * V) + 12 * L * d * T \
        == 854_438_400
    assert untied["flops_per_token"] < 1e9  # was 1,087 M


@pytest.mark.parametrize("model", [dict(), dict(n_kv_heads=1), dict(mlp="swiglu", mlp_ratio=8 / 3),
                                   dict(tie_embeddings=False, bias=False), dict(head_dim=16, n_layer=3),
                                   dict(last_block_slots_only=False)],
                         ids=["mha", "mqa", "swiglu", "untied-nobias", "head-dim", "full-last-block"])
@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_forward_flops_match_the_formulas(kind, model):
    cfg = tiny_config(kind, model=model, train=dict(seq_len=32))
    counts = params_lib.count(cfg)
    for executed in (True, False):
        want = naive_forward_flops(cfg, causal=kind == "clm", head="mlm" if kind == "mlm" else "lm",
                                   mask_rate=cfg.objective.mask_rate, executed=executed)
        got = counts["forward_flops_per_token"]["executed" if executed else "ideal"]
        assert got == pytest.approx(want, abs=1), executed
    assert counts["training_flops_per_token"] == {k: 3 * v for k, v in counts["forward_flops_per_token"].items()}


def test_causal_attention_both_ways_and_mlm_head_at_masked_positions():
    dec, enc = report("gpt2-small"), report("bert-base")
    d_attn, L = 768, 12
    scores = row(dec, "attention.scores")
    assert scores["forward_flops_executed"] == 4 * L * d_attn * 1024  # the full square, as XLA computes it
    assert scores["forward_flops_ideal"] == 2 * L * d_attn * 1025  # each query sees (T+1)/2 keys on average
    enc_scores = row(enc, "attention.scores")
    # every key of the 512, the last layer's queries at the 77 slots and [CLS] only (0.15 x 512 + 1 ideally)
    assert enc_scores["forward_flops_executed"] == round(4 * d_attn * 512 * (L - 1 + 78 / 512))
    assert enc_scores["forward_flops_ideal"] == round(4 * d_attn * 512 * (L - 1 + 0.15 + 1 / 512))
    head = row(enc, "lm_head")
    assert head["forward_flops_ideal"] == round(0.15 * 2 * 768 * 30522)  # mask_rate x positions
    assert head["forward_flops_executed"] == round(77 / 512 * 2 * 768 * 30522)  # ceil(0.15 x 512) slots
    assert enc["predicted_fraction"] == {"executed": 77 / 512, "ideal": 0.15}


def test_sliding_window_ideal_counts_only_visible_keys():
    counts = params_lib.count(tiny_config("clm", resolved=False, model=dict(window=4, n_layer=2, global_every=2),
                                          train=dict(seq_len=16)))
    d_attn = 32
    visible_windowed = sum(min(i + 1, 4) for i in range(16)) / 16  # layer 0
    visible_global = 17 / 2  # layer 1 stays global
    assert row(counts, "attention.scores")["forward_flops_ideal"] == round(
        4 * d_attn * (visible_windowed + visible_global))
    assert row(counts, "attention.scores")["forward_flops_executed"] == 2 * 4 * d_attn * 16


def test_moe_experts_top_k_ideal_and_capacity_executed():
    cfg = tiny_config("clm", resolved=False, model=dict(n_experts=4, moe_top_k=2, moe_every=2),
                      train=dict(seq_len=16))
    counts = params_lib.count(cfg)
    d, f, T = 32, 128, 16
    capacity = math.ceil(2 * T * 1.25 / 4)
    experts = row(counts, "experts")
    assert experts["params"] == 4 * 2 * d * f  # one MoE layer (layer 1 of 2)
    assert experts["forward_flops_ideal"] == 2 * 2 * (2 * d * f)
    assert experts["forward_flops_executed"] == round(4 * capacity / T * 2 * (2 * d * f))
    assert counts["active_per_token"] == counts["total"] - 2 * 2 * d * f


# ---------------------------------------------------------------------------------------------- against XLA

def _dot_flops(jaxpr) -> float:
    """2 x (output size) x (contracted size) summed over every dot_general, sub-jaxprs included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _dot_flops(inner)
    return total


@pytest.mark.parametrize("kind,model", [("clm", dict()), ("mlm", dict()),
                                        ("clm", dict(n_experts=4, moe_top_k=2, n_kv_heads=2)),
                                        ("clm", dict(attention_impl="blocked")),
                                        ("mlm", dict(attention_impl="blocked"))],
                         ids=["clm", "mlm", "clm-moe-gqa", "clm-blocked", "mlm-blocked"])
def test_executed_flops_match_xla(kind, model):
    """The forward pass of a small model, lowered without allocating: the report's executed count equals the
    matmul FLOPs of the traced program, and XLA's cost analysis (which also counts elementwise work: norms,
    softmax, GELU, biases) lies within a few per cent above it. `auto` is counted as the full square, so it is
    traced as `xla` here; `blocked` (T = 160: two whole query blocks and a ragged one) multiplies less."""
    model = {"attention_impl": "xla", **model}
    cfg = tiny_config(kind, vocab_size=512, model=dict(dict(n_layer=2, d_model=256, n_heads=4), **model),
                      train=dict(seq_len=160 if model["attention_impl"] == "blocked" else 128))
    counts = params_lib.count(cfg)
    objective = objectives.for_config(cfg)
    b, t = 2, cfg.train.seq_len
    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))
    ex = {"inputs": jax.ShapeDtypeStruct((b, t), jnp.int32)}
    if kind == "mlm":
        from jaxformer.objectives.mlm import n_mask_slots

        ex["mask_positions"] = jax.ShapeDtypeStruct((b, n_mask_slots(cfg.objective.mask_rate, t)), jnp.int32)

    def forward(state, ex):  # the training loss's path (an MLM's last block at the masked positions only)
        return objective.logits(nnx.merge(graphdef, state), ex)[0]

    ours = counts["forward_flops_per_token"]["executed"] * b * t
    traced = _dot_flops(jax.make_jaxpr(forward)(state, ex).jaxpr)
    assert traced == pytest.approx(ours, rel=1e-6)  # the report rounds per-token FLOPs to integers
    cost = jax.jit(forward).lower(state, ex).compile().cost_analysis()
    xla = float((cost[0] if isinstance(cost, list) else cost)["flops"])
    assert ours <= xla <= 1.05 * ours, xla / ours


# ---------------------------------------------------------------------------------------------- the command

def test_params_json_keeps_total_and_reports_components(capsys):
    assert main(["params", "--preset", "gpt2-small", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 124_439_808
    names = [c["name"] for c in out["components"]]
    assert names[:7] == ["embedding", "positions", "attention.q", "attention.k", "attention.v", "attention.o",
                         "attention.scores"] and "mlp" in names and "lm_head" in names
    assert sum(c["params"] for c in out["components"]) == out["total"]
    assert sum(c["forward_flops_executed"] for c in out["components"]) == out["forward_flops_per_token"]["executed"]


def test_params_table_prints_components_and_conventions(capsys):
    assert main(["params", "--preset", "bert-base"]) == 0
    out = capsys.readouterr().out
    for text in ("attention.scores", "mlm_head", "109,482,240", "pooler", "training FLOPs per token"):
        assert text in out, text
