"""What a finished training command shows: the end of the loss curve as a table, for decoders a sample, and
where the run is with the next commands to try on it."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jaxformer import atomic
from jaxformer import metrics as metrics_lib

SAMPLE_PROMPT = "\n"


def loss_table(rows: list[dict], last: int = 8) -> Table:
    table = Table(title="loss curve (last logged steps)")
    columns = [("step", "step", "{:d}"), ("loss", "train loss", "{:.4f}"), ("valid_loss", "valid loss", "{:.4f}"),
               ("accuracy", "accuracy", "{:.3f}"), ("bpc", "bpc", "{:.3f}"), ("tokens_per_s", "tok/s", "{:,.0f}")]
    present = [c for c in columns if any(c[0] in r for r in rows)]
    for _, title, _ in present:
        table.add_column(title, justify="right")
    for row in rows[-last:]:
        table.add_row(*[fmt.format(row[key]) if key in row else "" for key, _, fmt in present])
    return table


FILL_MASK_EXAMPLE = "The {mask} of the function is returned."


def next_commands(workdir: str | Path, abilities: frozenset[str] | set[str], *, preempted: bool = False,
                  mask_token: str | None = "[MASK]") -> list[str]:
    """The commands to try next on the run in `workdir`: by what its objective can do (`objective.abilities`)."""
    w = shlex.quote(str(workdir))
    if preempted:
        return ["re-run the same `jaxformer train` command to resume from the checkpoint just saved"]
    commands = [f"jaxformer eval --workdir {w}"]
    if "sample" in abilities:
        commands.append(f"jaxformer sample --workdir {w} --prompt {shlex.quote('The ')} --temperature 0.8")
    if "fill-mask" in abilities and mask_token:
        commands.append(f"jaxformer fill-mask --workdir {w} {shlex.quote(FILL_MASK_EXAMPLE.format(mask=mask_token))}")
    if abilities:  # a pretrained language model (not a fine-tuned classifier) can be fine-tuned
        commands.append(f"jaxformer finetune --workdir {w} --task sst2 --out {shlex.quote(str(workdir) + '-sst2')}")
    return commands


def print_next_steps(workdir: str | Path, run, *, preempted: bool = False, abilities=None) -> None:
    """Where the run is and what to run next (plain print: commands must not be re-wrapped to copy them)."""
    if abilities is None:
        abilities = run.objective.abilities if run is not None else frozenset()
    mask = run.tokenizer.mask_token if run is not None else "[MASK]"
    print(f"\nrun directory: {Path(workdir).absolute()}\nnext:")
    for command in next_commands(workdir, abilities, preempted=preempted, mask_token=mask):
        print(f"  {command}")


def print_training_summary(workdir: str | Path, result: dict, *, sample_tokens: int = 200) -> None:
    console = Console()
    rows = metrics_lib.read_metrics(workdir)
    if rows:
        console.print(loss_table(rows))
    run = result.get("run")
    if run is not None and "sample" in run.objective.abilities and sample_tokens > 0:
        print_sample(workdir, run, result["step"], sample_tokens, console)
    print_next_steps(workdir, run, preempted=result.get("preempted", False))


def print_sample(workdir: str | Path, run, step: int, sample_tokens: int, console: Console) -> None:
    from jaxformer import generate

    tokenizer = run.tokenizer
    prompt_ids = tokenizer.encode(SAMPLE_PROMPT)
    budget = min(sample_tokens, run.cfg.model.max_seq_len - len(prompt_ids))
    new = generate.generate(run.state.graphdef, run.state.params, [prompt_ids], max_new_tokens=budget,
                            temperature=0.8, top_k=0, top_p=1.0, seed=0, eos_id=tokenizer.special_ids.eos)[0]
    text = tokenizer.decode(new)
    atomic.write_text(Path(workdir) / "samples.txt", f"step {step}:\n{text}\n")
    console.rule(f"sample at step {step} (temperature 0.8)")
    console.print(text, markup=False, highlight=False)
