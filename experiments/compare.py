"""`make compare`: a decoder (CLM) and an encoder (MLM) of the same shape, pretrained on the same corpus and
tokenizer at matched training FLOPs, then scored on the same downstream harness.

    python -m experiments.compare [--scale cpu|full|smoke] [--seeds 0,1,2] [--work runs/compare]
                                  [--out results/compare]                       # or: make compare SCALE=cpu

Per seed and family: one pretraining run and one randomly initialised backbone (the control), each with
- native figures: validation loss; the decoder's perplexity and samples, the encoder's fill-mask top-1/top-5;
- full fine-tuning on every task (the family's default pooling: [CLS] encoder, last token decoder);
- linear probes on frozen pooled features ([CLS] / mean / last), fitted with scikit-learn's LogisticRegression.
Plus a bag-of-words floor per task (TF-IDF + logistic regression, deterministic: one run).

FLOP matching: the decoder's steps set the budget; the encoder gets the steps whose EXECUTED training FLOPs
(`jaxformer.params.count`: full attention squares, the MLM head at its fixed masked slots) come closest to it.
Every run lives in `<work>/<what>/<name>-<key>`, key = hash of everything that decides its result (resolved
config, backbone, task, settings), with `result.json` written last: a finished run is read back, a changed seed
or setting gets a new directory, an interrupted one resumes. Results: `<out>/runs.json` (every run),
`<out>/table.md` (mean ± std over seeds) and two plots (`compare_report.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

FAMILIES = {"decoder": "decoder-tiny", "encoder": "encoder-tiny"}
DEFAULT_POOLING = {"decoder": "last", "encoder": "cls"}
SAMPLE_PROMPTS = ("the company said", "it is")


@dataclass(frozen=True)
class Scale:
    """Everything that sizes a comparison. `model`/`pretrain` are --set overrides shared by both families."""

    model: tuple[str, ...]
    data: tuple[str, ...]
    pretrain: tuple[str, ...]  # optimizer and loop settings of pretraining (seq_len and batch included)
    decoder_steps: int  # the FLOP budget: the encoder's steps are matched to it
    finetune: tuple[str, ...]  # overrides of jaxformer.finetune.DEFAULTS for the full fine-tuning runs
    seeds: tuple[int, ...] = (0, 1, 2)
    tasks: tuple[str, ...] = ("sst2", "rt-polarity")
    probe_train: int = 8000  # training examples (a seeded subset) the probes are fitted on; 0: all
    sample_tokens: int = 30


SCALES = {
    # Test size: seconds per run, on the built-in corpus.
    "smoke": Scale(model=("model.n_layer=1", "model.d_model=32", "model.n_heads=2"),
                   data=("data.source=builtin", "data.tokenizer=char"),
                   pretrain=("train.seq_len=16", "train.batch_size=8", "train.eval_every=2", "train.eval_batches=2",
                             "optimizer.warmup_steps=1"),
                   decoder_steps=4,
                   finetune=("train.steps=2", "train.eval_every=2", "train.batch_size=8", "optimizer.warmup_steps=1"),
                   seeds=(0, 1), tasks=("rt-polarity",), probe_train=64, sample_tokens=8),
    # 2-core CPU, <= 40 min (README: the budget arithmetic from measured per-step costs).
    "cpu": Scale(model=("model.n_layer=2", "model.d_model=128", "model.n_heads=4"),
                 data=("data.source=text:@data/ptb/ptb.train.txt", "data.tokenizer=bpe", "data.vocab_size=2048"),
                 pretrain=("train.seq_len=64", "train.batch_size=32", "train.eval_every=100", "train.eval_batches=8",
                           "optimizer.lr=2e-3", "optimizer.warmup_steps=50"),
                 decoder_steps=400,
                 finetune=("train.steps=200", "train.eval_every=50", "train.batch_size=32", "optimizer.lr=1e-3",
                           "optimizer.warmup_steps=20"),
                 probe_train=4000),
    # One accelerator: BERT-small-like shapes, 50k decoder steps.
    "full": Scale(model=("model.n_layer=6", "model.d_model=512", "model.n_heads=8"),
                  data=("data.source=text:@data/ptb/ptb.train.txt", "data.tokenizer=bpe", "data.vocab_size=8192"),
                  pretrain=("train.seq_len=128", "train.batch_size=128", "train.eval_every=2500",
                            "train.eval_batches=20", "optimizer.lr=6e-4", "optimizer.warmup_steps=1000",
                            "model.dropout=0.1"),
                  decoder_steps=50000,
                  finetune=("train.steps=3000", "train.eval_every=500", "train.batch_size=32", "optimizer.lr=1e-4"),
                  probe_train=0),
}


def run_key(*parts) -> str:
    """12 hex digits of sha256 over the JSON of everything that decides a run's result."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_result(folder: Path) -> dict | None:
    path = folder / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_result(folder: Path, record: dict) -> dict:
    from jaxformer import atomic

    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / "result.json", json.dumps(record, indent=1, default=str) + "\n")
    return record


