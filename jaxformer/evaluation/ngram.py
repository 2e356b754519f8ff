"""Interpolated Kneser-Ney n-gram language model in numpy: the baseline a neural LM is put next to.

For order k with history h (the k-1 tokens before w) and discount D_k:

    P_k(w | h) = max(c_k(h w) - D_k, 0) / c_k(h .)  +  D_k * N1+(h .) / c_k(h .) * P_{k-1}(w | h minus its first token)
    P_k(w | h) = P_{k-1}(w | h minus its first token)      when h was never seen (c_k(h .) = 0)
    P_0(w)     = 1 / vocab_size                             (every id of the vocabulary gets some probability)

c_n is the raw count of the n-gram; for lower orders c_k(g) is the continuation count, the number of distinct
tokens seen in front of g (Kneser & Ney 1995; Chen & Goodman 1998, "interpolated Kneser-Ney"). N1+(h .) is the
number of distinct w with c_k(h w) > 0. D_k = n1 / (n1 + 2 n2) from the order's counts of counts unless given.
Streams are padded in front with order - 1 `boundary` ids (EOS), so the first tokens have a history too.

N-grams are int64 keys in base vocab_size (sorted arrays, looked up with searchsorted): a trigram over Penn
Treebank's 930k tokens counts in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxformer.data.tokenizers import EOS
from jaxformer.errors import UserError


@dataclass(frozen=True)
class _Order:
    keys: np.ndarray  # sorted k-gram keys with a count
    counts: np.ndarray  # raw (highest order) or continuation counts, float64
    hist_keys: np.ndarray  # sorted history keys (key // vocab_size)
    hist_total: np.ndarray  # c_k(h .)
    hist_types: np.ndarray  # N1+(h .)
    discount: float


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    idx = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    found = (keys[idx] == query) if len(keys) else np.zeros(query.shape, bool)
    return np.where(found, values[idx] if len(keys) else 0.0, 0.0)


def estimated_discount(counts: np.ndarray) -> float:
    """Ney's D = n1 / (n1 + 2 n2) (n_c: how many n-grams have count c); 0.5 when either count is missing."""
    n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


@dataclass(frozen=True)
class KneserNey:
    order: int
    vocab_size: int
    orders: tuple[_Order, ...]  # orders[k - 1] is order k
    boundary: int = EOS  # the id in front of a stream (the vocabulary's EOS, which separates documents)

    @classmethod
    def fit(cls, tokens: np.ndarray, *, vocab_size: int, order: int = 3,
            discount: float | None = None, boundary: int | None = EOS) -> KneserNey:
        if order < 1:
            raise UserError(f"The n-gram order must be at least 1, not {order}.")
        if float(vocab_size) ** order >= 2.0 ** 62:
            raise UserError(f"An order-{order} n-gram over {vocab_size} ids does not fit 64-bit keys: use a lower "
                            f"order.")
        boundary = EOS if boundary is None else boundary
        grams = cls._gram_keys(np.asarray(tokens, np.int64), order, vocab_size, boundary)
        keys, counts = np.unique(grams[order - 1], return_counts=True)
        per_order = [(keys, counts.astype(np.float64))]
        for k in range(order - 1, 0, -1):  # continuation counts: distinct left neighbours of each k-gram
            suffixes = per_order[-1][0] % vocab_size ** k
            keys, counts = np.unique(suffixes, return_counts=True)
            per_order.append((keys, counts.astype(np.float64)))
        orders = []
        for keys, counts in reversed(per_order):
            hist_keys, inverse = np.unique(keys // vocab_size, return_inverse=True)
            d = estimated_discount(counts) if discount is None else float(discount)
            orders.append(_Order(keys, counts, hist_keys, np.bincount(inverse, weights=counts),
                                 np.bincount(inverse).astype(np.float64), d))
        return cls(order, vocab_size, tuple(orders), boundary)

    @staticmethod
    def _gram_keys(tokens: np.ndarray, order: int, vocab_size: int, boundary: int) -> list[np.ndarray]:
        """keys[k - 1][i]: the k-gram ending at token i of the boundary-padded stream, for every order k."""
        padded = np.concatenate([np.full(order - 1, boundary, np.int64), tokens])
        n = len(tokens)
        keys, key = [], np.zeros(n, np.int64)
        for k in range(1, order + 1):
            key = key + padded[order - k: order - k + n] * vocab_size ** (k - 1)
            keys.append(key)
        return keys

    def _probs(self, keys_by_order: list[np.ndarray]) -> np.ndarray:
        p = np.full(keys_by_order[0].shape, 1.0 / self.vocab_size)
        for o, key in zip(self.orders, keys_by_order, strict=True):
            count = _lookup(o.keys, o.counts, key)
            hist = key // self.vocab_size
            total = _lookup(o.hist_keys, o.hist_total, hist)
            types = _lookup(o.hist_keys, o.hist_types, hist)
            seen = total > 0
            safe_total = np.where(seen, total, 1.0)
            p = np.where(seen, (np.maximum(count - o.discount, 0.0) + o.discount * types * p) / safe_total, p)
        return p

    def nll(self, tokens: np.ndarray) -> np.ndarray:
        """-ln P of each token of `tokens` given the order - 1 before it (`boundary` before the first), float64."""
        tokens = np.asarray(tokens, np.int64)
        return -np.log(self._probs(self._gram_keys(tokens, self.order, self.vocab_size, self.boundary)))

    def prob(self, history: list[int], word: int) -> float:
        """P(word | the last order - 1 ids of history, `boundary`-padded on the left)."""
        context = [self.boundary] * (self.order - 1) + list(history)
        context = context[len(context) - (self.order - 1):] if self.order > 1 else []
        keys = self._gram_keys(np.asarray(context + [word], np.int64), self.order, self.vocab_size, self.boundary)
        return float(self._probs([k[-1:] for k in keys])[0])
