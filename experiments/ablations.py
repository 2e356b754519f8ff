"""Ablation grids: each is a list of named config overrides trained with the same budget, data and seed.

A grid's base is a named experiment (experiments/ablation_decoder.py, ablation_encoder.py): its docstring gives
the scale and the measured base result.

    python -m experiments.ablations positions --steps 300          # or: make ablate-positions
    python -m experiments.ablations --list

Each variant is a normal run directory under `--out/<grid>/<variant>` (re-running resumes / skips finished
ones); the grid's results go to `results.json`, a table on stdout, and `loss.png` (validation loss curves).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GRIDS: dict[str, dict] = {
    "positions": {"experiment": "ablation-decoder", "variants": {
        "learned": ["model.positions=learned"], "sinusoidal": ["model.positions=sinusoidal"],
        "rope": ["model.positions=rope"]}},
    "norms": {"experiment": "ablation-decoder", "variants": {
        "layernorm": ["model.norm=layernorm"], "rmsnorm": ["model.norm=rmsnorm"],
        "post-layernorm": ["model.post_norm=true"]}},
    "attention": {"experiment": "ablation-decoder", "variants": {
        "mha": ["model.n_kv_heads=4"], "gqa-2": ["model.n_kv_heads=2"], "mqa": ["model.n_kv_heads=1"],
        "window-32": ["model.window=32"], "window-32-global-every-2": ["model.window=32", "model.global_every=2"]}},
    "mlp": {"experiment": "ablation-decoder", "variants": {
        "gelu": ["model.mlp=gelu"], "swiglu": ["model.mlp=swiglu", "model.mlp_ratio=2.6667"],
        "geglu": ["model.mlp=geglu", "model.mlp_ratio=2.6667"]}},
    "moe": {"experiment": "ablation-decoder", "variants": {
        "dense": [], "moe-4x-top2": ["model.n_experts=4", "model.moe_top_k=2"],
        "moe-4x-top1": ["model.n_experts=4", "model.moe_top_k=1"]}},
    "mask-rate": {"experiment": "ablation-encoder", "variants": {
        f"mask-{r}": [f"objective.mask_rate={r}"] for r in ("0.15", "0.3", "0.4")}},
    "objective": {"experiment": "ablation-decoder", "variants": {
        "decoder-clm": ["objective.kind=clm"], "encoder-mlm": ["objective.kind=mlm"]}},
}


def run_grid(name: str, *, steps: int | None, out: Path, extra: list[str], show_progress: bool = True) -> list[dict]:
    from jaxformer import experiments, trainer
    from jaxformer import metrics as metrics_lib
    from jaxformer import params as params_lib

    grid = GRIDS[name]
    results = []
    for variant, overrides in grid["variants"].items():
        steps_override = [f"train.steps={steps}"] if steps else []
        cfg = experiments.load_config(grid["experiment"], [*steps_override, *overrides, *extra])
        workdir = out / name / variant
        trainer.train_loop(cfg, workdir, show_progress=show_progress)
        rows = metrics_lib.read_metrics(workdir)
        final = rows[-1]
        speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
        results.append({"variant": variant, "overrides": overrides, "step": final["step"],
                        "train_loss": final["loss"], "valid_loss": final.get("valid_loss"),
                        "valid_accuracy": final.get("valid_accuracy"),
                        "params": params_lib.count(cfg)["total"],
                        "tokens_per_s_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
                        "curve": [(r["step"], r["valid_loss"]) for r in rows if "valid_loss" in r]})
    return results


def write_report(name: str, results: list[dict], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    folder = out / name
    (folder / "results.json").write_text(json.dumps({"grid": name, "runs": results}, indent=2) + "\n")
    table = Table(title=f"ablation: {name}")
    for col in ("variant", "params", "train loss", "valid loss", "valid acc", "tok/s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in results:
        table.add_row(r["variant"], f"{r['params']:,}", f"{r['train_loss']:.4f}",
                      f"{r['valid_loss']:.4f}" if r["valid_loss"] is not None else "",
                      f"{r['valid_accuracy']:.3f}" if r["valid_accuracy"] is not None else "",
                      f"{r['tokens_per_s_median']:,.0f}" if r["tokens_per_s_median"] else "")
    Console().print(table)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        if r["curve"]:
            steps, losses = zip(*r["curve"], strict=True)
            ax.plot(steps, losses, marker="o", label=r["variant"])
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title(f"ablation: {name}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", choices=list(GRIDS))
    parser.add_argument("--list", action="store_true", help="list the grids and their variants")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per variant (default: the base experiment's, 300)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--set", dest="extra", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every variant (e.g. data.source=text:...)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.list or not args.grid:
        for name, grid in GRIDS.items():
            print(f"{name} ({grid['experiment']}): {', '.join(grid['variants'])}")
        return 0
    from jaxformer.errors import UserError
    try:
        results = run_grid(args.grid, steps=args.steps, out=args.out, extra=args.extra,
                           show_progress=not args.no_progress)
    except UserError as err:
        print(f"ablation {args.grid}: {err}", file=sys.stderr)
        return 2
    write_report(args.grid, results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
