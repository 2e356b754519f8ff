"""model.vocab_pad_multiple: the vocabulary tables are allocated at a padded size for accelerators, while losses,
metrics, sampling, fill-mask, sharding, resume and Hugging Face export / import all see the true vocabulary.

The reference for every number is the same model built without padding (model.vocab_pad_multiple=0) holding the
same real weights; the odd vocabulary (61) is what padding exists for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import config as config_lib
from jaxformer import generate, objectives, parallel, rundir, train
from jaxformer.errors import UserError
from jaxformer.model import build_model
from jaxformer.params import count

V, MULTIPLE, PADDED = 61, 16, 64  # an odd vocabulary and its padded size


def cfg_for(kind: str = "clm", multiple: int = MULTIPLE, *extra: str, mesh: dict | None = None):
    return tiny_config(kind, f"model.vocab_pad_multiple={multiple}", "optimizer.warmup_steps=0", *extra,
                       vocab_size=V, mesh=mesh or {"data": 1})


def vocab_axis(leaf_padded: np.ndarray, leaf: np.ndarray) -> int | None:
    """The axis on which a padded model's parameter is longer than the unpadded one's (None: same shape)."""
    diff = [i for i, (a, b) in enumerate(zip(leaf_padded.shape, leaf.shape, strict=True)) if a != b]
    assert len(diff) <= 1 and all(leaf_padded.shape[i] > V == leaf.shape[i] for i in diff)
    return diff[0] if diff else None


def real_part(value: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(the vocab_size real rows, the padded rows) of a parameter; the whole value and nothing when unpadded."""
    if axis is None:
        return value, np.zeros(0)
    return np.take(value, np.arange(V), axis=axis), np.take(value, np.arange(V, value.shape[axis]), axis=axis)


def pair_of_models(kind: str, *extra: str, multiple: int = MULTIPLE, padding_value: float = 0.0):
    """(padded model, unpadded model) with the same real weights; the padded rows hold `padding_value`."""
    padded, plain = build_model(cfg_for(kind, multiple, *extra)), build_model(cfg_for(kind, 0, *extra), seed=1)
    state_padded, state_plain = nnx.state(padded, nnx.Param), nnx.state(plain, nnx.Param)

    def copy_real(leaf_padded, leaf):  # the unpadded model's (different seed) weights into the padded one
        axis = vocab_axis(leaf_padded, leaf)
        if axis is None:
            return leaf
        widths = [(0, 0)] * leaf.ndim
        widths[axis] = (0, leaf_padded.shape[axis] - V)
        return jnp.pad(leaf, widths, constant_values=padding_value)

    nnx.update(padded, jax.tree.map(copy_real, state_padded, state_plain))
    return padded, plain


def batch(cfg, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"tokens": jnp.asarray(rng.integers(8, V, (cfg.train.batch_size, cfg.train.seq_len + 1)), jnp.int32)}


def loss_and_grads(model, cfg, ex):
    objective = objectives.for_config(cfg)
    graphdef, params = nnx.split(model, nnx.Param)

    def sums(params):
        xent, stats = objective.loss_sums(nnx.merge(graphdef, params), ex, rng=None)
        return xent, stats["correct"]

    (xent, correct), grads = jax.jit(jax.value_and_grad(sums, has_aux=True))(params)
    return float(xent), float(correct), jax.tree.leaves(jax.device_get(grads))


# ---------------------------------------------------------------------------------------------- shapes

def test_tables_are_padded_and_the_real_rows_start_as_without_padding():
    cfg = cfg_for("mlm", MULTIPLE, "model.tie_embeddings=false")
    assert cfg.model.vocab_size == V and cfg.model.padded_vocab_size == PADDED
    padded, plain = build_model(cfg), build_model(cfg_for("mlm", 0, "model.tie_embeddings=false"))
    assert padded.embed.shape == (PADDED, 32) and plain.embed.shape == (V, 32)
    assert padded.lm_head.kernel.shape == (32, PADDED) and padded.mlm_bias.shape == (PADDED,)
    # Same seed, same real rows: padding changes only the shapes, and the padded rows start (and stay) zero.
    for leaf_padded, leaf in zip(jax.tree.leaves(nnx.state(padded, nnx.Param)),
                                 jax.tree.leaves(nnx.state(plain, nnx.Param)), strict=True):
        real, pad = real_part(np.asarray(leaf_padded), vocab_axis(leaf_padded, leaf))
        np.testing.assert_array_equal(real, np.asarray(leaf))
        assert not pad.any()
    assert config_lib.resolve(config_lib.get_preset("gpt2-small"), n_devices=1).model.padded_vocab_size == 50257
    report = count(config_lib.apply_overrides(config_lib.get_preset("gpt2-small"), ["model.vocab_pad_multiple=128"]))
    # 47 zero rows of the tied 768-wide table on top of the published 124,439,808.
    assert report["total"] == 124_439_808 + 47 * 768
    assert report["vocab_padding"] == {"vocab_size": 50257, "padded_vocab_size": 50304, "padded_params": 47 * 768,
                                       "total_without_padding": 124_439_808}
    head = {c["name"]: c for c in report["components"]}["lm_head"]
    assert (head["forward_flops_executed"], head["forward_flops_ideal"]) == (2 * 768 * 50304, 2 * 768 * 50257)
    # BERT-base: 70 zero rows of the table and of the MLM bias; the published BertModel count does not move.
    bert = count(config_lib.apply_overrides(config_lib.get_preset("bert-base"), ["model.vocab_pad_multiple=128"]))
    assert bert["vocab_padding"]["padded_params"] == 70 * (768 + 1)
    assert bert["vocab_padding"]["total_without_padding"] == 110_106_428
    assert bert["bertmodel_convention"]["params"] == 109_482_240
    with pytest.raises(UserError, match="model.vocab_pad_multiple"):
        cfg_for("clm", -2)  # -1 is auto


