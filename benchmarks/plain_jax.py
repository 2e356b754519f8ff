"""The framework's own ceiling: a minimal plain-JAX transformer train step with the same shapes as jaxformer's
benchmark cells, and nothing else (no config, no objective objects, no sharding rules, no NaN guard).

One fused QKV matrix, `jax.nn.dot_product_attention`, learned positions, tied embeddings; optax AdamW +
global-norm clipping; `jax.jit` with the state donated. CLM: GPT-2's pre-norm blocks with tanh GELU, loss at
every position. MLM (`causal=False`): BERT's shape, as jaxformer's MLM cell (post-norm blocks, embedding norm,
erf GELU, the MLM head's dense + GELU + norm and vocabulary bias); round(0.15 T) positions per row replaced by
MASK and the head applied there only.
If jaxformer is slower than this, the gap is jaxformer's; if both are slower than a PyTorch peer, it is in how
the step is expressed for XLA.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxformer import timing

MASK = 4  # jaxformer's MASK id (tests/test_bench.py checks the tokenizers agree)
BERT_EPS = 1e-12


def init_params(key, *, vocab: int, seq_len: int, d_model: int, n_layer: int, causal: bool = True, **_) -> dict:
    d, keys = d_model, iter(jax.random.split(key, 3 + 4 * n_layer))

    def normal(shape):
        return 0.02 * jax.random.normal(next(keys), shape, jnp.float32)

    def block():
        return {"ln1": jnp.ones(d), "ln1_b": jnp.zeros(d), "ln2": jnp.ones(d), "ln2_b": jnp.zeros(d),
                "qkv": normal((d, 3 * d)), "qkv_b": jnp.zeros(3 * d), "proj": normal((d, d)), "proj_b": jnp.zeros(d),
                "fc": normal((d, 4 * d)), "fc_b": jnp.zeros(4 * d), "out": normal((4 * d, d)), "out_b": jnp.zeros(d)}

    params = {"wte": normal((vocab, d)), "wpe": normal((seq_len, d)), "blocks": [block() for _ in range(n_layer)]}
    if causal:
        return {**params, "lnf": jnp.ones(d), "lnf_b": jnp.zeros(d)}
    return {**params, "lne": jnp.ones(d), "lne_b": jnp.zeros(d), "head": normal((d, d)), "head_b": jnp.zeros(d),
            "lnh": jnp.ones(d), "lnh_b": jnp.zeros(d), "vocab_b": jnp.zeros(vocab)}


def _layernorm(x, scale, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def loss_fn(params, inputs_BxT, targets, positions_BxM, *, n_heads: int, causal: bool):
    b, t = inputs_BxT.shape
    x = params["wte"][inputs_BxT] + params["wpe"][:t]
    d = x.shape[-1]

    def attend(x, p):
        qkv = x @ p["qkv"] + p["qkv_b"]
        q, k, v = (z.reshape(b, t, n_heads, d // n_heads) for z in jnp.split(qkv, 3, axis=-1))
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal).reshape(b, t, d) @ p["proj"] + p["proj_b"]

    def mlp(x, p):
        return jax.nn.gelu(x @ p["fc"] + p["fc_b"], approximate=causal) @ p["out"] + p["out_b"]

    if causal:  # GPT-2: pre-norm
        for p in params["blocks"]:
            x = x + attend(_layernorm(x, p["ln1"], p["ln1_b"]), p)
            x = x + mlp(_layernorm(x, p["ln2"], p["ln2_b"]), p)
        logits = _layernorm(x, params["lnf"], params["lnf_b"]) @ params["wte"].T
    else:  # BERT: post-norm, then the MLM head at the chosen positions only
        x = _layernorm(x, params["lne"], params["lne_b"], BERT_EPS)
        for p in params["blocks"]:
            x = _layernorm(x + attend(x, p), p["ln1"], p["ln1_b"], BERT_EPS)
            x = _layernorm(x + mlp(x, p), p["ln2"], p["ln2_b"], BERT_EPS)
        x = jnp.take_along_axis(x, positions_BxM[..., None], axis=1)
        x = _layernorm(jax.nn.gelu(x @ params["head"] + params["head_b"], approximate=False), params["lnh"],
                       params["lnh_b"], BERT_EPS)
        logits = x @ params["wte"].T + params["vocab_b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_step(tx, *, n_heads: int, causal: bool, mask_rate: float):
    def step(params, opt_state, tokens_BxTp1, key):
        if causal:
            inputs, targets, positions = tokens_BxTp1[:, :-1], tokens_BxTp1[:, 1:], None
        else:
            tokens = tokens_BxTp1[:, :-1]
            b, t = tokens.shape
            m = max(1, round(mask_rate * t))
            positions = jnp.argsort(jax.random.uniform(key, (b, t)), axis=1)[:, :m]
            targets = jnp.take_along_axis(tokens, positions, axis=1)
            inputs = tokens.at[jnp.arange(b)[:, None], positions].set(MASK)
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets, positions, n_heads=n_heads, causal=causal)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def time_plain_step(spec: dict) -> dict:
    """One benchmark cell of the plain-JAX step (same fields as `timing.time_train_step`'s)."""
    rss_after_import = timing.rss_mb()
    roofline_before = timing.jax_roofline()
    b, t, vocab = spec["batch_size"], spec["seq_len"], spec["vocab"]
    shape = timing.CONFIGS[spec["config"]]
    causal = spec["objective"] == "clm"
    params = init_params(jax.random.key(0), vocab=vocab, seq_len=t, causal=causal, **shape)
    opt = timing.OPT
    decay = jax.tree.map(lambda p: p.ndim >= 2, params)
    tx = optax.chain(optax.clip_by_global_norm(timing.GRAD_CLIP),
                     optax.adamw(opt["lr"], b1=opt["b1"], b2=opt["b2"], eps=opt["eps"],
                                 weight_decay=opt["weight_decay"], mask=decay))
    opt_state = tx.init(params)
    step_fn = make_step(tx, n_heads=shape["n_heads"], causal=causal, mask_rate=timing.MASK_RATE)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(8, vocab, (b, t + 1), dtype=np.int32)) for _ in range(4)]
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = step_fn.lower(params, opt_state, batches[0], key).compile()
    compile_s = time.perf_counter() - t0
    losses = []

    def step(state, batch):
        params, opt_state = state
        params, opt_state, loss = compiled(params, opt_state, batch, key)
        losses.append(loss)
        return params, opt_state

    def sync(state):
        jax.block_until_ready((state, losses[-1]))

    state = (params, opt_state)
    _, state = timing.time_steps(step, state, batches, spec["warmup"], float("inf"), sync)
    first_loss = float(losses[-1]) if losses else None
    times, state = timing.time_steps(step, state, batches, spec["steps"], spec["max_timed_s"], sync)
    return {**timing.step_stats(times, b * t), "compile_s": round(compile_s, 3), "peak_rss_mb": timing.rss_mb(),
            "rss_after_import_mb": rss_after_import, **timing.roofline_pair(timing.jax_roofline, roofline_before),
            "loss_first": first_loss, "loss_last": float(losses[-1]),
            "n_params": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))}
