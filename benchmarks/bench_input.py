"""Input-pipeline benchmark: tokens/s delivered by `batch_at`, and tokenize-once cost (cold vs cached).

    python benchmarks/bench_input.py [--out bench/input.json] [--steps 2000]

Corpus: tiny shakespeare from the data root ($JAXFORMER_DATA; `make bench` sets ../shared/data) when present
(else the builtin corpus), char tokens for the batching shapes; an 8k BPE for the cold/warm tokenize timings,
in a throwaway cache directory.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from jaxformer.config import DataConfig
from jaxformer.data import batch_at, data_root, load_corpus

SHAKESPEARE = data_root() / "tinyshakespeare" / "input.txt"
SHAPES = [(16, 128), (12, 64), (64, 256)]  # decoder/encoder-tiny, shakespeare-char-cpu, shakespeare-char


def time_batches(tokens, batch_size: int, seq_len: int, steps: int, packing: bool) -> dict:
    per_call = []
    for step in range(steps):
        start = time.perf_counter()
        batch_at(tokens, batch_size=batch_size, seq_len=seq_len, seed=0, step=step, packing=packing)
        per_call.append(time.perf_counter() - start)
    median = statistics.median(per_call)
    return {"batch_size": batch_size, "seq_len": seq_len, "packing": packing, "steps": steps,
            "median_ms": round(median * 1e3, 4), "tokens_per_s_median": round(batch_size * seq_len / median)}


def time_tokenize(source: str, tokenizer: str, vocab_size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = DataConfig(source=source, tokenizer=tokenizer, vocab_size=vocab_size, cache_dir=f"{tmp}/cache")
        start = time.perf_counter()
        corpus = load_corpus(cfg, f"{tmp}/run", show_progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_corpus(cfg, f"{tmp}/run2", show_progress=False)  # a new run: tokenizer and tokens from the cache
        warm = time.perf_counter() - start
    return {"source": source, "tokenizer": tokenizer, "vocab_size": corpus.vocab_size,
            "n_tokens": int(len(corpus.train) + len(corpus.valid)), "cold_s": round(cold, 3),
            "warm_s": round(warm, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/input.json")
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    source = f"text:{SHAKESPEARE}" if SHAKESPEARE.exists() else "builtin"
    with tempfile.TemporaryDirectory() as tmp:
        corpus = load_corpus(DataConfig(source=source, tokenizer="char", cache_dir=tmp), None, show_progress=False)
        batching = [time_batches(corpus.train, b, t, args.steps, packing)
                    for b, t in SHAPES for packing in (False, True)]
        del corpus
    tokenize = [time_tokenize(source, "bpe", 8192), time_tokenize(source, "char", 0)]
    result = {"benchmark": "input_pipeline", "source": source, "machine": platform.processor() or platform.machine(),
              "python": platform.python_version(), "batch_at": batching, "tokenize": tokenize}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for row in batching:
        print(f"batch_at B={row['batch_size']:>3} T={row['seq_len']:>3} packing={row['packing']!s:5}: "
              f"{row['tokens_per_s_median']:>12,} tok/s ({row['median_ms']} ms/batch)")
    for row in tokenize:
        print(f"tokenize {row['tokenizer']:>4} (vocab {row['vocab_size']}): cold {row['cold_s']} s, "
              f"cached {row['warm_s']} s, {row['n_tokens']:,} tokens")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
