"""Timing of jaxformer's own compiled train step, and the `jaxformer bench` command (jaxformer only).

    jaxformer bench [--quick] [--objectives clm mlm] [--configs S M] [--steps N] [--out bench/results.json]

Configs (DESIGN.md's peer measurements): S = 4 layers, d 256, 4 heads; M = 6 layers, d 384, 6 heads; batch 16 x
seq 256, vocab 8192, fp32, AdamW (+ global-norm clipping at 1.0). Every (objective, config) cell runs in a FRESH
subprocess (`python -m jaxformer.timing <spec>`), so `peak_rss_mb` (`ru_maxrss`) belongs to that cell alone.

A cell: the real `train.train_step` under `train.compile_train_step`, AOT-compiled (`.lower(...).compile()`,
timed: `compile_s`, with XLA's memory analysis), then `warmup` untimed and `steps` timed steps, each with
`block_until_ready`; `tokens_per_s_median` = batch x seq / median step time (`tokens_per_s_best`: the fastest
step, since on a shared machine interference only adds time).

MFU = model FLOPs per token x tokens/s / the fp32 `jnp.dot` roofline measured IN THE SAME PROCESS (best of 10
2048x2048 matmuls, before and after the run, the better one). Model FLOPs per token are
`jaxformer.params.count`'s training FLOPs as executed (matmuls only: 6 x matmul weights + 12 x layers x d_attn x
seq for the full attention square, the PaLM convention), with MLM's head counted only at its prediction slots.

The comparison with Hugging Face PyTorch peers (same shapes, optimizer and JSON) is benchmarks/bench_train.py,
which uses this module for the jaxformer cells; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jaxformer import host_memory
from jaxformer.errors import UserError

CONFIGS = {"S": {"n_layer": 4, "d_model": 256, "n_heads": 4},
           "M": {"n_layer": 6, "d_model": 384, "n_heads": 6}}
OBJECTIVES = ("clm", "mlm")
MASK_RATE = 0.15
# Optimizer of every cell: AdamW(lr, b1, b2, eps, weight decay) + clip_by_global_norm(GRAD_CLIP).
OPT = {"lr": 1e-3, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "weight_decay": 0.1}
GRAD_CLIP = 1.0


def roofline_n() -> int:
    """Side of the roofline matmul: 2048, or JAXFORMER_ROOFLINE_N. The tests set a small one: they check the
    contract, not the figure, and two loops of 2048^3 matmuls are most of a tiny cell's time."""
    return int(os.environ.get("JAXFORMER_ROOFLINE_N", 2048))


ROOFLINE_N = roofline_n()  # read when a cell's process starts (the cells run in fresh subprocesses)
RESULT_TAG = "BENCH_RESULT "  # a child's result line on stdout


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
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--run-timeout", type=float, default=600.0, help="seconds before one run's subprocess is killed")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="also time jaxformer with these config overrides, right after the baseline in every cell "
                        "(repeatable), e.g. --variant model.attention_impl=xla: a change's speed ratio measured "
                        "in the same window as its baseline")


# ---------------------------------------------------------------------------------------------- one cell

def bench_config(objective: str, config: str, *, batch_size: int, seq_len: int, vocab: int,
                 overrides: dict | None = None):
    """The jaxformer Config of one cell. CLM is GPT-2 shaped (pre-norm, tanh GELU); MLM is BERT shaped
    (post-norm, embedding norm, erf GELU, MLM transform head). Dropout 0, tied embeddings, fp32. `overrides`
    (a `--variant`'s settings) come last."""
    from jaxformer.config import Config, apply_overrides

    model = {**CONFIGS[config], "vocab_size": vocab, "max_seq_len": seq_len, "dropout": 0.0}
    if objective == "mlm":
        model.update(post_norm=True, embed_norm=True, gelu_approximate=False, norm_eps=1e-12)
    values = {f"model.{k}": v for k, v in model.items()}
    values.update({"objective.kind": objective, "objective.mask_rate": MASK_RATE, "train.batch_size": batch_size,
                   "train.seq_len": seq_len, "train.steps": 1000, "optimizer.warmup_steps": 0,
                   "optimizer.grad_clip": GRAD_CLIP, "mesh.data": 1,
                   **{f"optimizer.{k}": v for k, v in OPT.items()}, **(overrides or {})})
    return apply_overrides(Config(), values)


