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
# # Ablations: tables and plots from the grids' records
#
# Every ablation grid (`make ablate-<grid>`, `python -m experiments.ablations <grid>`) appends one JSON record per
# finished run to `results/<grid>.jsonl`: the run's resolved config, seed, parameters, training FLOPs, tokens that
# carried loss, final metrics and validation curve. This notebook renders them with `experiments/report.py` (the
# same code as `make report`): one markdown table per grid and scale (mean ± std over seeds, the best cell starred)
# and plots of validation loss against training FLOPs and against tokens with loss. It reads
# `$NOTEBOOK_RESULTS` (default `../results`, the committed CPU-scale records) and writes into `$NOTEBOOK_OUT`.
# A grid without records is listed as not run.

# %%
import os
import sys
from pathlib import Path

from IPython.display import Image, Markdown, display

sys.path.insert(0, str(Path("..").resolve()))  # the repository root, for the experiments package
from experiments import report  # noqa: E402

RESULTS = Path(os.environ.get("NOTEBOOK_RESULTS", "../results"))
OUT = Path(os.environ.get("NOTEBOOK_OUT", "../runs/notebook-ablations"))
written = report.render(RESULTS, OUT)
display(Markdown((OUT / "README.md").read_text()))

# %% [markdown]
# ## One table and one figure per grid

# %%
for files in written.values():
    for path in files:
        if path.suffix == ".md":
            display(Markdown(path.read_text()))
        else:
            display(Image(filename=str(path)))
