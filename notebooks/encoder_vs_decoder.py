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
# # Encoder vs decoder: one model, one step, two objectives
#
# The same transformer is trained twice on the same data with the same budget: once as a GPT-style decoder
# (next-token loss, causal attention) and once as a BERT-style encoder (masked-token loss on 15% of the
# tokens, bidirectional attention). Both go through the very same compiled `train_step`; only
# `objective.kind` differs.
#
# Runs: when finished decoder and encoder runs exist — `make compare-decoder compare-encoder` (the named experiments,
# into `../runs/compare-*`) or run directories under `$NOTEBOOK_RESULTS/compare` (default `../results/compare`) —
# they are opened as they are; otherwise two small runs of `NOTEBOOK_STEPS` steps (default 300) are trained into
# `$NOTEBOOK_OUT`.

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxformer import config as config_lib
from jaxformer import generate, rundir, trainer
from jaxformer.data import data_root
from jaxformer.metrics import read_metrics
from jaxformer.model.inspect import attention_maps
from jaxformer.run import open_run

STEPS = int(os.environ.get("NOTEBOOK_STEPS", 300))
OUT = Path(os.environ.get("NOTEBOOK_OUT", "../runs/notebook-encoder-vs-decoder"))
COMPARE = Path(os.environ.get("NOTEBOOK_RESULTS", "../results")) / "compare"
SHAKESPEARE = (data_root() / "tinyshakespeare/input.txt").exists()  # $JAXFORMER_DATA, see the README
SOURCE = "text:@data/tinyshakespeare/input.txt" if SHAKESPEARE else "builtin"


def finished_runs(candidates: list[Path]) -> dict[str, Path]:
    """{"decoder": dir, "encoder": dir} among the candidate run directories that have a checkpoint."""
    found = {}
    for workdir in candidates:
        if not (workdir / "config.json").exists():
            continue
        if any((workdir / "checkpoints").glob("[0-9]*")):
            kind = rundir.read_config(workdir).objective.kind
            found.setdefault({"clm": "decoder", "mlm": "encoder"}.get(kind, kind), workdir)
    return found


candidates = sorted(COMPARE.glob("*"))
if "NOTEBOOK_RESULTS" not in os.environ:
    candidates += [Path("../runs/compare-decoder"), Path("../runs/compare-encoder")]
found = finished_runs(candidates)
if {"decoder", "encoder"} <= found.keys():
    workdirs = {family: found[family] for family in ("decoder", "encoder")}
    print("opening the compare runs:", {k: str(v) for k, v in workdirs.items()})
else:
    common = [f"train.steps={STEPS}", f"data.source={SOURCE}", "train.eval_every=50", "train.log_every=25",
              "train.checkpoint_every=1000"]
    workdirs = {}
    for family, preset in (("decoder", "decoder-tiny"), ("encoder", "encoder-tiny")):
        workdirs[family] = OUT / preset
        result = trainer.train_loop(config_lib.load_config(preset, common), workdirs[family], show_progress=False)
        print(family, {k: round(v, 4) for k, v in result.items() if k.startswith("valid_")})
runs = {family: open_run(w) for family, w in workdirs.items()}  # as eval / sample / fill-mask see them
print({family: f"{run.cfg.data.source}, step {run.step}" for family, run in runs.items()})

# %% [markdown]
# ## Loss curves
# The two losses measure different things — the decoder predicts every next token from its left context, the
# encoder predicts masked tokens from both sides — so the encoder's loss is lower per predicted token, but it
# gets a learning signal from only 15% of the positions.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for family, run in runs.items():
    rows = read_metrics(run.workdir)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{family} train")
    ev = [r for r in rows if "valid_loss" in r]
    ax.plot([r["step"] for r in ev], [r["valid_loss"] for r in ev], "o--", label=f"{family} valid")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per predicted token)")
ax.legend()
plt.show()