def parse_variant(text: str) -> dict:
    """`--variant 'model.a=1,model.b=x'` -> {"model.a": "1", "model.b": "x"} (values parsed by apply_overrides)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise UserError(f"--variant takes KEY=VALUE[,KEY=VALUE], got {text!r}.")
    return dict(pairs)


def model_flops(cfg) -> dict:
    """Training (forward + backward) model FLOPs per token as executed (`jaxformer.params.count`: full attention
    square, MLM's head at its prediction slots only), and the same with the head on every position.

    The attention square is charged whole whatever kernel runs (counted as the `xla` kernel executes it), and an
    MLM's last block at every position (`model.last_block_slots_only` skips rows the loss never reads): MFU's
    numerator is the model's work (PaLM's convention), so a kernel or a step that skips part of it shows up as a
    higher MFU, and every impl of a cell is charged the same FLOPs."""
    from dataclasses import replace

    from jaxformer import params as params_lib

    counts = params_lib.count(replace(cfg, model=replace(cfg.model, attention_impl="xla",
                                                         last_block_slots_only=False)))
    out = {"flops_per_token": counts["training_flops_per_token"]["executed"]}
    head = sum(3 * c["forward_flops_executed"] for c in counts["components"] if c["name"] in params_lib.HEADS)
    fraction = counts["predicted_fraction"]["executed"]
    out["flops_per_token_all_positions"] = round(out["flops_per_token"] + head * (1 / fraction - 1))
    if cfg.objective.kind == "mlm":
        out["mlm_head_flops_per_predicted_token"] = round(head / fraction)
    return out


def add_mfu(run: dict, flops: dict) -> dict:
    """`run` (tokens/s and roofline) with the model FLOPs per token and the MFU of its median and best step."""
    run.update(flops)
    run["mfu"] = run["flops_per_token"] * run["tokens_per_s_median"] / (run["roofline_gflops"] * 1e9)
    run["mfu_best"] = run["flops_per_token"] * run["tokens_per_s_best"] / (run["roofline_gflops"] * 1e9)
    return run


def jax_roofline(n: int = ROOFLINE_N, repeats: int = 10, dtype: str = "float32") -> float:
    """Best-of-`repeats` `jnp.dot` of two random n x n matrices of `dtype` (fp32 unless told), in GFLOP/s."""
    import jax
    import jax.numpy as jnp

    ka, kb = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(ka, (n, n), dtype), jax.random.normal(kb, (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def time_steps(step, state, batches: list, steps: int, max_timed_s: float, sync,
               sync_every: int = 1) -> tuple[list[float], object]:
    """Run `steps` steps (cycling through `batches`) and time them in windows of `sync_every` steps, dispatched back
    to back and synced once at the window's end (1: every step synced); returns each window's time per step.
    Stops after `max_timed_s` once 3 windows are timed. Windows longer than a step are how a training loop runs
    (jaxformer.trainer never waits on the step it has just queued): the host's dispatch of a step overlaps the
    device's work on the one before, which a sync after every step would add to every step's time."""
    times: list[float] = []
    start, done = time.perf_counter(), 0
    while done < steps:
        n = min(sync_every, steps - done)
        t0 = time.perf_counter()
        for i in range(done, done + n):
            state = step(state, batches[i % len(batches)])
        sync(state)
        times.append((time.perf_counter() - t0) / n)
        done += n
        if len(times) >= 3 and time.perf_counter() - start > max_timed_s:
            break
    return times, state


def step_stats(times: list[float], tokens_per_step: int) -> dict:
    """Median step (the contract figure) and best step (the least-disturbed estimate on a shared machine)."""
    median = statistics.median(times)
    return {"tokens_per_s_median": round(tokens_per_step / median, 1),
            "tokens_per_s_best": round(tokens_per_step / min(times), 1), "steps_timed": len(times),
            "step_ms_median": round(1e3 * median, 2), "step_ms_min": round(1e3 * min(times), 2),
            "step_ms_max": round(1e3 * max(times), 2), "step_ms": [round(1e3 * x, 1) for x in times]}


def roofline_pair(measure: Callable[[], float], before: float) -> dict:
    """The matmul roofline, measured before the run and again after it; the better one is the ceiling."""
    after = measure()
    return {"roofline_gflops": round(max(before, after), 1), "roofline_gflops_before": round(before, 1),
            "roofline_gflops_after": round(after, 1)}


PACKED_DOCUMENT_TOKENS = 64  # mean document length in packed benchmark windows (sentences to short articles)


def cell_inputs(spec: dict, n_batches: int):
    """A cell's resolved config, one-device mesh, initial train state (+ shardings) and `n_batches` random token
    batches, for the timed step here and for benchmarks/profile_step.py. With `data.packing=true` the windows
    hold documents of random lengths (EOS at each token with probability 1 / PACKED_DOCUMENT_TOKENS) and carry
    their segment ids and positions, as the data pipeline's packed batches do."""
    import jax
    import numpy as np

    from jaxformer import parallel, train
    from jaxformer.config import resolve
    from jaxformer.data.batching import packing_arrays
    from jaxformer.data.tokenizers import EOS, N_SPECIAL

    b, t = spec["batch_size"], spec["seq_len"]
    cfg = resolve(bench_config(spec["objective"], spec["config"], batch_size=b, seq_len=t, vocab=spec["vocab"],
                               overrides=spec.get("overrides")), n_devices=1)
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    state, shardings = train.init_train_state(cfg, mesh)
    state = train.unwrapped(state, shardings)  # as the training loop carries it
    rng = np.random.default_rng(0)
    sharding = parallel.batch_sharding(mesh, ndim=1)
    batches = []
    for _ in range(n_batches):
        tokens = rng.integers(N_SPECIAL, cfg.model.vocab_size, (b, t + 1), dtype=np.int32)
        batch = {"tokens": tokens}
        if cfg.data.packing:
            tokens[rng.random(tokens.shape) < 1 / PACKED_DOCUMENT_TOKENS] = EOS
            batch = {"tokens": tokens, **packing_arrays(tokens, EOS)}
        batches.append({key: jax.device_put(value, sharding) for key, value in batch.items()})
    return cfg, mesh, state, shardings, batches