# ---------------------------------------------------------------------------------------------- pretraining

@dataclass(frozen=True)
class Pretraining:
    family: str
    seed: int
    cfg: object  # resolved jaxformer.config.Config
    steps: int
    flops_per_token: int  # executed training FLOPs per input position (3 x forward)
    tokens_per_step: int
    params: int

    @property
    def training_flops(self) -> int:
        return self.flops_per_token * self.tokens_per_step * self.steps

    @property
    def key(self) -> str:
        return run_key("pretrain", self.cfg.to_dict())


def _family_config(family: str, scale: Scale, seed: int, vocab_size: int, steps: int):
    from jaxformer import config as config_lib

    cfg = config_lib.load_config(FAMILIES[family], [*scale.model, *scale.data, *scale.pretrain, f"train.seed={seed}",
                                                    f"train.steps={steps}", "train.log_every=25",
                                                    f"train.checkpoint_every={steps}"])
    return config_lib.resolve(cfg, vocab_size=vocab_size)


def matched_steps(decoder_flops: int, encoder_flops_per_step: int) -> int:
    """The encoder's step count whose training FLOPs come closest to the decoder's budget."""
    return max(1, round(decoder_flops / encoder_flops_per_step))


def plan_pretraining(scale: Scale, vocab_size: int, seeds: tuple[int, ...]) -> list[Pretraining]:
    """Both families per seed, the encoder's steps matched to the decoder's executed training FLOPs."""
    from jaxformer import params

    plans = []
    for seed in seeds:
        dec = _family_config("decoder", scale, seed, vocab_size, scale.decoder_steps)
        per_step = dec.train.batch_size * dec.train.seq_len
        dec_counts, enc_counts = params.count(dec), params.count(_family_config("encoder", scale, seed, vocab_size, 1))
        dec_fpt = dec_counts["training_flops_per_token"]["executed"]
        enc_fpt = enc_counts["training_flops_per_token"]["executed"]
        enc_steps = matched_steps(dec_fpt * per_step * scale.decoder_steps, enc_fpt * per_step)
        enc = _family_config("encoder", scale, seed, vocab_size, enc_steps)
        plans += [Pretraining("decoder", seed, dec, scale.decoder_steps, dec_fpt, per_step, dec_counts["total"]),
                  Pretraining("encoder", seed, enc, enc_steps, enc_fpt, per_step, enc_counts["total"])]
    return plans


def _native(run, family: str, valid_tokens, scale: Scale, seed: int, *, samples: bool = True) -> dict:
    """What each family does by itself: the validation loss; perplexity and samples (decoder) or fill-mask top-k
    accuracy (encoder)."""
    from jaxformer import generate, trainer
    from jaxformer.evaluation.fill_mask import fill_mask_accuracy

    valid = trainer.evaluate(run)
    out = {"valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"]}
    if family == "decoder":
        out["valid_perplexity"] = valid["perplexity"]
        if not samples:
            return out
        room = run.cfg.model.max_seq_len // 2  # prompts keep half the context, samples get the rest
        prompts = [run.tokenizer.encode(p)[:room] for p in SAMPLE_PROMPTS]
        budget = min(scale.sample_tokens, run.cfg.model.max_seq_len - max(len(p) for p in prompts))
        new = generate.generate(run.state.graphdef, run.state.params, prompts, max_new_tokens=budget,
                                temperature=0.8, top_k=40, seed=seed, eos_id=run.tokenizer.special_ids.eos)
        out["samples"] = [run.tokenizer.decode(p) + run.tokenizer.decode(n) for p, n in zip(prompts, new, strict=True)]
    else:
        fill = fill_mask_accuracy(run, valid_tokens)
        out.update(fill_mask_top1=fill["top1"], fill_mask_top5=fill["top5"], fill_mask_n=fill["n_masked"])
    return out


