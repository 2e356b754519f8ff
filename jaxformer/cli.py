"""`jaxformer train | distill | eval | sample | fill-mask | finetune | sft | predict | import-hf | export-hf | params |
bench`.

Exit codes (see jaxformer/errors.py): 0 done, 2 bad input, 3 stopped at a non-finite loss, 4 checkpoint write
failed, 75 preempted after saving (re-run to resume), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from jaxformer import host_memory
from jaxformer.errors import EXIT_PREEMPTED, JaxformerError, UserError

DEFAULT_PRESET = "decoder-tiny"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help=f"named config (default {DEFAULT_PRESET}); see `jaxformer params --list-presets`")
    p.add_argument("--experiment", default=None,
                   help="named experiment from experiments/ (its preset and overrides; --set still wins); see "
                        "`jaxformer params --list-experiments`")
    p.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.n_kv_heads=2 train.steps=200 (repeatable)")


def _overrides(args) -> list[str]:
    return [item for group in args.overrides for item in group]


def _load_config(args):
    """The config named by --experiment or --preset, with the --set overrides applied last."""
    from jaxformer import config as config_lib

    if args.experiment is None:
        return config_lib.load_config(args.preset or DEFAULT_PRESET, _overrides(args))
    if args.preset is not None:
        raise UserError("Give --experiment or --preset, not both: an experiment names its own preset "
                        "(change its values with --set).")
    from jaxformer import experiments

    return experiments.load_config(args.experiment, _overrides(args))


def _add_column_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", default=None, metavar="NAME",
                   help="the .tsv/.jsonl text column (default: text, sentence, review or content)")
    p.add_argument("--label-column", default=None, metavar="NAME",
                   help="the .tsv/.jsonl label column (default: label, labels, class or sentiment)")


def _add_sft_eval_args(p: argparse.ArgumentParser, limit_flag: str, limit_help: str) -> None:
    p.add_argument(limit_flag, type=int, default=50, metavar="N", help=limit_help)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="instruction-tuned runs: greedy decoding budget per answer (default: the longest reference "
                        "response, at most half the context)")
    p.add_argument("--prompt-column", default="", metavar="NAME",
                   help="the .jsonl prompt field (default: prompt, question, instruction or input)")
    p.add_argument("--response-column", default="", metavar="NAME",
                   help="the .jsonl response field (default: response, answer, output or completion)")


def _pair_columns(args):
    from jaxformer.data.sft import PairColumns

    return PairColumns(args.prompt_column, args.response_column)


def _columns(args, saved=None):
    """--text-column/--label-column, else `saved` (a classifier run's own), else the usual names."""
    from jaxformer.data.classification import Columns

    saved = saved or Columns()
    return Columns(args.text_column if args.text_column is not None else saved.text,
                   getattr(args, "label_column", None) if getattr(args, "label_column", None) is not None
                   else saved.label)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxformer", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (and show tracebacks)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train (or resume) a run in --workdir")
    _add_config_args(p)
    p.add_argument("--workdir", required=True, help="run directory; re-running on it resumes from its checkpoints")
    p.add_argument("--extend", action="store_true",
                   help="train a finished or running run longer: train.steps may grow (the learning-rate schedule "
                        "is stretched from the newest checkpoint on); no other setting may change")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sample-tokens", type=int, default=200, help="decoder runs: tokens to sample at the end")

    p = sub.add_parser("distill", help="train a student run (clm or mlm, the teacher's kind) on a frozen teacher "
                                       "run's soft targets plus its own hard loss; resumes like train")
    p.add_argument("--teacher", required=True, help="the teacher: a trained or import-hf run directory (its "
                                                    "newest checkpoint, its tokenizer)")
    _add_config_args(p)
    p.add_argument("--workdir", required=True, help="the student's run directory; re-running on it resumes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--sample-tokens", type=int, default=200, help="decoder students: tokens to sample at the end")

    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint (a fine-tuned classifier: its best one, "
                                    "scored by accuracy, macro-F1 and per-class accuracy; a tagger: entity-level "
                                    "precision/recall/F1); prints one JSON object")
    p.add_argument("--workdir", required=True)
    p.add_argument("--split", default="valid", choices=["train", "valid"])
    p.add_argument("--data", default=None,
                   help="held-out text (text:<file>, any data source) to score EVERY token of, once, with sliding "
                        "windows (decoders): loss and perplexity per token, bits per byte, perplexity per word; "
                        "without it: sampled windows of the run's --split; for a classifier, a labelled "
                        ".tsv/.jsonl file (e.g. the test set); for a tagger, a CoNLL file or a task name (its test "
                        "split, e.g. wnut17)")
    p.add_argument("--stride", type=int, default=None,
                   help="with --data: window step (default train.seq_len // 2); every token gets at least "
                        "seq_len - stride + 1 tokens of context")
    p.add_argument("--ngram", type=int, default=0, metavar="N",
                   help="with --data: also report an interpolated Kneser-Ney N-gram counted on the run's training "
                        "split with its tokenizer (the baseline)")
    p.add_argument("--batches", type=int, default=None, help="number of eval batches (default: train.eval_batches; "
                                                             "a classifier scores every example)")
    _add_column_args(p)
    _add_sft_eval_args(p, "--limit", "an instruction-tuned run: score the first N pairs (0: all) by response loss "
                                     "and exact match; --data is gsm8k or a prompt/response .jsonl")

    p = sub.add_parser("sample", help="continue prompt(s) with a decoder run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch of prompts)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate (default: up to 200, as many as the model's context leaves)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true",
                   help="an instruction-tuned run: wrap each prompt in the run's template and print the response")

    p = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] in TEXT with an encoder run")
    p.add_argument("--workdir", required=True)
    p.add_argument("text", help="text holding one or more [MASK]")
    p.add_argument("--top-k", type=int, default=5)

    p = sub.add_parser("finetune", help="fine-tune a pretrained run (encoder or decoder) for sequence "
                                        "classification into a new run directory --out")
    p.add_argument("--workdir", required=True, help="the pretrained run (its config, tokenizer, newest checkpoint)")
    p.add_argument("--task", required=True, help="sst2, rt-polarity, or a .tsv/.jsonl file of text and label; "
                                                  "wnut17 or a .conll file (token<TAB>tag) fine-tunes a BIO tagger")
    p.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set objective.pooling=mean objective.linear_probe=true "
                        "train.steps=300 (repeatable)")
    p.add_argument("--out", required=True, help="the fine-tuning run directory; re-running on it resumes")
    p.add_argument("--valid", default="", metavar="FILE",
                   help="labelled .tsv/.jsonl to validate on and select the best checkpoint by (default: the task's "
                        "dev split, or 10%% held out of a task file)")
    p.add_argument("--test", default="", metavar="FILE",
                   help="labelled .tsv/.jsonl scored once at the end with the selected model (a tagger: a .conll "
                        "file, or the task's name for its test split, e.g. --test wnut17)")
    _add_column_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("sft", help="instruction-tune a pretrained decoder on prompt → response pairs (loss on the "
                                   "response tokens only) into a new run directory --out")
    p.add_argument("--workdir", required=True,
                   help="the pretrained decoder run (clm, imported GPT-2, or sft): its config, tokenizer, checkpoint")
    p.add_argument("--data", required=True, help="gsm8k, or a .jsonl file with a prompt and a response field per line")
    p.add_argument("--out", required=True, help="the instruction-tuned run directory; re-running on it resumes")
    p.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=300 data.packing=true "
                        "objective.template='Q: {prompt}\\nA: {response}' (repeatable)")
    p.add_argument("--valid", default="", metavar="FILE",
                   help="prompt/response .jsonl for the validation loss (default: 5%% of the training pairs)")
    _add_sft_eval_args(p, "--eval-limit", "after training, score exact match of greedy answers on the first N test "
                                          "pairs (gsm8k: its test split; a file: the validation pairs; 0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("predict", help="classify each line of FILE with a fine-tuned run; one JSON line per input "
                                       "line: the label and every class's probability (a tagger: the line's "
                                       "words and their tags)")
    p.add_argument("--workdir", required=True, help="a fine-tuned run (jaxformer finetune --out)")
    p.add_argument("file", help="text to classify: one example per line, or a .tsv/.jsonl with a text column; "
                                "- reads standard input")
    p.add_argument("--out", default=None, help="write the JSON lines here (default: standard output)")
    p.add_argument("--text-column", default=None, metavar="NAME",
                   help="the .tsv/.jsonl text column (default: the run's, else text, sentence, review, content)")

    p = sub.add_parser("import-hf", help="turn a local Hugging Face GPT-2 or BERT folder (config.json, weights, "
                                         "tokenizer.json) into a run directory that sample/eval/fill-mask/finetune use")
    p.add_argument("model", help="the saved model folder (as save_pretrained writes it)")
    p.add_argument("--workdir", required=True, help="the new run directory (must not exist or be empty)")
    p.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                   help="settings that the model does not fix, e.g. --set data.source=text:corpus.txt "
                        "train.seq_len=256 (repeatable)")

    p = sub.add_parser("export-hf", help="write a run's newest checkpoint as a Hugging Face folder: GPT-2 from a "
                                         "clm run, BERT from an mlm run")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="the new model folder (must not exist or be empty)")

    p = sub.add_parser("params", help="parameter and FLOP counts of a config (no allocation)")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--list-presets", action="store_true")
    p.add_argument("--list-experiments", action="store_true", help="the named experiments in experiments/")

    from jaxformer import timing  # stdlib-only at import time: the parser stays fast

    p = sub.add_parser("bench", help="training tokens/s, compile time, peak memory and MFU of jaxformer per "
                                     "objective and config; writes JSON (default bench/results.json); the PyTorch "
                                     "peers are in benchmarks/bench_train.py")
    timing.add_arguments(p)
    return parser


