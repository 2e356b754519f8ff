# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Anatomy of a transformer: where the parameters and the FLOPs are, and what each layer does
#
# Part 1 takes three published shapes apart without allocating them (`jaxformer params`, built on
# `jax.eval_shape`): GPT-3 175B, GPT-2 small and BERT-base. Part 2 runs one forward pass of a small trained
# decoder block by block and measures the residual stream: how large it is after each layer, and how much each
# attention and MLP sub-layer adds to it. `NOTEBOOK_STEPS` sets the training steps of that model (CI runs a
# few); `NOTEBOOK_OUT` the folder its run goes to.

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from IPython.display import Markdown, display

from jaxformer import config as config_lib
from jaxformer import params as params_lib
from jaxformer import trainer
from jaxformer.data import data_root
from jaxformer.run import open_run

STEPS = int(os.environ.get("NOTEBOOK_STEPS", 300))
OUT = Path(os.environ.get("NOTEBOOK_OUT", "../runs/notebook-anatomy"))
SHAKESPEARE = (data_root() / "tinyshakespeare/input.txt").exists()  # $JAXFORMER_DATA, see the README
SOURCE = "text:@data/tinyshakespeare/input.txt" if SHAKESPEARE else "builtin"
PRESETS = ("gpt3-175b", "gpt2-small", "bert-base")
reports = {p: params_lib.count(config_lib.load_config(p, [])) for p in PRESETS}  # shapes only: nothing allocated
print("data:", SOURCE, "| steps:", STEPS)

# %% [markdown]
# ## Part 1: parameters and FLOPs per component
#
# FLOPs are those of the matrix multiplications (2 per multiply-add), per token of a training window, forward
# pass. *Executed* is what XLA multiplies: the full T x T attention square even when the model is causal, the MLM
# head at its fixed prediction slots. *Ideal* is what the model needs: a causal query sees (T+1)/2 keys on average,
# and an encoder's MLM head runs on the 15% of positions that are masked. Training costs 3 x the forward pass.