def pretrain(plan: Pretraining, work: Path, scale: Scale, *, show_progress: bool, run_missing: bool = True):
    from jaxformer import metrics as metrics_lib
    from jaxformer import trainer

    folder = work / "pretrain" / f"{plan.family}-s{plan.seed}-{plan.key}"
    if (done := read_result(folder)) is not None or not run_missing:
        return done
    t0, c0 = time.perf_counter(), time.process_time()
    result = trainer.train_loop(plan.cfg, folder, show_progress=show_progress)
    train_s = time.perf_counter() - t0
    run = result["run"]
    native = _native(run, plan.family, run.corpus.split("valid"), scale, plan.seed)
    per_step = plan.flops_per_token * plan.tokens_per_step
    curve = [{"step": r["step"], "training_flops": r["step"] * per_step, "valid_loss": r["valid_loss"]}
             for r in metrics_lib.read_metrics(folder) if "valid_loss" in r]
    return write_result(folder, {
        "kind": "pretrain", "family": plan.family, "init": "pretrained", "seed": plan.seed, "key": plan.key,
        "workdir": str(folder), "config": plan.cfg.to_dict(), "params": plan.params, "steps": plan.steps,
        "training_flops": plan.training_flops, "flops_per_token": plan.flops_per_token,
        "metrics": {**native, "train_loss": result.get("loss")}, "curve": curve,
        "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "train_s": train_s})


def random_backbone(plan: Pretraining, work: Path, scale: Scale, *, run_missing: bool = True):
    """The control: the same config, initialised with the same seed and saved untrained (step 0)."""
    from jaxformer.checkpoint import Checkpointer
    from jaxformer.run import open_run

    key = run_key("random", plan.cfg.to_dict())
    folder = work / "random" / f"{plan.family}-s{plan.seed}-{key}"
    if (done := read_result(folder)) is not None or not run_missing:
        return done
    t0, c0 = time.perf_counter(), time.process_time()
    run = open_run(folder, plan.cfg, show_progress=False)
    run.write_run_files()
    ckpt = Checkpointer(folder, 1, tokenizer_fingerprint=run.tokenizer.fingerprint)
    ckpt.save(run.state)
    ckpt.close()
    native = _native(run, plan.family, run.corpus.split("valid"), scale, plan.seed, samples=False)
    return write_result(folder, {
        "kind": "pretrain", "family": plan.family, "init": "random", "seed": plan.seed, "key": key,
        "workdir": str(folder), "config": plan.cfg.to_dict(), "params": plan.params, "steps": 0,
        "training_flops": 0, "metrics": native, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})


# ---------------------------------------------------------------------------------------------- downstream

def finetune_run(backbone: dict, task: str, scale: Scale, work: Path, *, show_progress: bool,
                 run_missing: bool = True):
    from jaxformer import finetune
    from jaxformer import params as params_lib

    overrides = [*scale.finetune, f"train.seed={backbone['seed']}"]
    if backbone["family"] == "decoder":  # [CLS] pooling does not exist under causal attention
        overrides = [o for o in overrides if o != "objective.pooling=cls"]
    key = run_key("finetune", backbone["key"], task, overrides)
    folder = work / "finetune" / f"{backbone['family']}-{backbone['init']}-{task}-s{backbone['seed']}-{key}"
    if (done := read_result(folder)) is not None or not run_missing:
        return done
    t0, c0 = time.perf_counter(), time.process_time()
    result = finetune.finetune(backbone["workdir"], task, folder, overrides, show_progress=show_progress)
    cfg = result.pop("run").cfg
    flops = params_lib.count(cfg)["training_flops_per_token"]["executed"] * cfg.train.batch_size * \
        cfg.train.seq_len * cfg.train.steps
    metrics = {k: result[k] for k in ("dev_accuracy", "dev_macro_f1", "dev_loss", "train_accuracy", "train_loss",
                                      "best_step", "n_train", "n_dev") if k in result}
    return write_result(folder, {
        "kind": "finetune", "family": backbone["family"], "init": backbone["init"], "seed": backbone["seed"],
        "task": task, "pooling": cfg.objective.pooling, "key": key, "backbone_key": backbone["key"],
        "workdir": str(folder), "config": cfg.to_dict(), "params": params_lib.count(cfg)["total"],
        "training_flops": flops, "metrics": metrics, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})


def _probe_subset(n: int, limit: int, seed: int):
    import numpy as np

    return np.arange(n) if not limit or n <= limit else np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _logistic(x_train, y_train, x_dev, y_dev, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)), "dev_accuracy": float(model.score(x_dev, y_dev))}