def cmd_train(args) -> int:
    import jax

    from jaxformer import config as config_lib
    from jaxformer import report, trainer

    cfg = _load_config(args)
    if cfg.objective.teacher:
        raise UserError("objective.teacher is recorded by `jaxformer distill --teacher DIR`, which trains a student "
                        "against it: use that command, or leave the key out.")
    config_lib.resolve(cfg, n_devices=jax.device_count())  # every check that needs no data, before any is read
    result = trainer.train_loop(cfg, args.workdir, show_progress=not args.no_progress, extend=args.extend)
    report.print_training_summary(args.workdir, result, sample_tokens=args.sample_tokens)
    return EXIT_PREEMPTED if result["preempted"] else 0


def cmd_distill(args) -> int:
    from jaxformer import distill, report

    base = _load_config(argparse.Namespace(**{**vars(args), "overrides": []}))  # the teacher's vocabulary goes
    result = distill.distill(args.teacher, base, _overrides(args), args.workdir,  # in before the user's --set
                             show_progress=not args.no_progress)
    report.print_training_summary(args.workdir, result, sample_tokens=args.sample_tokens)
    return EXIT_PREEMPTED if result["preempted"] else 0


def cmd_eval(args) -> int:
    from jaxformer import objectives, rundir, trainer
    from jaxformer.data.pipeline import load_corpus
    from jaxformer.run import open_run

    kind = rundir.read_config(args.workdir).objective.kind
    if kind == "tag":
        return _eval_tagger(args)
    if kind == "sft":
        from jaxformer import sft

        if args.stride or args.ngram:
            raise UserError("--stride and --ngram apply to held-out text: an instruction-tuned run is scored on "
                            "prompt/response pairs (--data, --limit).")
        print(json.dumps(sft.evaluate_run(args.workdir, data=args.data, limit=args.limit,
                                          max_new_tokens=args.max_new_tokens, columns=_pair_columns(args))))
        return 0
    if not objectives.OBJECTIVES[kind].token_level:
        return _eval_classifier(args)
    run = open_run(args.workdir)
    if args.data:
        from jaxformer.evaluation import heldout

        out = heldout.evaluate_text(run, args.data, stride=args.stride, ngram_order=args.ngram)
        print(json.dumps({"step": run.step, "source": args.data, **out}))
        return 0
    if args.stride or args.ngram:
        raise UserError("--stride and --ngram apply to held-out evaluation: give the text with --data.")
    data_cfg = run.cfg.data
    run.corpus = load_corpus(data_cfg, args.workdir, show_progress=False)
    out = trainer.evaluate(run, split=args.split, n_batches=args.batches)
    print(json.dumps({"step": run.step, "split": args.split, "source": data_cfg.source, **out}))
    return 0


