"""Training benchmark: tokens/s, compile time, peak RSS and MFU of jaxformer and its Hugging Face PyTorch peers.

    python benchmarks/bench_train.py [--quick] [--objectives clm mlm] [--configs S M] [--steps N]
                                     [--peers/--no-peers] [--threads 2] [--out bench/results.json]

The jaxformer cells are exactly `jaxformer bench`'s (`jaxformer.timing`: AOT compile, memory analysis, median
tokens/s, MFU against a `jnp.dot` roofline); see that module for the configs and the FLOP convention.
Every (impl, objective, config) runs in a FRESH subprocess, so `peak_rss_mb` belongs to that run alone.

impl `hf-torch` (on by default when torch and transformers import): Hugging Face `GPT2LMHeadModel` (clm) or
`BertForMaskedLM` (mlm) with the same shapes, random init, torch AdamW with the same hyper-parameters and
clipping, `torch.set_num_threads(--threads)`, eager mode (`compile_s` 0). Its roofline is `torch.mm` in its own
process. The peers are charged jaxformer's model FLOPs per token (BertForMaskedLM projects every position, so
its extra head work is not "model" FLOPs and lowers its MFU). `ratios` compares jaxformer with the peer per cell.
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


def peers_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


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
    import transformers

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    rss_after_import = timing.rss_mb()
    roofline_before = torch_roofline()
    b, t, v = spec["batch_size"], spec["seq_len"], spec["vocab"]
    shape = timing.CONFIGS[spec["config"]]
    d, n_layer, n_heads = shape["d_model"], shape["n_layer"], shape["n_heads"]
    if spec["objective"] == "clm":
        hf_cfg = transformers.GPT2Config(vocab_size=v, n_positions=t, n_embd=d, n_layer=n_layer, n_head=n_heads,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(hf_cfg)
    else:
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
    batches = [torch.randint(N_SPECIAL, v, (b, t), generator=g) for _ in range(4)]

    def make_inputs(tokens):
        if spec["objective"] == "clm":  # HF shifts the labels inside the loss
            return {"input_ids": tokens, "labels": tokens}
        # MLM masking in the timed step, as jaxformer draws its masks inside the step: 15%, 80/10/10.
        chosen = torch.rand(tokens.shape) < timing.MASK_RATE
        u = torch.rand(tokens.shape)
        inputs = torch.where(chosen & (u < 0.8), torch.full_like(tokens, MASK), tokens)
        inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), torch.randint_like(tokens, N_SPECIAL, v), inputs)
        return {"input_ids": inputs, "labels": torch.where(chosen, tokens, torch.full_like(tokens, -100))}

    losses = []

    def step(state, tokens):
        opt.zero_grad(set_to_none=True)
        loss = model(**make_inputs(tokens)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), timing.GRAD_CLIP)
        opt.step()
        losses.append(float(loss))  # eager CPU: the step is done here anyway
        return state

    timing.time_steps(step, None, batches, spec["warmup"], float("inf"), lambda s: None)
    first_loss = losses[-1] if losses else None
    times, _ = timing.time_steps(step, None, batches, spec["steps"], spec["max_timed_s"], lambda s: None)
    peak_rss = timing.rss_mb()
    return {
        **timing.step_stats(times, b * t), "compile_s": 0.0, "peak_rss_mb": peak_rss,
        "rss_after_import_mb": rss_after_import, **timing.roofline_pair(torch_roofline, roofline_before),
        "loss_first": first_loss, "loss_last": losses[-1],
        "peer_model": type(model).__name__, "attn_implementation": getattr(hf_cfg, "_attn_implementation", None),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def ratios(runs: list[dict]) -> list[dict]:
    by_key = {(r["impl"], r["objective"], r["config"]): r for r in runs}
    out = []
    for (impl, objective, config), r in by_key.items():
        peer = by_key.get(("hf-torch", objective, config))
        if impl == "jaxformer" and peer:
            out.append({"objective": objective, "config": config, "peer": peer["peer_model"],
                        "tokens_per_s_ratio": round(r["tokens_per_s_median"] / peer["tokens_per_s_median"], 3),
                        "tokens_per_s_best_ratio": round(r["tokens_per_s_best"] / peer["tokens_per_s_best"], 3),
                        "mfu_ratio": round(r["mfu"] / peer["mfu"], 3),
                        "peak_rss_ratio": round(r["peak_rss_mb"] / peer["peak_rss_mb"], 3)})
    return out


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def run(args) -> int:
    """Run the planned cells one subprocess each; write the JSON (also when a cell failed); 0 ok, 1 a failure."""
    timing.check_sizes(args)
    peers = peers_available() if args.peers is None else args.peers
    if peers and not peers_available():
        raise UserError("--peers needs torch and transformers: pip install -e '.[hf]', or pass --no-peers.")
    specs = timing.plan(args, ["jaxformer"] + (["hf-torch"] if peers else []))

    def run_one(spec: dict) -> dict:
        command = timing.JAXFORMER_CHILD if spec["impl"] == "jaxformer" else PEER_CHILD
        return timing.run_child(command, spec, args.run_timeout)

    machine = timing.machine_info(("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"))
    result = timing.run_cells(args, specs, run_one, machine)
    result["ratios"] = ratios(result["runs"])
    result["roofline_gflops_median"] = {impl: _median([r["roofline_gflops"] for r in result["runs"]
                                                       if r["impl"] == impl]) for impl in ("jaxformer", "hf-torch")}
    timing.write_result(result, args.out)
    timing.print_table(result)
    for q in result["ratios"]:
        print(f"jaxformer / {q['peer']} ({q['objective']} {q['config']}): tokens/s x{q['tokens_per_s_ratio']} "
              f"(median), x{q['tokens_per_s_best_ratio']} (best step)")
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # a peer cell, in its own process
        print(timing.child_result(json.loads(argv[1]), run_peer), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    timing.add_arguments(parser)
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the PyTorch/Hugging Face peers (default: on when torch and transformers import)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the peers (default 2)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"bench_train: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
