"""Where a train step's time goes: jaxformer's compiled step under the JAX profiler, each XLA thunk sorted into a
category and charged its share of the wall clock.

    python benchmarks/profile_step.py [--objective clm] [--config M] [--set KEY=VALUE ...] [--steps 3]
                                      [--top 12] [--out bench/profile.json]

Same cells as benchmarks/bench_train.py (`jaxformer.timing.bench_config`; `--set` overrides any config value, e.g.
`--set model.attention_impl=xla`). The trace names every executed thunk; the compiled HLO says what each one
computes. Categories:
- `matmul: dense` / `matmul: attention` (dots with batch dimensions) / `matmul: vocab` (a vocabulary-sized dot),
  with the GFLOP/s they ran at (their FLOPs over the wall time charged to them);
- `layout`: fusions that only move data (copy, transpose, slice, pad, concatenate);
- `elementwise: forward` / `elementwise: backward` / `optimizer + update` (by the op's JAX name: `jvp(...)`,
  `transpose(jvp(...))`, neither); `elementwise: unnamed`: ops XLA made with no JAX name;
- `idle`: no thunk running (dispatch gaps between thunks).
XLA:CPU runs independent thunks concurrently; a stretch of time with two thunks running is charged half to each,
so the categories add up to the wall time. On a GPU the trace's device lines are read instead: each kernel names
the HLO instruction it runs (`hlo_op`), cuBLAS GEMM custom calls count as matmuls (their FLOPs from the GEMM's
dimension numbers), cuDNN's fused attention is `attention kernel` (as is jaxformer's C++ kernel on a CPU,
`model.attention_impl=cpp`), and `idle` is the time no kernel runs.

    python benchmarks/profile_step.py --from DIR     # a saved trace: benchmarks/bench_gpu.py --trace-dir DIR/..
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from jaxformer import timing
from jaxformer.errors import UserError

# a tuple-shaped result (a cuBLAS GEMM's (result, workspace)) is kept whole; _dims reads its first element
_INSTR = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\w+\[[\d,]*\])\S* (\w[\w\-]*)\((.*?)\)(.*)$")
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul")
# GPU kernels that run a library call (cuBLAS, cuDNN) carry the library's kernel name, and inside a CUDA graph
# (an XLA command buffer) their `hlo_op` is the graph's: they are told apart by name, charged to these entries.
_LIBRARY_KERNELS = {"matmul: library": re.compile(r"gemm|nvjet|cutlass|xmma|gemv", re.I),
                    "attention kernel": re.compile(r"sdpa|fmha|flash|cudnn", re.I)}
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")
_LAYOUT_OPS = {"parameter", "bitcast", "copy", "transpose", "slice", "pad", "concatenate", "reshape", "broadcast",
               "constant", "dynamic-slice", "dynamic-update-slice"}
_WALL = "ThunkExecutor::Execute (wait for completion)"
_NOT_THUNKS = ("$", "ThunkExecutor", "Threadpool", "SlinkyThreadPool", "end:")


def _dims(shape: str) -> list[int]:
    return [int(x) for x in re.search(r"\[([\d,]*)\]", shape).group(1).split(",") if x]


def parse_hlo(text: str) -> dict:
    """{instruction name: {"op", "shape", "calls", "op_name", "flops"}} for the entry computation's instructions;
    a fusion's `flops` are its dots' (2 x output elements x contracted size), `ops` the opcodes inside it,
    `dot_dims` every dimension size its dots' operands and results have."""
    computations, current = {}, None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and not line.startswith(" "):
            current = computations.setdefault(head.group(1), [])
        elif current is not None and (m := _INSTR.match(line)):
            name, shape, op, operands, rest = m.groups()
            current.append({"name": name, "shape": shape, "op": op, "operands": operands, "rest": rest})

    def summary(instrs: list[dict], shapes: dict) -> tuple[float, set, bool, set]:
        flops, ops, batched, dot_dims = 0.0, set(), False, set()
        for i in instrs:
            ops.add(i["op"])
            gemm = i["op"] == "custom-call" and _target(i["rest"]) in _GEMM_TARGETS
            if i["op"] != "dot" and not gemm:
                continue
            operands = [shapes.get(o.strip().lstrip("%"), "") for o in i["operands"].split(",")]
            lhs = operands[0]
            dot_dims.update(d for shape in [i["shape"], *operands] if shape for d in _dims(shape))
            if gemm:  # backend_config JSON: "lhs_contracting_dimensions":["1"], "lhs_batch_dimensions":[...]
                contract = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', i["rest"])
                batch = re.search(r'"lhs_batch_dimensions":\[([^\]]*)\]', i["rest"])
                batched |= bool(batch and batch.group(1).strip())
            else:
                contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", i["rest"])
                batched |= "lhs_batch_dims" in i["rest"]
            k = 1
            for d in (contract.group(1).replace('"', "").split(",") if contract and lhs else []):
                k *= _dims(lhs)[int(d)] if d.strip() else 1
            n = 1
            for d in _dims(i["shape"]):
                n *= d
            flops += 2.0 * n * k
        return flops, ops, batched, dot_dims

    # how many times a step runs each computation's instructions: the entry once, a while loop's body as many
    # times as its known trip count says (a loop of unknown length: once)
    runs, pending = {"ENTRY": 1}, True
    while pending:
        pending = False
        for computation, instrs in list(computations.items()):
            for i in instrs:
                body = re.search(r"body=%([\w.\-]+)", i["rest"]) if i["op"] == "while" else None
                if body and computation in runs and body.group(1) not in runs:
                    trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', i["rest"])
                    runs[body.group(1)] = runs[computation] * (int(trips.group(1)) if trips else 1)
                    pending = True
    out = {}
    for computation, instrs in computations.items():
        outer = {i["name"]: i["shape"] for i in instrs}
        for i in instrs:
            calls = re.search(r"calls=%([\w.\-]+)", i["rest"])
            body = computations.get(calls.group(1)) if calls else None
            # a fusion: its body; a bare instruction (an unfused dot): itself, its operands in this computation
            flops, ops, batched, dot_dims = (summary(body, {b["name"]: b["shape"] for b in body}) if body
                                             else summary([i], outer))
            op_name = re.search(r'op_name="([^"]*)"', i["rest"])
            out[i["name"]] = {"op": i["op"], "shape": i["shape"], "flops": flops, "ops": sorted(ops),
                              "batched_dot": batched, "dot_dims": sorted(dot_dims),
                              "op_name": op_name.group(1) if op_name else "", "target": _target(i["rest"]),
                              "runs": runs.get(computation, 0)}  # 0: inside a fusion (its fusion runs)
    # names for the library kernels told apart by name (no HLO instruction is named so); their FLOPs are the
    # library calls', counted with the calls
    for category in _LIBRARY_KERNELS:
        out[f"<{category}>"] = {"op": "library", "shape": "", "flops": 0.0, "ops": [], "batched_dot": False,
                                "dot_dims": [], "op_name": "", "target": "", "runs": 0, "category": category}
    return out


