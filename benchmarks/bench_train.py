"""Training benchmark: tokens/s, compile time, peak RSS and MFU of jaxformer and its Hugging Face PyTorch peers.

    python benchmarks/bench_train.py [--quick] [--objectives clm mlm] [--configs S M] [--steps N]
                                     [--peers/--no-peers] [--threads 2] [--out bench/results.json]

The jaxformer cells are exactly `jaxformer bench`'s (`jaxformer.timing`: AOT compile, memory analysis, median
tokens/s, MFU against a `jnp.dot` roofline); see that module for the configs and the FLOP convention.
Every (impl, objective, config) runs in a FRESH subprocess, so `peak_rss_mb` belongs to that run alone.

Impls (`--impls`, default all that import):
- `jaxformer`: the real train step.
- `plain-jax`: benchmarks/plain_jax.py, a minimal hand-written JAX step with the same shapes: the ceiling of
  expressing this model for XLA without a framework.
- `nanogpt-eager`, `nanogpt-compile`: benchmarks/nanogpt_torch.py, a nanoGPT-style PyTorch model (fused QKV,
  `scaled_dot_product_attention`), eager and under `torch.compile` (its compile time is `compile_s`).
- `hf-torch`: Hugging Face `GPT2LMHeadModel` (clm) or `BertForMaskedLM` (mlm), eager.
The PyTorch peers use torch AdamW with the same hyper-parameters and clipping and `torch.set_num_threads(--threads)`;
their own roofline is `torch.mm` in their process. Every impl is charged jaxformer's model FLOPs per token
(BertForMaskedLM projects every position, so its extra head work is not "model" FLOPs and lowers its MFU), and
`mfu_jnp_dot` puts every impl against the same `jnp.dot` roofline (the median of the JAX cells of the run).
`ratios`: per cell, jaxformer's tokens/s over the best PyTorch peer's and over plain JAX's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

from jaxformer import timing
from jaxformer.errors import UserError

# jaxformer.data.tokenizers' MASK id and first ordinary id, repeated here so that the peer processes never import
# jax (their peak RSS stays PyTorch's own); tests/test_bench.py checks they agree.
MASK, N_SPECIAL = 4, 8
PEER_CHILD = [sys.executable, str(Path(__file__).resolve()), "--child"]
TORCH_PEERS = ("nanogpt-eager", "nanogpt-compile", "hf-torch")
JAX_IMPLS = ("jaxformer", "plain-jax")
IMPLS = JAX_IMPLS + TORCH_PEERS


def available(impl: str) -> bool:
    """Whether `impl`'s libraries import here (torch for the PyTorch peers, transformers too for hf-torch)."""
    needs = {"hf-torch": ("torch", "transformers"), "nanogpt-eager": ("torch",), "nanogpt-compile": ("torch",)}
    return all(importlib.util.find_spec(m) is not None for m in needs.get(impl, ()))


