"""The output of `make compare` (experiments/compare.py): `runs.json` (every run: resolved config, seed, params,
training FLOPs, metrics, wall time), `table.md` (mean ± std over seeds per cell) and two plots, pretraining
validation loss against training FLOPs and downstream dev accuracy with error bars (std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILES = ("runs.json", "table.md", "pretrain_loss_vs_flops.png", "downstream_accuracy.png")


def mean_std(values: list[float], digits: int = 3) -> str:
    """'m ± s (n)' with the sample std (ddof=1); one value has no spread to show."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f} (n={len(values)})"


def _rows(runs: list[dict], **match) -> list[dict]:
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def downstream_cells(runs: list[dict]) -> tuple[list[str], list[tuple[str, dict[str, list[float]]]]]:
    """(tasks, [(row label, {task: [dev accuracy per seed]})]) in the table's order."""
    tasks = sorted({r["task"] for r in runs if r.get("task")})
    rows = [("bag of words (TF-IDF + logistic regression)", {t: [r["metrics"]["dev_accuracy"] for r in
                                                              _rows(runs, kind="bow", task=t)] for t in tasks})]
    for family in ("decoder", "encoder"):
        for init in ("pretrained", "random"):
            fine = _rows(runs, kind="finetune", family=family, init=init)
            if fine:
                pooling = fine[0]["pooling"]
                rows.append((f"{family} {init} · fine-tune ({pooling})",
                             {t: [r["metrics"]["dev_accuracy"] for r in _rows(fine, task=t)] for t in tasks}))
            for pooling in ("cls", "mean", "last"):
                probes = _rows(runs, kind="probe", family=family, init=init, pooling=pooling)
                if probes:
                    rows.append((f"{family} {init} · probe ({pooling})",
                                 {t: [r["metrics"]["dev_accuracy"] for r in _rows(probes, task=t)] for t in tasks}))
    return tasks, rows


def markdown(summary: dict) -> str:
    runs = summary["runs"]
    partial = [f"**Partial:** {summary['missing']} planned runs (or probe sets) had not finished and are left out.",
               ""] if summary.get("missing") else []
    lines = [f"# Encoder vs decoder at matched training FLOPs (scale `{summary['scale']}`)", "", *partial,
             "Mean ± sample std over seeds (n = number of runs). Downstream figures are dev accuracy (SST-2: GLUE "
             "dev; rt-polarity: the fixed seeded 10% split).", "", "## Pretraining", "",
             "| family | init | params | steps | training FLOPs (executed) | valid loss | perplexity | "
             "fill-mask top-1 | fill-mask top-5 |", "|---|---|---|---|---|---|---|---|---|"]
    for family in ("decoder", "encoder"):
        for init in ("pretrained", "random"):
            rs = _rows(runs, kind="pretrain", family=family, init=init)
            if not rs:
                continue
            m = [r["metrics"] for r in rs]
            lines.append(f"| {family} | {init} | {rs[0]['params']:,} | {rs[0]['steps']} | "
                         f"{rs[0]['training_flops']:.3g} | {mean_std([x['valid_loss'] for x in m])} | "
                         f"{mean_std([x.get('valid_perplexity') for x in m], 1)} | "
                         f"{mean_std([x.get('fill_mask_top1') for x in m])} | "
                         f"{mean_std([x.get('fill_mask_top5') for x in m])} |")
    tasks, rows = downstream_cells(runs)
    lines += ["", "## Downstream dev accuracy", "", "| backbone · method (pooling) | " + " | ".join(tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    lines += [f"| {label} | " + " | ".join(mean_std(cells[t]) for t in tasks) + " |" for label, cells in rows]
    fine = _rows(runs, kind="finetune")
    if fine:
        lines += ["", "## Fine-tuning: training accuracy (last logged window) vs dev", "",
                  "| backbone | task | train accuracy | dev accuracy |", "|---|---|---|---|"]
        for family in ("decoder", "encoder"):
            for init in ("pretrained", "random"):
                for t in tasks:
                    rs = _rows(fine, family=family, init=init, task=t)
                    if rs:
                        lines.append(f"| {family} {init} | {t} | "
                                     f"{mean_std([r['metrics'].get('train_accuracy') for r in rs])} | "
                                     f"{mean_std([r['metrics']['dev_accuracy'] for r in rs])} |")
    samples = [s for r in _rows(runs, kind="pretrain", family="decoder", init="pretrained")[:1]
               for s in r["metrics"].get("samples", [])]
    if samples:
        lines += ["", "## Decoder samples (seed 0, temperature 0.8, top-k 40)", ""]
        lines += [f"- `{' / '.join(s.splitlines())}`" for s in samples]  # line ends as ' / ' keep the list intact
    lines += ["", f"{len(runs)} runs; wall time of this invocation {summary['wall_s']:.0f} s (finished runs are "
              f"read back, not re-run). Every run with its full config: runs.json.", ""]
    return "\n".join(lines)


def plot_pretraining(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for family, color in (("decoder", "C0"), ("encoder", "C1")):
        for i, r in enumerate(_rows(runs, kind="pretrain", family=family, init="pretrained")):
            curve = r.get("curve", [])
            ax.plot([c["training_flops"] for c in curve], [c["valid_loss"] for c in curve], color=color, marker=".",
                    alpha=0.8, label=f"{family} ({'CLM' if family == 'decoder' else 'MLM, masked tokens'})"
                    if i == 0 else None)
    ax.set_xlabel("training FLOPs (executed)")
    ax.set_ylabel("validation loss (nats / predicted token)")
    ax.set_title("pretraining at matched FLOPs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_downstream(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, rows = downstream_cells(runs)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) * max(len(tasks), 1)), 4.5))
    width = 0.8 / max(len(rows), 1)
    for i, (label, cells) in enumerate(rows):
        means = [np.mean(cells[t]) if cells[t] else np.nan for t in tasks]
        stds = [np.std(cells[t], ddof=1) if len(cells[t]) > 1 else 0.0 for t in tasks]
        ax.bar(np.arange(len(tasks)) + (i - len(rows) / 2 + 0.5) * width, means, width, yerr=stds, capsize=2,
               label=label, color=plt.cm.tab20(i % 20))
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("dev accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=6, ncol=2, loc="upper left")
    ax.set_title("downstream (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(summary: dict, out: Path) -> None:
    from jaxformer import atomic

    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "runs.json", json.dumps(summary, indent=1, default=str) + "\n")
    atomic.write_text(out / "table.md", markdown(summary))
    plot_pretraining(summary["runs"], out / "pretrain_loss_vs_flops.png")
    plot_downstream(summary["runs"], out / "downstream_accuracy.png")