def _library_category(info: dict) -> str | None:
    if info.get("target") in _GEMM_TARGETS:
        return "matmul: library"
    target = info.get("target", "")
    return "attention kernel" if "fmha" in target or target.startswith("jaxformer_attention") else None


def _target(rest: str) -> str:
    m = re.search(r'custom_call_target="([^"]*)"', rest)
    return m.group(1) if m else ""


def categorize(info: dict | None, vocab: int) -> str:
    if info is None:
        return "other"
    if "category" in info:  # a library kernel told apart by its name
        return info["category"]
    if library := _library_category(info):  # cuBLAS GEMMs, cuDNN's fused attention
        return library
    if info["flops"]:
        if vocab in info["dot_dims"]:  # the head, its input gradient and the embedding-table gradient
            return "matmul: vocab"
        return "matmul: attention" if info["batched_dot"] else "matmul: dense"
    if set(info["ops"]) <= _LAYOUT_OPS:
        return "layout"
    name = info["op_name"]
    if not name:  # an op XLA made (a convert or pad it inserted): no JAX op to say which pass it serves
        return "elementwise: unnamed"
    if "transpose(jvp" in name:
        return "elementwise: backward"
    return "elementwise: forward" if "jvp(" in name else "optimizer + update"


def device_kernels(events: list[dict], hlo: dict) -> list[dict]:
    """The events of an accelerator's lines (a process named /device:GPU:n or /device:TPU:n), each renamed to the
    HLO instruction it runs: its `hlo_op`, else its kernel name (XLA names a fusion's kernel after it, `.` -> `_`),
    else a library entry by the kernel's name (`<matmul: library>`, `<attention kernel>`). None on a CPU, whose
    thunks run on host threads."""
    pids = {e.get("pid") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
            and re.search(r"/device:(GPU|TPU):", str(e.get("args", {}).get("name", "")))}
    out = []
    for e in events:
        if e.get("pid") not in pids or e.get("ph") != "X":
            continue
        candidates = [e.get("args", {}).get("hlo_op", ""), re.sub(r"_(\d+)$", r".\1", e["name"]), e["name"],
                      *(f"<{c}>" for c, pattern in _LIBRARY_KERNELS.items() if pattern.search(e["name"]))]
        name = next((c for c in candidates if c in hlo), None)
        if name is not None:
            out.append({**e, "name": name})
    return out