# ---------------------------------------------------------------------------------------------- the same numbers

@pytest.mark.parametrize("kind,extra", [("clm", ("model.tie_embeddings=false",)), ("mlm", ())])
@pytest.mark.parametrize("chunk", [0, 5])
def test_loss_accuracy_and_gradients_equal_the_unpadded_model(kind, extra, chunk):
    """The padded rows hold large values on purpose: were they read anywhere, the loss would differ."""
    extra = (*extra, f"model.xent_chunk={chunk}")
    cfg = cfg_for(kind, MULTIPLE, *extra)
    padded, plain = pair_of_models(kind, *extra, padding_value=50.0)
    ex = objectives.for_config(cfg).prepare(batch(cfg), jax.random.key(3))
    xent_p, correct_p, grads_p = loss_and_grads(padded, cfg, ex)
    xent, correct, grads = loss_and_grads(plain, cfg_for(kind, 0, *extra), ex)
    assert xent_p == pytest.approx(xent, rel=1e-5) and correct_p == correct
    assert xent > 0 and correct < float(ex["weights"].sum())  # an untrained model: a real loss, not all correct
    for g_padded, g in zip(grads_p, grads, strict=True):
        real, pad = real_part(np.asarray(g_padded), vocab_axis(g_padded, g))
        np.testing.assert_allclose(real, np.asarray(g), rtol=1e-4, atol=1e-6)
        assert not pad.any()  # the padded rows never learn


def test_distillation_compares_teacher_and_student_over_the_true_vocabulary():
    """A student padded to 16 learns from a teacher padded to 128: the soft-target term is the one an unpadded
    teacher with the same real weights gives (its padded rows hold large values that would change it if read)."""
    from jaxformer.objectives.distill import DistilledCausalLM, Teacher

    cfg = cfg_for("clm")
    student = build_model(cfg, seed=2)
    objective = DistilledCausalLM(cfg.objective, V, objectives.for_config(cfg).specials)
    ex = objective.prepare(batch(cfg), jax.random.key(0))
    teacher_padded, teacher_plain = pair_of_models("clm", multiple=128, padding_value=50.0)
    graphdef, params = nnx.split(student)

    @jax.jit
    def soft_term(params, teacher):
        _, stats = objective.loss_sums(nnx.merge(graphdef, params), ex, rng=None, teacher=teacher)
        return stats["terms"]["distill_loss"]

    soft = [float(soft_term(params, Teacher(*reversed(nnx.split(model)), cfg=cfg_for("clm", multiple))))
            for model, multiple in ((teacher_padded, 128), (teacher_plain, 0))]
    assert soft[0] == pytest.approx(soft[1], rel=1e-5) and soft[1] > 0


# ---------------------------------------------------------------------------------------------- decoding

