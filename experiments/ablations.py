"""Ablation grids: named variants of one base run, each trained with several seeds, one JSON record per run.

    python -m experiments.ablations positions                     # or: make ablate-positions  (SCALE=cpu)
    python -m experiments.ablations mlp --scale full --cell 1 --seeds 2   # one cell, one seed (a job array task)
    python -m experiments.ablations --list [--scale cpu]          # the grids, their cells and overrides
    python -m experiments.report                                  # or: make report  (tables and plots)

A cell is one variant of a grid; it runs once per seed. Its run directory is
`<out>/<grid>/<variant>/seed<seed>-<key>`, where the key hashes every setting that changes its result
(experiments/results.py), and each finished run appends one record to `<results>/<grid>.jsonl`. A run whose
key already has a record there is skipped; a run with any other setting (seed, steps, scale, `--set`) gets its
own directory and record. An interrupted run resumes from its checkpoint when re-run.

Base: the named experiments ablation-decoder / ablation-encoder, then the scale's settings (`SCALES`), then
`--steps` and `--set`, then the variant's own overrides. A record holds the run's resolved config, seed,
parameters, training FLOPs as executed (jaxformer/params.py) at each evaluation, the tokens that carried loss,
final train and validation metrics, wall time and tokens/s.

Comparability: the gated MLPs get the hidden width whose parameter count is closest to the GELU MLP's; the MoE
cells spend the dense model's MLP FLOPs per token on their active experts; the mask-rate cells are also
evaluated at one common mask rate (0.15; Wettig et al. 2023 compare rates that way), and that figure is the
grid's validation loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import jaxformer
from experiments import results as results_lib
from jaxformer import config as config_lib
from jaxformer import experiments
from jaxformer.errors import EXIT_PREEMPTED, JaxformerError, UserError

DEFAULT_SEEDS = (0, 1, 2)
CURVE_POINTS = 6  # evaluations per run (train.eval_every = steps / CURVE_POINTS): the loss curve's points
COMMON_MASK_RATE = 0.15

# The shapes and budget of every cell before its variant's overrides. cpu: seconds per run on two shared cores;
# full: accelerator-sized (bf16 compute), on the same built-in corpus unless `--set data.source=...` names a
# larger one.
SCALES: dict[str, list[str]] = {
    "cpu": ["model.n_layer=2", "model.d_model=64", "model.n_heads=4", "train.seq_len=64", "train.batch_size=16",
            "train.steps=150", "train.log_every=25", "train.eval_batches=4", "optimizer.lr=2e-3",
            "optimizer.warmup_steps=15"],
    "full": ["model.n_layer=8", "model.d_model=512", "model.n_heads=8", "train.seq_len=512", "train.batch_size=64",
             "train.steps=10000", "train.log_every=100", "train.eval_batches=20", "model.dtype=bfloat16",
             "optimizer.lr=6e-4", "optimizer.warmup_steps=500", "optimizer.b2=0.95", "train.checkpoint_every=1000"],
}
# The size grid: (n_layer, d_model, n_heads) per scale, smallest first.
SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "cpu": {"d32-l1": (1, 32, 2), "d64-l2": (2, 64, 4), "d128-l3": (3, 128, 4)},
    "full": {"d384-l6": (6, 384, 6), "d512-l8": (8, 512, 8), "d768-l12": (12, 768, 12)},
}

Variants = dict[str, list[str]]


def _seq_len(base: config_lib.Config) -> int:
    return base.train.seq_len


def matched_mlp_ratio(base: config_lib.Config, mlp: str) -> float:
    """The `model.mlp_ratio` whose `mlp` (swiglu / geglu) MLP has the parameter count closest to `base`'s GELU
    MLP (counted by jaxformer/params.py): a gated MLP has three matrices to GELU's two, so about 2/3 of the width."""
    from jaxformer import params

    def mlp_params(kind: str, hidden: int) -> int:
        cfg = config_lib.apply_overrides(base, {"model.mlp": kind, "model.mlp_ratio": hidden / base.model.d_model})
        return params.count(cfg)["by_component"]["mlp"]

    from jaxformer.model.layers import mlp_hidden
    target = mlp_params("gelu", mlp_hidden(base.model))
    guess = round(mlp_hidden(base.model) * 2 / 3)
    best = min(range(max(1, guess - 2), guess + 3), key=lambda f: abs(mlp_params(mlp, f) - target))
    return best / base.model.d_model


def _mlp(scale: str, base: config_lib.Config) -> Variants:
    base = config_lib.apply_overrides(base, {"model.mlp": "gelu"})
    return {"gelu": ["model.mlp=gelu"],
            **{kind: [f"model.mlp={kind}", f"model.mlp_ratio={matched_mlp_ratio(base, kind)!r}"]
               for kind in ("swiglu", "geglu")}}


