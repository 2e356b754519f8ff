"""`jaxformer bench`: training throughput, compile time, peak memory and MFU, written to JSON.

    jaxformer bench [--quick] [--objectives clm mlm] [--configs S M] [--steps N] [--peers/--no-peers]
                    [--out bench/results.json]

Every (impl, objective, config) runs in a FRESH subprocess, so `peak_rss_mb` (the process high-water mark,
`ru_maxrss`) belongs to that run alone. Configs (DESIGN.md's peer measurements): S = 4 layers, d 256, 4 heads;
M = 6 layers, d 384, 6 heads; batch 16 x seq 256, vocab 8192, fp32, AdamW (+ global-norm clipping at 1.0).

impl `jaxformer`: the real `train.train_step` under `train.compile_train_step`, AOT-compiled
(`.lower(...).compile()`, timed: `compile_s`), then `warmup` untimed steps and `steps` timed steps, each with
`block_until_ready`; `tokens_per_s_median` = batch x seq / median step time.
impl `hf-torch` (the peers, on by default when torch and transformers import): Hugging Face `GPT2LMHeadModel`
(clm) or `BertForMaskedLM` (mlm) with the same shapes, random init, torch AdamW with the same hyper-parameters
and clipping, `torch.set_num_threads(--threads)`, eager mode (`compile_s` 0).

MFU = model FLOPs per token x tokens/s / the fp32 matmul roofline measured IN THE SAME PROCESS (best of 10
2048x2048 matmuls, before and after the run, the better one: `jnp.dot` for jaxformer, `torch.mm` for the peers).
`tokens_per_s_best` (and `mfu_best`) use the fastest step: on a shared machine interference only adds time. Model FLOPs per token follow
`jaxformer.params.count` (6 x matmul-parameters + 12 x layers x d_attn x seq for attention, full square: no
causal discount, the PaLM convention) with one honest change for MLM: only the masked fraction (`mask_rate`)
of the positions is predicted, so the MLM head (transform + vocabulary projection) counts only for that
fraction. The peers are charged the same model FLOPs per token (BertForMaskedLM projects every position, so its
extra head work is not "model" FLOPs and lowers its MFU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jaxformer.errors import UserError

CONFIGS = {"S": {"n_layer": 4, "d_model": 256, "n_heads": 4},
           "M": {"n_layer": 6, "d_model": 384, "n_heads": 6}}
OBJECTIVES = ("clm", "mlm")
MASK_RATE = 0.15
# jaxformer.data.tokenizers' MASK id and first ordinary id, repeated here so the peer processes never import
# jax (their peak RSS stays PyTorch's own).
MASK, N_SPECIAL = 4, 8
# Optimizer of every impl: AdamW(lr, b1, b2, eps, weight decay) + clip_by_global_norm(GRAD_CLIP).
OPT = {"lr": 1e-3, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "weight_decay": 0.1}
GRAD_CLIP = 1.0
RESULT_TAG = "BENCH_RESULT "
ROOFLINE_N = 2048


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench/results.json", help="where the JSON goes (default bench/results.json)")
    p.add_argument("--quick", action="store_true", help="CI-sized smoke: config S only, 3 timed steps, 1 warm-up")
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None, help="default S M (S with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run (default: S 10, M 6; 3 with --quick); see --max-timed-s")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 2; 1 with --quick)")
    p.add_argument("--max-timed-s", type=float, default=30.0,
                   help="stop timing a run after this many seconds once 3 steps are timed (keeps a loaded machine "
                        "from stretching the run)")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the PyTorch/Hugging Face peers (default: on when torch and transformers import)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads for the peers (default 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds before one run's subprocess is killed")


# ---------------------------------------------------------------------------------------------- shared helpers

def _rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def jax_config(objective: str, config: str, *, batch_size: int, seq_len: int, vocab: int):
    """The jaxformer Config of one benchmark cell. CLM is GPT-2 shaped (pre-norm, tanh GELU); MLM is BERT shaped
    (post-norm, embedding norm, erf GELU, MLM transform head) like its peer. Dropout 0, tied embeddings, fp32."""
    from jaxformer.config import Config, apply_overrides

    model = {**CONFIGS[config], "vocab_size": vocab, "max_seq_len": seq_len, "dropout": 0.0}
    if objective == "mlm":
        model.update(post_norm=True, embed_norm=True, gelu_approximate=False, norm_eps=1e-12)
    values = {f"model.{k}": v for k, v in model.items()}
    values.update({"objective.kind": objective, "objective.mask_rate": MASK_RATE, "train.batch_size": batch_size,
                   "train.seq_len": seq_len, "train.steps": 1000, "optimizer.warmup_steps": 0,
                   "optimizer.grad_clip": GRAD_CLIP, "mesh.data": 1,
                   **{f"optimizer.{k}": v for k, v in OPT.items()}})
    return apply_overrides(Config(), values)


def model_flops(cfg) -> dict:
    """Training (forward + backward) model FLOPs per token; MLM's head counts only for the predicted fraction."""
    from jaxformer import params as params_lib

    counts = params_lib.count(cfg)
    full = counts["flops_per_token"]
    out = {"flops_per_token": full, "flops_per_token_all_positions": full}
    if cfg.objective.kind == "mlm":
        m = cfg.model
        head = 6 * (counts["by_component"].get("mlm_head", 0) + m.d_model * m.vocab_size)
        out["flops_per_token"] = round(full - head + cfg.objective.mask_rate * head)
        out["mlm_head_flops_per_predicted_token"] = head
    return out


