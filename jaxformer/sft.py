"""`jaxformer sft`: instruction tuning of a pretrained decoder on prompt → response pairs, and its evaluation.

    sft(workdir, data, out, overrides)        # -> {"valid_loss", "exact_match", ...}; <out> is a normal run
    evaluate_run(out, data=..., limit=50)     # response loss / perplexity and exact match on the first 50 pairs

The pretrained run in `workdir` (a `clm` run, an imported Hugging Face GPT-2, or an earlier `sft` run) gives the
model, tokenizer and newest verified checkpoint; the new run gets `objective.kind=sft` and trains with THE train
step, shardings, optimizer, checkpoints and loop (`trainer.fit`) as pretraining. Only the rows differ: pairs in
the chat template with a loss mask (see jaxformer/data/sft.py), one per row or packed (`data.packing=true`).

- Validation (logged as valid_* every train.eval_every steps): response-token loss over `--valid FILE`, else a
  seeded 5% of the training pairs (at most 500) held out.
- Exact match: greedy decoding with the KV cache (jaxformer/generate.py) from the template's prompt part until
  EOS or the generation budget, then `data.sft.is_exact_match` (GSM8K: the number after `####`). The budget is
  the longest reference response of the scored pairs plus its EOS, at most half the context (`--max-new-tokens`
  sets it); a prompt keeps its last tokens if it would not leave that much room.
- Named data: `gsm8k` trains on its train split and is scored on its test split; a .jsonl file is scored on its
  validation pairs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np

from jaxformer import atomic, generate, objectives, parallel, rundir, train, trainer
from jaxformer import config as config_lib
from jaxformer import metrics as metrics_lib
from jaxformer.config import Config, MeshConfig, ObjectiveConfig
from jaxformer.data.batching import global_batch
from jaxformer.data.root import is_data_path
from jaxformer.data.sft import (
    Pair,
    PairColumns,
    SFTRows,
    Template,
    build_rows,
    encode_pair,
    is_exact_match,
    is_named_task,
    prompt_ids,
    read_pairs,
)
from jaxformer.data.tokenizers import Tokenizer, load_tokenizer
from jaxformer.errors import UserError
from jaxformer.finetune import PRETRAINED_FILE, check_backbone, load_pretrained
from jaxformer.run import Run, open_run

# Instruction-tuning defaults on top of the pretrained run's config; --set overrides win.
DEFAULTS = {"train.steps": 300, "train.batch_size": 16, "train.log_every": 25, "train.eval_every": 100,
            "train.checkpoint_every": 500, "optimizer.lr": 3e-4, "optimizer.warmup_steps": 30,
            "optimizer.weight_decay": 0.0, "data.packing": False}
SETTABLE = ("objective.template", "data.packing")  # the objective./data. keys that --set may change
HOLDOUT_SEED = 1234
HOLDOUT_FRACTION, HOLDOUT_MAX = 0.05, 500
GENERATE_BATCH = 64  # prompts decoded at once


# ---------------------------------------------------------------------------------------------- config

def sft_config(pretrained: Config, data: str, overrides: list[str], *, valid: str = "",
               columns: PairColumns = PairColumns()) -> Config:
    """The pretrained run's config with objective.kind=sft, DEFAULTS, then the user's overrides; resolved for
    this host's devices."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith(("objective.", "data.")) and key not in SETTABLE:
            raise UserError(f"{key} comes from the pretrained run and --data/--valid/--prompt-column/"
                            f"--response-column, so sft does not take it from --set: leave it out.")
    objective = ObjectiveConfig(kind="sft", task=data, valid=valid, prompt_column=columns.prompt,
                                response_column=columns.response)
    cfg = replace(pretrained, objective=objective, mesh=MeshConfig())
    cfg = config_lib.apply_overrides(config_lib.apply_overrides(cfg, DEFAULTS), overrides)
    return config_lib.resolve(cfg, n_devices=jax.device_count())