def torch_roofline(n: int = timing.ROOFLINE_N, repeats: int = 10) -> float:
    """Best-of-`repeats` fp32 `torch.mm` of two n x n matrices, in GFLOP/s."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_peer(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    rss_after_import = timing.rss_mb()
    roofline_before = torch_roofline()
    b, t, v = spec["batch_size"], spec["seq_len"], spec["vocab"]
    shape = timing.CONFIGS[spec["config"]]
    d, n_layer, n_heads = shape["d_model"], shape["n_layer"], shape["n_heads"]
    hf_cfg = None
    if spec["impl"] == "hf-torch":
        import transformers
    else:
        from nanogpt_torch import NanoGPT

        model = NanoGPT(vocab=v, seq_len=t, d_model=d, n_layer=n_layer, n_heads=n_heads,
                        causal=spec["objective"] == "clm")
    if spec["impl"] == "hf-torch" and spec["objective"] == "clm":
        hf_cfg = transformers.GPT2Config(vocab_size=v, n_positions=t, n_embd=d, n_layer=n_layer, n_head=n_heads,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(hf_cfg)
    elif spec["impl"] == "hf-torch":
        hf_cfg = transformers.BertConfig(vocab_size=v, hidden_size=d, num_hidden_layers=n_layer,
                                         num_attention_heads=n_heads, intermediate_size=4 * d,
                                         max_position_embeddings=t, hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0)
        model = transformers.BertForMaskedLM(hf_cfg)
    model.train()
    opt_cfg = timing.OPT
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt_cfg["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=opt_cfg["lr"], betas=(opt_cfg["b1"], opt_cfg["b2"]), eps=opt_cfg["eps"])
    g = torch.Generator().manual_seed(0)
    # nanoGPT cells shift inside the step, so they get T+1 tokens per row, as jaxformer does.
    extra = 0 if spec["impl"] == "hf-torch" else 1
    batches = [torch.randint(N_SPECIAL, v, (b, t + extra), generator=g) for _ in range(4)]

    def hf_loss(tokens):
        if spec["objective"] == "clm":  # HF shifts the labels inside the loss
            return model(input_ids=tokens, labels=tokens).loss
        # MLM masking in the timed step, as jaxformer draws its masks inside the step: 15%, 80/10/10.
        chosen = torch.rand(tokens.shape) < timing.MASK_RATE
        u = torch.rand(tokens.shape)
        inputs = torch.where(chosen & (u < 0.8), torch.full_like(tokens, MASK), tokens)
        inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), torch.randint_like(tokens, N_SPECIAL, v), inputs)
        return model(input_ids=inputs, labels=torch.where(chosen, tokens, torch.full_like(tokens, -100))).loss

    def nanogpt_loss(tokens):
        if spec["objective"] == "clm":
            return forward(tokens[:, :-1], tokens[:, 1:])
        # A fixed count of masked slots per row (as jaxformer's MLM), so the compiled graph keeps one shape.
        tokens = tokens[:, :-1]
        m = max(1, round(timing.MASK_RATE * tokens.shape[1]))
        positions = torch.argsort(torch.rand(tokens.shape), dim=1)[:, :m]
        inputs = tokens.scatter(1, positions, MASK)
        return forward(inputs, torch.gather(tokens, 1, positions), positions)

    forward = torch.compile(model) if spec["impl"] == "nanogpt-compile" else model
    compute_loss = hf_loss if spec["impl"] == "hf-torch" else nanogpt_loss
    losses = []

    def step(state, tokens):
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), timing.GRAD_CLIP)
        opt.step()
        losses.append(float(loss))  # eager CPU: the step is done here anyway
        return state

    t0 = time.perf_counter()
    timing.time_steps(step, None, batches, spec["warmup"], float("inf"), lambda s: None)
    warmup_s = time.perf_counter() - t0  # torch.compile compiles in the first call
    first_loss = losses[-1] if losses else None
    times, _ = timing.time_steps(step, None, batches, spec["steps"], spec["max_timed_s"], lambda s: None)
    peak_rss = timing.rss_mb()
    return {
        **timing.step_stats(times, b * t),
        "compile_s": round(warmup_s, 3) if spec["impl"] == "nanogpt-compile" else 0.0, "peak_rss_mb": peak_rss,
        "rss_after_import_mb": rss_after_import, **timing.roofline_pair(torch_roofline, roofline_before),
        "loss_first": first_loss, "loss_last": losses[-1],
        "peer_model": spec["impl"] if hf_cfg is None else type(model).__name__,
        "attn_implementation": getattr(hf_cfg, "_attn_implementation", "sdpa"),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def ratios(runs: list[dict]) -> list[dict]:
    """Per (objective, config): jaxformer's tokens/s over the best PyTorch peer's and over plain JAX's."""
    by_key = {(r["impl"], r["objective"], r["config"]): r for r in runs}
    out = []
    for (impl, objective, config), r in by_key.items():
        if impl != "jaxformer":
            continue
        peers = [by_key[(p, objective, config)] for p in TORCH_PEERS if (p, objective, config) in by_key]
        row = {"objective": objective, "config": config}
        if peers:
            best = max(peers, key=lambda p: p["tokens_per_s_median"])
            row.update({"best_peer": best["impl"], "peer": best["peer_model"],
                        "tokens_per_s_ratio": round(r["tokens_per_s_median"] / best["tokens_per_s_median"], 3),
                        "tokens_per_s_best_ratio": round(r["tokens_per_s_best"] / max(
                            p["tokens_per_s_best"] for p in peers), 3),
                        "peak_rss_ratio": round(r["peak_rss_mb"] / best["peak_rss_mb"], 3),
                        "per_peer": {p["impl"]: round(r["tokens_per_s_median"] / p["tokens_per_s_median"], 3)
                                     for p in peers}})
        ceiling = by_key.get(("plain-jax", objective, config))
        if ceiling:
            row["plain_jax_ratio"] = round(r["tokens_per_s_median"] / ceiling["tokens_per_s_median"], 3)
        out.append(row)
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def run(args) -> int:
    """Run the planned cells one subprocess each; write the JSON (also when a cell failed); 0 ok, 1 a failure."""
    timing.check_sizes(args)
    impls = args.impls or [i for i in IMPLS if available(i)]
    missing = [i for i in impls if not available(i)]
    if missing:
        raise UserError(f"--impls {' '.join(missing)} needs torch (and transformers for hf-torch): "
                        "pip install -e '.[hf]', or leave them out.")
    if "jaxformer" not in impls:
        impls = ["jaxformer", *impls]
    specs = timing.plan(args, impls)

    def run_one(spec: dict) -> dict:
        command = timing.JAXFORMER_CHILD if spec["impl"].startswith("jaxformer") else PEER_CHILD
        return timing.run_child(command, spec, args.run_timeout)

    machine = timing.machine_info(("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"))
    result = timing.run_cells(args, specs, run_one, machine)
    result["impls"] = impls
    result["roofline_gflops_median"] = {impl: _median([r["roofline_gflops"] for r in result["runs"]
                                                       if r["impl"] == impl]) for impl in impls}
    jax_roof = _median([r["roofline_gflops"] for r in result["runs"] if r["impl"] in JAX_IMPLS])
    for r in result["runs"]:  # every impl against the one jnp.dot roofline of this run
        r["mfu_jnp_dot"] = round(r["flops_per_token"] * r["tokens_per_s_median"] / (jax_roof * 1e9), 4)
    result["ratios"] = ratios(result["runs"])
    timing.write_result(result, args.out)
    timing.print_table(result)
    for q in result["ratios"]:
        parts = []
        if "best_peer" in q:
            parts.append(f"x{q['tokens_per_s_ratio']} the best PyTorch peer ({q['best_peer']}; "
                         f"x{q['tokens_per_s_best_ratio']} by best step)")
        if "plain_jax_ratio" in q:
            parts.append(f"x{q['plain_jax_ratio']} plain JAX")
        print(f"jaxformer {q['objective']} {q['config']}: tokens/s " + ", ".join(parts or ["(no peer ran)"]))
    return 1 if result["errors"] else 0


def child(spec: dict) -> dict:
    """One non-jaxformer cell, in this (child) process."""
    if spec["impl"] == "plain-jax":
        from plain_jax import time_plain_step  # benchmarks/ is this script's folder, first on sys.path

        return time_plain_step(spec)
    return run_peer(spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a peer cell, in its own process
        print(timing.child_result(json.loads(argv[1]), child), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing.add_arguments(parser)
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=None,
                        help="what to run beside jaxformer (default: every impl whose libraries import)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the peers (default 2)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"bench_train: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