def _until_done(events: list[dict], hlo: dict) -> list[dict]:
    """XLA:CPU's plain (Eigen) `dot` thunks run asynchronously: the event returns at once and the product is
    computed on the thread pool until the thunk's `end: NAME` event (~33 ms after a 0.8 ms event for an MLP weight
    gradient of the M cell, time a trace read by the thunk events alone calls idle). Those thunks are stretched to
    their end; other thunks' end events can come late (the executor's bookkeeping), so they keep their own."""
    ends = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("name", "").startswith("end: "):
            ends[e["name"][5:]].append(e["ts"])
    for times in ends.values():
        times.sort()
    out = []
    for e in events:
        done = ends.get(e.get("name", ""), []) if hlo.get(e.get("name", ""), {}).get("op") == "dot" else []
        i = bisect.bisect_left(done, e.get("ts", 0))
        if e.get("ph") == "X" and i < len(done) and done[i] > e["ts"] + e.get("dur", 0):
            e = {**e, "dur": done[i] - e["ts"]}
        out.append(e)
    return out


def attribute(events: list[dict], hlo: dict, steps: int | None = None) -> dict:
    """Charge every instant of the traced steps to the thunks (or device kernels) running then, in equal shares.
    `steps`: how many steps the trace holds, where it has no per-step wall event to count (an accelerator)."""
    walls = [e for e in events if e.get("ph") == "X" and e["name"] == _WALL]
    events = device_kernels(events, hlo) or _until_done(events, hlo)
    leaves = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) > 0 and not e["name"].startswith(_NOT_THUNKS)
              and e["name"] in hlo]
    if not leaves:
        raise UserError("the profile holds no XLA instruction names (no thunk or kernel named after one); "
                        "nothing to attribute.")
    t0 = min(e["ts"] for e in (walls or leaves))
    t1 = max(e["ts"] + e["dur"] for e in (walls or leaves))
    edges = sorted([(e["ts"], 1, e["name"]) for e in leaves] + [(e["ts"] + e["dur"], -1, e["name"]) for e in leaves]
                   + [(t1, 0, "")])  # the end: after the last thunk, the wait for completion is idle too
    running, per_thunk, idle, last = collections.Counter(), collections.Counter(), 0.0, t0
    for ts, delta, name in edges:
        a, b = max(last, t0), min(ts, t1)
        if b > a:
            busy = sum(running.values())
            if busy == 0:
                idle += b - a
            for thunk, count in running.items():
                if count:
                    per_thunk[thunk] += (b - a) * count / busy
        running[name] += delta
        last = max(last, ts)
    return {"wall_us": t1 - t0, "idle_us": idle, "per_thunk_us": dict(per_thunk), "steps": steps or max(1, len(walls))}


def table(attributed: dict, hlo: dict, vocab: int, top: int) -> dict:
    steps, wall = attributed["steps"], attributed["wall_us"] / attributed["steps"] / 1e3
    ms, flops = collections.Counter(), collections.Counter()
    for thunk, us in attributed["per_thunk_us"].items():
        ms[categorize(hlo.get(thunk), vocab)] += us / steps / 1e3
    # FLOPs from the program, not from the thunks seen: a GPU runs identical fusions as one kernel, named after the
    # first of them
    for info in hlo.values():
        flops[categorize(info, vocab)] += info["flops"] * info["runs"]
    ms["idle"] = attributed["idle_us"] / steps / 1e3
    rows = [{"category": c, "ms_per_step": round(v, 1), "percent": round(100 * v / wall, 1),
             "gflops_per_s": round(flops[c] / (v / 1e3) / 1e9, 1) if flops[c] and v else None}
            for c, v in ms.most_common()]
    thunks = sorted(attributed["per_thunk_us"].items(), key=lambda kv: -kv[1])[:top]
    heaviest = [{"thunk": t, "ms_per_step": round(us / steps / 1e3, 2), "category": categorize(hlo.get(t), vocab),
                 "shape": hlo[t]["shape"], "jax_op": hlo[t]["op_name"].split("/")[-1][:80]} for t, us in thunks]
    return {"wall_ms_per_step": round(wall, 1), "matmul_flops_per_step": sum(flops.values()), "categories": rows,
            "heaviest_thunks": heaviest}


