"""Would a gated MLP (`model.mlp=swiglu|geglu`) run faster with its gate and up projections stored as one
[d, 2f] matrix? One product instead of two, split into halves after it. The MLP's forward + backward (the
weight gradients through `model.dot_grads=rowmajor`, the CPU default) in both forms, alternated in one process,
one ratio per pair: `ratio` = the two-product time / the one-product time (above 1: fusing would pay).

    python benchmarks/ab_gate_up.py [--d 384] [--f 1536] [--pairs 40] [--out bench/ab_gate_up.json]

Both forms start from the same weights, so their losses and input gradients are printed side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from jaxformer import timing
from jaxformer.model import dot_grads


def _proj(x, w):
    return dot_grads.einsum("btd,df->btf", x, w, impl="rowmajor")


def two_products(p, x_BxTxD):
    h = jax.nn.silu(_proj(x_BxTxD, p["gate"]) + p["gate_b"]) * (_proj(x_BxTxD, p["up"]) + p["up_b"])
    return jnp.sum((_proj(h, p["down"]) + p["down_b"]) ** 2)


def one_product(p, x_BxTxD):
    gu = _proj(x_BxTxD, p["gate_up"]) + p["gate_up_b"]
    f = gu.shape[-1] // 2
    h = jax.nn.silu(gu[..., :f]) * gu[..., f:]
    return jnp.sum((_proj(h, p["down"]) + p["down_b"]) ** 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--d", type=int, default=384, help="model width (default: the M cell's)")
    p.add_argument("--f", type=int, default=1536, help="MLP hidden width (default: 4 d)")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--out", default="bench/ab_gate_up.json")
    args = p.parse_args(argv)
    if min(args.batch_size, args.seq_len, args.d, args.f, args.pairs) < 1:
        print("error: every size and --pairs must be positive.", file=sys.stderr)
        return 2
    k = jax.random.split(jax.random.key(0), 4)
    d, f = args.d, args.f
    x = jax.random.normal(k[0], (args.batch_size, args.seq_len, d))
    gate, up = (0.05 * jax.random.normal(kk, (d, f)) for kk in k[1:3])
    down = {"down": 0.05 * jax.random.normal(k[3], (f, d)), "down_b": jnp.zeros(d)}
    forms = {"two": (two_products, {"gate": gate, "up": up, "gate_b": jnp.zeros(f), "up_b": jnp.zeros(f), **down}),
             "one": (one_product, {"gate_up": jnp.concatenate([gate, up], 1), "gate_up_b": jnp.zeros(2 * f),
                                   **down})}
    steps = {name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1))) for name, (fn, _) in forms.items()}

    def run(name):
        t0 = time.perf_counter()
        out = jax.block_until_ready(steps[name](forms[name][1], x))
        return time.perf_counter() - t0, out

    (_, (loss2, (_, dx2))), (_, (loss1, (_, dx1))) = run("two"), run("one")
    for _ in range(3):
        run("two"), run("one")
    times = {"two": [], "one": []}
    for i in range(args.pairs):
        for name in (("two", "one") if i % 2 == 0 else ("one", "two")):
            times[name].append(run(name)[0])
    ratios = sorted(a / b for a, b in zip(times["two"], times["one"], strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    result = {"benchmark": "ab_gate_up", "machine": timing.machine_info(), "batch_size": args.batch_size,
              "seq_len": args.seq_len, "d": d, "f": f, "pairs": args.pairs,
              "ratio_median": round(statistics.median(ratios), 3), "ratio_q1": round(q1, 3), "ratio_q3": round(q3, 3),
              "two_ms_median": round(1e3 * statistics.median(times["two"]), 2),
              "one_ms_median": round(1e3 * statistics.median(times["one"]), 2),
              "loss_two": float(loss2), "loss_one": float(loss1),
              "input_grad_max_abs_diff": float(jnp.max(jnp.abs(dx2 - dx1)))}
    timing.write_result(result, args.out)
    print(f"gate + up as one product: x{result['ratio_median']} the two products' speed (quartiles "
          f"{result['ratio_q1']}-{result['ratio_q3']}, {args.pairs} pairs; {result['two_ms_median']} -> "
          f"{result['one_ms_median']} ms; losses {loss2:.6g} / {loss1:.6g}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