# %% [markdown]
# ## The decoder: a softmax with a temperature, sampled again and again
# At every step the decoder turns its last hidden state into one logit per vocabulary entry; sampling divides the
# logits by the temperature before the softmax. Below 1 the distribution sharpens towards the most likely tokens,
# above 1 it flattens towards uniform. The bars are the distribution the first new token is drawn from; the text is
# what repeated draws give.

# %%
dec = runs["decoder"]
tok = dec.tokenizer
prompt = "ROMEO:\nWhat" if SHAKESPEARE else "The "
prompt_ids = tok.encode(prompt)
model = dec.state.model()
hidden, _, _ = model(jnp.asarray(prompt_ids)[None], causal=True)
logits_V = np.asarray(model.logits(hidden[0, -1]).astype(jnp.float32))
top = np.argsort(-logits_V)[:12]
temperatures = (0.5, 1.0, 1.5)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), sharey=True)
for ax, t in zip(axes, temperatures, strict=True):
    probs_V = np.asarray(jax.nn.softmax(logits_V / t))
    ax.bar(range(len(top)), probs_V[top])
    ax.set_xticks(range(len(top)), [repr(tok.decode([i]))[1:-1] or "·" for i in top], rotation=90)
    ax.set_title(f"T = {t}: top-12 hold {probs_V[top].sum():.0%}")
axes[0].set_ylabel(f"P(next token | {prompt!r})")
fig.tight_layout()
plt.show()
for t in temperatures:
    new = generate.generate(dec.state.graphdef, dec.state.params, [prompt_ids], max_new_tokens=80, temperature=t,
                            seed=0)[0]
    print(f"--- temperature {t}\n{prompt}{tok.decode(new)}\n")

# %% [markdown]
# ## The encoder: fill in the blank from both sides
# (After a few hundred steps with the tiny preset's learned absolute positions, the encoder still sits near the
# unigram plateau the README describes and mostly guesses frequent characters; `model.positions=rope` or more steps
# get it past that.)

# %%
enc = runs["encoder"]
etok = enc.tokenizer
texts = (["First Citizen:\nBefore we proceed any further, hear me [MASK]peak.", "KING RICHARD:\nMy [MASK]ord",
          "To be, or not to be, that is the [MASK]uestion"] if SHAKESPEARE
         else ["The [MASK]unction returns a value.", "for x in [MASK]ange(10):", "import o[MASK]"])
for text in texts:
    cands = generate.fill_mask(enc.state.graphdef, enc.state.params, etok.encode(text), top_k=5)[0]
    print(f"{text!r}\n   ", ", ".join(f"{etok.decode([t])!r} {p:.2f}" for t, p in cands))

# %% [markdown]
# ## Attention: the causal triangle and the full square
# The same sentence through both models; one panel per layer (rows) and head (columns), queries down, keys across.
# The decoder's weights above the diagonal are exactly zero (a token cannot look ahead); the encoder's fill the
# square. The weights come from an explicit softmax used only for inspection (`jaxformer.model.inspect`), in the
# model's own forward pass.

# %%
sentence = "ROMEO:\nBut soft, what light" if SHAKESPEARE else "def add(a, b): return a"
for family, run in runs.items():
    ids = run.tokenizer.encode(sentence)
    maps = attention_maps(run.state.model(), jnp.asarray(ids)[None], causal=run.objective.causal)[:, 0]
    n_layer, n_head = maps.shape[:2]
    labels = [repr(run.tokenizer.decode([i]))[1:-1] for i in ids]
    fig, axes = plt.subplots(n_layer, n_head, figsize=(2.2 * n_head, 2.2 * n_layer), squeeze=False)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.suptitle(f"{family} ({run.objective.kind}): {''.join(labels)!r}")
    fig.tight_layout()
    plt.show()
    above = np.triu(maps, k=1).sum() / maps.sum()
    print(f"{family}: share of attention on later tokens = {above:.3f}")

# %%
summary = {family: {k: round(v, 4) for k, v in read_metrics(run.workdir)[-1].items() if k.startswith("valid_")}
           for family, run in runs.items()}
print(summary)