def time_train_step(spec: dict) -> dict:
    """Compile and time jaxformer's train step for one cell (`spec`: objective, config, batch_size, seq_len,
    vocab, warmup, steps, max_timed_s) in this process; see the module docstring for the fields."""
    import jax

    from jaxformer import train
    from jaxformer.model import attention_kernels

    rss_after_import = rss_mb()
    roofline_before = jax_roofline()
    b, t = spec["batch_size"], spec["seq_len"]
    cfg, mesh, state, shardings, batches = cell_inputs(spec, n_batches=4)
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

    _, state = time_steps(step, state, batches, spec["warmup"], float("inf"), sync)
    first_loss = float(last_metrics["m"]["loss"]) if spec["warmup"] else None
    times, state = time_steps(step, state, batches, spec["steps"], spec["max_timed_s"], sync)
    peak_rss = rss_mb()
    return add_mfu({
        **step_stats(times, b * t), "compile_s": round(t2 - t0, 3),
        "lower_s": round(t1 - t0, 3), "xla_compile_s": round(t2 - t1, 3),
        "peak_rss_mb": peak_rss, "rss_after_import_mb": rss_after_import,
        **roofline_pair(jax_roofline, roofline_before),
        "xla_flops_per_token": round(xla_flops / (b * t)) if xla_flops else None, "compiled_memory": memory,
        "loss_first": first_loss, "loss_last": float(last_metrics["m"]["loss"]),
        "model_config": {k: getattr(cfg.model, k) for k in ("n_layer", "d_model", "n_heads", "vocab_size",
                                                            "post_norm", "embed_norm", "gelu_approximate",
                                                            "positions", "tie_embeddings", "dtype",
                                                            "attention_impl", "dot_grads")},
        "attention_kernel": attention_kernels.resolve_for(cfg),
        "overrides": spec.get("overrides", {}),
        "devices": [str(d) for d in mesh.devices.flat],
    }, model_flops(cfg))


# ---------------------------------------------------------------------------------------------- cells in subprocesses

