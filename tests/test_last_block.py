"""model.last_block_slots_only: a masked-LM loss runs its last block at the masked positions only.

The reference is the same model with the whole last block (`last_block_slots_only=false`): the loss must be the
same and so must every gradient, and the compiled program must multiply less (else the option did nothing).
Where the rows cannot be skipped (segment ids, a window or MoE in the last layer) the program is the full one."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import objectives
from jaxformer import params as params_lib
from jaxformer.model import build_model

B, T = 4, 32


def _batch(packed: bool) -> dict:
    tokens = jax.random.randint(jax.random.key(1), (B, T + 1), 8, 97)
    if not packed:
        return {"tokens": tokens}
    # two documents per row, their positions restarting at the boundary (what data.packing=true builds)
    cut = np.array([9, 17, 20, 26])[:, None]
    col = np.arange(T + 1)[None, :]
    return {"tokens": tokens, "segment_ids": jnp.asarray(1 + (col >= cut), jnp.int32),
            "positions": jnp.asarray(np.where(col >= cut, col - cut, col), jnp.int32)}


def _loss_and_grads(model_overrides: dict, packed: bool = False):
    """(loss, grads, XLA's FLOPs of the loss's forward) with the option on and off."""
    cfg = tiny_config("mlm", vocab_size=97, model=dict(n_layer=2, **model_overrides), train=dict(seq_len=T),
                      data=dict(packing=packed))
    objective = objectives.for_config(cfg)
    graphdef, state = nnx.split(build_model(cfg))
    ex = objective.prepare(_batch(packed), jax.random.key(2))
    out = []
    for on in (True, False):
        def loss(state, on=on):
            model = nnx.merge(graphdef, state)
            model.cfg = replace(model.cfg, last_block_slots_only=on)
            return objective.loss_sums(model, ex, rng=None)[0]

        value, grads = jax.jit(jax.value_and_grad(loss))(state)
        cost = jax.jit(loss).lower(state).compile().cost_analysis()
        out.append((value, grads, float((cost[0] if isinstance(cost, list) else cost)["flops"])))
    return cfg, out


@pytest.mark.parametrize("model", [dict(attention_impl="xla"), dict(attention_impl="blocked"),
                                   dict(attention_impl="cpp", post_norm=True, positions="rope", n_kv_heads=2),
                                   dict(attention_impl="cpp", share_layers="all", remat=True)],
                         ids=["xla", "blocked", "cpp-postnorm-rope-gqa", "cpp-shared-remat"])
def test_the_last_block_at_the_masked_slots_gives_the_full_loss_and_gradients(model):
    if model["attention_impl"] == "cpp":
        from jaxformer.model import cpu_attention

        if (reason := cpu_attention.unavailable_reason()) is not None:
            pytest.skip(f"the C++ kernel cannot be built here: {reason}")
    cfg, ((loss_on, grads_on, flops_on), (loss_off, grads_off, flops_off)) = _loss_and_grads(model)
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # The last of 2 layers keeps its key and value projections; the rest of it runs at 5 of 32 rows.
    assert flops_on < 0.85 * flops_off, flops_on / flops_off
    assert params_lib.last_block_skips_rows(cfg)


@pytest.mark.parametrize("model,packed", [(dict(window=8), False), (dict(n_experts=4, moe_every=2), False),
                                          (dict(), True)], ids=["window", "moe", "packed"])
def test_the_whole_last_block_runs_where_rows_cannot_be_skipped(model, packed):
    cfg, ((loss_on, _, flops_on), (loss_off, _, flops_off)) = _loss_and_grads(
        {"attention_impl": "xla", **model}, packed=packed)
    assert flops_on == flops_off
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    assert not params_lib.last_block_skips_rows(cfg)
