"""Data: tokenizers, sources (builtin / text / JSONL / Parquet / TFDS), the on-disk token cache, and (seed, step)
batching.

Named data sets live under one data root, `data_root()`: $JAXFORMER_DATA, default ./data; configs write
`@data/<path>` for a path under it (see root.py).

    corpus = load_corpus(cfg.data, workdir)                      # tokenize once, memmap thereafter
    batch = batch_at(corpus.train, batch_size=B, seq_len=T, seed=s, step=i,
                     process_index=jax.process_index(), process_count=jax.process_count())
    arrays = global_batch(batch, batch_sharding)                 # jax.Arrays for the jitted step
"""

from jaxformer.data.batching import batch_at, eval_batches, global_batch, packing_arrays, window_starts
from jaxformer.data.pipeline import Corpus, load_corpus
from jaxformer.data.root import data_root
from jaxformer.data.tokenizers import (
    BOS,
    CLS,
    EOS,
    MASK,
    N_SPECIAL,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    UNK,
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
)

__all__ = [
    "BOS", "CLS", "EOS", "MASK", "N_SPECIAL", "PAD", "SEP", "SPECIAL_TOKENS", "UNK",
    "ByteTokenizer", "CharTokenizer", "Corpus", "SentencePieceTokenizer", "Tokenizer", "WordTokenizer",
    "batch_at", "data_root", "eval_batches", "global_batch", "load_corpus", "load_tokenizer",
    "packing_arrays", "window_starts",
]
