"""Host time to dispatch one train step: the state with its nnx Variables (as `train.init_train_state` returns it)
against the unwrapped state the training loop carries (`train.unwrapped`).

    python benchmarks/bench_dispatch.py [--preset gpt2-small] [--rounds 6] [--calls 40] [--out bench/dispatch.json]

The preset's layer count (so its number of state leaves: 591 for GPT-2 small) at d_model 64, batch 1 x 8 tokens, so
the device work is small and the call's return time is the host's: flattening the state, checking and handing
its buffers to the runtime, unflattening the result. On a GPU that time bounds a small model's steps per second
(the next step's dispatch overlaps the device's work only while it is shorter). The two forms alternate round by
round in one process; the JSON has each round's median per call and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from jaxformer import parallel, timing, train
from jaxformer.config import apply_overrides, get_preset, resolve
from jaxformer.errors import UserError


def small_config(preset: str):
    """The preset's layers and heads layout at a width that makes the step's compute negligible."""
    values = {"model.d_model": 64, "model.n_heads": 2, "model.n_kv_heads": 0, "model.head_dim": 0,
              "model.vocab_size": 256, "model.max_seq_len": 0, "train.batch_size": 1, "train.seq_len": 8,
              "train.grad_accum": 1, "mesh.data": 1, "model.dropout": 0.0}
    return resolve(apply_overrides(get_preset(preset), values), n_devices=1)


def measure(preset: str, rounds: int, calls: int) -> dict:
    cfg = small_config(preset)
    mesh = parallel.make_mesh(cfg.mesh, jax.devices()[:1])
    state, shardings = train.init_train_state(cfg, mesh)
    step = train.compile_train_step(shardings, mesh)
    batch = {"tokens": jax.device_put(np.full((1, 9), 8, np.int32), parallel.batch_sharding(mesh, ndim=1))}
    key = jax.random.key(0)
    forms = {"wrapped": state, "unwrapped": train.unwrapped(jax.tree.map(lambda x: x.copy(), state), shardings)}
    medians: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(rounds):
        for name, current in forms.items():
            for _ in range(3):  # the first calls of a form compile or warm its cache
                current, _metrics = step(current, batch, key)
            jax.block_until_ready(current)
            per_call = []
            for _ in range(calls):
                t = time.perf_counter()
                current, _metrics = step(current, batch, key)
                per_call.append(time.perf_counter() - t)
            jax.block_until_ready(current)
            forms[name] = current
            medians[name].append(statistics.median(per_call) * 1e3)
    ratio = statistics.median(medians["unwrapped"]) / statistics.median(medians["wrapped"])
    return {"benchmark": "dispatch", "preset": preset, "n_layer": cfg.model.n_layer,
            "state_leaves": len(jax.tree.leaves(state)), "rounds": rounds, "calls_per_round": calls,
            "dispatch_ms_per_round": {name: [round(x, 3) for x in values] for name, values in medians.items()},
            "unwrapped_over_wrapped": round(ratio, 3), "backend": jax.default_backend(),
            "machine": timing.machine_info()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-small")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--out", default="bench/dispatch.json")
    args = p.parse_args(argv)
    try:
        if min(args.rounds, args.calls) < 1:
            raise UserError("--rounds and --calls must be positive.")
        result = measure(args.preset, args.rounds, args.calls)
    except UserError as err:
        print(f"bench_dispatch: {err}", file=sys.stderr)
        return 2
    timing.write_result(result, args.out)
    for name, values in result["dispatch_ms_per_round"].items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name:>9}: {statistics.median(values):.2f} ms per call (rounds: {rounds})")
    print(f"unwrapped / wrapped: {result['unwrapped_over_wrapped']} ({result['state_leaves']} leaves); "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