def _moe(scale: str, base: config_lib.Config) -> Variants:
    # Active FLOPs per token match the dense MLP's: top-1 of experts as wide as the dense MLP, or top-2 of
    # experts half as wide (the router's d x E matmul is extra, under 1% here).
    ratio = base.model.mlp_ratio
    return {"dense": [],
            "moe-4e-top1": ["model.n_experts=4", "model.moe_top_k=1"],
            "moe-8e-top2": ["model.n_experts=8", "model.moe_top_k=2", f"model.mlp_ratio={ratio / 2!r}"]}


def _attention(scale: str, base: config_lib.Config) -> Variants:
    heads = base.model.n_heads
    return {"mha": [f"model.n_kv_heads={heads}"], "gqa": [f"model.n_kv_heads={max(heads // 2, 1)}"],
            "mqa": ["model.n_kv_heads=1"], "sliding-window": [f"model.window={max(_seq_len(base) // 4, 1)}"]}


def _size(scale: str, base: config_lib.Config) -> Variants:
    return {name: [f"model.n_layer={n}", f"model.d_model={d}", f"model.n_heads={h}"]
            for name, (n, d, h) in SIZES[scale].items()}


def _static(variants: Variants) -> Callable[[str, config_lib.Config], Variants]:
    return lambda scale, base: variants


@dataclass(frozen=True)
class Grid:
    experiment: str  # the named experiment the cells start from
    variants: Callable[[str, config_lib.Config], Variants]  # (scale, base config) -> {variant: overrides}
    # Settings of the evaluation whose loss is the grid's figure (besides the run's own), so cells compare.
    eval_overrides: dict = field(default_factory=dict)
    comparable: bool = True  # False: the cells' losses measure different things (no best cell is marked)
    note: str = ""


GRIDS: dict[str, Grid] = {
    "positions": Grid("ablation-decoder", _static({
        "learned": ["model.positions=learned"], "sinusoidal": ["model.positions=sinusoidal"],
        "rope": ["model.positions=rope"]})),
    "norms": Grid("ablation-decoder", _static({
        "layernorm": ["model.norm=layernorm"], "rmsnorm": ["model.norm=rmsnorm"],
        "post-layernorm": ["model.norm=layernorm", "model.post_norm=true"]})),
    "attention": Grid("ablation-decoder", _attention,
                      note="sliding-window: every layer sees the last seq_len/4 positions."),
    "mlp": Grid("ablation-decoder", _mlp,
                note="swiglu/geglu hidden width chosen so the MLP's parameter count is closest to GELU's."),
    "moe": Grid("ablation-decoder", _moe,
                note="MoE cells match the dense MLP's ideal (active) FLOPs per token; executed FLOPs include "
                     "the capacity slack (capacity factor 1.25) and the dispatch matmuls."),
    "mask-rate": Grid("ablation-encoder", _static({
        f"mask-{r}": [f"objective.mask_rate={r}"] for r in ("0.15", "0.3", "0.4")}),
        eval_overrides={"objective.mask_rate": COMMON_MASK_RATE},
        note=f"validation loss at the common mask rate {COMMON_MASK_RATE} (each run's own rate: valid loss "
             f"(own rate) column)."),
    "objective": Grid("ablation-decoder", _static({
        "decoder-clm": ["objective.kind=clm"], "encoder-mlm": ["objective.kind=mlm"]}), comparable=False,
        note="next-token and masked-token losses are different quantities: no cell is marked best."),
    "size": Grid("ablation-decoder", _size, note="a small scaling curve: validation loss against training FLOPs."),
}


class Preempted(Exception):
    """SIGTERM / Ctrl-C stopped a cell after its checkpoint was saved (exit 75: a scheduler requeues the task)."""


@dataclass(frozen=True)
class Cell:
    """One run of a grid: a variant (`index` in the grid) with one seed."""
    grid: str
    index: int
    variant: str
    seed: int
    overrides: tuple[str, ...]
    cfg: config_lib.Config  # as the CLI loads it (resolved when the run opens)
    eval_overrides: dict
    scale: str

    @property
    def key(self) -> str:
        return results_lib.run_key(self.cfg, extra={"eval": self.eval_overrides})

    @property
    def cell_key(self) -> str:
        """The key shared by the seeds of this cell."""
        return results_lib.run_key(self.cfg, extra={"eval": self.eval_overrides}, without=("train.seed",))

    def workdir(self, out: Path) -> Path:
        return out / self.grid / self.variant / f"seed{self.seed}-{self.key}"