def record(run_step, steps: int, keep: Path | None = None) -> tuple[list[dict], list[float]]:
    """`steps` calls of `run_step()` (each synced) under the JAX profiler: the trace's events and the step times;
    `keep`: a directory to copy the trace into (trace.json.gz) for `--from`."""
    import jax

    times = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                t = time.perf_counter()
                run_step()
                times.append(time.perf_counter() - t)
        files = sorted(Path(trace_dir).rglob("*.trace.json.gz"))
        if not files:
            raise UserError("the JAX profiler wrote no trace here; nothing to attribute.")
        data = files[-1].read_bytes()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / "trace.json.gz").write_bytes(data)
    return json.loads(gzip.decompress(data))["traceEvents"], times


def keep_hlo(keep: Path, hlo_text: str, meta: dict) -> None:
    """What `--from` needs beside the trace: the compiled HLO and how to read the trace (steps, vocabulary)."""
    (keep / "hlo.txt.gz").write_bytes(gzip.compress(hlo_text.encode()))
    (keep / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def profile(args) -> dict:
    import jax

    from jaxformer import train

    overrides = timing.parse_variant(",".join(args.set)) if args.set else {}
    spec = {"objective": args.objective, "config": args.config, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "vocab": args.vocab, "overrides": overrides}
    cfg, mesh, state, shardings, (batch,) = timing.cell_inputs(spec, n_batches=1)
    key = jax.random.key(0)
    compiled = train.compile_train_step(shardings, mesh).lower(state, batch, key).compile()
    hlo = parse_hlo(compiled.as_text())
    for _ in range(2):  # warm-up: first executions allocate
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)

    def run_step():
        nonlocal state
        state, metrics = compiled(state, batch, key)
        jax.block_until_ready(metrics)

    events, times = record(run_step, args.steps)
    attributed = attribute(events, hlo)
    return {"benchmark": "step_profile", "objective": args.objective, "config": args.config, "overrides": overrides,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "vocab": args.vocab,
            "step_ms_traced": [round(t * 1e3, 1) for t in times], "machine": timing.machine_info(),
            "loadavg": timing.loadavg(), **table(attributed, hlo, cfg.model.vocab_size, args.top)}


def from_saved(directory: Path, top: int) -> dict:
    """The table of a trace saved with its HLO and meta.json (benchmarks/bench_gpu.py --trace-dir)."""
    paths = [directory / name for name in ("trace.json.gz", "hlo.txt.gz", "meta.json")]
    if missing := [str(q) for q in paths if not q.is_file()]:
        raise UserError(f"--from {directory}: missing {', '.join(missing)} (written by bench_gpu.py --trace-dir).")
    meta = json.loads(paths[2].read_text())
    events = json.loads(gzip.decompress(paths[0].read_bytes()))["traceEvents"]
    hlo = parse_hlo(gzip.decompress(paths[1].read_bytes()).decode())
    attributed = attribute(events, hlo, steps=meta["steps"])
    return {"benchmark": "step_profile", **meta, **table(attributed, hlo, meta["vocab"], top)}


def print_table(result: dict) -> None:
    print(f"{'category':<24} {'ms/step':>9} {'%':>6} {'GFLOP/s':>9}")
    for r in result["categories"]:
        rate = "" if r["gflops_per_s"] is None else f"{r['gflops_per_s']:.0f}"
        print(f"{r['category']:<24} {r['ms_per_step']:>9.1f} {r['percent']:>6.1f} {rate:>9}")
    print("heaviest thunks:")
    for h in result["heaviest_thunks"]:
        print(f"  {h['ms_per_step']:8.2f} ms  {h['category']:<22} {h['shape']:<24} {h['jax_op']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=timing.OBJECTIVES, default="clm")
    p.add_argument("--config", choices=sorted(timing.CONFIGS), default="M")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override (repeatable)")
    p.add_argument("--steps", type=int, default=3, help="traced steps (default 3)")
    p.add_argument("--top", type=int, default=12, help="heaviest thunks to list (default 12)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--from", dest="saved", type=Path, default=None, metavar="DIR",
                   help="read a saved trace instead of running (a directory bench_gpu.py --trace-dir wrote)")
    p.add_argument("--out", default="bench/profile.json")
    args = p.parse_args(argv)
    try:
        if min(args.steps, args.batch_size, args.seq_len, args.vocab) < 1:
            raise UserError("--steps, --batch-size, --seq-len and --vocab must be positive.")
        result = from_saved(args.saved, args.top) if args.saved else profile(args)
    except UserError as err:
        print(f"profile_step: {err}", file=sys.stderr)
        return 2
    timing.write_result(result, args.out)
    what = args.saved or f"{args.objective} {args.config} {result['overrides'] or ''}"
    print(f"{what}: {result['wall_ms_per_step']} ms per traced step (untraced steps: see the benchmarks)")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
