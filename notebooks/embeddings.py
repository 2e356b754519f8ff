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
# # The geometry of token embeddings
#
# A token enters the model as one row of the embedding matrix: a direction in a `d_model`-dimensional space.
# Training moves tokens that are used alike towards each other, and some relations become directions of their
# own (a − b + c). Three probes, for a word-level model trained here and for imported GPT-2 / BERT weights:
# nearest neighbours by cosine similarity, an analogy probe, and a 2-D projection (PCA).
#
# The trained model: `$NOTEBOOK_RUN` when it names a decoder run directory (e.g. the README's Penn Treebank run),
# else a word-level decoder trained here for `NOTEBOOK_STEPS` steps (default 300) on Penn Treebank (or, without the
# data set, the interpreter's documentation) into `$NOTEBOOK_OUT`. GPT-2 / BERT: `$NOTEBOOK_GPT2` / `$NOTEBOOK_BERT`
# naming a local Hugging Face model directory (`save_pretrained` layout, with its tokenizer files); skipped otherwise.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from jaxformer import config as config_lib
from jaxformer import trainer
from jaxformer.data import data_root
from jaxformer.model.inspect import analogy, nearest_neighbours, pca_2d
from jaxformer.run import open_run

STEPS = int(os.environ.get("NOTEBOOK_STEPS", 300))
OUT = Path(os.environ.get("NOTEBOOK_OUT", "../runs/notebook-embeddings"))
PTB = (data_root() / "ptb/ptb.train.txt").exists()

if os.environ.get("NOTEBOOK_RUN"):
    run = open_run(os.environ["NOTEBOOK_RUN"])
else:
    source = "text:@data/ptb/ptb.train.txt" if PTB else "builtin"
    cfg = config_lib.load_config("decoder-tiny", [
        f"data.source={source}", "data.tokenizer=word", "data.valid_fraction=0.01", f"train.steps={STEPS}",
        "train.batch_size=32", "train.seq_len=64", "train.eval_every=1000", "train.checkpoint_every=1000",
        "optimizer.warmup_steps=30"])
    trainer.train_loop(cfg, OUT / "word-decoder", show_progress=False)
    run = open_run(OUT / "word-decoder")
tok = run.tokenizer
embed_VxD = np.asarray(run.state.params["embed"][...], np.float64)
print(f"{run.workdir}: {run.cfg.data.source}, tokenizer {tok.kind}, step {run.step}, embeddings {embed_VxD.shape}")


# %% [markdown]
# ## Nearest neighbours
# Cosine similarity between embedding rows. Only ordinary tokens are candidates (the specials are not words).


# %%
def word_id(word: str) -> int | None:
    ids = tok.encode(word)
    return int(ids[0]) if len(ids) == 1 and ids[0] >= 8 else None


ordinary = np.arange(8, tok.vocab_size)
chosen = ["monday", "stock", "company", "he", "million", "bank", "japan", "president", "buy", "good", "year", "the",
          "def", "return", "list", "string", "file", "class", "a", "e"]
chosen = [w for w in chosen if word_id(w) is not None][:10]
for word in chosen:
    near = nearest_neighbours(embed_VxD, embed_VxD[word_id(word)], 6, exclude=(word_id(word),), candidates=ordinary)
    print(f"{word:>10}: " + "  ".join(f"{tok.decode([i])!r} {s:.2f}" for i, s in near))


# %% [markdown]
# ## Analogies: a − b + c
# Reading `a − b + c` as "c is to ? as b is to a": the answer is the nearest row to the offset vector, a, b and c
# themselves excluded. The rank of the expected answer among all ordinary tokens says how close the geometry is to
# carrying the relation (1 = solved). Small models trained for minutes rarely solve these; the imported models below
# show what scale adds.