# %%
def fmt(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


for preset, r in reports.items():
    lines = [f"### {preset} (seq {r['seq_len']}, objective {r['objective']})", "",
             "| component | params | share | fwd FLOPs/token executed | fwd FLOPs/token ideal | FLOP share (ideal) |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in r["components"]:
        lines.append(f"| {c['name']} | {c['params']:,} | {100 * c['params'] / r['total']:.1f}% "
                     f"| {fmt(c['forward_flops_executed'])} | {fmt(c['forward_flops_ideal'])} "
                     f"| {100 * c['forward_flops_ideal'] / r['forward_flops_per_token']['ideal']:.1f}% |")
    fwd, train = r["forward_flops_per_token"], r["training_flops_per_token"]
    lines.append(f"| **total** | **{r['total']:,}** | 100% | {fmt(fwd['executed'])} | {fmt(fwd['ideal'])} | 100% |")
    lines += ["", f"Training FLOPs per token: {fmt(train['executed'])} executed, {fmt(train['ideal'])} ideal "
                  f"(= 6 x {fmt(train['ideal'] / 6)}, against {fmt(r['active_per_token'])} parameters)."]
    display(Markdown("\n".join(lines)))

# %% [markdown]
# The rule of thumb "training FLOPs ≈ 6 × parameters" holds when the per-token matmul weights dominate. It
# breaks down at both ends: GPT-2 small has 31% of its parameters in the embedding table, which is a lookup
# (no FLOPs); GPT-3's attention scores over 2048 positions are extra work that no parameter accounts for.

# %%
names = [n for n in params_lib.COMPONENTS  # the components any of the three has
         if any(c["name"] == n and (c["params"] or c["forward_flops_ideal"]) for r in reports.values()
                for c in r["components"])]
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
width = 0.8 / len(PRESETS)
y = np.arange(len(names))
for i, (preset, r) in enumerate(reports.items()):
    rows = {c["name"]: c for c in r["components"]}
    params_share = [100 * rows[n]["params"] / r["total"] if n in rows else 0 for n in names]
    flops_share = [100 * rows[n]["forward_flops_ideal"] / r["forward_flops_per_token"]["ideal"] if n in rows else 0
                   for n in names]
    axes[0].barh(y + i * width, params_share, width, label=preset)
    axes[1].barh(y + i * width, flops_share, width, label=preset)
axes[0].set_yticks(y + width, names)
axes[0].invert_yaxis()
axes[0].set_xlabel("% of parameters")
axes[1].set_xlabel("% of forward FLOPs per token (ideal)")
axes[0].legend()
fig.suptitle("Where the parameters are vs where the work is")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### GPT-3 175B, matrix by matrix
#
# Counted the way the walk-through does: one query, key and value matrix per head (96 heads x 96 layers), one
# output matrix and two MLP matrices per layer, the embedding and the unembedding (as its own matrix), and no
# biases, norms or position table.

# %%
g = config_lib.resolve(config_lib.load_config("gpt3-175b", [])).model
wm = reports["gpt3-175b"]["weight_matrices"]
per_layer = {"query": g.n_heads * g.d_model * g.head_dim, "key": g.n_kv_heads * g.d_model * g.head_dim,
             "value": g.n_kv_heads * g.d_model * g.head_dim, "output": g.n_heads * g.head_dim * g.d_model,
             "MLP up": g.d_model * 4 * g.d_model, "MLP down": 4 * g.d_model * g.d_model}
lines = ["| matrices | count | weights |", "|---|---:|---:|",
         f"| embedding | 1 | {g.vocab_size * g.d_model:,} |"]
counts_per_layer = {"query": g.n_heads, "key": g.n_kv_heads, "value": g.n_kv_heads, "output": 1, "MLP up": 1,
                    "MLP down": 1}
for name, weights in per_layer.items():
    lines.append(f"| {name} (x {g.n_layer} layers) | {counts_per_layer[name] * g.n_layer:,} "
                 f"| {weights * g.n_layer:,} |")
lines += [f"| unembedding | 1 | {g.vocab_size * g.d_model:,} |",
          f"| **total** | **{wm['matrices']:,}** | **{wm['weights']:,}** |"]
assert wm["weights"] == 2 * g.vocab_size * g.d_model + g.n_layer * sum(per_layer.values())
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Part 2: one forward pass, layer by layer
#
# A small decoder (`decoder-tiny`: 4 layers, d 128) trained for `STEPS` steps. Each pre-norm block reads the
# residual stream x, and adds to it: x ← x + attention(norm(x)), then x ← x + MLP(norm(x)). We replay the
# blocks one at a time with the trained weights, check that the replay gives exactly the model's output, and
# measure the size of the stream and of each addition.

# %%
cfg = config_lib.load_config("decoder-tiny", [f"train.steps={STEPS}", f"data.source={SOURCE}",
                                              f"train.eval_every={max(STEPS, 1)}", "train.log_every=25",
                                              "train.checkpoint_every=1000"])
result = trainer.train_loop(cfg, OUT / "decoder-tiny", show_progress=False)
run = open_run(OUT / "decoder-tiny")
model = nnx.merge(run.state.graphdef, run.state.params)
text = "ROMEO:\nWhat light through yonder window breaks?" if SHAKESPEARE else "The function returns a value."
tokens = jnp.asarray([run.tokenizer.encode(text)], jnp.int32)
print("valid loss:", round(result.get("valid_loss", float("nan")), 3), "| tokens:", tokens.shape[1])


# %%
def trace(model, tokens_BxT):
    """The decoder's forward pass, one sub-layer at a time: the stream after each, and what each added."""
    t = tokens_BxT.shape[1]
    positions = jnp.arange(t)[None, :]
    x = jnp.take(model.embed[...], tokens_BxT, axis=0)
    if model.pos_embed is not None:
        x = x + jnp.take(model.pos_embed[...], positions, axis=0)
    steps = [("embed", x, None)]
    for i, block in enumerate(model.blocks):
        added, _ = block.attn(block.attn_norm(x), positions, causal=True)
        x = x + added
        steps.append((f"{i}.attn", x, added))
        added, _ = block.mlp(block.mlp_norm(x))
        x = x + added
        steps.append((f"{i}.mlp", x, added))
    return steps, model.final_norm(x)


steps, final = trace(model, tokens)
reference, _, _ = model(tokens, causal=True)
np.testing.assert_allclose(np.asarray(final), np.asarray(reference), rtol=1e-5, atol=1e-5)  # the replay is exact
norm = lambda a: float(jnp.linalg.norm(a, axis=-1).mean())  # mean over positions of the per-token L2 norm
lines = ["| after | ‖stream‖ | ‖added‖ | ‖added‖ / ‖stream before‖ |", "|---|---:|---:|---:|"]
before = None
for name, x, added in steps:
    ratio = f"{norm(added) / before:.2f}" if added is not None else ""
    lines.append(f"| {name} | {norm(x):.2f} | {norm(added) if added is not None else 0:.2f} | {ratio} |")
    before = norm(x)
display(Markdown("\n".join(lines)))

# %%
labels = [name for name, _, _ in steps]
fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(labels, [norm(x) for _, x, _ in steps], "o-", label="residual stream ‖x‖")
ax.bar([n for n, _, a in steps if a is not None and n.endswith("attn")],
       [norm(a) for n, _, a in steps if a is not None and n.endswith("attn")], alpha=0.6, label="attention adds")
ax.bar([n for n, _, a in steps if a is not None and n.endswith("mlp")],
       [norm(a) for n, _, a in steps if a is not None and n.endswith("mlp")], alpha=0.6, label="MLP adds")
ax.set_ylabel("mean L2 norm per token")
ax.set_title(f"decoder-tiny after {STEPS} steps: the residual stream, sub-layer by sub-layer")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### What the stream "says" after each layer
#
# The same unembedding the model ends with (final norm, then the tied embedding matrix) applied to the stream
# after each sub-layer: the most likely next character at the last position, and its probability ("logit lens").
# Straight after the embedding, a tied unembedding tends to predict the current character itself (a vector's dot
# product with itself is large); in the trained run the prediction changes to the next character as soon as the
# first blocks have written into the stream, and the later layers mostly sharpen or hedge it. In the table above,
# the sizes differ a lot between sub-layers: compare how much each one adds relative to the stream it reads.

# %%
for name, x, _ in steps:
    probs = jax.nn.softmax(model.logits(model.final_norm(x[:, -1])), axis=-1)[0]
    top = int(jnp.argmax(probs))
    print(f"{name:>8}: {run.tokenizer.decode([top])!r:>6}  p={float(probs[top]):.3f}")
