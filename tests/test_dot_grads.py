"""`model.dot_grads`: the `rowmajor` weight gradients equal autodiff's (every projection shape the model uses,
either factor the smaller one, bf16 with an fp32 result), compile to no plain Eigen dot on a CPU where the
`xla` arrangement does, and a whole train step gives the same loss and gradient norm either way."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import train
from jaxformer.config import validate
from jaxformer.errors import UserError
from jaxformer.model import build_model, dot_grads
from tests.tiny import tiny_config

# (equation, x shape, w shape): the model's projections (Q/K/V, output, MLP up/down, the heads' `...`, the MoE
# experts' with the expert axis as a batch axis), both branches (x smaller than the output gradient, and larger),
# and a batched contraction with its batch axes leading (attention-shaped).
CASES = [("btd,dnh->btnh", (2, 5, 8), (8, 3, 4)),
         ("btnh,nhd->btd", (2, 5, 3, 4), (3, 4, 8)),
         ("btd,df->btf", (2, 5, 8), (8, 24)),
         ("btf,fd->btd", (2, 5, 24), (24, 8)),
         ("...d,de->...e", (7, 8), (8, 6)),
         ("...d,de->...e", (2, 3, 8), (8, 6)),
         ("becd,edf->becf", (2, 3, 5, 8), (3, 8, 24)),
         ("becf,efd->becd", (2, 3, 5, 24), (3, 24, 8)),
         ("bgmh,bgsh->bgms", (2, 3, 5, 4), (2, 3, 6, 4))]


def _grads(eq, x, w, impl, dtype=None):
    def loss(x, w):
        y = dot_grads.einsum(eq, x, w, impl=impl, preferred_element_type=dtype)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("eq,x_shape,w_shape", CASES)
def test_rowmajor_gradients_match_autodiff(eq, x_shape, w_shape):
    kx, kw = jax.random.split(jax.random.key(0))
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    y = dot_grads.einsum(eq, x, w, impl="rowmajor")
    np.testing.assert_allclose(np.asarray(y), np.asarray(jnp.einsum(eq, x, w)), rtol=1e-6, atol=1e-6)
    reference = jax.grad(lambda x, w: jnp.sum(jnp.sin(jnp.einsum(eq, x, w))), argnums=(0, 1))(x, w)
    for got, want in zip(_grads(eq, x, w, "rowmajor"), reference, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_half_precision_inputs_keep_their_dtypes_and_an_fp32_result():
    kx, kw = jax.random.split(jax.random.key(1))
    x, w = jax.random.normal(kx, (2, 5, 8), jnp.bfloat16), jax.random.normal(kw, (8, 24), jnp.bfloat16)
    assert dot_grads.einsum("btd,df->btf", x, w, impl="rowmajor",
                            preferred_element_type=jnp.float32).dtype == jnp.float32
    got, want = _grads("btd,df->btf", x, w, "rowmajor", jnp.float32), _grads("btd,df->btf", x, w, "xla", jnp.float32)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-2)


def _weight_grad_dots(compiled_text: str) -> int:
    """Plain `dot` instructions without batch dimensions (weight gradients; attention's are batched)."""
    entry = compiled_text[compiled_text.index("ENTRY"):]
    return sum(" dot(" in line and "batch_dims" not in line for line in entry.splitlines())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout question is XLA:CPU's")
def test_rowmajor_leaves_no_plain_dot_in_an_mlp_backward_on_cpu():
    """The point of `rowmajor`: every product of an MLP's backward is a fused (YNNPACK) matmul; with `xla` the
    weight gradients are plain `dot` instructions. Without the optimisation barriers XLA folds the transposes
    back and this fails."""
    kx, k1, k2 = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(kx, (4, 64, 32))
    w1, w2 = jax.random.normal(k1, (32, 128)), jax.random.normal(k2, (128, 32))

    def plain_dots(impl):
        def loss(x, w1, w2):
            h = jax.nn.gelu(dot_grads.einsum("btd,df->btf", x, w1, impl=impl))
            return jnp.sum(dot_grads.einsum("btf,fd->btd", h, w2, impl=impl) ** 2)
        return _weight_grad_dots(jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, w1, w2).compile().as_text())

    assert plain_dots("xla") >= 2
    assert plain_dots("rowmajor") == 0


def test_auto_is_rowmajor_only_on_cpu_and_bad_values_are_one_sentence():
    assert dot_grads.resolve("auto", backend="cpu") == "rowmajor"
    assert dot_grads.resolve("auto", backend="gpu") == "xla"
    assert dot_grads.resolve("auto", backend="tpu") == "xla"
    assert dot_grads.resolve("xla", backend="cpu") == "xla"
    with pytest.raises(UserError, match="model.dot_grads"):
        validate(tiny_config("clm", model=dict(dot_grads="fast"), resolved=False))


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_train_step_is_the_same_either_way(kind):
    """The setting reaches every projection (no weight gradient left to a plain dot on a CPU) and changes
    neither the loss nor the gradients."""
    batch = {"tokens": jax.random.randint(jax.random.key(1), (8, 17), 8, 64)}
    metrics, dots = {}, {}
    for impl in ("xla", "rowmajor"):
        cfg = tiny_config(kind, model=dict(dot_grads=impl))
        tx = train.make_optimizer(cfg)
        graphdef, params = nnx.split(build_model(cfg, 0), nnx.Param)
        state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                 graphdef=graphdef, tx=tx, cfg=cfg)
        step = jax.jit(train.train_step)
        dots[impl] = _weight_grad_dots(step.lower(state, batch, jax.random.key(2)).compile().as_text())
        _, metrics[impl] = step(state, batch, jax.random.key(2))
    for name in ("loss", "grad_norm"):
        assert float(metrics["rowmajor"][name]) == pytest.approx(float(metrics["xla"][name]), rel=1e-5)
    if jax.default_backend() == "cpu":
        assert dots["xla"] > 0 and dots["rowmajor"] == 0, dots
