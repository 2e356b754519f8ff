"""How `jaxformer finetune`'s DEFAULTS were chosen: learning rate and pooling for a CPU-scale encoder, against
its random-init control, with the training accuracy at the end (underfitting shows as train ≈ dev ≈ 0.5).

    python -m experiments.finetune_defaults --pretrained runs/compare/pretrain/encoder-s0-<key> \\
        --random runs/compare/random/encoder-s0-<key> [--task rt-polarity] [--out results/compare]

The backbones are `make compare`'s (SCALE=cpu, seed 0): finished runs are read back from `<work>`, so the sweep
can be extended a setting at a time. Writes `<out>/finetune_defaults.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from experiments.compare import read_result, run_key, write_result

# (name, backbone, overrides): the learning rates at mean pooling, then the control ([CLS] pooling at lr 1e-3 is
# `make compare`'s own fine-tuning).
SWEEP = [
    ("lr 3e-4, mean", "pretrained", ["optimizer.lr=3e-4", "objective.pooling=mean"]),
    ("lr 1e-3, mean", "pretrained", ["optimizer.lr=1e-3", "objective.pooling=mean"]),
    ("lr 3e-3, mean", "pretrained", ["optimizer.lr=3e-3", "objective.pooling=mean"]),
    ("lr 1e-3, mean", "random", ["optimizer.lr=1e-3", "objective.pooling=mean"]),
]
COMMON = ["train.steps=300", "train.eval_every=100", "train.batch_size=32", "optimizer.warmup_steps=30"]


def main(argv: list[str] | None = None) -> int:
    from jaxformer import finetune

    parser = argparse.ArgumentParser(prog="python -m experiments.finetune_defaults", description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--random", required=True)
    parser.add_argument("--task", default="rt-polarity")
    parser.add_argument("--work", default="runs/finetune-defaults")
    parser.add_argument("--out", default="results/compare")
    parser.add_argument("--only", default="", help="comma-separated indices of SWEEP to run (default: all)")
    args = parser.parse_args(argv)
    chosen = [int(i) for i in args.only.split(",") if i.strip()] or range(len(SWEEP))
    rows = []
    for i in chosen:
        name, which, overrides = SWEEP[i]
        backbone = args.pretrained if which == "pretrained" else args.random
        key = run_key("finetune-defaults", str(Path(backbone).absolute()), args.task, COMMON + overrides)
        folder = Path(args.work) / f"{which}-{key}"
        record = read_result(folder)
        if record is None:
            t0, c0 = time.perf_counter(), time.process_time()
            result = finetune.finetune(backbone, args.task, folder, COMMON + overrides)
            result.pop("run")
            record = write_result(folder, {"setting": name, "backbone": which, "overrides": COMMON + overrides,
                                           **{k: result.get(k) for k in ("train_accuracy", "train_loss",
                                                                          "dev_accuracy", "best_step")},
                                           "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
        rows.append(record)
    out = Path(args.out)
    previous = json.loads((out / "finetune_defaults.json").read_text()) if (out / "finetune_defaults.json").exists() \
        else []
    merged = {(r["setting"], r["backbone"]): r for r in previous + rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "finetune_defaults.json").write_text(json.dumps(list(merged.values()), indent=1) + "\n")
    print("| backbone | setting | train accuracy (last 25 steps) | dev accuracy (best) | best step | CPU s |")
    print("|---|---|---|---|---|---|")
    for r in merged.values():
        print(f"| {r['backbone']} | {r['setting']} | {r['train_accuracy']:.3f} | {r['dev_accuracy']:.3f} | "
              f"{r['best_step']} | {r['cpu_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
