"""The ablation report: every grid's records (`<results>/<grid>.jsonl`) as markdown tables and plots.

    python -m experiments.report [--results results]          # or: make report

For each grid with records: `<grid>.md` (one table per scale: mean ± std over seeds, the best cell bold and
starred; train FLOPs as executed, ideal FLOPs as the model needs them: params.py) and `<grid>-<scale>.png`
(validation loss against executed training FLOPs and against the tokens that carried loss, mean over seeds with
std error bars). `README.md` lists every grid, the ones without records as not run.
Runs of one variant made with other settings (another --steps or --set) are separate rows, labelled by key.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from experiments import ablations
from experiments import results as results_lib
from experiments.results import Column, Summary, mean_std

SCALE_ORDER = list(ablations.SCALES)


def _first(s: Summary, field: str):
    return s.records[0].get(field)


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _columns(grid: ablations.Grid) -> list[Column]:
    columns = [
        Column("cell", lambda s: s.label, "left"),
        Column("overrides", lambda s: " ".join(f"`{o}`" for o in _first(s, "overrides")) or "(base)", "left"),
        Column("seeds", lambda s: ",".join(str(r["seed"]) for r in sorted(s.records, key=lambda r: r["seed"]))),
        Column("params", lambda s: _fmt(_first(s, "params"), ",")),
        Column("train FLOPs", lambda s: _fmt(s.mean("train_flops"), ".3g")),
        Column("ideal FLOPs", lambda s: _fmt(s.mean("train_flops_ideal"), ".3g")),
        Column("tokens with loss", lambda s: _fmt(s.mean("tokens_with_loss"), ",.0f")),
        Column("train loss", lambda s: mean_std(s, "train_loss")),
        Column("valid loss", lambda s: mean_std(s, "valid_loss")),
    ]
    if grid.eval_overrides:
        columns.append(Column("valid loss (own rate)", lambda s: mean_std(s, "valid_loss_own")))
    columns += [Column("valid acc", lambda s: mean_std(s, "valid_accuracy", ".3f")),
                Column("tokens/s", lambda s: _fmt(s.mean("tokens_per_s"), ",.0f")),
                Column("wall s", lambda s: _fmt(s.mean("wall_s"), ".0f"))]
    return columns


def _summaries(records: list[dict]) -> list[Summary]:
    """One summary per cell key, in cell order; a variant with several settings gets its key in its label."""
    keys_of = defaultdict(set)
    for r in records:
        keys_of[r["variant"]].add(r["cell_key"])
    ordered = sorted(records, key=lambda r: (r.get("cell", 0), r["cell_key"], r["seed"]))
    return results_lib.summarize(
        ordered, cell_of=lambda r: r["cell_key"],
        label_of=lambda r: r["variant"] + (f" ({r['cell_key']})" if len(keys_of[r["variant"]]) > 1 else ""))


def describe_scale(records: list[dict]) -> str:
    """What the runs of a table were, read from their recorded configs (not from today's code)."""
    cfgs = [r["config"] for r in records]
    first = cfgs[0]
    m, t, d = first["model"], first["train"], first["data"]

    def varies(section: str, key: str) -> bool:
        return len({str(c[section][key]) for c in cfgs}) > 1

    shape = ", ".join(f"{key} {'varies' if varies('model', key) else m[key]}"
                      for key in ("n_layer", "d_model", "n_heads"))
    steps = "varies" if varies("train", "steps") else t["steps"]
    return (f"{shape}; {steps} steps of {t['batch_size']} × {t['seq_len']} tokens; data `{d['source']}` "
            f"({d['tokenizer']} tokenizer); {m['dtype']} compute; {len(records)} runs.")


def plot(name: str, scale: str, summaries: list[Summary], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in summaries:
        by_step = defaultdict(list)
        for r in s.records:
            for point in r["curve"]:
                by_step[point["step"]].append(point)
        steps = sorted(by_step)
        if not steps:
            continue
        losses = [[p["valid_loss"] for p in by_step[k]] for k in steps]
        mean = [statistics.fmean(v) for v in losses]
        std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in losses]
        for ax, field in zip(axes, ("train_flops", "tokens_with_loss"), strict=True):
            x = [statistics.fmean(p[field] for p in by_step[k]) for k in steps]
            ax.errorbar(x, mean, yerr=std, marker="o", markersize=3, capsize=2, label=f"{s.label} (n={s.n})")
    for ax, label in zip(axes, ("training FLOPs (executed)", "tokens that carried loss"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ablation {name} ({scale} scale): mean over seeds, std error bars")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_grid(name: str, records: list[dict], out: Path) -> list[Path]:
    """`<name>.md` and one plot per scale; returns the files written."""
    grid = ablations.GRIDS.get(name)
    by_scale = defaultdict(list)
    for r in records:
        by_scale[r.get("scale", "?")].append(r)
    lines = [f"# Ablation: {name}", ""]
    if grid is not None and grid.note:
        lines += [grid.note, ""]
    written = []
    for scale in sorted(by_scale, key=lambda s: (SCALE_ORDER.index(s) if s in SCALE_ORDER else len(SCALE_ORDER), s)):
        scale_records = by_scale[scale]
        summaries = _summaries(scale_records)
        image = out / f"{name}-{scale}.png"
        plot(name, scale, summaries, image)
        written.append(image)
        comparable = grid.comparable if grid is not None else True
        lines += [f"## scale {scale}", "", describe_scale(scale_records),
                  "Mean ± sample std over the seeds; ★ marks the lowest mean validation loss." if comparable else
                  "Mean ± sample std over the seeds.", "",
                  results_lib.markdown_table(summaries, _columns(grid or ablations.Grid("", dict)),
                                             best_by="valid_loss" if comparable else None),
                  "", f"![{name} ({scale})]({image.name})", ""]
    md = out / f"{name}.md"
    md.write_text("\n".join(lines))
    return [md, *written]


def render(results: Path, out: Path | None = None, *, log=print) -> dict[str, list[Path]]:
    """Render every grid of `ablations.GRIDS` (and any other `<grid>.jsonl` in `results`); returns the files
    written per grid (an empty list: not run)."""
    out = out or results
    names = list(ablations.GRIDS) + sorted(p.stem for p in results.glob("*.jsonl") if p.stem not in ablations.GRIDS)
    written, index = {}, ["# Ablation results", "",
                          "Written by `make report` from the `<grid>.jsonl` records here (`make ablate-<grid>`); "
                          "see the README's Ablations section.", "",
                          "| grid | status | cells | runs | scales |", "|---|---|---:|---:|---|"]
    for name in names:
        records = results_lib.read_records(
            results / f"{name}.jsonl", on_bad_line=lambda n, text, name=name: log(
                f"{name}.jsonl line {n} is not a JSON record, skipped: {text!r}"))
        records = [r for r in records if {"variant", "cell_key", "run_key", "seed"} <= set(r)]
        if not records:
            written[name] = []
            index.append(f"| {name} | not run | – | – | – |")
            continue
        written[name] = render_grid(name, records, out)
        n_cells = len({(r.get("scale"), r["cell_key"]) for r in records})
        n_runs = len({r["run_key"] for r in records})
        scales = ", ".join(sorted({r.get("scale", "?") for r in records}))
        index.append(f"| [{name}]({name}.md) | run | {n_cells} | {n_runs} | {scales} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(index) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="folder of <grid>.jsonl records")
    parser.add_argument("--out", type=Path, default=None, help="where tables and plots go (default: --results)")
    args = parser.parse_args(argv)
    written = render(args.results, args.out)
    for name, files in written.items():
        print(f"{name:<10} " + (", ".join(str(f) for f in files) if files else "not run"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
