"""Frozen features: pooled final hidden states of a pretrained (or randomly initialised) backbone, for linear
probes fitted outside JAX (scikit-learn's LogisticRegression in `experiments/compare.py`).

    feats = pooled_features(run, tokens_NxT, causal=False, poolings=("cls", "mean", "last"))  # {pooling: [N, D]}

One forward pass per batch gives every pooling: the backbone runs once, the poolings are cheap weighted sums.
The inputs are what fine-tuning feeds the same backbone (`encode_examples`: `[CLS] text [SEP]` or `text [EOS]`,
right-padded with the fill id, real tokens never attending to padding), pooled exactly as the classifier head's
input is (`objectives.classify.pool_weights`), so a probe here and `objective.linear_probe=true` see the same
vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.objectives.classify import pool, pool_weights

POOLINGS = ("cls", "mean", "last")


def _pooled_fn(graphdef, *, causal: bool, poolings: tuple[str, ...], fill_id: int):
    from flax import nnx

    def pooled(params, tokens_BxT):
        model = nnx.merge(graphdef, params)
        hidden_BxTxD, _, _ = model(tokens_BxT, causal=causal, segment_ids_BxT=(tokens_BxT != fill_id).astype(jnp.int32))
        return {p: pool(hidden_BxTxD, pool_weights(tokens_BxT, p, fill_id)) for p in poolings}

    return jax.jit(pooled)


def pooled_features(run, tokens_NxT: np.ndarray, *, causal: bool, poolings: tuple[str, ...] = POOLINGS,
                    batch_size: int = 64) -> dict[str, np.ndarray]:
    """{pooling: float32 [N, D]} for encoded examples; the last batch is padded to full size (one compile)."""
    fill = run.tokenizer.special_ids.fill
    fn = _pooled_fn(run.state.graphdef, causal=causal, poolings=tuple(poolings), fill_id=fill)
    out: dict[str, list[np.ndarray]] = {p: [] for p in poolings}
    for start in range(0, len(tokens_NxT), batch_size):
        chunk = tokens_NxT[start:start + batch_size]
        padded = np.full((batch_size, tokens_NxT.shape[1]), fill, np.int32)
        padded[:len(chunk)] = chunk
        for p, feats in jax.device_get(fn(run.state.params, jnp.asarray(padded))).items():
            out[p].append(np.asarray(feats)[:len(chunk)])
    d = run.cfg.model.d_model
    return {p: np.concatenate(v) if v else np.zeros((0, d), np.float32) for p, v in out.items()}
