"""Document-aware packing end to end: batcher segments -> objective -> model; attention never crosses documents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import objectives
from jaxformer.data.batching import batch_at
from jaxformer.data.tokenizers import EOS
from jaxformer.model import build_model

V = 40


def _stream(rng, n_docs=30):
    docs = [rng.integers(8, V, rng.integers(3, 12)) for _ in range(n_docs)]
    out = []
    for d in docs:
        out.extend(d.tolist() + [EOS])
    return np.asarray(out[:-1], np.int32)


@pytest.mark.parametrize("kind,positions", [("clm", "learned"), ("clm", "rope"), ("mlm", "learned"),
                                            ("mlm", "sinusoidal")])
def test_packed_documents_do_not_see_each_other(kind, positions):
    # 24-token rows: two to five of the 3..12-token documents each
    cfg = tiny_config(kind, f"model.positions={positions}", "train.seq_len=24", "data.packing=true", vocab_size=V)
    model = build_model(cfg)
    tokens = _stream(np.random.default_rng(0))
    batch = batch_at(tokens, batch_size=4, seq_len=cfg.train.seq_len, seed=0, step=0, packing=True)
    objective = objectives.for_config(cfg)
    ex = objective.prepare({k: jnp.asarray(v) for k, v in batch.items()}, jax.random.key(0))
    causal = objective.causal
    # one compiled forward per shape (each document length): eager ops were compiled one by one for each length
    forward = nnx.jit(lambda model, tokens, positions, segment_ids=None: model(
        tokens, causal=causal, positions_BxT=positions, segment_ids_BxT=segment_ids)[0])
    h = forward(model, ex["inputs"], ex["positions"], ex["segment_ids"])
    seg = np.asarray(ex["segment_ids"])
    for row in range(4):
        for s in np.unique(seg[row]):
            keep = seg[row] == s
            # The same document run alone (positions restart at 0 inside it) gives the same hidden states.
            alone_tokens = np.asarray(ex["inputs"])[row][keep][None]
            alone_pos = np.asarray(ex["positions"])[row][keep][None]
            h_alone = forward(model, jnp.asarray(alone_tokens), jnp.asarray(alone_pos))
            np.testing.assert_allclose(np.asarray(h)[row][keep], np.asarray(h_alone)[0], rtol=2e-4, atol=2e-5)
    if causal:  # never predict the first token of a document from the previous one
        w = np.asarray(ex["weights"])
        full_seg = batch["segment_ids"]
        assert (w[full_seg[:, 1:] != full_seg[:, :-1]] == 0).all()