def _eval_classifier(args) -> int:
    """A fine-tuned run's selected model on a labelled file (--data) or its own train/valid split."""
    from jaxformer import predict
    from jaxformer.data.classification import load_task
    from jaxformer.data.classification_batches import task_splits

    clf = predict.open_classifier(args.workdir)
    o, columns = clf.run.cfg.objective, _columns(args, clf.columns)
    if args.data:
        texts, labels = load_task(args.data, "test", clf.labels, columns)
    else:
        splits = task_splits(o.task, valid=o.valid, labels=clf.labels, columns=columns)
        texts, labels = ((splits.train_texts, splits.train_labels) if args.split == "train"
                         else (splits.dev_texts, splits.dev_labels))
    metrics = predict.classification_metrics(clf.log_probabilities(texts), labels, clf.labels)
    print(json.dumps({"step": clf.step, "checkpoint": clf.checkpoint, "data": args.data or f"{o.task} ({args.split})",
                      **metrics}))
    return 0


def _eval_tagger(args) -> int:
    """A fine-tuned tagger's selected model on a CoNLL file (--data; a named task such as wnut17 means its test
    split) or its own train/valid split: entity-level P/R/F1 overall and per type."""
    from jaxformer import predict, tagging
    from jaxformer.data.conll import read_tag_task

    tagger = predict.open_classifier(args.workdir)
    o = tagger.run.cfg.objective
    if args.data:
        sentences = read_tag_task(args.data, "test")
    else:
        train_set, dev_set = tagging.tag_splits(o.task, o.valid)
        sentences = train_set if args.split == "train" else dev_set
    metrics = tagging.tag_metrics(tagger.run, sentences, tagger.labels)
    print(json.dumps({"step": tagger.step, "checkpoint": tagger.checkpoint,
                      "data": args.data or f"{o.task} ({args.split})", **metrics}))
    return 0


