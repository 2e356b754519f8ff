"""model.last_block_slots_only: a masked-LM loss runs its last block at the masked positions only, a classifier
pooling [CLS] or the last token at that one position, a distillation without the hidden-state term the student's
and the teacher's at the slots.

The reference is the same model with the whole last block (`last_block_slots_only=false`): the loss must be the
same and so must every gradient, and the compiled program must multiply less (else the option did nothing). With a
mask to apply (a window, packed documents, sentence pairs' padding) the few query rows run the XLA kernel with the
mask written out; under MoE in the last layer the whole block runs."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import objectives
from jaxformer import params as params_lib
from jaxformer.data.tokenizers import CLS, PAD, SEP
from jaxformer.model import build_model

B, T = 4, 32
CUT = np.array([9, 17, 20, 26])[:, None]  # per row: where the second document starts, or where padding starts


def _batch(kind: str) -> dict:
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (B, T + 1), 8, 97), np.int32)
    col = np.arange(T + 1)[None, :]
    if kind == "packed":  # two documents per row, their positions restarting (what data.packing=true builds)
        return {"tokens": tokens, "segment_ids": (1 + (col >= CUT)).astype(np.int32),
                "positions": np.where(col >= CUT, col - CUT, col).astype(np.int32)}
    if kind == "classify":  # right-padded sentences and their labels (the last row: a padding row, label -1)
        return {"tokens": np.where(col[:, :T] < CUT, tokens[:, :T], PAD).astype(np.int32),
                "labels": np.array([0, 1, 1, -1], np.int32)}
    if kind == "pairs":  # [CLS] A [SEP] B [SEP], then padding (segment 0), as data/pairs.py builds them
        real = col < CUT
        tokens = np.where(real, tokens, PAD)
        tokens[:, 0] = CLS
        tokens[np.arange(B), CUT[:, 0] // 2] = SEP
        tokens[np.arange(B), CUT[:, 0] - 1] = SEP
        return {"tokens": tokens, "segment_ids": real.astype(np.int32),
                "token_types": (real & (col > CUT // 2)).astype(np.int32),
                "pair_labels": np.array([0, 1, 1, 0], np.int32)}
    return {"tokens": tokens}


def _losses_and_grads(model_overrides: dict, batch: str = "plain", objective_overrides: dict | None = None):
    """(total loss, grads, XLA's FLOPs of the loss's forward) with the option on and off."""
    kind = "classify" if batch == "classify" else "mlm"
    cfg = tiny_config(kind, vocab_size=97, model=dict(n_layer=2, **model_overrides), train=dict(seq_len=T),
                      data=dict(packing=batch == "packed"), objective=objective_overrides or {})
    objective = objectives.for_config(cfg)
    graphdef, state = nnx.split(build_model(cfg))
    ex = objective.prepare({k: jnp.asarray(v) for k, v in _batch(batch).items()}, jax.random.key(2))
    out = []
    for on in (True, False):
        def loss(state, on=on):
            model = nnx.merge(graphdef, state)
            model.cfg = replace(model.cfg, last_block_slots_only=on)
            loss_sum, stats = objective.loss_sums(model, ex, rng=None)
            return objective.total_loss(loss_sum, stats, objective.counts(ex))

        value, grads = jax.jit(jax.value_and_grad(loss))(state)
        cost = jax.jit(loss).lower(state).compile().cost_analysis()
        out.append((value, grads, float((cost[0] if isinstance(cost, list) else cost)["flops"])))
    return cfg, out


CASES = {"xla": (dict(attention_impl="xla"), "plain", None),
         "blocked": (dict(attention_impl="blocked"), "plain", None),
         "cpp-postnorm-rope-gqa": (dict(attention_impl="cpp", post_norm=True, positions="rope", n_kv_heads=2),
                                   "plain", None),
         "cpp-shared-remat": (dict(attention_impl="cpp", share_layers="all", remat=True), "plain", None),
         "window": (dict(attention_impl="cpp", window=8), "plain", None),
         "packed-rope": (dict(attention_impl="cpp", positions="rope"), "packed", None),
         "sop-pairs": (dict(attention_impl="blocked", type_vocab_size=2, post_norm=True), "pairs",
                       dict(pair_task="sop")),
         "classify-cls": (dict(attention_impl="cpp"), "classify", dict(pooling="cls")),
         "classify-last-causal": (dict(attention_impl="cpp", positions="rope"), "classify",
                                  dict(pooling="last", causal=True))}


@pytest.mark.parametrize("case", CASES)
def test_the_last_block_at_the_masked_slots_gives_the_full_loss_and_gradients(case):
    model, batch, objective = CASES[case]
    if model["attention_impl"] == "cpp":
        from jaxformer.model import cpu_attention

        if (reason := cpu_attention.unavailable_reason()) is not None:
            pytest.skip(f"the C++ kernel cannot be built here: {reason}")
    cfg, ((loss_on, grads_on, flops_on), (loss_off, grads_off, flops_off)) = _losses_and_grads(model, batch,
                                                                                              objective)
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The last of 2 layers keeps its key and value projections; the rest of it runs at 5 (6 with [CLS]; 1 for a
    # classifier) of 32 rows.
    assert flops_on < 0.85 * flops_off, flops_on / flops_off
    assert params_lib.last_block_skips_rows(cfg)


@pytest.mark.parametrize("model,batch,objective", [(dict(n_experts=4, moe_every=2), "plain", None),
                                                   (dict(), "classify", dict(pooling="mean"))], ids=["moe", "mean-pool"])
def test_the_whole_last_block_runs_under_moe_or_mean_pooling(model, batch, objective):
    cfg, ((loss_on, _, flops_on), (loss_off, _, flops_off)) = _losses_and_grads(
        dict(attention_impl="xla", **model), batch, objective)
    assert flops_on == flops_off
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    assert not params_lib.last_block_skips_rows(cfg)


def test_a_distilled_mlm_student_and_its_teacher_run_the_last_block_at_the_slots():
    """Without the hidden-state term (distill_hidden=0, the default) both the student's and the frozen teacher's
    last blocks compute the masked rows alone: the same total loss and gradients, less multiplied."""
    from jaxformer.objectives import Teacher

    student_cfg = tiny_config("mlm", "objective.teacher=/t", "objective.distill_alpha=0.5", vocab_size=97,
                              model=dict(n_layer=2, attention_impl="xla"), train=dict(seq_len=T))
    objective = objectives.for_config(student_cfg)
    assert objective.last_block_at_slots and params_lib.last_block_skips_rows(student_cfg)
    graphdef, state = nnx.split(build_model(student_cfg))
    ex = objective.prepare({"tokens": jnp.asarray(_batch("plain")["tokens"])}, jax.random.key(2))
    out = []
    for on in (True, False):
        teacher_cfg = tiny_config("mlm", vocab_size=97, model=dict(n_layer=3, last_block_slots_only=on),
                                  train=dict(seq_len=T))
        t_graph, t_params = nnx.split(build_model(teacher_cfg, seed=1), nnx.Param)
        teacher = Teacher(t_params, t_graph, teacher_cfg)

        def loss(state, on=on, teacher=teacher):
            model = nnx.merge(graphdef, state)
            model.cfg = replace(model.cfg, last_block_slots_only=on)
            return objective.loss_sums(model, ex, rng=None, teacher=teacher)[0]

        value, grads = jax.jit(jax.value_and_grad(loss))(state)
        cost = jax.jit(loss).lower(state).compile().cost_analysis()
        out.append((value, grads, float((cost[0] if isinstance(cost, list) else cost)["flops"])))
    (loss_on, grads_on, flops_on), (loss_off, grads_off, flops_off) = out
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert flops_on < 0.85 * flops_off, flops_on / flops_off
    assert not params_lib.last_block_skips_rows(replace(student_cfg, objective=replace(
        student_cfg.objective, distill_hidden=0.5)))  # the cosine term reads every position
