"""TrainState and THE train step: one pure `(state, batch, rng) -> (state, metrics)` for encoders and decoders.

The objective (CLM, MLM or classification fine-tuning) is a static config value carried by the state, so every
family compiles the same Python function `train_step`; `compile_train_step` wraps it in `jax.jit` with explicit
shardings and donation.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from jaxformer import objectives, parallel
from jaxformer.config import Config, OptimizerConfig
from jaxformer.model import build_model

log = logging.getLogger(__name__)
# XLA:CPU's memory-aware instruction order; it is read only from XLA_FLAGS when JAX starts its backend (a
# per-jit compiler option does not reach the scheduler).
CPU_MEMORY_SCHEDULER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    opt_state: Any
    graphdef: Any = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    cfg: Config = struct.field(pytree_node=False)
    # Distillation: the frozen `objectives.Teacher`, carried into the same jit (sharded like params, never
    # differentiated, never saved in the run's checkpoints); None otherwise.
    teacher: Any = None

    def model(self):
        return nnx.merge(self.graphdef, self.params)


def lr_schedule(opt: OptimizerConfig, steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, cosine decay to `lr * min_lr_ratio` at the last step."""
    decay_steps = max(steps, opt.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(0.0, opt.lr, opt.warmup_steps, decay_steps, opt.lr * opt.min_lr_ratio)


@functools.lru_cache(maxsize=32)  # one object per config, so equal configs give equal (static) states
def make_optimizer(cfg: Config) -> optax.GradientTransformation:
    opt = cfg.optimizer

    def decay_mask(params):  # matrices decay; biases, norm scales and other vectors do not
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    adamw = optax.adamw(lr_schedule(opt, cfg.train.steps), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                        weight_decay=opt.weight_decay, mask=decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip), adamw) if opt.grad_clip > 0 else adamw
    return _head_only(tx) if cfg.objective.linear_probe else tx


HEAD = "classifier"  # the Transformer attribute holding the classification head


def _head_only(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Linear probe: `tx` (clipping, AdamW, weight decay) on the head's parameters only; every other parameter
    gets an exactly-zero update and has no optimizer state. (optax.multi_transform would leave MaskedNode
    placeholders in the state, which the sharding rules and checkpoints do not expect.)"""
    def init(params):
        return tx.init(params[HEAD])

    def update(updates, state, params=None):
        head, state = tx.update(updates[HEAD], state, None if params is None else params[HEAD])
        updates = jax.tree.map(jnp.zeros_like, updates)
        updates[HEAD] = head
        return updates, state

    return optax.GradientTransformation(init, update)


def _stop_backbone(params) -> Any:
    """Linear probe: stop_gradient on everything but the head, so no backbone gradient is even computed."""
    def one(path, p):
        return p if getattr(path[0], "key", None) == HEAD else jax.lax.stop_gradient(p)
    return jax.tree_util.tree_map_with_path(one, params)


def _init(cfg: Config, graphdef, tx) -> TrainState:
    params = nnx.split(build_model(cfg, cfg.train.seed), nnx.Param)[1]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      graphdef=graphdef, tx=tx, cfg=cfg)


@functools.lru_cache(maxsize=32)
def abstract_state(cfg: Config) -> TrainState:
    """Shapes and dtypes of the state, with no allocation (also used for parameter accounting)."""
    tx = make_optimizer(cfg)
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(cfg)), nnx.Param)[0]
    return jax.eval_shape(lambda: _init(cfg, graphdef, tx))


def state_shardings(abstract: TrainState, mesh: Mesh) -> TrainState:
    return parallel.tree_shardings(abstract, mesh)


def init_train_state(cfg: Config, mesh: Mesh) -> tuple[TrainState, TrainState]:
    """Initialise the state directly into its shardings (no full copy on one device); returns (state, shardings)."""
    abstract = abstract_state(cfg)
    shardings = state_shardings(abstract, mesh)
    init = jax.jit(lambda: _init(cfg, abstract.graphdef, abstract.tx), out_shardings=shardings)
    return init(), shardings


def unwrapped(state: TrainState, shardings: TrainState) -> TrainState:
    """`state` with its nnx Variables unwrapped into their arrays (the structure of `shardings`): the form the
    training loop passes through the jitted step, so that a call rebuilds no Variable objects. For a GPT-2 small
    state (591 leaves) the host's time to dispatch a step goes from ~5 ms to ~1.5 ms; on a GPU that is what
    bounds the steps per second of a small model. `wrapped` turns it back."""
    leaves, plain = jax.tree.leaves(state), jax.tree.structure(shardings)
    return jax.tree.unflatten(plain, leaves) if plain.num_leaves == len(leaves) else state


def wrapped(state: TrainState, like: TrainState) -> TrainState:
    """The `unwrapped` state back in the structure of `like` (nnx Variables), for checkpoints and evaluation."""
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(state))


def _split_micro(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] taking rows i, i+k, i+2k, ... into micro-batch i, so that every batch shard
    contributes equally to every micro-batch (no resharding)."""
    return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)