def cmd_predict(args) -> int:
    from pathlib import Path

    from jaxformer import atomic, predict
    from jaxformer.data.classification import decode, read_text, read_texts

    clf = predict.open_classifier(args.workdir)
    if args.file == "-":
        texts = decode(sys.stdin.buffer.read(), "standard input").splitlines()
    else:
        if args.out and os.path.exists(args.out) and os.path.samefile(args.out, args.file):
            raise UserError(f"--out {args.out} is the input file: write the predictions to another file.")
        texts = (read_text(Path(args.file)).splitlines() if clf.run.cfg.objective.kind == "tag"
                 else read_texts(args.file, _columns(args, clf.columns)))
    if clf.run.cfg.objective.kind == "tag":  # a tagger: one sentence of whitespace-separated words per line
        from jaxformer import tagging

        words = [line.split() for line in texts if line.strip()]
        predictions = tagging.predicted_tags(clf.run, words, clf.labels)
    else:
        predictions = clf.predictions(clf.log_probabilities(texts))
    lines = "".join(json.dumps(p) + "\n" for p in predictions)
    if args.out:
        if os.path.isdir(args.out):
            raise UserError(f"--out {args.out} is a directory: give a file path for the predictions.")
        atomic.write_text(args.out, lines)
    else:
        sys.stdout.write(lines)
    return 0


def _open_for(workdir: str, ability: str):
    """The run in `workdir`, or one sentence naming what it can do instead."""
    from jaxformer.run import open_run

    run = open_run(workdir)
    run.objective.require(ability, workdir)
    return run


def cmd_sample(args) -> int:
    from jaxformer import generate

    run = _open_for(args.workdir, "sample")
    tokenizer, graphdef, params = run.tokenizer, run.state.graphdef, run.state.params
    texts = args.prompt
    if args.chat:
        if run.cfg.objective.kind != "sft":
            raise UserError(f"--chat wraps prompts in an instruction-tuned run's template, and {args.workdir} holds "
                            f"{run.objective.description}: make one with `jaxformer sft`, or leave --chat out.")
        from jaxformer.data.sft import Template

        texts = [Template.parse(run.cfg.objective.template).prompt_part(p) for p in args.prompt]
    prompts = [tokenizer.encode(p) for p in texts]
    budget = args.max_new_tokens
    if budget is None:  # what the context leaves after the longest prompt (a too-long prompt is refused below)
        budget = max(1, min(200, run.cfg.model.max_seq_len - max(len(p) for p in prompts)))
    outs = generate.generate(graphdef, params, prompts, max_new_tokens=budget,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                             eos_id=tokenizer.special_ids.eos)
    for prompt, new in zip(texts, outs, strict=True):
        print(tokenizer.decode(new) if args.chat else prompt + tokenizer.decode(new))
        if len(outs) > 1:
            print("-" * 40)
    return 0


