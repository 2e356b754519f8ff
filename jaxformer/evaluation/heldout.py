"""Held-out evaluation the way papers report it: every token of a text scored exactly once.

    jaxformer eval --workdir W --data text:@data/ptb/ptb.test.txt [--stride S] [--ngram 3]

The text's documents are tokenized with the run's tokenizer and joined with one EOS between documents, as the
training stream is; one more EOS in front is the context of the first token, so all N tokens are predicted.
Windows of `train.seq_len` tokens slide by `stride` (default seq_len // 2): the first window scores all its
targets, every later one only the targets no earlier window scored, so each token is scored exactly once, with
at least seq_len - stride + 1 tokens of left context (all of them when fewer exist). The last window ends at the
end of the text.

Reported (summed in float64 over the tokens, then divided):
- `loss`: nats per token; `perplexity`: exp(loss), per token of this run's tokenizer;
- `bits_per_byte`: total NLL in bits / UTF-8 bytes of the documents: independent of the tokenizer, so runs with
  different tokenizers compare;
- `perplexity_per_word`: exp(total NLL / n_words), n_words = whitespace-separated words + one end-of-line per
  line (+ one per document boundary): the word-level figure papers give for whitespace-tokenized text such as
  Penn Treebank (where it equals the per-token perplexity of a word-level run), comparable across tokenizers;
- `n_unk`: tokens the run's tokenizer could not represent (they are scored as UNK, which makes a text easier).

Decoder (clm) runs only. An encoder's masked-token loss is not a probability of the text (pseudo-likelihoods
that mask one token at a time do not sum to one over texts), so it has no perplexity or bits per byte to put next
to a decoder's; `jaxformer eval` without --data gives an encoder's masked-token loss on its validation split.
Evaluation runs in one process (the text is small next to a training corpus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxformer import parallel
from jaxformer.data import token_cache
from jaxformer.data.pipeline import _pieces
from jaxformer.data.sources import open_source
from jaxformer.errors import UserError

LN2 = math.log(2.0)


def window_plan(n_targets: int, seq_len: int, stride: int) -> np.ndarray:
    """[W, 2] rows (start, first scored offset) over the stream s = [EOS] + tokens (n_targets + 1 ids).

    Window (a, f) feeds s[a : a + seq_len] and predicts s[a + 1 : a + seq_len + 1]; it scores the targets at
    offsets f .. (those are s[a + 1 + f] ...), up to the end of the window or of the stream."""
    if not 1 <= stride <= seq_len:
        raise UserError(f"--stride {stride} must be between 1 and the run's train.seq_len ({seq_len}).")
    plan, scored_to, start = [], 0, 0  # targets s[1 .. scored_to] are scored
    while scored_to < n_targets:
        start = min(start, max(n_targets - seq_len, 0))  # the last window ends at the end of the text
        plan.append((start, scored_to - start))
        scored_to = min(start + seq_len, n_targets)
        start += stride
    return np.asarray(plan, dtype=np.int64).reshape(-1, 2)


@dataclass
class TokenScores:
    """Per token of the text (index i is token i, predicted as target s[i + 1])."""

    nll: np.ndarray  # float64 nats
    context: np.ndarray  # tokens of left context it was scored with (the leading EOS included)
    times_scored: np.ndarray  # 1 everywhere: the plan's promise, kept for tests


def token_nll_fn(graphdef, objective):
    """Jitted (params, inputs [B, T], targets [B, T]) -> NLL of each target [B, T] in float32 nats."""
    def nll(params, inputs_BxT, targets_BxT):
        model = nnx.merge(graphdef, params)
        ex = {"inputs": inputs_BxT, "targets": targets_BxT}
        hidden_BxTxD, _, _ = model(inputs_BxT, causal=objective.causal)
        logits_BxTxV = objective.scores(model, hidden_BxTxD, ex).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    return jax.jit(nll)


def score_tokens(run, tokens: np.ndarray, *, stride: int | None = None, batch_size: int | None = None,
                 seq_len: int | None = None) -> TokenScores:
    """Every token of `tokens` scored once by `run`'s decoder (see the module docstring)."""
    require_decoder(run)
    seq_len = seq_len or run.cfg.train.seq_len
    stride = max(seq_len // 2, 1) if stride is None else stride
    n = len(tokens)
    specials = run.objective.specials  # the vocabulary's EOS (document boundary) and padding ids
    stream = np.concatenate([[specials.eos], np.asarray(tokens, np.int64), np.full(seq_len, specials.fill)])
    plan = window_plan(n, seq_len, stride)
    n_devices = run.mesh.devices.size
    rows = -(-(batch_size or run.cfg.train.batch_size) // n_devices) * n_devices
    nll_fn = token_nll_fn(run.state.graphdef, run.objective)
    sharding = parallel.batch_sharding(run.mesh)
    scores = TokenScores(np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64))
    offsets_T = np.arange(seq_len)
    for first in range(0, len(plan), rows):
        chunk = plan[first:first + rows]
        idx_BxT = chunk[:, :1] + offsets_T[None, :]
        inputs = np.full((rows, seq_len), specials.fill, np.int32)  # padding rows: never read back
        targets = np.full((rows, seq_len), specials.fill, np.int32)
        inputs[:len(chunk)], targets[:len(chunk)] = stream[idx_BxT], stream[idx_BxT + 1]
        nll_BxT = np.asarray(jax.device_get(nll_fn(run.state.params, jax.device_put(inputs, sharding),
                                                   jax.device_put(targets, sharding))), np.float64)
        for row, (start, f) in enumerate(chunk):
            last = min(start + seq_len, n)  # targets s[start + 1 + f .. last]; token index = target index - 1
            tok = np.arange(start + f, last)
            scores.nll[tok] += nll_BxT[row, f:f + len(tok)]
            scores.context[tok] = tok + 1 - start
            scores.times_scored[tok] += 1
    return scores


def require_decoder(run) -> None:
    if not run.objective.causal:
        raise UserError(f"{run.workdir} holds an encoder run (objective.kind={run.objective.kind}): held-out "
                        f"evaluation of every token (--data) needs a decoder, because a masked-token loss is not a "
                        f"probability of the text; use `jaxformer eval --workdir {run.workdir}` for its masked-token "
                        f"loss on the validation split.")


def read_documents(spec: str, data_cfg) -> list[str]:
    source = open_source(spec, cache_root=token_cache.cache_root(data_cfg))
    return [doc for doc in source.documents() if doc]


def encode_documents(tokenizer, documents: list[str]) -> np.ndarray:
    """The documents as one stream with EOS between documents, encoded the way the training corpus is."""
    parts: list[np.ndarray] = []
    for i, doc in enumerate(documents):
        if i:
            parts.append(np.array([tokenizer.special_ids.eos], np.int32))
        parts += [tokenizer.encode(piece) for piece in _pieces(doc)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def text_counts(documents: list[str]) -> dict:
    """Bytes and words of the text, the tokenizer-independent denominators."""
    n_words = sum(len(doc.split()) + len(doc.splitlines()) for doc in documents) + max(len(documents) - 1, 0)
    return {"n_bytes": sum(len(doc.encode("utf-8", "surrogatepass")) for doc in documents), "n_words": n_words}


def summary(total_nll: float, n_tokens: int, counts: dict) -> dict:
    """Per token, per byte and per word figures from a summed NLL (nats)."""
    return {"loss": total_nll / n_tokens, "perplexity": math.exp(min(total_nll / n_tokens, 700.0)),
            "bits_per_byte": total_nll / LN2 / counts["n_bytes"],
            "perplexity_per_word": math.exp(min(total_nll / counts["n_words"], 700.0)),
            "n_tokens": n_tokens, **counts}


def evaluate_text(run, spec: str, *, stride: int | None = None, batch_size: int | None = None,
                  ngram_order: int = 0) -> dict:
    """The figures of the module docstring for the text of `spec` (a data source), and with `ngram_order` those
    of an interpolated Kneser-Ney n-gram model counted on the run's training split with the same tokenizer."""
    require_decoder(run)
    documents = read_documents(spec, run.cfg.data)
    tokens = encode_documents(run.tokenizer, documents)
    if not len(tokens):
        raise UserError(f"--data {spec} has no tokens under this run's tokenizer: point it at a text file.")
    seq_len = run.cfg.train.seq_len
    stride = max(seq_len // 2, 1) if stride is None else stride
    scores = score_tokens(run, tokens, stride=stride, batch_size=batch_size, seq_len=seq_len)
    unk = run.tokenizer.special_ids.unk
    counts = {**text_counts(documents), "n_unk": 0 if unk is None else int(np.sum(tokens == unk))}
    out = {**summary(float(scores.nll.sum()), len(tokens), counts), "seq_len": seq_len, "stride": stride,
           # the context every token past the first window had (those in it have all the text before them)
           "min_context": int(scores.context[seq_len:].min()) if len(tokens) > seq_len else None}
    if ngram_order:
        out["ngram"] = ngram_baseline(run, tokens, ngram_order, counts)
    return out


def ngram_baseline(run, tokens: np.ndarray, order: int, counts: dict) -> dict:
    """The same figures for an interpolated Kneser-Ney `order`-gram counted on the run's training split."""
    from jaxformer.data.pipeline import load_corpus
    from jaxformer.evaluation.ngram import KneserNey

    corpus = load_corpus(run.cfg.data, run.workdir, show_progress=False)
    model = KneserNey.fit(np.asarray(corpus.train), vocab_size=run.tokenizer.vocab_size, order=order,
                          boundary=run.tokenizer.special_ids.eos)
    nll = model.nll(np.asarray(tokens))
    return {"order": order, "train_tokens": len(corpus.train), **summary(float(nll.sum()), len(tokens), counts)}
