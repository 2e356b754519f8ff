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
  `transpose(jvp(...))`, neither);
- `idle`: no thunk running (dispatch gaps between thunks).
XLA:CPU runs independent thunks concurrently; a stretch of time with two thunks running is charged half to each,
so the categories add up to the wall time. Built for XLA:CPU's thunk runtime (the one that names thunks after
HLO instructions); on other backends the table is as good as the trace's names.
"""

from __future__ import annotations

import argparse
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

_INSTR = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\w+\[[\d,]*\])\S* (\w[\w\-]*)\((.*?)\)(.*)$")
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
            if i["op"] != "dot":
                continue
            operands = [shapes.get(o.strip().lstrip("%"), "") for o in i["operands"].split(",")]
            lhs = operands[0]
            dot_dims.update(d for shape in [i["shape"], *operands] if shape for d in _dims(shape))
            contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", i["rest"])
            k = 1
            for d in (contract.group(1).split(",") if contract and lhs else []):
                k *= _dims(lhs)[int(d)] if d else 1
            n = 1
            for d in _dims(i["shape"]):
                n *= d
            flops += 2.0 * n * k
            batched |= "lhs_batch_dims" in i["rest"]
        return flops, ops, batched, dot_dims

    out = {}
    for instrs in computations.values():
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
                              "op_name": op_name.group(1) if op_name else ""}
    return out


def categorize(info: dict | None, vocab: int) -> str:
    if info is None:
        return "other"
    if info["flops"]:
        if vocab in info["dot_dims"]:  # the head, its input gradient and the embedding-table gradient
            return "matmul: vocab"
        return "matmul: attention" if info["batched_dot"] else "matmul: dense"
    if set(info["ops"]) <= _LAYOUT_OPS:
        return "layout"
    name = info["op_name"]
    if "transpose(jvp" in name:
        return "elementwise: backward"
    return "elementwise: forward" if "jvp(" in name else "optimizer + update"


def attribute(events: list[dict], hlo: dict) -> dict:
    """Charge every instant of the traced steps to the thunks running then (equal shares), by category."""
    walls = [e for e in events if e.get("ph") == "X" and e["name"] == _WALL]
    leaves = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) > 0 and not e["name"].startswith(_NOT_THUNKS)
              and e["name"] in hlo]
    if not leaves:
        raise UserError("the profile holds no XLA thunk names (not XLA:CPU's thunk runtime?); nothing to attribute.")
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
    return {"wall_us": t1 - t0, "idle_us": idle, "per_thunk_us": dict(per_thunk), "steps": max(1, len(walls))}


def table(attributed: dict, hlo: dict, vocab: int, top: int) -> dict:
    steps, wall = attributed["steps"], attributed["wall_us"] / attributed["steps"] / 1e3
    ms, flops = collections.Counter(), collections.Counter()
    for thunk, us in attributed["per_thunk_us"].items():
        c = categorize(hlo.get(thunk), vocab)
        ms[c] += us / steps / 1e3
        flops[c] += hlo[thunk]["flops"]  # a thunk of the entry computation runs once per step
    ms["idle"] = attributed["idle_us"] / steps / 1e3
    rows = [{"category": c, "ms_per_step": round(v, 1), "percent": round(100 * v / wall, 1),
             "gflops_per_s": round(flops[c] / (v / 1e3) / 1e9, 1) if flops[c] and v else None}
            for c, v in ms.most_common()]
    thunks = sorted(attributed["per_thunk_us"].items(), key=lambda kv: -kv[1])[:top]
    heaviest = [{"thunk": t, "ms_per_step": round(us / steps / 1e3, 2), "category": categorize(hlo.get(t), vocab),
                 "shape": hlo[t]["shape"], "jax_op": hlo[t]["op_name"].split("/")[-1][:80]} for t, us in thunks]
    return {"wall_ms_per_step": round(wall, 1), "matmul_flops_per_step": sum(flops.values()), "categories": rows,
            "heaviest_thunks": heaviest}


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
    times = []
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(args.steps):
                t = time.perf_counter()
                state, metrics = compiled(state, batch, key)
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - t)
        files = sorted(Path(trace_dir).rglob("*.trace.json.gz"))
        if not files:
            raise UserError("the JAX profiler wrote no trace here; nothing to attribute.")
        events = json.loads(gzip.decompress(files[-1].read_bytes()))["traceEvents"]
    attributed = attribute(events, hlo)
    return {"benchmark": "step_profile", "objective": args.objective, "config": args.config, "overrides": overrides,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "vocab": args.vocab,
            "step_ms_traced": [round(t * 1e3, 1) for t in times], "machine": timing.machine_info(),
            "loadavg": timing.loadavg(), **table(attributed, hlo, cfg.model.vocab_size, args.top)}


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
    p.add_argument("--out", default="bench/profile.json")
    args = p.parse_args(argv)
    try:
        if min(args.steps, args.batch_size, args.seq_len, args.vocab) < 1:
            raise UserError("--steps, --batch-size, --seq-len and --vocab must be positive.")
        result = profile(args)
    except UserError as err:
        print(f"profile_step: {err}", file=sys.stderr)
        return 2
    timing.write_result(result, args.out)
    print(f"{args.objective} {args.config} {result['overrides'] or ''}: {result['wall_ms_per_step']} ms per traced "
          f"step (untraced steps: see bench_train)")
    print(f"{'category':<24} {'ms/step':>9} {'%':>6} {'GFLOP/s':>9}")
    for r in result["categories"]:
        rate = "" if r["gflops_per_s"] is None else f"{r['gflops_per_s']:.0f}"
        print(f"{r['category']:<24} {r['ms_per_step']:>9.1f} {r['percent']:>6.1f} {rate:>9}")
    print("heaviest thunks:")
    for h in result["heaviest_thunks"]:
        print(f"  {h['ms_per_step']:8.2f} ms  {h['category']:<22} {h['shape']:<24} {h['jax_op']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