def cmd_fill_mask(args) -> int:
    from jaxformer import generate

    run = _open_for(args.workdir, "fill-mask")
    tokenizer = run.tokenizer
    mask = tokenizer.mask_token or "[MASK]"
    if mask not in args.text:
        raise UserError(f"The text has no {mask}: write {mask} where a token should be predicted.")
    results = generate.fill_mask(run.state.graphdef, run.state.params, tokenizer.encode(args.text), top_k=args.top_k,
                                 mask_id=tokenizer.special_ids.mask)
    for i, candidates in enumerate(results):
        print(f"{mask} #{i + 1}:")
        for token_id, prob in candidates:
            print(f"  {tokenizer.decode([token_id])!r:>12}  {prob:.4f}")
    return 0


def cmd_finetune(args) -> int:
    from jaxformer import finetune

    result = finetune.finetune(args.workdir, args.task, args.out, _overrides(args), valid=args.valid,
                               test=args.test, columns=_columns(args), show_progress=not args.no_progress)
    if result.get("objective") == "tag":
        from jaxformer import tagging

        tagging.print_summary(args.out, result)
    else:
        finetune.print_summary(args.out, result)
    return EXIT_PREEMPTED if result["preempted"] else 0


def cmd_sft(args) -> int:
    from jaxformer import sft

    result = sft.sft(args.workdir, args.data, args.out, _overrides(args), valid=args.valid,
                     columns=_pair_columns(args), eval_limit=args.eval_limit, max_new_tokens=args.max_new_tokens,
                     show_progress=not args.no_progress)
    sft.print_summary(args.out, result)
    return EXIT_PREEMPTED if result["preempted"] else 0


def cmd_import_hf(args) -> int:
    from jaxformer import report
    from jaxformer.hf import import_run
    from jaxformer.objectives import OBJECTIVES

    result = import_run(args.model, args.workdir, _overrides(args))
    print(f"imported {result['model_type']} ({result['n_params']:,} parameters, vocabulary of "
          f"{result['vocab_size']:,}) from {args.model} as an objective.kind={result['objective']} run")
    report.print_next_steps(args.workdir, None, abilities=OBJECTIVES[result["objective"]].abilities)
    return 0


def cmd_export_hf(args) -> int:
    from jaxformer.hf import export_run

    result = export_run(args.workdir, args.out)
    auto = "AutoModelForCausalLM" if result["model_type"] == "gpt2" else "AutoModelForMaskedLM"
    tokenizer = ("with its tokenizer" if result["tokenizer"] else
                 "without a tokenizer (jaxformer's own tokenizers have no Hugging Face form; encode with the run's)")
    print(f"wrote {result['model_type']} from step {result['step']} of {args.workdir} to {args.out} {tokenizer}; "
          f"load it with transformers.{auto}.from_pretrained({str(args.out)!r})")
    return 0


def cmd_params(args) -> int:
    from jaxformer import config as config_lib
    from jaxformer import params as params_lib

    if args.list_presets:
        print("\n".join(config_lib.PRESETS))
        return 0
    if args.list_experiments:
        from jaxformer import experiments

        for experiment in experiments.all_experiments().values():
            print(f"{experiment.name:24s} {experiment.summary}")
        return 0
    cfg = _load_config(args)
    counts = params_lib.count(cfg)
    if args.json:
        print(json.dumps(counts))
    else:
        params_lib.print_table(counts)
    return 0


def cmd_bench(args) -> int:
    from jaxformer import timing

    return timing.run(args)


COMMANDS = {"train": cmd_train, "distill": cmd_distill, "eval": cmd_eval, "sample": cmd_sample, "fill-mask": cmd_fill_mask,
            "finetune": cmd_finetune, "predict": cmd_predict, "import-hf": cmd_import_hf, "export-hf": cmd_export_hf,
            "params": cmd_params, "bench": cmd_bench, "sft": cmd_sft}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:  # absl/orbax are chatty at INFO
        logging.getLogger("absl").setLevel(logging.ERROR)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if host_memory.invalid:
            raise UserError(host_memory.invalid)
        if args.command in ("train", "distill", "finetune", "sft", "eval"):
            from jaxformer import distributed

            distributed.maybe_initialize()  # multi-host runs: every process runs the same command
        return COMMANDS[args.command](args)
    except JaxformerError as err:
        message = str(err).replace("\n", "\\n")  # a newline typed into a value or a path must not split it
        print(f"jaxformer {args.command}: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"jaxformer {args.command}: interrupted.", file=sys.stderr)
        return 130
    except FileNotFoundError as err:
        print(f"jaxformer {args.command}: file not found: {err.filename or err}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