def test_sampling_and_fill_mask_never_pick_a_padded_id():
    """Padded rows are set so that, were the logits not cut back to the vocabulary, a padded id would win."""
    cfg = cfg_for("clm", 128, "model.tie_embeddings=false")
    model, _ = pair_of_models("clm", "model.tie_embeddings=false", multiple=128)
    kernel = np.array(model.lm_head.kernel[...])
    kernel[:, V:] = 1e3 * np.random.default_rng(0).standard_normal((kernel.shape[0], kernel.shape[1] - V))
    model.lm_head.kernel.set_value(jnp.asarray(kernel))
    prompts = [np.arange(8, 8 + n) % V for n in (3, 5)]
    h, _, _ = model(jnp.asarray([prompts[1]]), causal=True)
    assert (np.asarray(h @ kernel).argmax(-1) >= V).all()  # the uncut projection would pick padding
    assert model.logits(h).shape[-1] == V
    graphdef, params = nnx.split(model)
    for knobs in (dict(temperature=0.0), dict(temperature=2.0, top_k=100, top_p=0.99)):
        out = generate.generate(graphdef, params, prompts, max_new_tokens=6, seed=1, **knobs)
        assert all(0 <= t < V for row in out for t in row) and sum(map(len, out)) == 12, out
    assert cfg.model.padded_vocab_size == 128

    encoder, _ = pair_of_models("mlm", multiple=128)
    encoder.mlm_bias.set_value(encoder.mlm_bias[...].at[V:].set(1e6))
    ids = np.arange(8, 20) % V
    ids[3] = objectives.for_config(cfg_for("mlm")).specials.mask
    top = generate.fill_mask(*nnx.split(encoder), ids, top_k=200)
    assert len(top[0]) == V and all(t < V for t, _ in top[0])


# ---------------------------------------------------------------------------------------------- runs

def test_hf_import_pads_with_zeros_and_export_strips(tmp_path):
    torch = pytest.importorskip("torch", reason="HF parity needs torch (the hf extra)")
    transformers = pytest.importorskip("transformers", reason="HF parity needs transformers (the hf extra)")
    from hf_fixtures import SENTENCES, gpt2_folder

    from jaxformer import cli
    from jaxformer.run import open_run

    torch.set_num_threads(1)
    folder, hf, tokenizer = gpt2_folder(tmp_path / "gpt2")
    vocab = hf.config.vocab_size
    work = tmp_path / "run"
    assert cli.main(["import-hf", str(folder), "--workdir", str(work), "--set", "model.vocab_pad_multiple=128",
                     "train.seq_len=32"]) == 0
    run = open_run(work)
    assert run.cfg.model.vocab_pad_multiple == 128 and run.cfg.model.vocab_size == vocab
    table = np.asarray(jax.device_get(run.state.params["embed"][...]))
    assert vocab % 128 and table.shape[0] == -(-vocab // 128) * 128  # padded ...
    np.testing.assert_allclose(table[:vocab], hf.transformer.wte.weight.detach().numpy(), atol=1e-6)
    assert not table[vocab:].any()  # ... with zeros
    assert cli.main(["export-hf", "--workdir", str(work), "--out", str(tmp_path / "out")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert tuple(back.transformer.wte.weight.shape) == (vocab, 32) and back.config.vocab_size == vocab
    ids = torch.tensor([tokenizer(SENTENCES[3])["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).logits.numpy(), hf(ids).logits.numpy(), atol=1e-4, rtol=0)


def test_resume_with_another_multiple_is_refused(tmp_path):
    cfg = cfg_for("clm")
    rundir.save_config(tmp_path, cfg)
    rundir.check_resume(tmp_path, cfg)
    with pytest.raises(UserError, match=r"model.vocab_pad_multiple 16 -> 128") as err:
        rundir.check_resume(tmp_path, config_lib.apply_overrides(cfg, ["model.vocab_pad_multiple=128"]))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("chunk", [0, 5])
def test_tensor_parallel_step_on_an_odd_vocabulary(chunk):
    """61 rows do not split over tensor=2 (replicated); 64 do: the padded run shards the vocabulary and takes the
    same step as one device without padding (with the fused head too: chunks of rows sharded over data)."""
    mesh_cfg = {"data": 2, "fsdp": 2, "tensor": 2}
    cfg = cfg_for("clm", MULTIPLE, f"model.xent_chunk={chunk}", mesh=mesh_cfg)
    mesh = parallel.make_mesh(cfg.mesh)
    assert parallel.logical_to_spec(("vocab", "embed"), (V, 32), mesh)[0] is None
    state, shardings = train.init_train_state(cfg, mesh)
    assert shardings.params["embed"].spec[0] == "tensor"
    step = train.compile_train_step(shardings, mesh)
    tokens = batch(cfg)
    state, metrics = step(state, jax.device_put(tokens, parallel.batch_sharding(mesh)), jax.random.key(0))

    one = cfg_for("clm", 0)
    mesh1 = parallel.make_mesh(one.mesh, jax.devices()[:1])
    state1, shardings1 = train.init_train_state(one, mesh1)
    state1, metrics1 = train.compile_train_step(shardings1, mesh1)(
        state1, jax.device_put(tokens, parallel.batch_sharding(mesh1)), jax.random.key(0))
    assert float(metrics["loss"]) == pytest.approx(float(metrics1["loss"]), rel=1e-5)
    table, table1 = (np.asarray(jax.device_get(s.params["embed"][...])) for s in (state, state1))
    np.testing.assert_allclose(table[:V], table1, rtol=1e-4, atol=1e-6)
    assert not table[V:].any()
