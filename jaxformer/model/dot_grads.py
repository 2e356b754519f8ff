"""How the backward pass computes a projection's weight gradient: `model.dot_grads` (every `Linear`, the MoE
experts' matrices, and the vocabulary projection, tied or not).

A projection `y = einsum("btd,df->btf", x, w)` has the weight gradient dw = sum over b, t of x[b,t,:] g[b,t,:]:
a product that contracts the *leading* (row) axes of both factors. XLA:CPU's fast matmuls (YNNPACK fusions)
take a left factor only with its contracted axes minor-most, so XLA hands such products to plain Eigen dots,
after copying one factor into a transposed layout it picks itself (often the larger one).

- `xla`: autodiff's contraction as XLA arranges it.
- `rowmajor`: the smaller factor is transposed in memory first (its contracted axes made minor-most), so the
  gradient is a row-major matmul. An optimisation barrier keeps XLA from folding the transpose back into the
  dot. On a 2-core CPU (fp32, B 16, T 256, d 384) an MLP's forward + backward ran 1.8x faster, an MoE layer's
  (8 experts, top-2) 1.07x, and whole train steps 1.03-1.09x (CLM and MLM, S and M: benchmarks/ab_step.py
  --variant model.dot_grads=xla, results/bench/ab-dot-grads.json).
- `auto` (default): `rowmajor` on CPUs, `xla` elsewhere (cuBLAS and the TPU take either layout as it is).

The forward product and the input gradient are the plain einsums either way: both already contract the minor
axes of their left factor. The same treatment of attention's dK and dV (`blocked` kernel, batched over heads)
was measured 0.86x (bidirectional) and 0.99x (causal) on that CPU: the copies cost more than the matmuls gain
at [T, H] = [256, 64], so attention keeps XLA's arrangement.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp

IMPLS = ("auto", "xla", "rowmajor")


def resolve(impl: str, backend: str | None = None) -> str:
    """`auto` -> `rowmajor` on a CPU, `xla` elsewhere; other values unchanged."""
    if impl != "auto":
        return impl
    return "rowmajor" if (backend or jax.default_backend()) == "cpu" else "xla"


def einsum(eq: str, x: jax.Array, w: jax.Array, *, impl: str, preferred_element_type=None) -> jax.Array:
    """`jnp.einsum(eq, x, w)`, its gradient with respect to `w` computed by `impl` (resolved here)."""
    if resolve(impl) == "xla":
        return _product(eq, preferred_element_type, x, w)
    return _rowmajor_einsum(_explicit(eq, x.ndim), preferred_element_type, x, w)


def _explicit(eq: str, x_ndim: int) -> str:
    """`...` in `eq` spelled out with letters the equation does not use."""
    if "..." not in eq:
        return eq
    spare = [c for c in string.ascii_letters if c not in eq]
    x_spec = eq.split(",")[0]
    return eq.replace("...", "".join(spare[:x_ndim - (len(x_spec) - 3)]))


def _product(eq, out_dtype, x, w):
    return jnp.einsum(eq, x, w, preferred_element_type=out_dtype)


_rowmajor_einsum = jax.custom_vjp(_product, nondiff_argnums=(0, 1))


def _forward(eq, out_dtype, x, w):
    return _product(eq, out_dtype, x, w), (x, w)


def _backward(eq, out_dtype, residuals, g):
    x, w = residuals
    (x_spec, w_spec), y_spec = eq.split("->")[0].split(","), eq.split("->")[1]
    batch = "".join(c for c in x_spec if c in w_spec and c in y_spec)  # the MoE expert axis; none in a projection
    rows = "".join(c for c in x_spec if c not in w_spec)  # summed over for dw: b, t (a projection)
    inner = "".join(c for c in x_spec if c in w_spec and c not in y_spec)  # x's contracted axes
    outer = "".join(c for c in w_spec if c not in x_spec)  # w's axes that reach y
    dx = jnp.einsum(f"{y_spec},{w_spec}->{x_spec}", g, w).astype(x.dtype)
    barrier = jax.lax.optimization_barrier
    # The smaller of x and g is transposed (rows minor-most) and is the left factor; dw comes out with that
    # factor's own axes first: [batch, inner, outer] from x^T @ g, [batch, outer, inner] from g^T @ x.
    (a, a_spec, a_own), (b, b_spec, b_own) = (x, x_spec, inner), (g, y_spec, outer)
    if x.size > g.size:
        (a, a_spec, a_own), (b, b_spec, b_own) = (b, b_spec, b_own), (a, a_spec, a_own)
    a_t = barrier(jnp.einsum(f"{a_spec}->{batch}{a_own}{rows}", a))
    dw_spec = f"{batch}{a_own}{b_own}"
    dw = jnp.einsum(f"{batch}{a_own}{rows},{b_spec}->{dw_spec}", a_t, b)
    if dw_spec != w_spec:  # a barrier, or XLA folds this transpose into the product and swaps its factors back
        dw = jnp.einsum(f"{dw_spec}->{w_spec}", barrier(dw))
    return dx, dw.astype(w.dtype)


_rowmajor_einsum.defvjp(_forward, _backward)
