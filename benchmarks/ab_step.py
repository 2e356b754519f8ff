"""A config change's speed as a ratio measured in one process: jaxformer's train step compiled with and without
`--variant`, the two run alternately (A B B A ...), each pair of steps one ratio.

    python benchmarks/ab_step.py --variant model.dot_grads=xla [--set KEY=VALUE ...] [--objectives clm mlm]
                                 [--configs S M] [--pairs 10] [--out bench/ab_step.json]

`--set` changes the cell for both programs (e.g. `--set model.window=64 --variant model.attention_impl=blocked`:
the two kernels on a windowed model).

`benchmarks/bench_train.py --variant` times the variant in its own process right after the baseline: the right
thing for peak memory and compile time, but on a machine whose cores are shared the load moves within minutes,
and whole cells measured minutes apart have differed by 10% and more here. Steps alternated in one process see
the same load, and the ratio is taken per pair: `ratio` = the baseline step's time / the variant step's time
(the variant's tokens/s over the baseline's), its median and quartiles over the pairs. Same cells as
bench_train.py (`jaxformer.timing.bench_config`); each program gets 2 untimed steps after compiling; both start
from the same initial state and batches, so their last losses are printed side by side (a config change that
should not change the math shows the same loss).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from jaxformer import timing
from jaxformer.errors import UserError


def time_pairs(spec: dict, overrides: dict, pairs: int, base: dict | None = None) -> dict:
    """Compile the cell's step (with `base` overrides) with and without `overrides`, then time `pairs`
    alternated pairs of steps."""
    import jax

    from jaxformer import train

    key = jax.random.key(0)
    programs = {}
    base = base or {}
    for name, extra in (("baseline", base), ("variant", {**base, **overrides})):
        cfg, mesh, state, shardings, batches = timing.cell_inputs({**spec, "overrides": extra}, n_batches=4)
        compiled = train.compile_train_step(shardings, mesh).lower(state, batches[0], key).compile()
        programs[name] = {"step": compiled, "state": state, "batches": batches}

    def run(name: str, i: int) -> tuple[float, float]:
        p = programs[name]
        t0 = time.perf_counter()
        p["state"], metrics = p["step"](p["state"], p["batches"][i % 4], key)
        jax.block_until_ready((p["state"], metrics))
        return time.perf_counter() - t0, float(metrics["loss"])

    for i in range(2):
        run("baseline", i)
        run("variant", i)
    times = {"baseline": [], "variant": []}
    losses = {}
    for i in range(pairs):
        for name in (("baseline", "variant") if i % 2 == 0 else ("variant", "baseline")):
            seconds, losses[name] = run(name, i)
            times[name].append(seconds)
    ratios = sorted(b / v for b, v in zip(times["baseline"], times["variant"], strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"objective": spec["objective"], "config": spec["config"], "base": base, "overrides": overrides,
            "pairs": pairs,
            "ratio_median": round(statistics.median(ratios), 3), "ratio_q1": round(q1, 3), "ratio_q3": round(q3, 3),
            "baseline_step_ms_median": round(1e3 * statistics.median(times["baseline"]), 1),
            "variant_step_ms_median": round(1e3 * statistics.median(times["variant"]), 1),
            "baseline_loss_last": losses["baseline"], "variant_loss_last": losses["variant"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", required=True, metavar="KEY=VALUE[,KEY=VALUE]", help="the config change to time")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for both programs (repeatable)")
    p.add_argument("--objectives", nargs="+", choices=timing.OBJECTIVES, default=list(timing.OBJECTIVES))
    p.add_argument("--configs", nargs="+", choices=sorted(timing.CONFIGS), default=["S", "M"])
    p.add_argument("--pairs", type=int, default=10, help="alternated pairs of timed steps per cell (default 10)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--out", default="bench/ab_step.json")
    args = p.parse_args(argv)
    try:
        if args.pairs < 1:
            raise UserError(f"--pairs must be positive, got {args.pairs}.")
        overrides = timing.parse_variant(args.variant)
        base = timing.parse_variant(",".join(args.set)) if args.set else {}
        variants = [args.variant, *([",".join([*args.set, args.variant])] if args.set else [])]  # both configs
        timing.check_sizes(argparse.Namespace(**{**vars(args), "variant": variants}))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started, cells = time.time(), []
    result = {"benchmark": "ab_step", "variant": args.variant, "set": args.set, "machine": timing.machine_info(),
              "loadavg_start": timing.loadavg(), "batch_size": args.batch_size, "seq_len": args.seq_len,
              "vocab": args.vocab, "cells": cells}
    for config in args.configs:
        for objective in args.objectives:
            spec = {"objective": objective, "config": config, "batch_size": args.batch_size,
                    "seq_len": args.seq_len, "vocab": args.vocab}
            cell = time_pairs(spec, overrides, args.pairs, base)
            cells.append(cell)
            print(f"{objective} {config}: [{args.variant}] tokens/s x{cell['ratio_median']} the baseline "
                  f"(quartiles {cell['ratio_q1']}-{cell['ratio_q3']}, {args.pairs} pairs; steps "
                  f"{cell['baseline_step_ms_median']} -> {cell['variant_step_ms_median']} ms; last loss "
                  f"{cell['baseline_loss_last']:.5f} / {cell['variant_loss_last']:.5f})", flush=True)
    result.update({"loadavg_end": timing.loadavg(), "wall_s": round(time.time() - started, 1)})
    timing.write_result(result, args.out)
    print(f"load average {result['loadavg_start']} -> {result['loadavg_end']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