def base_config(grid: str, *, scale: str, steps: int | None = None, extra: list[str] = ()) -> config_lib.Config:
    if scale not in SCALES:
        raise UserError(f"Unknown scale {scale!r}: choose one of {', '.join(SCALES)}.")
    cfg = experiments.load_config(GRIDS[grid].experiment, [*SCALES[scale]])
    steps = steps or cfg.train.steps
    # CURVE_POINTS evaluations. Checkpoints: the scale's cadence, else one at the end (SIGTERM still saves one),
    # so a CPU cell costs little more than its steps.
    cadence = [f"train.steps={steps}", f"train.eval_every={max(steps // CURVE_POINTS, 1)}"]
    if not any(o.startswith("train.checkpoint_every=") for o in SCALES[scale]):
        cadence.append(f"train.checkpoint_every={steps}")
    return config_lib.apply_overrides(cfg, [*cadence, *extra])


def cells(grid: str, *, scale: str = "cpu", seeds: tuple[int, ...] = DEFAULT_SEEDS, steps: int | None = None,
          extra: list[str] = ()) -> list[Cell]:
    """Every (variant, seed) run of a grid, variant-major, each config validated."""
    if grid not in GRIDS:
        raise UserError(f"Unknown ablation grid {grid!r}: choose one of {', '.join(GRIDS)}.")
    spec = GRIDS[grid]
    base = base_config(grid, scale=scale, steps=steps, extra=list(extra))
    out = []
    for index, (variant, overrides) in enumerate(spec.variants(scale, base).items()):
        for seed in seeds:
            cfg = config_lib.apply_overrides(base, [*overrides, f"train.seed={seed}"])
            config_lib.resolve(cfg)  # a bad variant fails here, before any run starts
            out.append(Cell(grid, index, variant, seed, tuple(overrides), cfg, dict(spec.eval_overrides), scale))
    return out


# ---------------------------------------------------------------------------------------------- one run

def train_cell(cell: Cell, workdir: Path, *, show_progress: bool = True) -> dict:
    """Train (or resume) one cell in `workdir` through `trainer.fit`, evaluating it also with the grid's
    eval overrides (logged as valid_common_*); returns the metrics rows and the run's resolved config."""
    import jax

    from jaxformer import metrics as metrics_lib
    from jaxformer import rundir, train, trainer
    from jaxformer.run import open_run

    with rundir.WorkdirLock(workdir, enabled=jax.process_index() == 0):
        run = open_run(workdir, cell.cfg, show_progress=show_progress)
        run.write_run_files()
        own_eval = train.compile_eval_step(run.shardings, run.mesh)
        common = None
        if cell.eval_overrides:
            common_cfg = config_lib.apply_overrides(run.cfg, cell.eval_overrides)
            # A cell already at the common settings reuses its own evaluation (the same batches and masks).
            common = (common_cfg, own_eval if common_cfg == run.cfg else
                      train.compile_eval_step(replace(run.shardings, cfg=common_cfg), run.mesh))

        def evaluate_state(state):
            out = trainer.evaluate(replace(run, state=state), own_eval)
            if common is not None and common[1] is own_eval:
                out.update({f"common_{k}": v for k, v in list(out.items())})
            elif common is not None:
                common_cfg, common_eval = common
                at_common = trainer.evaluate(replace(run, cfg=common_cfg, state=replace(state, cfg=common_cfg)),
                                             common_eval)
                out.update({f"common_{k}": v for k, v in at_common.items()})
            return out

        result = trainer.fit(run, batch_at=lambda step: trainer.make_batch(run.cfg, run.corpus.train, step, run.mesh),
                             evaluate_state=evaluate_state, show_progress=show_progress)
        return {"rows": metrics_lib.read_metrics(workdir), "cfg": run.cfg, "preempted": result["preempted"]}


