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
# # Ablations: tables and plots from the grids' results
#
# Every ablation grid (`make ablate-<grid>`, `python -m experiments.ablations <grid> --out DIR`) writes
# `DIR/<grid>/results.json`: one entry per variant with its overrides, final train and validation loss, parameter
# count, median tokens/s and validation curve. This notebook reads every such file under `$NOTEBOOK_RESULTS`
# (default `../results`, and `../runs/ablations`, the grids' default `--out`, when `$NOTEBOOK_RESULTS` is not set)
# and turns each grid into a table and two plots. With no results at all it shows a small SYNTHETIC example so
# that the notebook still runs; its numbers are made up and labelled so.

# %%
import json
import os
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

OUT = Path(os.environ.get("NOTEBOOK_OUT", "../runs/notebook-ablations"))
OUT.mkdir(parents=True, exist_ok=True)
folders = [Path(os.environ.get("NOTEBOOK_RESULTS", "../results"))]
if "NOTEBOOK_RESULTS" not in os.environ:
    folders.append(Path("../runs/ablations"))

grids = {}
for folder in folders:
    for path in sorted(folder.rglob("results.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "grid" in data and "runs" in data:
            grids.setdefault(data["grid"], (path, data["runs"]))
SYNTHETIC = not grids
if SYNTHETIC:  # made-up numbers in the grids' format: the shape of the report, not a result
    grids["positions (SYNTHETIC)"] = (None, [
        {"variant": v, "overrides": [f"model.positions={v}"], "step": 300, "train_loss": tl, "valid_loss": vl,
         "valid_accuracy": acc, "params": 826_240 + extra, "tokens_per_s_median": speed,
         "curve": [(100, vl + 0.6), (200, vl + 0.2), (300, vl)]}
        for v, tl, vl, acc, extra, speed in (("learned", 2.0, 2.1, 0.42, 32_768, 9000),
                                             ("sinusoidal", 1.9, 2.0, 0.44, 0, 9100),
                                             ("rope", 1.6, 1.7, 0.51, 0, 8700))])
print("grids:", {name: str(path) if path else "synthetic" for name, (path, _) in grids.items()})


# %% [markdown]
# ## One table per grid
# Sorted by validation loss (best first); Δ is the difference to the grid's first variant, its baseline.

# %%
def fmt(value, spec):
    return "" if value is None else format(value, spec)


tables = []
for name, (_, runs) in grids.items():
    base = runs[0].get("valid_loss")
    lines = [f"### {name}", "", "| variant | overrides | params | train loss | valid loss | Δ valid | valid acc | tok/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(runs, key=lambda r: (r.get("valid_loss") is None, r.get("valid_loss") or 0.0)):
        delta = None if base is None or r.get("valid_loss") is None else r["valid_loss"] - base
        lines.append(f"| {r['variant']} | `{' '.join(r.get('overrides', [])) or '(preset)'}` | {r['params']:,} | "
                     f"{fmt(r.get('train_loss'), '.4f')} | {fmt(r.get('valid_loss'), '.4f')} | {fmt(delta, '+.4f')} | "
                     f"{fmt(r.get('valid_accuracy'), '.3f')} | {fmt(r.get('tokens_per_s_median'), ',.0f')} |")
    tables.append("\n".join(lines))
report = "\n\n".join(tables)
display(Markdown(report))
(OUT / "ablations.md").write_text(report + "\n")

# %% [markdown]
# ## Plots: validation curves, and final loss against speed
# Left: validation loss over training for each variant. Right: final validation loss against median training
# throughput: down and to the right is better on both.

# %%
for name, (_, runs) in grids.items():
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in runs:
        if r.get("curve"):
            steps, losses = zip(*r["curve"], strict=True)
            left.plot(steps, losses, marker="o", label=r["variant"])
        if r.get("valid_loss") is not None and r.get("tokens_per_s_median"):
            right.scatter(r["tokens_per_s_median"], r["valid_loss"])
            right.annotate(r["variant"], (r["tokens_per_s_median"], r["valid_loss"]), fontsize=8)
    left.set_xlabel("step")
    left.set_ylabel("validation loss")
    left.legend(fontsize=8)
    right.set_xlabel("tokens/s (median)")
    right.set_ylabel("final validation loss")
    fig.suptitle(f"ablation: {name}")
    fig.tight_layout()
    fig.savefig(OUT / f"{name.split()[0]}.png", dpi=100)
    plt.show()
