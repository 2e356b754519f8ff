"""NER (WNUT-17 BIO tagging) on a pretrained encoder vs a pretrained decoder, over several fine-tuning seeds.

Each backbone is pretrained once on tiny shakespeare (characters; MLM for the encoder, CLM for the decoder, the
same shape, data, budget and seed), then fine-tuned as a tagger (`jaxformer finetune --task wnut17`) with each
seed (the head's initialisation and the batch order), keeping the checkpoint with the best dev entity F1 and
scoring it on the WNUT-17 test split. An optional third backbone, `random-init`, is an encoder "pretrained" for
one step at learning rate 0 (warmup starts at 0): its weights are exactly the initial ones, so its row shows
what pretraining adds. The majority baseline (every word O) finds no entity: F1 0 by definition.

    python -m experiments.ner --out runs/ner                 # or: make ner (encoder and decoder, seeds 0 1 2)
    python -m experiments.ner --backbones encoder decoder random-init --pretrain-steps 600 --steps 600

Runs are normal run directories under `--out` (re-running resumes / skips finished ones); the results go to
`--out/results.json` (every run's dev/test metrics, and mean ± std per backbone) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

SHAPE = ["model.n_layer=2", "model.d_model=64", "model.n_heads=4", "train.seq_len=128", "train.batch_size=16",
         "train.eval_every=0", "train.log_every=50", "optimizer.lr=2e-3", "optimizer.warmup_steps=30",
         "data.source=text:@data/tinyshakespeare/input.txt", "data.tokenizer=char"]
BACKBONES = {"encoder": ("encoder-tiny", []), "decoder": ("decoder-tiny", []),
             "random-init": ("encoder-tiny", ["train.steps=1"])}


def pretrain(name: str, out: Path, steps: int, show_progress: bool) -> Path:
    from jaxformer import config as config_lib
    from jaxformer import trainer

    preset, extra = BACKBONES[name]
    workdir = out / "pretrained" / name
    cfg = config_lib.load_config(preset, [*SHAPE, f"train.steps={steps}", f"train.checkpoint_every={steps}",
                                          *extra])
    trainer.train_loop(cfg, workdir, show_progress=show_progress)
    return workdir


def finetune_one(backbone: Path, out: Path, seed: int, steps: int, show_progress: bool) -> dict:
    from jaxformer import finetune

    result = finetune.finetune(backbone, "wnut17", out, [
        f"train.seed={seed}", f"train.steps={steps}", "train.batch_size=32", f"train.eval_every={max(steps // 3, 1)}",
        f"train.checkpoint_every={steps}", "train.log_every=50", "optimizer.lr=2e-3", "optimizer.warmup_steps=30"],
        test="wnut17", show_progress=show_progress)
    result.pop("run")
    return result


def prior_loss() -> float:
    """Test cross-entropy per word of the training tags' frequencies (a tagger that ignores the words)."""
    from collections import Counter

    from jaxformer.data.conll import read_tag_task

    counts = Counter(t for s in read_tag_task("wnut17", "train") for t in s.tags)
    total = sum(counts.values())
    test = [t for s in read_tag_task("wnut17", "test") for t in s.tags]
    return -statistics.fmean(math.log(counts[t] / total) for t in test)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ner"))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps per seed (batch 32)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--backbones", nargs="+", default=["encoder", "decoder"], choices=list(BACKBONES),
                        help="random-init: an encoder at its initial weights (what pretraining adds)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    show = not args.no_progress

    runs, summary = [], {}
    for name in args.backbones:
        backbone = pretrain(name, args.out, args.pretrain_steps, show)
        for seed in args.seeds:
            result = finetune_one(backbone, args.out / "tagger" / f"{name}-seed{seed}", seed, args.steps, show)
            runs.append({"backbone": name, "seed": seed, **result})
        mine = [r for r in runs if r["backbone"] == name]
        summary[name] = {f"{split}_{metric}": mean_std([r[f"dev_{metric}"] if split == "dev" else r["test"][metric]
                                                       for r in mine])
                         for split in ("dev", "test") for metric in ("f1", "precision", "recall", "loss")}
    truncated = runs[0]["test"]["truncated_words"], runs[0]["test"]["n_words"]
    record = {"task": "wnut17", "pretrain_steps": args.pretrain_steps, "finetune_steps": args.steps,
              "seeds": args.seeds, "shape": SHAPE, "majority_baseline_f1": 0.0, "tag_prior_test_loss": prior_loss(),
              "test_truncated_words": truncated[0], "test_words": truncated[1],
              "summary": {k: {m: {"mean": v[0], "std": v[1]} for m, v in s.items()} for k, s in summary.items()},
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(record, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"WNUT-17 entity F1, mean ± std over seeds {args.seeds} ({args.pretrain_steps} pretraining "
                        f"+ {args.steps} fine-tuning steps)")
    for column in ("backbone", "dev F1", "test P", "test R", "test F1", "test loss per word"):
        table.add_column(column, justify="right")
    for name, s in summary.items():
        table.add_row(name, *[f"{s[k][0]:.4f} ± {s[k][1]:.4f}" for k in ("dev_f1", "test_precision",
                                                                           "test_recall", "test_f1", "test_loss")])
    table.add_row("all O / tag prior", "0", "0", "0", "0", f"{record['tag_prior_test_loss']:.4f}")
    Console().print(table)
    print(f"test words cut by train.seq_len (scored as O): {truncated[0]} of {truncated[1]}; "
          f"results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