def train_step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    """One optimizer step on the global batch, accumulating `train.grad_accum` micro-batches.

    A step whose loss or gradients are not finite changes neither parameters nor optimizer state (the step
    counter still advances, so the data position does too); `metrics["skipped"]` is 1 for it."""
    cfg = state.cfg
    objective = objectives.for_config(cfg)
    rng = jax.random.fold_in(rng, state.step)
    rng_objective, rng_dropout = jax.random.split(rng)
    # The objective sees the whole batch at once, so accumulation changes nothing about the masks drawn.
    ex = objective.prepare(batch, rng_objective)
    counts = objective.counts(ex)  # global-batch normalisers, so micro-batch losses add up to the batch's
    k = cfg.train.grad_accum
    aux_weight = cfg.model.moe_aux_weight if cfg.model.n_experts else 0.0
    teacher = {} if state.teacher is None else {"teacher": state.teacher}

    def loss_fn(params, micro, micro_rng):
        if cfg.objective.linear_probe:
            params = _stop_backbone(params)
        model = nnx.merge(state.graphdef, params)
        rng_ = micro_rng if cfg.model.dropout > 0 else None
        loss_sum, stats = objective.loss_sums(model, micro, rng=rng_, **teacher)
        return objective.total_loss(loss_sum, stats, counts) + aux_weight * stats["aux"] / k, (loss_sum, stats)

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if k == 1:
        grads, (loss_sum, stats) = grad_fn(state.params, ex, rng_dropout)
    else:
        micro_batches = jax.tree.map(lambda x: _split_micro(x, k), ex)

        def accumulate(carry, inputs):
            i, micro = inputs
            grads, (loss_sum, stats) = grad_fn(state.params, micro, jax.random.fold_in(rng_dropout, i))
            return jax.tree.map(jnp.add, carry, (grads, loss_sum, stats)), None

        # Sums shaped like one micro-batch's (an objective may add its own, e.g. distillation's loss terms).
        _, (loss_shape, stats_shape) = jax.eval_shape(grad_fn, state.params,
                                                      jax.tree.map(lambda x: x[0], micro_batches), rng_dropout)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, stats_shape))
        zeros = (jax.tree.map(jnp.zeros_like, state.params), *zeros)
        (grads, loss_sum, stats), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), micro_batches))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Keep the last good values: the select fuses into the elementwise update, no extra pass over memory.
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    metrics = {**objective.step_metrics(loss_sum, stats, counts), "n_tokens": stats["n_tokens"],
               "grad_norm": grad_norm, "skipped": 1.0 - finite.astype(jnp.float32),
               "lr": lr_schedule(cfg.optimizer, cfg.train.steps)(state.step)}
    if cfg.model.n_experts:
        metrics["moe_aux"] = stats["aux"] / k
    # An objective's separate loss terms, per predicted token (distillation: its `loss` is the hard loss alone).
    metrics.update({name: value / counts["n_tokens"] for name, value in stats.get("terms", {}).items()})
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: TrainState, batch: dict, rng: jax.Array) -> dict:
    """Summed loss terms on one batch (no dropout; MLM masks from `rng`, fixed by the caller for comparability)."""
    objective = objectives.for_config(state.cfg)
    ex = objective.prepare(batch, rng)
    loss_sum, stats = objective.loss_sums(state.model(), ex, rng=None)
    return {"loss_sum": loss_sum, **{key: value for key, value in stats.items() if key != "aux"}}


def remat_warning(cfg: Config, mesh: Mesh) -> str | None:
    """One sentence when `model.remat` cannot save memory here.

    XLA:CPU orders a program for concurrency by default: it recomputes a rematerialised block right after its
    forward pass and keeps every layer's activations alive until the backward pass, so remat on and off compile
    to the same memory. Under its memory-aware scheduler an 8-layer GPT-2-width step (batch 8 x 256) needs
    3,689 -> 2,645 MB of XLA scratch, 2,052 MB with remat; it is not the default because small models ran up to
    ~3% slower with it (README, "Memory on CPUs")."""
    if (cfg.model.remat and mesh.devices.flat[0].platform == "cpu"
            and CPU_MEMORY_SCHEDULER not in os.environ.get("XLA_FLAGS", "")):
        return (f"model.remat saves no memory under XLA:CPU's default scheduler; start the process with "
                f"XLA_FLAGS={CPU_MEMORY_SCHEDULER} for it to.")
    return None


def compile_train_step(shardings: TrainState, mesh: Mesh):
    """`train_step` under jit with explicit shardings: state in place (donated), batch over the batch axes
    (the leading dim of every batch array, [B, T] windows and [B] classification labels alike)."""
    if warning := remat_warning(shardings.cfg, mesh):
        log.warning(warning)
    batch_sh = parallel.batch_sharding(mesh, ndim=1)
    return jax.jit(train_step, in_shardings=(shardings, batch_sh, parallel.replicated(mesh)),
                   out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0)


def compile_eval_step(shardings: TrainState, mesh: Mesh):
    batch_sh = parallel.batch_sharding(mesh, ndim=1)
    return jax.jit(eval_step, in_shardings=(shardings, batch_sh, parallel.replicated(mesh)),
                   out_shardings=parallel.replicated(mesh))
