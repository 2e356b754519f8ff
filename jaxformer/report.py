"""What a finished training command shows: the end of the loss curve as a table and, for decoders, a sample."""

from __future__ import annotations

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


def print_training_summary(workdir: str | Path, result: dict, *, sample_tokens: int = 200) -> None:
    console = Console()
    rows = metrics_lib.read_metrics(workdir)
    if rows:
        console.print(loss_table(rows))
    run = result.get("run")
    if run is None or "sample" not in run.objective.abilities or sample_tokens <= 0:
        return
    from jaxformer import generate
    from jaxformer.data.tokenizers import EOS

    tokenizer = run.tokenizer
    prompt_ids = tokenizer.encode(SAMPLE_PROMPT)
    budget = min(sample_tokens, run.cfg.model.max_seq_len - len(prompt_ids))
    new = generate.generate(run.state.graphdef, run.state.params, [prompt_ids], max_new_tokens=budget,
                            temperature=0.8, top_k=0, top_p=1.0, seed=0, eos_id=EOS)[0]
    text = tokenizer.decode(new)
    atomic.write_text(Path(workdir) / "samples.txt", f"step {result['step']}:\n{text}\n")
    console.rule(f"sample at step {result['step']} (temperature 0.8)")
    console.print(text, markup=False, highlight=False)