def child_result(spec: dict, measure: Callable[[dict], dict]) -> str:
    """The result line a child prints: the cell's identity, `measure(spec)` and the machine load around it."""
    load_before = loadavg()
    result = measure(spec)
    out = {"impl": spec["impl"], "objective": spec["objective"], "config": spec["config"], **result,
           "batch_size": spec["batch_size"], "seq_len": spec["seq_len"], "vocab": spec["vocab"],
           "warmup_steps": spec["warmup"], "host_malloc": host_memory.policy_in_effect(),
           "loadavg_before": load_before, "loadavg_after": loadavg()}
    return RESULT_TAG + json.dumps(out)


def run_child(command: list[str], spec: dict, timeout: float) -> dict:
    """Run `command + [spec as JSON]` and return the result line it printed; RuntimeError when there is none."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # the child imports the same jaxformer as this process, whatever its working directory
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([*command, json.dumps(spec)], capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
    raise RuntimeError(f"{spec['impl']} {spec['objective']} {spec['config']} failed (exit {proc.returncode}): {tail}")


JAXFORMER_CHILD = [sys.executable, "-m", "jaxformer.timing"]


def check_sizes(args) -> None:
    for name in ("steps", "batch_size", "seq_len", "vocab", "threads"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}.")
    from jaxformer.config import resolve

    for text in getattr(args, "variant", []):
        try:  # a typo must fail here, in one sentence, not in every cell's subprocess
            resolve(bench_config("clm", "S", batch_size=1, seq_len=8, vocab=64, overrides=parse_variant(text)),
                    n_devices=1)
        except UserError as err:
            raise UserError(f"--variant {text}: {err}") from None


def plan(args, impls: list[str]) -> list[dict]:
    """One spec per (config, objective, impl); the impls of a cell back to back, so they see about the same load."""
    configs = args.configs or (["S"] if args.quick else ["S", "M"])
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    specs = []
    for config in configs:
        steps = args.steps if args.steps is not None else (3 if args.quick else {"S": 10, "M": 6}[config])
        for objective in args.objectives:
            for impl in impls:
                variants = [(impl, {})]
                if impl == "jaxformer":  # the variants right after their baseline: the same load, as far as it goes
                    variants += [(f"jaxformer[{text}]", parse_variant(text)) for text in getattr(args, "variant", [])]
                for name, overrides in variants:
                    specs.append({"impl": name, "objective": objective, "config": config, "steps": steps,
                                  "warmup": warmup, "max_timed_s": args.max_timed_s, "batch_size": args.batch_size,
                                  "seq_len": args.seq_len, "vocab": args.vocab,
                                  "threads": getattr(args, "threads", 1), **({"overrides": overrides} if overrides
                                                                             else {})})
    return specs


def variant_ratios(runs: list[dict]) -> list[dict]:
    """Per cell and `--variant`: its tokens/s over the baseline jaxformer's (median and best step)."""
    base = {(r["objective"], r["config"]): r for r in runs if r["impl"] == "jaxformer"}
    out = []
    for r in runs:
        b = base.get((r["objective"], r["config"]))
        if r.get("overrides") and b:
            out.append({"variant": r["impl"], "objective": r["objective"], "config": r["config"],
                        "tokens_per_s_ratio": round(r["tokens_per_s_median"] / b["tokens_per_s_median"], 3),
                        "tokens_per_s_best_ratio": round(r["tokens_per_s_best"] / b["tokens_per_s_best"], 3)})
    return out


def machine_info(packages: tuple[str, ...] = ("jax", "jaxlib", "flax", "optax", "numpy")) -> dict:
    from importlib.metadata import PackageNotFoundError, version

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
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    info["versions"] = versions
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    info["host_malloc"] = host_memory.policy_in_effect()
    return info


