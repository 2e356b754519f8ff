"""Mixture-of-experts MLP: top-k routing with a capacity per expert and the Switch load-balancing loss.

Routing groups are single sequences: every row of the batch routes its own T tokens, so capacity, the position
cumsum and the dispatch never cross the batch (and data) sharding. Expert weights carry the `expert` axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer.config import ModelConfig
from jaxformer.model import dot_grads
from jaxformer.model.layers import activation, dtypes, mlp_hidden, residual_std


def expert_capacity(cfg: ModelConfig, tokens_per_group: int) -> int:
    return max(1, math.ceil(cfg.moe_top_k * tokens_per_group * cfg.moe_capacity_factor / cfg.n_experts))


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        param_dtype, self.dtype = dtypes(cfg)
        e, d, f = cfg.n_experts, cfg.d_model, mlp_hidden(cfg)
        self.cfg = cfg
        self.act = activation(cfg.mlp, cfg.gelu_approximate)
        normal = jax.nn.initializers.normal(cfg.init_std)
        self.router = nnx.Param(normal(rngs.params(), (d, e), param_dtype), axes=("embed", None))
        self.up = nnx.Param(normal(rngs.params(), (e, d, f), param_dtype), axes=("expert", "embed", "mlp"))
        self.gate = nnx.Param(normal(rngs.params(), (e, d, f), param_dtype), axes=("expert", "embed", "mlp")) \
            if cfg.mlp != "gelu" else None
        self.down = nnx.Param(jax.nn.initializers.normal(residual_std(cfg))(rngs.params(), (e, f, d), param_dtype),
                              axes=("expert", "mlp", "embed"))

    def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        b, t, _ = x_BxTxD.shape
        e, k, c = cfg.n_experts, cfg.moe_top_k, expert_capacity(cfg, t)
        logits_BxTxE = jnp.einsum("btd,de->bte", x_BxTxD.astype(jnp.float32), self.router[...].astype(jnp.float32))
        probs_BxTxE = jax.nn.softmax(logits_BxTxE, axis=-1)
        top_p_BxTxK, top_e_BxTxK = jax.lax.top_k(probs_BxTxE, k)
        if k > 1:  # renormalise the chosen experts' weights (Mixtral); top-1 keeps the raw probability (Switch)
            top_p_BxTxK = top_p_BxTxK / top_p_BxTxK.sum(-1, keepdims=True)

        # Slot of each (token, choice) in its expert's buffer: all first choices are served before second ones.
        choice_BxKxTxE = jax.nn.one_hot(top_e_BxTxK.transpose(0, 2, 1), e, dtype=jnp.int32)
        flat_BxKTxE = choice_BxKxTxE.reshape(b, k * t, e)
        slot_BxKTxE = (jnp.cumsum(flat_BxKTxE, axis=1) - 1) * flat_BxKTxE
        kept_BxKTxE = flat_BxKTxE * (slot_BxKTxE < c)
        dispatch_BxKTxExC = kept_BxKTxE[..., None] * jax.nn.one_hot(slot_BxKTxE, c, dtype=jnp.int32)
        dispatch_BxKxTxExC = dispatch_BxKTxExC.reshape(b, k, t, e, c)
        weight_BxKxT = top_p_BxTxK.transpose(0, 2, 1)
        combine_BxTxExC = jnp.einsum("bktec,bkt->btec", dispatch_BxKxTxExC.astype(jnp.float32), weight_BxKxT)
        dispatch_BxTxExC = dispatch_BxKxTxExC.sum(1).astype(self.dtype)

        x_in_BxExCxD = jnp.einsum("btec,btd->becd", dispatch_BxTxExC, x_BxTxD.astype(self.dtype))
        grads = cfg.dot_grads
        h_BxExCxF = dot_grads.einsum("becd,edf->becf", x_in_BxExCxD, self.up[...].astype(self.dtype), impl=grads)
        if self.gate is not None:
            gate = dot_grads.einsum("becd,edf->becf", x_in_BxExCxD, self.gate[...].astype(self.dtype), impl=grads)
            h_BxExCxF = self.act(gate) * h_BxExCxF
        else:
            h_BxExCxF = self.act(h_BxExCxF)
        y_BxExCxD = dot_grads.einsum("becf,efd->becd", h_BxExCxF, self.down[...].astype(self.dtype), impl=grads)
        y_BxTxD = jnp.einsum("btec,becd->btd", combine_BxTxExC.astype(self.dtype), y_BxExCxD)

        # Switch Transformer load balancing: E * sum_e (fraction of routed choices to e) * (mean router prob of e).
        frac_E = choice_BxKxTxE.astype(jnp.float32).mean(axis=(0, 1, 2))
        aux = e * jnp.sum(frac_E * probs_BxTxE.mean(axis=(0, 1)))
        return y_BxTxD, aux
