"""Accelerator benchmark: GPT-2 small (124M) in bf16 with fp32 master weights, tokens/s and MFU against the
published dense bf16 peak of the device it finds.

    python benchmarks/bench_gpu.py [--batch-size 16] [--seq-len 1024] [--steps 20] [--out bench/gpu.json]
    python benchmarks/bench_gpu.py --smoke        # tiny shapes, any backend (CI runs this on CPU)
    python benchmarks/bench_gpu.py --vocab-pad-multiple 0   # the unpadded 50257-row head, for comparison
    python benchmarks/bench_gpu.py --variant model.attention_impl=xla --variant model.remat=true

The step is jaxformer's real `train.train_step` (`model.dtype=bfloat16`, `model.attention_impl=auto`: cuDNN flash
attention on NVIDIA GPUs; `model.vocab_pad_multiple=128`: the vocabulary tables padded 50257 -> 50304),
AOT-compiled with XLA's memory analysis recorded. MFU = model FLOPs per token (`jaxformer.params`, as executed,
so at the padded head width) x tokens/s / peak; compare padded and unpadded runs by tokens/s. On a device missing
from PEAK_TFLOPS (a CPU, say) the peak is the `jnp.dot` bf16 roofline measured in the same process, and the JSON
says so; the measured roofline (random bf16 operands) is recorded beside the published peak either way.

Steps are timed as the training loop runs them: `--sync-every` (5) steps dispatched back to back, then one
sync, so the host's dispatch of a step overlaps the device's work on the previous one; the step time is a
window's time per step (median over windows). `step_ms_synced_each_median` is the same step waited for every
time: the difference is host time a loop that syncs each step would add.

Each `--variant` is a further run in the same process right after the baseline, with its tokens/s ratio to the
baseline: a change measured on the same device in the same window. The JSON is rewritten after every run, so a
run cut short keeps what finished; `--budget-s` skips the variants left once that much time has gone.
`--trace-dir DIR` profiles a few more steps of every run: where the step's time goes by category (the table of
benchmarks/profile_step.py, in the JSON as `profile`), with the trace and HLO kept under DIR/<run> so
`python benchmarks/profile_step.py --from DIR/<run>` reads them again elsewhere.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxformer import atomic, parallel, timing, train
from jaxformer.config import apply_overrides, get_preset, resolve
from jaxformer.errors import UserError
from jaxformer.model import attention_kernels
from jaxformer.params import count

# Dense bf16 peak TFLOP/s from the vendors' data sheets (no sparsity), by a substring of `device_kind`.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0,
               "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}
# An odd vocabulary (padded to 512), so the smoke run goes through model.vocab_pad_multiple like the real one.
SMOKE = {"model.n_layer": 2, "model.d_model": 64, "model.n_heads": 2, "model.vocab_size": 500,
         "model.max_seq_len": 64}


def device_peak(device) -> tuple[float | None, str]:
    kind = getattr(device, "device_kind", "")
    for name, tflops in PEAK_TFLOPS.items():  # longer names first where one contains another (H100 PCIe)
        if name in kind:
            return tflops, f"published bf16 dense peak of {name}"
    return None, f"no published peak for {kind!r}"


def roofline_n() -> int:
    """The matmul size that fills the device: 8192 on an accelerator, 2048 on a CPU (seconds, not minutes)."""
    return 2048 if jax.default_backend() == "cpu" else 8192


def bench_config(args, overrides: dict | None = None):
    """The benchmark's config: GPT-2 small with the baseline's settings, then `overrides` (a `--variant`)."""
    values = {"model.dtype": "bfloat16", "model.param_dtype": "float32", "model.attention_impl": "auto",
              "model.dropout": 0.0, "train.batch_size": args.batch_size, "train.seq_len": args.seq_len,
              "train.grad_accum": 1, "train.steps": 1000, "optimizer.warmup_steps": 0, "mesh.data": 1,
              "model.vocab_pad_multiple": args.vocab_pad_multiple}
    if args.smoke:
        values.update(SMOKE)
    values.update(overrides or {})
    return resolve(apply_overrides(get_preset("gpt2-small"), values), n_devices=1)


# The last run's state, kept for the next run when its parameters and optimizer state have the same shapes (a
# variant of batch size, head or kernel): initialising GPT-2 small took ~75 s a run on an H200, its step ~40 ms.
_previous: dict = {}
# Seconds spent tracing, lowering and compiling (jax.monitoring's compile events), so a slow initialisation says
# whether it compiled or ran; counted once main() registers the listener.
_compile_s = [0.0]
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def _count_compile(event: str, seconds: float, **_) -> None:
    if event in _COMPILE_EVENTS:
        _compile_s[0] += seconds


def initial_state(cfg, mesh):
    """(state, shardings, reused): the previous run's state under this config where its shapes fit, else a new one."""
    abstract = train.abstract_state(cfg)
    shardings = train.state_shardings(abstract, mesh)
    if _previous and _previous["shapes"] == _shapes(abstract):
        state = _previous.pop("state").replace(graphdef=abstract.graphdef, tx=abstract.tx, cfg=cfg)
        return jax.device_put(state, shardings), shardings, True
    _previous.clear()
    state, shardings = train.init_train_state(cfg, mesh)
    return train.unwrapped(state, shardings), shardings, False  # as the training loop carries it


