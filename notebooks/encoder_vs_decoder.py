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
# `objective.kind` differs. `STEPS` keeps this quick on a CPU; raise it on an accelerator.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt

from jaxformer import config as config_lib
from jaxformer import generate, trainer
from jaxformer.data import data_root
from jaxformer.metrics import read_metrics
from jaxformer.run import open_run

STEPS = int(os.environ.get("NOTEBOOK_STEPS", 300))
SHAKESPEARE = (data_root() / "tinyshakespeare/input.txt").exists()  # $JAXFORMER_DATA, see the README
SOURCE = "text:@data/tinyshakespeare/input.txt" if SHAKESPEARE else "builtin"
OUT = Path(os.environ.get("NOTEBOOK_OUT", "../runs/notebook-encoder-vs-decoder"))
COMMON = [f"train.steps={STEPS}", f"data.source={SOURCE}", "train.eval_every=50", "train.log_every=25",
          "train.checkpoint_every=1000"]
print("data:", SOURCE, "| steps:", STEPS)

# %%
results = {}
for preset in ("decoder-tiny", "encoder-tiny"):
    cfg = config_lib.load_config(preset, COMMON)
    results[preset] = trainer.train_loop(cfg, OUT / preset, show_progress=False)
    print(preset, {k: round(v, 4) for k, v in results[preset].items() if k.startswith("valid_")})
runs = {preset: open_run(OUT / preset) for preset in results}  # the saved runs, as eval/sample/fill-mask see them

# %% [markdown]
# ## Loss curves
# The two losses measure different things — the decoder predicts every next token from its left context, the
# encoder predicts masked tokens from both sides — so the encoder's loss is lower per predicted token, but it
# gets a learning signal from only 15% of the positions.

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for preset in results:
    rows = read_metrics(OUT / preset)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"{preset} train")
    ev = [r for r in rows if "valid_loss" in r]
    ax.plot([r["step"] for r in ev], [r["valid_loss"] for r in ev], "o--", label=f"{preset} valid")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats per predicted token)")
ax.legend()
plt.show()

# %% [markdown]
# ## What each one can do: continue text, fill a blank

# %%
dec = runs["decoder-tiny"]
tok = dec.tokenizer
prompt = "ROMEO:" if SHAKESPEARE else "The "
new = generate.generate(dec.state.graphdef, dec.state.params, [tok.encode(prompt)], max_new_tokens=120,
                        temperature=0.8, seed=0)[0]
print(prompt + tok.decode(new))

# %%
enc = runs["encoder-tiny"]
text = "First Citizen:\nBefore we proceed any further, hear me [MASK]peak." if SHAKESPEARE \
    else "The [MASK]unction returns a value."
for i, cands in enumerate(generate.fill_mask(enc.state.graphdef, enc.state.params, tok.encode(text), top_k=5)):
    print(f"mask {i}:", [(tok.decode([t]), round(p, 3)) for t, p in cands])

# %%
summary = {p: {k: v for k, v in r.items() if k != "run"} for p, r in results.items()}
print(json.dumps(summary, indent=1))