def make_record(cell: Cell, cfg: config_lib.Config, rows: list[dict], wall_s: float) -> dict:
    """The JSON record of a finished run, from its metrics rows and resolved config."""
    from jaxformer import params

    counts = params.count(cfg)
    tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    flops_per_token = counts["training_flops_per_token"]
    prefix = "valid_common_" if cell.eval_overrides else "valid_"
    curve, tokens_with_loss = [], 0.0
    for row in rows:  # every step is in exactly one logged window, so the windows' n_tokens add up
        tokens_with_loss += row.get("n_tokens", 0.0)
        if f"{prefix}loss" in row:
            curve.append({"step": row["step"], "train_flops": flops_per_token["executed"] * tokens_per_step * row["step"],
                          "tokens_with_loss": tokens_with_loss, "valid_loss": row[f"{prefix}loss"],
                          "train_loss": row["loss"]})
    final = rows[-1]
    speeds = sorted(r["tokens_per_s"] for r in rows if "tokens_per_s" in r)
    steps = final["step"]
    return {
        "grid": cell.grid, "variant": cell.variant, "cell": cell.index, "seed": cell.seed, "scale": cell.scale,
        "run_key": cell.key, "cell_key": cell.cell_key, "overrides": list(cell.overrides),
        "eval_overrides": cell.eval_overrides,
        "params": counts["total"], "active_params": counts["active_per_token"],
        "steps": steps, "tokens": tokens_per_step * steps, "tokens_with_loss": tokens_with_loss,
        "train_flops_per_token": flops_per_token["executed"], "train_flops_per_token_ideal": flops_per_token["ideal"],
        "train_flops": flops_per_token["executed"] * tokens_per_step * steps,
        "train_flops_ideal": flops_per_token["ideal"] * tokens_per_step * steps,
        "train_loss": final["loss"], "valid_loss": final.get(f"{prefix}loss"),
        "valid_accuracy": final.get(f"{prefix}accuracy"), "valid_n_tokens": final.get(f"{prefix}n_tokens"),
        "valid_loss_own": final.get("valid_loss"), "valid_n_tokens_own": final.get("valid_n_tokens"),
        "wall_s": wall_s, "tokens_per_s": speeds[len(speeds) // 2] if speeds else None,
        "curve": curve, "config": cfg.to_dict(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "jaxformer_version": jaxformer.__version__,
    }


def run_cells(todo: list[Cell], *, out: Path, results: Path, show_progress: bool = True,
              log: Callable[[str], None] = print) -> list[dict]:
    """Train every cell that has no record yet; returns the new records."""
    path = results / f"{todo[0].grid}.jsonl" if todo else None
    done = {(r.get("variant"), r.get("run_key")) for r in results_lib.read_records(path)} if path else set()
    new = []
    for i, cell in enumerate(todo, 1):
        label = f"[{i}/{len(todo)}] {cell.grid}/{cell.variant} seed {cell.seed} ({cell.key})"
        if (cell.variant, cell.key) in done:
            log(f"{label}: done already, skipped")
            continue
        log(f"{label}: training")
        start = time.perf_counter()
        trained = train_cell(cell, cell.workdir(out), show_progress=show_progress)
        if trained["preempted"]:  # a partial run is no result: no record; the checkpoint lets a re-run resume
            raise Preempted(f"{label}: stopped by a signal after saving a checkpoint; re-run the same command to "
                            f"resume.")
        record = make_record(cell, trained["cfg"], trained["rows"], time.perf_counter() - start)
        results_lib.append_record(path, record)
        done.add((cell.variant, cell.key))
        new.append(record)
        log(f"{label}: valid loss {record['valid_loss']:.4f} in {record['wall_s']:.0f} s")
    return new


def select(all_cells: list[Cell], cell: int | None) -> list[Cell]:
    if cell is None:
        return all_cells
    n = max(c.index for c in all_cells) + 1
    if not 0 <= cell < n:
        raise UserError(f"--cell {cell} is out of range: this grid has cells 0..{n - 1} (see --list).")
    return [c for c in all_cells if c.index == cell]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", help=f"one of: {', '.join(GRIDS)}")
    parser.add_argument("--list", action="store_true", help="list the grids, their cells and overrides")
    parser.add_argument("--scale", default="cpu", help=f"one of: {', '.join(SCALES)} (default cpu)")
    parser.add_argument("--cell", type=int, default=None, help="run only this cell (variant) index (see --list)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS),
                        help="seeds of every cell (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default: the scale's)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"), help="run directories")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where <grid>.jsonl is appended")
    parser.add_argument("--set", dest="extra", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the base of every cell (before the variant's own)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.list or not args.grid:
            for name in [args.grid] if args.grid else GRIDS:
                print(f"{name} ({GRIDS[name].experiment if name in GRIDS else '?'}, scale {args.scale}):")
                listed = [c for c in cells(name, scale=args.scale, seeds=(0,), steps=args.steps, extra=args.extra)]
                for c in listed:
                    print(f"  --cell {c.index}  {c.variant:<16} {' '.join(c.overrides) or '(base)'}")
            return 0
        todo = select(cells(args.grid, scale=args.scale, seeds=tuple(args.seeds), steps=args.steps,
                            extra=args.extra), args.cell)
        run_cells(todo, out=args.out, results=args.results, show_progress=not args.no_progress)
    except Preempted as err:
        print(str(err), file=sys.stderr)
        return EXIT_PREEMPTED
    except JaxformerError as err:  # bad input (2), a non-finite loss (3), a checkpoint write (4): one sentence
        print(f"ablation {args.grid or ''}: {err}".replace("  ", " "), file=sys.stderr)
        return err.exit_code
    print(f"records in {args.results / (args.grid + '.jsonl')}; tables and plots: make report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