def _shapes(state) -> list:
    return [(x.shape, x.dtype) for x in jax.tree.leaves((state.params, state.opt_state))]


def run(args, overrides: dict | None = None, roofline_tflops: float | None = None) -> dict:
    """One timed configuration (`bench_config`)."""
    run_start = time.perf_counter()
    cfg = bench_config(args, overrides)
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    compile_before = _compile_s[0]
    state, shardings, reused = initial_state(cfg, mesh)
    jax.block_until_ready(state)
    init_s, init_compile_s = time.perf_counter() - run_start, _compile_s[0] - compile_before
    b, t = cfg.train.batch_size, cfg.train.seq_len
    rng = np.random.default_rng(0)
    sharding = parallel.batch_sharding(mesh, ndim=1)
    batches = [{"tokens": jax.device_put(rng.integers(8, cfg.model.vocab_size, (b, t + 1), dtype=np.int32),
                                         sharding)} for _ in range(3)]
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiled = train.compile_train_step(shardings, mesh).lower(state, batches[0], key).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    last, dispatch = {}, []

    def step(state, batch):
        t_call = time.perf_counter()
        state, last["m"] = compiled(state, batch, key)
        dispatch.append(time.perf_counter() - t_call)  # the host's part: until the call returns
        return state

    def sync(state):
        jax.block_until_ready((state, last["m"]))

    _, state = timing.time_steps(step, state, batches, args.warmup, float("inf"), sync)
    dispatch.clear()
    times, state = timing.time_steps(step, state, batches, args.steps, float("inf"), sync, args.sync_every)
    dispatch_ms = round(1e3 * float(np.median(dispatch)), 3)
    # the same steps each waited for: the host's dispatch time that a loop which syncs every step adds
    synced, state = timing.time_steps(step, state, batches, min(args.steps, 5), float("inf"), sync)
    profile = None
    if args.trace_dir:
        profile, state = trace(args, overrides, lambda s: step(s, batches[0]), state, sync, compiled.as_text(),
                               cfg.model.padded_vocab_size)
    _previous.update(shapes=_shapes(state), state=state)
    stats = {**timing.step_stats(times, b * t), "steps_timed": args.steps, "windows_timed": len(times),
             "sync_every": args.sync_every, "dispatch_ms_median": dispatch_ms,
             "step_ms_synced_each_median": round(1e3 * float(np.median(synced)), 2)}
    flops = count(cfg)["training_flops_per_token"]["executed"]
    device = jax.devices()[0]
    peak, peak_source = device_peak(device)
    n = roofline_n()
    # best-of-10 bf16 jnp.dot on random operands (zeros can run faster than data)
    roofline_tflops = roofline_tflops or timing.jax_roofline(n, dtype="bfloat16") / 1e3
    if peak is None:
        peak, peak_source = roofline_tflops, f"jnp.dot bf16 {n}^3 roofline measured here (no published peak)"
    return {"benchmark": "gpt2_small_bf16", "smoke": args.smoke, "overrides": overrides or {}, "device": str(device),
            "device_kind": getattr(device, "device_kind", ""), "backend": jax.default_backend(),
            "machine": timing.machine_info(), "batch_size": b, "seq_len": t, "n_layer": cfg.model.n_layer,
            "d_model": cfg.model.d_model, "vocab_size": cfg.model.vocab_size,
            "padded_vocab_size": cfg.model.padded_vocab_size, "dtype": cfg.model.dtype,
            "param_dtype": cfg.model.param_dtype, "attention_impl": cfg.model.attention_impl,
            "attention_kernel": attention_kernels.resolve_for(cfg),
            "init_s": round(init_s, 2), "init_compile_s": round(init_compile_s, 2), "state_reused": reused,
            "compile_s": round(compile_s, 2),
            "run_wall_s": round(time.perf_counter() - run_start, 2), **stats, "flops_per_token": flops,
            "peak_tflops": float(f"{peak:.4g}"), "peak_source": peak_source,
            "mfu": flops * stats["tokens_per_s_median"] / (peak * 1e12),
            "roofline_tflops": float(f"{roofline_tflops:.4g}"), "roofline_n": n,
            "mfu_vs_roofline": flops * stats["tokens_per_s_median"] / (roofline_tflops * 1e12),
            "temp_memory_mb": round(getattr(memory, "temp_size_in_bytes", 0) / 2**20, 1) if memory else None,
            "loss_last": float(last["m"]["loss"]), **({"profile": profile} if profile else {})}