# ---------------------------------------------------------------------------------------------- jaxformer run

def jax_roofline(n: int = ROOFLINE_N, repeats: int = 10) -> float:
    """Best-of-`repeats` fp32 `jnp.dot` of two n x n matrices, in GFLOP/s."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(ka, (n, n), jnp.float32), jax.random.normal(kb, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _time_steps(step, state, batches: list, steps: int, max_timed_s: float, sync) -> tuple[list[float], object]:
    times: list[float] = []
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        state = step(state, batches[i % len(batches)])
        sync(state)
        times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - start > max_timed_s:
            break
    return times, state


def run_jaxformer(spec: dict) -> dict:
    import jax
    import numpy as np

    from jaxformer import parallel, train
    from jaxformer.config import resolve

    rss_after_import = _rss_mb()
    roofline_before = jax_roofline()
    b, t = spec["batch_size"], spec["seq_len"]
    cfg = resolve(jax_config(spec["objective"], spec["config"], batch_size=b, seq_len=t, vocab=spec["vocab"]),
                  n_devices=1)
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    state, shardings = train.init_train_state(cfg, mesh)
    rng = np.random.default_rng(0)
    sharding = parallel.batch_sharding(mesh, ndim=1)
    batches = [{"tokens": jax.device_put(rng.integers(N_SPECIAL, cfg.model.vocab_size, (b, t + 1), dtype=np.int32),
                                         sharding)} for _ in range(4)]
    key = jax.random.key(0)

    t0 = time.perf_counter()
    lowered = train.compile_train_step(shardings, mesh).lower(state, batches[0], key)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    memory = {}
    try:
        stats = compiled.memory_analysis()
        for name in dir(stats):
            if name.endswith("_in_bytes") and not name.startswith("host_"):
                memory[name.replace("_in_bytes", "_mb")] = round(getattr(stats, name) / 2**20, 2)
    except Exception as err:  # not every backend implements it
        memory["unavailable"] = repr(err)
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", 0.0))
    except Exception:
        xla_flops = 0.0

    last_metrics = {}

    def step(state, batch):
        state, last_metrics["m"] = compiled(state, batch, key)
        return state

    def sync(state):
        jax.block_until_ready((state, last_metrics["m"]))

    _, state = _time_steps(step, state, batches, spec["warmup"], float("inf"), sync)
    first_loss = float(last_metrics["m"]["loss"]) if spec["warmup"] else None
    times, state = _time_steps(step, state, batches, spec["steps"], spec["max_timed_s"], sync)
    peak_rss = _rss_mb()
    loss = float(last_metrics["m"]["loss"])
    return {
        **_step_stats(times, b * t), "compile_s": round(t2 - t0, 3),
        "lower_s": round(t1 - t0, 3), "xla_compile_s": round(t2 - t1, 3),
        "peak_rss_mb": peak_rss, "rss_after_import_mb": rss_after_import,
        **_roofline(jax_roofline, roofline_before),
        "xla_flops_per_token": round(xla_flops / (b * t)) if xla_flops else None, "compiled_memory": memory,
        "loss_first": first_loss, "loss_last": loss,
        "model_config": {k: getattr(cfg.model, k) for k in ("n_layer", "d_model", "n_heads", "vocab_size",
                                                            "post_norm", "embed_norm", "gelu_approximate",
                                                            "positions", "tie_embeddings", "dtype")},
        "devices": [str(d) for d in mesh.devices.flat],
    }


def _step_stats(times: list[float], tokens_per_step: int) -> dict:
    """Median (the contract figure) and best step: on a shared machine interference only ever adds time, so the
    best step is the least-disturbed estimate of what the code can do."""
    median = statistics.median(times)
    return {"tokens_per_s_median": round(tokens_per_step / median, 1),
            "tokens_per_s_best": round(tokens_per_step / min(times), 1), "steps_timed": len(times),
            "step_ms_median": round(1e3 * median, 2), "step_ms_min": round(1e3 * min(times), 2),
            "step_ms_max": round(1e3 * max(times), 2), "step_ms": [round(1e3 * x, 1) for x in times]}


def _roofline(measure, before: float) -> dict:
    """The matmul roofline, measured before the run and again after it; the better one is the ceiling."""
    after = measure()
    return {"roofline_gflops": round(max(before, after), 1), "roofline_gflops_before": round(before, 1),
            "roofline_gflops_after": round(after, 1)}


# ---------------------------------------------------------------------------------------------- PyTorch peers

def torch_roofline(n: int = ROOFLINE_N, repeats: int = 10) -> float:
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
    rss_after_import = _rss_mb()
    roofline_before = torch_roofline()
    b, t, v = spec["batch_size"], spec["seq_len"], spec["vocab"]
    shape = CONFIGS[spec["config"]]
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
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPT["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=OPT["lr"], betas=(OPT["b1"], OPT["b2"]), eps=OPT["eps"])
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(N_SPECIAL, v, (b, t), generator=g) for _ in range(4)]

    def make_inputs(tokens):
        if spec["objective"] == "clm":  # HF shifts the labels inside the loss
            return {"input_ids": tokens, "labels": tokens}
        # MLM masking in the timed step, as jaxformer draws its masks inside the step: 15%, 80/10/10.
        chosen = torch.rand(tokens.shape) < MASK_RATE
        u = torch.rand(tokens.shape)
        inputs = torch.where(chosen & (u < 0.8), torch.full_like(tokens, MASK), tokens)
        inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), torch.randint_like(tokens, N_SPECIAL, v), inputs)
        return {"input_ids": inputs, "labels": torch.where(chosen, tokens, torch.full_like(tokens, -100))}

    losses = []

    def step(state, tokens):
        opt.zero_grad(set_to_none=True)
        loss = model(**make_inputs(tokens)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        losses.append(float(loss))  # eager CPU: the step is done here anyway
        return state

    _time_steps(step, None, batches, spec["warmup"], float("inf"), lambda s: None)
    first_loss = losses[-1] if losses else None
    times, _ = _time_steps(step, None, batches, spec["steps"], spec["max_timed_s"], lambda s: None)
    peak_rss = _rss_mb()
    return {
        **_step_stats(times, b * t), "compile_s": 0.0, "peak_rss_mb": peak_rss,
        "rss_after_import_mb": rss_after_import, **_roofline(torch_roofline, roofline_before), "loss_first": first_loss, "loss_last": losses[-1],
        "peer_model": type(model).__name__, "attn_implementation": getattr(hf_cfg, "_attn_implementation", None),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
        "n_params": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------------------------------- orchestration

def _child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    load_before = _loadavg()
    result = run_jaxformer(spec) if spec["impl"] == "jaxformer" else run_peer(spec)
    out = {"impl": spec["impl"], "objective": spec["objective"], "config": spec["config"], **result,
           "batch_size": spec["batch_size"], "seq_len": spec["seq_len"], "vocab": spec["vocab"],
           "warmup_steps": spec["warmup"], "loadavg_before": load_before, "loadavg_after": _loadavg()}
    print(RESULT_TAG + json.dumps(out), flush=True)


def _run_child(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, "-m", "jaxformer.bench", "--child", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
    raise RuntimeError(f"{spec['impl']} {spec['objective']} {spec['config']} failed (exit {proc.returncode}): {tail}")


def peers_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def machine_info() -> dict:
    info = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_mb"] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"):
        try:
            from importlib.metadata import version
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    info["versions"] = versions
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return info


def _plan(args) -> list[dict]:
    configs = args.configs or (["S"] if args.quick else ["S", "M"])
    peers = peers_available() if args.peers is None else args.peers
    if peers and not peers_available():
        raise UserError("--peers needs torch and transformers: pip install -e '.[hf]', or pass --no-peers.")
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    specs = []
    for config in configs:  # jaxformer and its peer back to back, so both see about the same machine load
        steps = args.steps if args.steps is not None else (3 if args.quick else {"S": 10, "M": 6}[config])
        for objective in args.objectives:
            for impl in ["jaxformer"] + (["hf-torch"] if peers else []):
                specs.append({"impl": impl, "objective": objective, "config": config, "steps": steps,
                              "warmup": warmup, "max_timed_s": args.max_timed_s, "batch_size": args.batch_size,
                              "seq_len": args.seq_len, "vocab": args.vocab, "threads": args.threads})
    return specs


def _ratios(runs: list[dict]) -> list[dict]:
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


def _print_table(result: dict) -> None:
    print(f"{'impl':<10} {'obj':<4} {'cfg':<3} {'tok/s':>9} {'best':>9} {'compile s':>9} {'RSS MB':>8} {'MFU':>7} "
          f"{'roofline':>9} {'steps':>5}")
    for r in result["runs"]:
        print(f"{r['impl']:<10} {r['objective']:<4} {r['config']:<3} {r['tokens_per_s_median']:>9.0f} "
              f"{r['tokens_per_s_best']:>9.0f} {r['compile_s']:>9.2f} {r['peak_rss_mb']:>8.0f} {r['mfu']:>7.3f} "
              f"{r['roofline_gflops']:>9.1f} {r['steps_timed']:>5}")
    for q in result["ratios"]:
        print(f"jaxformer / {q['peer']} ({q['objective']} {q['config']}): tokens/s x{q['tokens_per_s_ratio']} "
              f"(median), x{q['tokens_per_s_best_ratio']} (best step)")
    print(f"load average {result['loadavg_start']} -> {result['loadavg_end']}; wrote {result['out']}")


def run(args) -> int:
    """Run the planned cells one subprocess each; write the JSON (also when a cell failed); 0 ok, 1 a failure."""
    for name in ("steps", "batch_size", "seq_len", "vocab", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    from jaxformer import config as config_lib

    specs = _plan(args)
    started, flops = time.time(), {}
    result = {"benchmark": "train_throughput", "quick": bool(args.quick), "machine": machine_info(),
              "loadavg_start": _loadavg(), "batch_size": args.batch_size, "seq_len": args.seq_len,
              "vocab": args.vocab, "dtype": "float32", "mask_rate": MASK_RATE,
              "optimizer": {"name": "adamw", **OPT, "grad_clip": GRAD_CLIP}, "roofline_matmul": ROOFLINE_N,
              "flops_note": "model FLOPs per token = 6 x matmul params (LM head included) + 12 x layers x d x seq "
                            "(attention, full square); MLM counts its head only for mask_rate of the positions; "
                            "mfu = flops_per_token x tokens_per_s_median / roofline_gflops, the better of two "
                            "best-of-10 2048^3 fp32 matmul timings in the same process (before and after the run); "
                            "mfu_best uses tokens_per_s_best (the fastest step)",
              "noise_note": "shared machine: other processes' load changes the capacity within minutes; impls run "
                            "back to back per cell; compare ratios of the same run, and see tokens_per_s_best",
              "runs": [], "errors": []}
    for spec in specs:
        label = f"{spec['impl']} {spec['objective']} {spec['config']}"
        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
        try:
            r = _run_child(spec, args.run_timeout)
            key = (spec["objective"], spec["config"])
            if key not in flops:
                flops[key] = model_flops(config_lib.resolve(jax_config(
                    *key, batch_size=args.batch_size, seq_len=args.seq_len, vocab=args.vocab)))
            r.update(flops[key])
            r["mfu"] = r["flops_per_token"] * r["tokens_per_s_median"] / (r["roofline_gflops"] * 1e9)
            r["mfu_best"] = r["flops_per_token"] * r["tokens_per_s_best"] / (r["roofline_gflops"] * 1e9)
            result["runs"].append(r)
            print(f"[bench] {label}: {r['tokens_per_s_median']:.0f} tok/s, compile {r['compile_s']:.2f} s, "
                  f"RSS {r['peak_rss_mb']:.0f} MB, MFU {r['mfu']:.3f}", file=sys.stderr, flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            result["errors"].append({"impl": spec["impl"], "objective": spec["objective"], "config": spec["config"],
                                     "error": str(err)})
            print(f"[bench] {label}: FAILED: {err}", file=sys.stderr, flush=True)
    result.update({"ratios": _ratios(result["runs"]), "loadavg_end": _loadavg(),
                   "wall_s": round(time.time() - started, 1),
                   "roofline_gflops_median": {impl: _median([r["roofline_gflops"] for r in result["runs"]
                                                             if r["impl"] == impl]) for impl in ("jaxformer", "hf-torch")},
                   "out": str(args.out)})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _print_table(result)
    return 1 if result["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1])
        return 0
    parser = argparse.ArgumentParser(prog="jaxformer bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
