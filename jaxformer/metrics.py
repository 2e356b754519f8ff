"""Run metrics: one JSON object per logged step in `metrics.jsonl`, mirrored to TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np

from jaxformer import atomic

LN2 = math.log(2.0)


SUMMED = ("n_tokens", "skipped")  # counts over the window; every other metric is averaged


def summarize(window: list[dict], *, char_level: bool, token_level: bool = True) -> dict:
    """Mean of the per-step device metrics since the last log (one host transfer for the whole window); counts
    are summed. Perplexity (and bpc) only for objectives that predict tokens; objectives that predict one label
    per example count `n_examples` (their loss weights) instead of `n_tokens`."""
    host = jax.device_get(window)
    out = {k: float(np.sum([m[k] for m in host]) if k in SUMMED else np.mean([m[k] for m in host]))
           for k in host[0]}
    if token_level:
        out.update(derived(out.get("mlm_loss", out["loss"]), char_level=char_level))  # the token-level term
    elif "n_tokens" in out:
        out["n_examples"] = out.pop("n_tokens")
    return out


def derived(loss: float, *, char_level: bool) -> dict:
    out = {"perplexity": math.exp(min(loss, 80.0))}
    if char_level:  # one token per character (or byte): nats per token -> bits per character
        out["bpc"] = loss / LN2
    return out


class MetricsWriter:
    """Appends to `<workdir>/metrics.jsonl` and writes TensorBoard scalars under `<workdir>/tensorboard`."""

    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
        """`resume_step`: the step the run resumes from; lines logged after it by an earlier attempt that did not
        reach a checkpoint are dropped, so every logged step comes from the parameters that produced it."""
        self.enabled = enabled
        if not enabled:
            return
        self.path = Path(workdir) / "metrics.jsonl"
        rows = read_metrics(workdir)
        kept = [r for r in rows if r.get("step", 0) <= resume_step]
        if len(kept) < len(rows):
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")  # noqa: SIM115  (kept open for the run)
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        except ImportError:  # TensorBoard is a convenience; metrics.jsonl is the record
            self.tb = None

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