def trace(args, overrides: dict | None, step, state, sync, hlo_text: str, vocab: int) -> tuple[dict, object]:
    """`args.trace_steps` more steps under the profiler: (the time by category (profile_step's table), the state
    after them); the trace and HLO are kept under DIR/<run>. A profiler that fails is recorded, never the end of
    the benchmark."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import profile_step

    label = re.sub(r"[^\w.-]+", "_", ",".join(f"{k}={v}" for k, v in (overrides or {}).items())) or "baseline"
    keep = Path(args.trace_dir) / label
    box = [state]

    def run_window():  # dispatched back to back like the timed windows: the trace's idle is the device's own
        for _ in range(args.trace_steps):
            box[0] = step(box[0])
        sync(box[0])

    try:
        events, (window_s,) = profile_step.record(run_window, 1, keep)
        profile_step.keep_hlo(keep, hlo_text, {"steps": args.trace_steps, "vocab": vocab, "overrides": overrides or {},
                                               "step_ms_traced": round(window_s / args.trace_steps * 1e3, 2)})
        hlo = profile_step.parse_hlo(hlo_text)
        return {"trace": str(keep), **profile_step.table(profile_step.attribute(events, hlo, args.trace_steps),
                                                           hlo, vocab, top=15)}, box[0]
    except Exception as err:  # noqa: BLE001 - the timing above stands without a profile
        return {"trace": str(keep), "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}, box[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (any backend; what CI runs)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 (2 with --smoke)")
    p.add_argument("--seq-len", type=int, default=None, help="default 1024 (64 with --smoke)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 2 with --smoke)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sync-every", type=int, default=5,
                   help="steps dispatched back to back per timed window, as the training loop runs them (1: wait "
                        "for every step; the JSON also records 5 such steps as step_ms_synced_each_median)")
    p.add_argument("--vocab-pad-multiple", type=int, default=128,
                   help="model.vocab_pad_multiple: GPT-2's 50257 -> 50304 rows, as nanoGPT pads it (0: off, the "
                        "published shape)")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="a further run with these config overrides after the baseline (repeatable), e.g. "
                        "--variant model.attention_impl=xla; the JSON gives its tokens/s ratio to the baseline")
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="skip the variants not yet started once this many seconds have gone")
    p.add_argument("--trace-dir", default=None, metavar="DIR",
                   help="profile --trace-steps more steps of every run: time by category in the JSON, the trace "
                        "and HLO kept under DIR/<run> (for profile_step.py --from)")
    p.add_argument("--trace-steps", type=int, default=3)
    p.add_argument("--out", default="bench/gpu.json")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or (2 if args.smoke else 16)
    args.seq_len = args.seq_len or (64 if args.smoke else 1024)
    args.steps = args.steps or (2 if args.smoke else 20)
    try:  # a misspelt key is one sentence before anything runs, not an error after the baseline's minutes
        variants = [timing.parse_variant(text) for text in args.variant]
        for overrides in variants:
            bench_config(args, overrides)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    jax.monitoring.register_event_duration_secs_listener(_count_compile)
    start = time.perf_counter()
    result = run(args)
    print(_line("baseline", result))
    result["variants"] = []
    atomic.write_text(args.out, json.dumps(result, indent=2) + "\n")
    failed = 0
    for text, overrides in zip(args.variant, variants, strict=True):
        gc.collect()  # the previous run's state and executable leave the device before the next one is built
        if time.perf_counter() - start > args.budget_s:
            entry = {"variant": text, "skipped": f"--budget-s {args.budget_s:g} spent"}
        else:
            try:
                entry = {"variant": text, **run(args, overrides, roofline_tflops=result["roofline_tflops"])}
                entry["tokens_per_s_ratio"] = round(entry["tokens_per_s_median"] / result["tokens_per_s_median"], 3)
            except Exception as err:  # one variant that cannot run on this device must not lose the others
                failed += 1
                entry = {"variant": text, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:500]}"}
        result["variants"].append(entry)
        print(_line(text, entry))
        atomic.write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name, r in [("baseline", result), *((v["variant"], v) for v in result["variants"])]:
        if "categories" in r.get("profile", {}):
            print(f"{name}: " + ", ".join(f"{c['category']} {c['ms_per_step']} ms" for c in r["profile"]["categories"]))
        elif "profile" in r:
            print(f"{name}: no profile ({r['profile']['error']})")
    print(f"{result['device_kind'] or result['device']}: peak {result['peak_tflops']} TFLOP/s "
          f"({result['peak_source']}), measured bf16 roofline {result['roofline_tflops']} TFLOP/s; wrote {args.out}")
    return 1 if failed else 0


def _line(name: str, r: dict) -> str:
    if "tokens_per_s_median" not in r:
        return f"{name}: {r.get('error') or r.get('skipped')}"
    ratio = f", x{r['tokens_per_s_ratio']} the baseline" if "tokens_per_s_ratio" in r else ""
    return (f"{name}: {r['tokens_per_s_median']:.0f} tokens/s ({r['step_ms_median']:.1f} ms/step; "
            f"{r['step_ms_synced_each_median']:.1f} synced each), MFU "
            f"{r['mfu']:.3f}, {r['mfu_vs_roofline']:.3f} of the measured roofline, temp memory "
            f"{r['temp_memory_mb']} MB, compile {r['compile_s']} s, loss {r['loss_last']:.4f}{ratio}")


if __name__ == "__main__":
    sys.exit(main())