def _data_id(path: str) -> str:
    """The data as the run records it: a named task or `@data/` path as written, any other path absolute."""
    return path if is_named_task(path) or is_data_path(path) else str(Path(path).absolute())


def columns_of(cfg: Config) -> PairColumns:
    return PairColumns(cfg.objective.prompt_column, cfg.objective.response_column)


# ---------------------------------------------------------------------------------------------- data

def split_pairs(data: str, valid: str = "", columns: PairColumns = PairColumns()) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, validation pairs): `valid` when given, else a seeded holdout of the training pairs."""
    pairs = read_pairs(data, "train", columns)
    if valid:
        return pairs, read_pairs(valid, "valid", columns)
    n_dev = min(HOLDOUT_MAX, int(round(len(pairs) * HOLDOUT_FRACTION)))
    if n_dev < 1 or n_dev >= len(pairs):
        raise UserError(f"{data} has {len(pairs)} pairs, too few to hold out validation pairs: add pairs, or give "
                        f"a validation file with --valid.")
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(pairs))
    return [pairs[i] for i in order[n_dev:]], [pairs[i] for i in order[:n_dev]]


def scored_pairs(cfg: Config, data: str | None = None, columns: PairColumns | None = None) -> tuple[str, list[Pair]]:
    """What an SFT run is scored on: `data` (a named task's test split, or a file), else the run's own (the
    named task's test split, else its validation pairs)."""
    o, columns = cfg.objective, columns or columns_of(cfg)
    if data:
        return data, read_pairs(data, "test", columns)
    if is_named_task(o.task):
        return f"{o.task} (test)", read_pairs(o.task, "test", columns)
    return f"{o.valid or o.task} (validation)", split_pairs(o.task, o.valid, columns)[1]


def encode_rows(pairs: list[Pair], cfg: Config, tokenizer: Tokenizer) -> SFTRows:
    template = Template.parse(cfg.objective.template)
    return build_rows([encode_pair(tokenizer, template, p) for p in pairs], cfg.train.seq_len + 1,
                      packing=cfg.data.packing, fill_id=tokenizer.special_ids.fill, seed=cfg.train.seed)


# ---------------------------------------------------------------------------------------------- metrics

def response_metrics(run: Run, rows: SFTRows, eval_fn=None) -> dict:
    """Loss, perplexity and next-token accuracy over every response token of `rows` (the pairs' loss mask)."""
    eval_fn = eval_fn or train.compile_eval_step(run.shardings, run.mesh)
    batches = rows.eval_batches(run.cfg.train.batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())
    totals = trainer.eval_totals(run, batches, eval_fn)
    n = max(totals["n_tokens"], 1.0)
    loss = totals["loss_sum"] / n
    return {"loss": loss, "accuracy": totals["correct"] / n, "n_tokens": int(totals["n_tokens"]),
            **metrics_lib.derived(loss, char_level=run.tokenizer.char_level)}


def generation_budget(run: Run, pairs: list[Pair], max_new_tokens: int | None) -> int:
    context = run.cfg.model.max_seq_len
    if max_new_tokens is not None:
        if not 0 < max_new_tokens < context:
            raise UserError(f"--max-new-tokens must be between 1 and {context - 1} (the context is {context} "
                            f"tokens), got {max_new_tokens}.")
        return max_new_tokens
    template = Template.parse(run.cfg.objective.template)
    longest = max(len(run.tokenizer.encode(template.response_part(p.response))) for p in pairs) + 1
    return max(1, min(longest, context // 2))


def answer(run: Run, prompts: list[str], *, max_new_tokens: int, show_progress: bool = False) -> list[str]:
    """Greedy responses to `prompts` (wrapped in the run's template), decoded up to EOS or `max_new_tokens`."""
    from tqdm.auto import tqdm

    template, tokenizer = Template.parse(run.cfg.objective.template), run.tokenizer
    room = run.cfg.model.max_seq_len - max_new_tokens
    ids = [prompt_ids(tokenizer, template, p)[-room:] for p in prompts]
    eos = tokenizer.special_ids.eos
    out = []
    for start in tqdm(range(0, len(ids), GENERATE_BATCH), desc="generate", disable=not show_progress,
                      dynamic_ncols=True):
        new = generate.generate(run.state.graphdef, run.state.params, ids[start:start + GENERATE_BATCH],
                                max_new_tokens=max_new_tokens, temperature=0.0, eos_id=eos)
        out += [tokenizer.decode([t for t in row if t != eos]) for row in new]
    return out


def exact_match(run: Run, pairs: list[Pair], *, max_new_tokens: int | None = None,
                show_progress: bool = False) -> dict:
    """Exact-match accuracy of greedy answers to `pairs` (see `data.sft.is_exact_match`), with the answers."""
    budget = generation_budget(run, pairs, max_new_tokens)
    answers = answer(run, [p.prompt for p in pairs], max_new_tokens=budget, show_progress=show_progress)
    hits = [is_exact_match(a, p.response) for a, p in zip(answers, pairs, strict=True)]
    return {"exact_match": float(np.mean(hits)), "n_exact_match": len(pairs), "max_new_tokens": budget,
            "answers": answers, "hits": hits}


def evaluate_run(workdir: str | Path, *, data: str | None = None, limit: int = 50,
                 max_new_tokens: int | None = None, columns: PairColumns | None = None) -> dict:
    """`jaxformer eval` of an SFT run: response loss/perplexity and exact match over the first `limit` scored
    pairs (0: all)."""
    run = open_run(workdir)
    if limit < 0:
        raise UserError(f"--limit must be >= 0 (0 scores every pair), got {limit}.")
    name, pairs = scored_pairs(run.cfg, data, columns if columns and (columns.prompt or columns.response) else None)
    pairs = pairs[:limit] if limit else pairs
    rows = encode_rows(pairs, run.cfg, run.tokenizer)
    out = {"step": run.step, "data": name, "n_examples": len(pairs), "n_truncated": rows.n_truncated,
           **response_metrics(run, rows)}
    em = exact_match(run, pairs, max_new_tokens=max_new_tokens)
    return {**out, **{k: em[k] for k in ("exact_match", "n_exact_match", "max_new_tokens")}}


# ---------------------------------------------------------------------------------------------- the run

def _has_checkpoint(workdir: Path) -> bool:
    folder = workdir / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _pretrained_decoder(workdir: Path) -> Config:
    pretrained = rundir.read_config(workdir)
    objective = objectives.for_config(pretrained)
    if objective.head != "lm" or not objective.causal:
        raise UserError(f"{workdir} holds {objective.description}: instruction tuning needs a decoder run "
                        f"(objective.kind=clm, an imported GPT-2, or an sft run).")
    return pretrained


def sft(workdir: str | Path, data: str, out: str | Path, overrides: list[str] = (), *, valid: str = "",
        columns: PairColumns = PairColumns(), eval_limit: int = 50, max_new_tokens: int | None = None,
        show_progress: bool = True, stop_after: int | None = None) -> dict:
    """Instruction-tune the decoder in `workdir` on `data` into the run directory `out` (resumes if it has
    checkpoints); returns the summary (last train/validation metrics, exact match on `eval_limit` scored pairs
    when the run finished) and the Run."""
    workdir, out = Path(workdir), Path(out)
    if out.absolute() == workdir.absolute():
        raise UserError(f"--out {out} is the pretrained run's directory: give the instruction-tuned run its own "
                        f"--out.")
    pretrained = _pretrained_decoder(workdir)
    tokenizer = load_tokenizer(workdir)
    if tokenizer is None:
        raise UserError(f"{workdir} has no saved tokenizer: it is not a complete jaxformer run directory.")
    resuming = _has_checkpoint(out)
    if not resuming and not _has_checkpoint(workdir):
        raise UserError(f"No checkpoint in {workdir / 'checkpoints'}: pretrain there first, or point --workdir at "
                        f"a run that saved one.")
    if eval_limit < 0:
        raise UserError(f"--eval-limit must be >= 0 (0: no exact-match scoring), got {eval_limit}.")
    train_pairs, dev_pairs = split_pairs(data, valid, columns)
    cfg = sft_config(pretrained, _data_id(data), list(overrides), valid=_data_id(valid) if valid else "",
                     columns=columns)
    check_backbone(pretrained, cfg, workdir)
    train_rows, dev_rows = encode_rows(train_pairs, cfg, tokenizer), encode_rows(dev_pairs, cfg, tokenizer)
    if train_rows.n_no_response == train_rows.n_pairs:
        raise UserError(f"No response token of {data} fits in train.seq_len={cfg.train.seq_len} after its prompt: "
                        f"raise train.seq_len (with RoPE positions, model.max_seq_len too).")
    scored = scored_pairs(cfg, columns=columns)[1][:eval_limit] if eval_limit else []

    with rundir.WorkdirLock(out, enabled=jax.process_index() == 0):
        run = open_run(out, cfg, tokenizer=tokenizer)
        if not resuming:
            run.state, pretrained_step = load_pretrained(run.state, workdir)
            if jax.process_index() == 0:
                origin = {"workdir": str(workdir.absolute()), "step": pretrained_step,
                          "objective": pretrained.objective.kind}
                atomic.write_text(out / PRETRAINED_FILE, json.dumps(origin) + "\n")
        run.write_run_files()
        t = run.cfg.train
        procs = {"process_index": jax.process_index(), "process_count": jax.process_count()}
        sharding = parallel.batch_sharding(run.mesh, ndim=1)
        eval_fn = train.compile_eval_step(run.shardings, run.mesh)
        result = trainer.fit(
            run, show_progress=show_progress, stop_after=stop_after,
            batch_at=lambda step: global_batch(train_rows.batch_at(batch_size=t.batch_size, seed=t.seed, step=step,
                                                                   **procs), sharding),
            tokens_at=lambda step: train_rows.real_tokens_at(batch_size=t.batch_size, seed=t.seed, step=step),
            evaluate_state=lambda state: response_metrics(replace(run, state=state), dev_rows, eval_fn))
    summary = {"data": data, "step": result["step"], "n_train": train_rows.n_pairs, "n_valid": dev_rows.n_pairs,
               "train_rows": train_rows.n_rows, "n_truncated": train_rows.n_truncated,
               "packing": cfg.data.packing, "fill": float(train_rows.n_real.sum() / train_rows.tokens.size)}
    summary.update({k: v for k, v in result.items() if k in ("loss", "perplexity") or k.startswith("valid_")})
    if scored and not result["preempted"]:
        em = exact_match(run, scored, max_new_tokens=max_new_tokens, show_progress=show_progress)
        summary.update(exact_match=em["exact_match"], n_exact_match=em["n_exact_match"],
                       example={"prompt": scored[0].prompt, "answer": em["answers"][0],
                                "reference": scored[0].response})
    return {**summary, "preempted": result["preempted"], "run": run}


def print_summary(out: str | Path, result: dict, last: int = 8) -> None:
    """A small table of the logged steps (train and validation response loss), then one JSON line."""
    from rich.console import Console
    from rich.table import Table

    rows = metrics_lib.read_metrics(out)
    columns = [("step", "step", "{:d}"), ("loss", "train loss", "{:.4f}"), ("valid_loss", "valid loss", "{:.4f}"),
               ("valid_perplexity", "valid ppl", "{:.3f}"), ("valid_accuracy", "valid token acc", "{:.3f}")]
    table = Table(title=f"instruction tuning on {result['data']} (loss on response tokens only)")
    for _, title, _ in columns:
        table.add_column(title, justify="right")
    for row in rows[-last:]:
        table.add_row(*[fmt.format(row[key]) if key in row else "" for key, _, fmt in columns])
    Console().print(table)
    print(json.dumps({k: v for k, v in result.items() if k != "run"}))