def probe_runs(backbone: dict, task: str, scale: Scale, work: Path, *, run_missing: bool = True) -> list[dict]:
    """Linear probes on frozen pooled features, one per pooling, from one forward pass over the examples."""
    from jaxformer import objectives
    from jaxformer.data.classification_batches import encode_examples, task_splits
    from jaxformer.features import POOLINGS, pooled_features
    from jaxformer.run import open_run

    key = run_key("probe", backbone["key"], task, scale.probe_train, "logreg-standardized-v1")
    folder = work / "probe" / f"{backbone['family']}-{backbone['init']}-{task}-s{backbone['seed']}-{key}"
    if (done := read_result(folder)) is not None or not run_missing:
        return done["runs"] if done else []
    t0, c0 = time.perf_counter(), time.process_time()
    run = open_run(backbone["workdir"])
    causal = objectives.for_config(run.cfg).causal
    splits = task_splits(task)
    keep = _probe_subset(len(splits.train_texts), scale.probe_train, backbone["seed"])
    train_x = encode_examples([splits.train_texts[i] for i in keep], run.tokenizer, run.cfg.train.seq_len,
                              causal=causal)
    dev_x = encode_examples(splits.dev_texts, run.tokenizer, run.cfg.train.seq_len, causal=causal)
    train_f, dev_f = (pooled_features(run, x, causal=causal) for x in (train_x, dev_x))
    feature_s, feature_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    runs = []
    for pooling in POOLINGS:
        t1, c1 = time.perf_counter(), time.process_time()
        metrics = _logistic(train_f[pooling], splits.train_labels[keep], dev_f[pooling], splits.dev_labels,
                            backbone["seed"])
        runs.append({"kind": "probe", "family": backbone["family"], "init": backbone["init"],
                     "seed": backbone["seed"], "task": task, "pooling": pooling, "key": key,
                     "backbone_key": backbone["key"], "config": {"backbone": backbone["config"],
                                                                "probe_train": int(len(keep)),
                                                                "classifier": "StandardScaler+LogisticRegression"},
                     "params": backbone["params"], "training_flops": 0,
                     "metrics": {**metrics, "n_train": int(len(keep)), "n_dev": len(splits.dev_labels)},
                     "wall_s": feature_s / len(POOLINGS) + time.perf_counter() - t1,
                     "cpu_s": feature_cpu_s / len(POOLINGS) + time.process_time() - c1})
    write_result(folder, {"runs": runs})
    return runs


