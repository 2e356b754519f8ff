"""Golden losses: the first three training losses of each objective, pinned to the values the code gave.

Everything else in the suite compares the code with itself (sharded vs one device, resumed vs uninterrupted) or
with a reference of one part; this file notices any change in what a training step computes end to end (init,
objective, masking draws, loss, optimizer update) made while refactoring. A change to these numbers is a change
of behaviour: make it on purpose, then regenerate with

    GOLDEN_REGENERATE=1 python -m pytest -q -rs tests/test_golden.py

and paste the printed values into GOLDEN below.
"""

import os

import jax
import numpy as np
import pytest
from tiny import tiny_config

from jaxformer import parallel, train
from jaxformer.data.tokenizers import CLS, EOS, N_SPECIAL, PAD, SEP

# Every setting the numbers depend on is spelled out (not left to the tiny shape or a preset's default), so the
# values only move when the step itself computes something else. No warmup and a high learning rate, so that the
# losses at steps 1 and 2 show the optimizer's updates (a change to clipping, decay or Adam's moments moves them).
SETTINGS = ["model.n_layer=2", "model.d_model=32", "model.n_heads=4", "model.dropout=0.0", "train.seq_len=16",
            "train.batch_size=8", "train.steps=100", "train.seed=0", "optimizer.lr=1e-2",
            "optimizer.warmup_steps=0", "optimizer.weight_decay=0.1", "optimizer.grad_clip=1.0", "mesh.data=1"]
VOCAB = 64
STEPS = 3

# train_step metrics["loss"] at steps 0, 1, 2 (CPU, fp32, one device), produced by the code at the time of writing.
GOLDEN = {
    "clm": [4.160262584686279, 4.172815322875977, 4.158504009246826],
    "mlm": [4.1247968673706055, 4.209342002868652, 4.166923999786377],
    "classify": [0.7278985977172852, 0.9328247904777527, 0.7114407420158386],
}


def lm_batch(rng: np.random.Generator, b: int, t: int) -> dict:
    """Windows [B, T+1] of ordinary ids with a few specials: CLS/SEP (MLM never masks them) and PAD at the end
    of one row (CLM gives it no weight)."""
    tokens = rng.integers(N_SPECIAL, VOCAB, (b, t + 1)).astype(np.int32)
    tokens[:, 0] = CLS
    tokens[1, t // 2] = SEP
    tokens[2, t // 2] = EOS
    tokens[0, -4:] = PAD
    return {"tokens": tokens}


def classify_batch(rng: np.random.Generator, b: int, t: int) -> dict:
    """Sentences `[CLS] ids [SEP]` of different lengths, right-padded with PAD to [B, T], labels [B] in {0, 1}."""
    tokens = np.full((b, t), PAD, np.int32)
    for row, n in enumerate(rng.integers(3, t + 1, b)):
        tokens[row, :n] = [CLS, *rng.integers(N_SPECIAL, VOCAB, n - 2), SEP]
    return {"tokens": tokens, "labels": rng.integers(0, 2, b).astype(np.int32)}


def first_losses(kind: str) -> list[float]:
    cfg = tiny_config(kind, *SETTINGS, vocab_size=VOCAB)
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    state, shardings = train.init_train_state(cfg, mesh)
    step_fn = train.compile_train_step(shardings, mesh)
    rng = np.random.default_rng(0)
    make_batch = classify_batch if kind == "classify" else lm_batch
    losses = []
    for _ in range(STEPS):
        batch = make_batch(rng, cfg.train.batch_size, cfg.train.seq_len)
        state, metrics = step_fn(state, batch, jax.random.key(cfg.train.seed))
        losses.append(float(metrics["loss"]))
    return losses


@pytest.mark.parametrize("kind", list(GOLDEN))
def test_first_three_losses_match_golden_values(kind):
    losses = first_losses(kind)
    if os.environ.get("GOLDEN_REGENERATE"):
        line = f"    {kind!r}: {losses!r},"
        print(line)
        pytest.skip(f"GOLDEN_REGENERATE set; new values: {line.strip()}")
    np.testing.assert_allclose(
        losses, GOLDEN[kind], rtol=1e-6, atol=0,
        err_msg=f"The first {STEPS} {kind} training losses changed. A change to these golden numbers is a change of "
                f"behaviour and must be deliberate: if it is, regenerate them (GOLDEN_REGENERATE=1 python -m pytest "
                f"-q -rs tests/test_golden.py) and commit the new values with the change that explains them.")


def test_golden_values_tell_the_objectives_apart():
    """Regenerated values must still show which objective ran: an objective silently computing another's loss
    (or one loss for every step) would make them coincide."""
    rows = [tuple(v) for v in GOLDEN.values()]
    assert len(set(rows)) == len(rows), GOLDEN
    assert all(len(set(v)) == STEPS for v in rows), GOLDEN