def run_cells(args, specs: list[dict], run_one: Callable[[dict], dict], machine: dict) -> dict:
    """Run every spec (`run_one(spec)` -> a child's result), add model FLOPs and MFU; failures are recorded in
    `errors`, not raised. Returns the results.json object without writing it."""
    from jaxformer.config import resolve

    started, flops = time.time(), {}
    result = {"benchmark": "train_throughput", "quick": bool(args.quick), "machine": machine,
              "loadavg_start": loadavg(), "batch_size": args.batch_size, "seq_len": args.seq_len,
              "vocab": args.vocab, "dtype": "float32", "mask_rate": MASK_RATE,
              "optimizer": {"name": "adamw", **OPT, "grad_clip": GRAD_CLIP}, "roofline_matmul": roofline_n(),
              "flops_note": "model FLOPs per token = 6 x matmul params (LM head included) + 12 x layers x d x seq "
                            "(attention, full square); MLM counts its head only for mask_rate of the positions; "
                            "mfu = flops_per_token x tokens_per_s_median / roofline_gflops, the better of two "
                            f"best-of-10 {roofline_n()}^3 fp32 matmul timings in the same process (before and after the run); "
                            "mfu_best uses tokens_per_s_best (the fastest step)",
              "noise_note": "shared machine: other processes' load changes the capacity within minutes; impls run "
                            "back to back per cell; compare ratios of the same run, and see tokens_per_s_best",
              "runs": [], "errors": []}
    for spec in specs:
        label = f"{spec['impl']} {spec['objective']} {spec['config']}"
        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
        try:
            r = run_one(spec)
            if "mfu" not in r:  # a peer: charged jaxformer's model FLOPs for the same cell
                key = (spec["objective"], spec["config"])
                if key not in flops:
                    flops[key] = model_flops(resolve(bench_config(*key, batch_size=args.batch_size,
                                                                  seq_len=args.seq_len, vocab=args.vocab)))
                add_mfu(r, flops[key])
            result["runs"].append(r)
            print(f"[bench] {label}: {r['tokens_per_s_median']:.0f} tok/s, compile {r['compile_s']:.2f} s, "
                  f"RSS {r['peak_rss_mb']:.0f} MB, MFU {r['mfu']:.3f}", file=sys.stderr, flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            result["errors"].append({"impl": spec["impl"], "objective": spec["objective"], "config": spec["config"],
                                     "error": str(err)})
            print(f"[bench] {label}: FAILED: {err}", file=sys.stderr, flush=True)
    result.update({"loadavg_end": loadavg(), "wall_s": round(time.time() - started, 1), "out": str(args.out)})
    if getattr(args, "variant", []):
        result["variant_ratios"] = variant_ratios(result["runs"])
    return result


def write_result(result: dict, out: str | Path) -> None:
    from jaxformer import atomic

    atomic.write_text(out, json.dumps(result, indent=2) + "\n")


def print_table(result: dict) -> None:
    w = max([15] + [len(r["impl"]) for r in result["runs"]])
    print(f"{'impl':<{w}} {'obj':<4} {'cfg':<3} {'tok/s':>9} {'best':>9} {'compile s':>9} {'RSS MB':>8} {'MFU':>7} "
          f"{'roofline':>9} {'steps':>5}")
    for r in result["runs"]:
        print(f"{r['impl']:<{w}} {r['objective']:<4} {r['config']:<3} {r['tokens_per_s_median']:>9.0f} "
              f"{r['tokens_per_s_best']:>9.0f} {r['compile_s']:>9.2f} {r['peak_rss_mb']:>8.0f} {r['mfu']:>7.3f} "
              f"{r['roofline_gflops']:>9.1f} {r['steps_timed']:>5}")
    for q in result.get("variant_ratios", []):
        print(f"{q['variant']} {q['objective']} {q['config']}: tokens/s x{q['tokens_per_s_ratio']} the baseline "
              f"(x{q['tokens_per_s_best_ratio']} by best step)")
    print(f"load average {result['loadavg_start']} -> {result['loadavg_end']}; wrote {result['out']}")


def run(args) -> int:
    """`jaxformer bench`: the jaxformer cells, one subprocess each; the JSON is written also when a cell failed
    (exit 1 then)."""
    check_sizes(args)
    specs = plan(args, ["jaxformer"])
    result = run_cells(args, specs, lambda spec: run_child(JAXFORMER_CHILD, spec, args.run_timeout), machine_info())
    write_result(result, args.out)
    print_table(result)
    return 1 if result["errors"] else 0


if __name__ == "__main__":  # a child: `python -m jaxformer.timing '<spec json>'`
    print(child_result(json.loads(sys.argv[1]), time_train_step), flush=True)