def bag_of_words(task: str, work: Path, *, run_missing: bool = True):
    """TF-IDF (word uni- and bigrams) + logistic regression on the full training split: the floor."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from jaxformer.data.classification_batches import task_splits

    settings = {"ngram_range": [1, 2], "min_df": 2, "sublinear_tf": True, "C": 1.0}
    key = run_key("bow", task, settings)
    folder = work / "bow" / f"{task}-{key}"
    if (done := read_result(folder)) is not None or not run_missing:
        return done
    t0, c0 = time.perf_counter(), time.process_time()
    splits = task_splits(task)
    model = make_pipeline(TfidfVectorizer(ngram_range=tuple(settings["ngram_range"]), min_df=settings["min_df"],
                                          sublinear_tf=settings["sublinear_tf"]),
                          LogisticRegression(C=settings["C"], max_iter=2000))
    model.fit(splits.train_texts, splits.train_labels)
    metrics = {"train_accuracy": float(model.score(splits.train_texts, splits.train_labels)),
               "dev_accuracy": float(model.score(splits.dev_texts, splits.dev_labels)),
               "n_train": len(splits.train_labels), "n_dev": len(splits.dev_labels)}
    return write_result(folder, {"kind": "bow", "family": "bag-of-words", "init": "-", "seed": None, "task": task,
                                 "pooling": "-", "key": key, "config": settings, "params": None,
                                 "training_flops": 0, "metrics": metrics, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})


# ---------------------------------------------------------------------------------------------- the whole

def vocab_size(scale: Scale, work: Path) -> int:
    """The shared tokenizer's vocabulary (trained once, cached by jaxformer's token cache)."""
    from jaxformer import config as config_lib
    from jaxformer.data.pipeline import load_corpus

    cfg = config_lib.load_config(FAMILIES["decoder"], [*scale.data])
    return load_corpus(cfg.data, None, show_progress=False).tokenizer.vocab_size


def run_compare(scale_name: str, work: Path, out: Path, *, seeds: tuple[int, ...] | None = None,
                tasks: tuple[str, ...] | None = None, show_progress: bool = True, finished_only: bool = False) -> dict:
    """Every run of the comparison (finished ones read back), then runs.json, table.md and plots in `out`.
    `finished_only`: run nothing, report the runs already finished (a partial comparison says so in its table)."""
    from experiments.compare_report import write_report

    scale = SCALES[scale_name]
    scale = replace(scale, seeds=tuple(seeds) if seeds else scale.seeds, tasks=tuple(tasks) if tasks else scale.tasks)
    if not scale.tasks:
        from jaxformer.errors import UserError

        raise UserError(f"Scale {scale_name} names no downstream task: give --tasks sst2,rt-polarity or files.")
    t0, c0 = time.perf_counter(), time.process_time()
    runs, backbones, missing = [], [], 0
    step = {"run_missing": not finished_only}
    for plan in plan_pretraining(scale, vocab_size(scale, work), scale.seeds):
        say(f"pretraining {plan.family} seed {plan.seed}: {plan.steps} steps, {plan.training_flops:.3g} FLOPs")
        backbones += [pretrain(plan, work, scale, show_progress=show_progress, **step),
                      random_backbone(plan, work, scale, **step)]
    missing += sum(b is None for b in backbones)
    backbones = [b for b in backbones if b is not None]
    runs += backbones
    for task in scale.tasks:
        runs.append(bag_of_words(task, work, **step))
        for backbone in backbones:
            say(f"{task}: {backbone['family']} ({backbone['init']}) seed {backbone['seed']}")
            runs.append(finetune_run(backbone, task, scale, work, show_progress=show_progress, **step))
            probes = probe_runs(backbone, task, scale, work, **step)
            missing += not probes
            runs += probes
    missing += sum(r is None for r in runs)
    runs = [r for r in runs if r is not None]
    summary = {"scale": scale_name, "settings": asdict(scale), "missing": missing, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "runs": runs}
    write_report(summary, out)
    return summary


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from jaxformer.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu", choices=sorted(SCALES))
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the scale's)")
    parser.add_argument("--tasks", default="", help="comma-separated tasks: sst2, rt-polarity or .tsv/.jsonl files")
    parser.add_argument("--work", default="runs/compare", help="run directories (cached by key)")
    parser.add_argument("--out", default="results/compare", help="runs.json, table.md and plots")
    parser.add_argument("--finished-only", action="store_true", help="run nothing: report the finished runs")
    args = parser.parse_args(argv)
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        print(f"error: --seeds {args.seeds!r} is not a comma-separated list of integers.", file=sys.stderr)
        return 2
    try:
        run_compare(args.scale, Path(args.work), Path(args.out), seeds=seeds or None,
                    tasks=tuple(t for t in args.tasks.split(",") if t.strip()) or None, finished_only=args.finished_only)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/table.md, runs.json and plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
