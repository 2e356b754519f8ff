"""Decode speed: jaxformer with the KV cache vs without it vs Hugging Face `generate`, same weights, greedy.

The model is GPT-2 shaped (learned positions, pre-norm, tied, tanh GELU) with random weights; it is exported
with `jaxformer.hf.to_hf_gpt2` so HF runs the very same function. Times are wall-clock medians after a
warm-up (jaxformer's compile time is reported separately). Writes one JSON object to --out.

    python benchmarks/bench_decode.py [--batch 1 8] [--new-tokens 256] [--out bench/decode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxformer import generate as gen
from jaxformer.config import load_config, resolve
from jaxformer.hf import to_hf_gpt2
from jaxformer.model import build_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the fast decoders (median reported)")
    # One torch thread by default: on a shared 2-core machine torch's OpenMP pool with 2 threads slowed
    # HF generate 20-50x whenever the other core was busy (measured), while 1 thread stayed stable.
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see above)")
    p.add_argument("--no-uncached", action="store_true", help="skip the slow no-cache reference")
    p.add_argument("--no-hf", action="store_true", help="skip Hugging Face (needs torch + transformers)")
    p.add_argument("--out", default="bench/decode.json")
    return p.parse_args(argv)


def timed(fn, repeats: int, warmup=None) -> tuple[float, list[float], object]:
    """(warm-up seconds, timed calls seconds, last result); the warm-up (`warmup`, else `fn`) compiles."""
    t0 = time.perf_counter()
    (warmup or fn)()
    first = time.perf_counter() - t0
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return first, times, result


def run_record(impl: str, batch: int, new_tokens: int, first: float, times: list[float], **extra) -> dict:
    median = statistics.median(times)
    return dict(impl=impl, batch=batch, new_tokens=new_tokens, seconds_median=median, seconds_all=times,
                tokens_per_s=batch * new_tokens / median, warmup_s=first, **extra)


def hf_greedy(hf_model, prompts_BxP: np.ndarray, new_tokens: int):
    import torch

    ids = torch.as_tensor(prompts_BxP, dtype=torch.long)
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
    return out[:, prompts_BxP.shape[1]:].numpy()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def bench_batch(args, graphdef, params, hf_model, prompts_BxP: np.ndarray) -> tuple[list, dict, dict | None]:
    """The runs for one batch size, the speed ratios, and how far greedy tokens agree with HF's."""
    batch, n = prompts_BxP.shape[0], args.new_tokens
    prompts, kw = list(prompts_BxP), dict(max_new_tokens=n, temperature=0.0)
    first, times, ours = timed(lambda: gen.generate(graphdef, params, prompts, **kw), args.repeats)
    # The warm-up is one full decode plus compiling the prefill and the loop.
    cached = run_record("jaxformer-kv-cache", batch, n, first, times,
                        compile_s=max(first - statistics.median(times), 0.0))
    runs, ratios, agreement = [cached], {}, None
    print(f"batch {batch}: kv-cache {cached['tokens_per_s']:.0f} tok/s (warm-up {first:.1f}s)", flush=True)
    if not args.no_uncached:
        # One warm-up (it compiles one forward per 64-column width), then one timed run: it is slow.
        first, times, _ = timed(lambda: gen.generate_uncached(graphdef, params, prompts, **kw), 1)
        runs.append(run_record("jaxformer-no-cache", batch, n, first, times))
        ratios["kv_cache_vs_no_cache"] = cached["tokens_per_s"] / runs[-1]["tokens_per_s"]
        print(f"batch {batch}: no-cache {runs[-1]['tokens_per_s']:.0f} tok/s", flush=True)
    if hf_model is not None:
        first, times, theirs = timed(lambda: hf_greedy(hf_model, prompts_BxP, n), args.repeats,
                                     warmup=lambda: hf_greedy(hf_model, prompts_BxP, 8))
        runs.append(run_record("hf-generate", batch, n, first, times))
        ratios["kv_cache_vs_hf"] = cached["tokens_per_s"] / runs[-1]["tokens_per_s"]
        # Random weights give flat logits, so greedy paths may part after a near-tie: report, not assert.
        prefixes = [common_prefix(a, b) for a, b in zip(ours, theirs.tolist(), strict=True)]
        agreement = dict(mean_common_prefix=float(np.mean(prefixes)),
                         rows_identical=int(sum(p == n for p in prefixes)))
        print(f"batch {batch}: hf generate {runs[-1]['tokens_per_s']:.0f} tok/s", flush=True)
    return runs, ratios, agreement


def main(argv=None) -> dict:
    args = parse_args(argv)
    load_start = os.getloadavg()  # the machine is shared: record how busy it was
    max_len = args.prompt_len + args.new_tokens
    cfg = resolve(load_config("decoder-tiny", [
        f"model.n_layer={args.layers}", f"model.d_model={args.d_model}", f"model.n_heads={args.heads}",
        "model.positions=learned", "model.tie_embeddings=true", f"model.max_seq_len={max_len}",
        f"train.seq_len={max_len}"]), vocab_size=args.vocab, n_devices=1)
    graphdef, params = nnx.split(build_model(cfg, seed=0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    rng = np.random.default_rng(0)
    runs, ratios, agreement = [], {}, {}

    hf_model = None
    if not args.no_hf:
        try:
            import torch
            import transformers

            torch.set_num_threads(args.threads)
            with tempfile.TemporaryDirectory() as tmp:
                to_hf_gpt2(cfg, params, tmp)
                hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
        except ImportError as err:
            print(f"skipping Hugging Face: {err}", file=sys.stderr)

    for batch in args.batch:
        prompts_BxP = rng.integers(16, args.vocab, size=(batch, args.prompt_len))
        batch_runs, ratios[f"batch_{batch}"], agree = bench_batch(args, graphdef, params, hf_model, prompts_BxP)
        runs += batch_runs
        if agree is not None:
            agreement[f"batch_{batch}"] = agree

    result = dict(
        benchmark="decode", machine=dict(platform=platform.platform(), cpus=os.cpu_count(),
                                         jax=jax.__version__, backend=jax.default_backend(),
                                         load_avg_1m_start=load_start[0], load_avg_1m_end=os.getloadavg()[0]),
        model=dict(n_layer=args.layers, d_model=args.d_model, n_heads=args.heads, vocab=args.vocab,
                   params=n_params, shape="gpt2", dtype="float32"),
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, decoding="greedy", runs=runs, ratios=ratios,
        greedy_agreement_with_hf=agreement)
    if hf_model is not None:
        import torch
        import transformers

        result["machine"].update(torch=torch.__version__, transformers=transformers.__version__,
                                 torch_threads=torch.get_num_threads())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(ratios, indent=2))
    return result


if __name__ == "__main__":
    main()