# %%
def analogy_table(embed, encode_one, decode_one, probes, candidates):
    rows = []
    for a, b, c, expected in probes:
        ids = [encode_one(w) for w in (a, b, c, expected)]
        if None in ids:
            continue
        best = analogy(embed, *ids[:3], k=len(candidates), candidates=candidates)
        rank = 1 + [i for i, _ in best].index(ids[3])
        rows.append((f"{a} - {b} + {c}", expected, decode_one(best[0][0]), rank))
    for probe, expected, got, rank in rows:
        print(f"{probe:>32} -> {got!r:>12}  (expected {expected!r}: rank {rank})")
    return rows


PROBES = [("king", "man", "woman", "queen"), ("paris", "france", "japan", "tokyo"), ("was", "is", "are", "were"),
          ("tuesday", "monday", "june", "july"), ("bigger", "big", "small", "smaller"), ("his", "he", "she", "her"),
          ("sold", "sell", "buy", "bought"), ("stocks", "stock", "bond", "bonds")]
trained_rows = analogy_table(embed_VxD, word_id, lambda i: tok.decode([i]), PROBES, ordinary)

# %% [markdown]
# ## A 2-D projection
# The 150 most frequent words (the word tokenizer numbers words by frequency) projected on the first two principal
# components of their embedding rows. Two components keep only a small part of the variance: neighbourhoods in 2-D
# are suggestive, not faithful.

# %%
shown = ordinary[:150]
xy, kept = pca_2d(embed_VxD[shown])
fig, ax = plt.subplots(figsize=(9, 7))
ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.4)
for (x, y), i in zip(xy, shown, strict=True):
    ax.annotate(repr(tok.decode([i]))[1:-1], (x, y), fontsize=7)
ax.set_title(f"{run.cfg.data.source}, step {run.step}: PCA of 150 embedding rows "
             f"({kept[0]:.0%} + {kept[1]:.0%} of the variance)")
plt.show()


# %% [markdown]
# ## Imported GPT-2 / BERT weights
# The same probes on the embedding matrix of a published model imported with `jaxformer.interop.from_hf`, with the
# model's own tokenizer (words that are not a single token of it are skipped).

# %%
def imported_probes(path: str, name: str) -> None:
    from transformers import AutoTokenizer

    from jaxformer.interop import from_hf

    model = from_hf(path)
    hf_tok = AutoTokenizer.from_pretrained(path)
    embed = np.asarray(model.params["embed"][...], np.float64)
    prefix = " " if model.cfg.objective.kind == "clm" else ""  # GPT-2's BPE marks a word start with its space

    def encode_one(word):
        ids = hf_tok.encode(prefix + word, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def decode_one(i):
        return hf_tok.decode([i]).strip()

    for word in ("monday", "stock", "king", "good"):
        i = encode_one(word)
        if i is not None:
            near = nearest_neighbours(embed, embed[i], 6, exclude=(i,))
            print(f"{name} {word:>8}: " + "  ".join(f"{decode_one(j)!r} {s:.2f}" for j, s in near))
    analogy_table(embed, encode_one, decode_one, PROBES, np.arange(len(embed)))
    words = [w for w in ("monday", "tuesday", "friday", "june", "july", "king", "queen", "man", "woman", "paris",
                         "france", "tokyo", "japan", "stock", "bond", "bank", "good", "bad", "big", "small")
             if encode_one(w) is not None]
    xy, kept = pca_2d(embed[[encode_one(w) for w in words]])
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xy[:, 0], xy[:, 1], s=8)
    for (x, y), w in zip(xy, words, strict=True):
        ax.annotate(w, (x, y), fontsize=8)
    ax.set_title(f"{name}: PCA of {len(words)} embedding rows ({kept[0]:.0%} + {kept[1]:.0%})")
    plt.show()


for env, name in (("NOTEBOOK_GPT2", "GPT-2"), ("NOTEBOOK_BERT", "BERT")):
    if os.environ.get(env):
        imported_probes(os.environ[env], name)
    else:
        print(f"{name}: skipped (set ${env} to a local Hugging Face model directory to include it)")
