"""Looking inside a model (notebooks): the attention weights of every layer and head on given tokens.

    maps_LxBxNxTxT = attention_maps(run.state.model(), tokens_BxT, causal=run.objective.causal)

The weights come from `attention.attention_probs`, an explicit softmax used only here; the forward pass that
produces them is the model's own, so the hidden states are the ones training and evaluation see.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx


def attention_maps(model, tokens_BxT: jax.Array, *, causal: bool) -> np.ndarray:
    """[L, B, N, T, T] attention weights (rows: queries, columns: keys; each row sums to 1)."""
    attentions = [block.attn for block in model.blocks]
    for attn in attentions:
        attn.record_probs = True
    try:
        _, intermediates = nnx.capture(model, nnx.Intermediate)(tokens_BxT, causal=causal)
    finally:
        for attn in attentions:
            attn.record_probs = False
    layers = intermediates["blocks"]
    return np.stack([np.asarray(layers[i]["attn"]["probs"][0]) for i in range(len(attentions))])


# ---------------------------------------------------------------------------------------------- embedding geometry

def _unit_rows(x_VxD: np.ndarray) -> np.ndarray:
    x_VxD = np.asarray(x_VxD, np.float64)
    return x_VxD / np.maximum(np.linalg.norm(x_VxD, axis=-1, keepdims=True), 1e-12)


def nearest_neighbours(embed_VxD: np.ndarray, query_D: np.ndarray, k: int = 8,
                       exclude: tuple[int, ...] = (), candidates: np.ndarray | None = None) -> list[tuple[int, float]]:
    """The k ids whose embedding rows have the highest cosine similarity with `query_D`, as (id, cosine), best
    first; `exclude` ids are skipped, and only `candidates` ids (default: all) are considered."""
    sims_V = _unit_rows(embed_VxD) @ _unit_rows(query_D[None])[0]
    allowed_V = np.zeros(len(sims_V), bool)
    allowed_V[np.arange(len(sims_V)) if candidates is None else candidates] = True
    allowed_V[list(exclude)] = False
    sims_V = np.where(allowed_V, sims_V, -np.inf)
    best = np.argsort(-sims_V, kind="stable")[:k]
    return [(int(i), float(sims_V[i])) for i in best if np.isfinite(sims_V[i])]


def analogy(embed_VxD: np.ndarray, a: int, b: int, c: int, k: int = 5,
            candidates: np.ndarray | None = None) -> list[tuple[int, float]]:
    """a - b + c (on unit-length rows), answered by cosine nearest neighbours other than a, b and c:
    king - man + woman -> queen when the geometry carries the relation."""
    unit = _unit_rows(embed_VxD)
    return nearest_neighbours(embed_VxD, unit[a] - unit[b] + unit[c], k, exclude=(a, b, c), candidates=candidates)


def pca_2d(x_NxD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on their first two principal components ([N, 2]) and the fraction of variance each keeps."""
    centred = np.asarray(x_NxD, np.float64) - np.mean(x_NxD, axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T, (s[:2] ** 2) / max(np.sum(s ** 2), 1e-300)
