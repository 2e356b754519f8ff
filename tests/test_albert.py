"""ALBERT: factorised embeddings and cross-layer sharing (model.embed_dim, model.share_layers), checked against
Hugging Face ALBERT built locally from configs (no download), the published albert-base count, and plain
re-derivations of what sharing must mean (one stored copy, gradients summed over the layers that use it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import randomize
from test_train import flat_params
from tiny import tiny_config

from jaxformer import config as config_lib
from jaxformer import parallel, train
from jaxformer import params as params_lib
from jaxformer.checkpoint import Checkpointer
from jaxformer.model import build_model

ALBERT = ("model.embed_dim=16", "model.share_layers=all", "model.type_vocab_size=2", "objective.pair_task=sop",
          "optimizer.warmup_steps=0")


def pair_batch(cfg, seed=0):
    """A fixed `[CLS] A [SEP] B [SEP]`-shaped batch: random ordinary ids, two segment types, random labels."""
    rng = np.random.default_rng(seed)
    b, t = cfg.train.batch_size, cfg.train.seq_len + 1
    tokens = rng.integers(8, cfg.model.vocab_size, (b, t))
    tokens[:, 0], tokens[:, t // 2], tokens[:, -2], tokens[:, -1] = 5, 6, 6, 0
    types = (np.arange(t)[None, :] > t // 2).repeat(b, 0)
    segment = np.ones((b, t), np.int32)
    segment[:, -1] = 0
    return {"tokens": jnp.asarray(tokens, jnp.int32), "token_types": jnp.asarray(types, jnp.int32),
            "segment_ids": jnp.asarray(segment), "pair_labels": jnp.asarray(rng.integers(0, 2, b), jnp.int32)}


def run_pair_steps(cfg, n, devices=None):
    mesh = parallel.make_mesh(cfg.mesh, devices)
    state, shardings = train.init_train_state(cfg, mesh)
    step = train.compile_train_step(shardings, mesh)
    batch = jax.device_put(pair_batch(cfg), parallel.batch_sharding(mesh, ndim=1))
    metrics = []
    for _ in range(n):
        state, m = step(state, batch, jax.random.key(0))
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics


# ---------------------------------------------------------------------------------------------- counts


def test_albert_base_count_matches_published_and_hf():
    """HF AlbertModel (embeddings, E->D projection, one shared layer, pooler) = 11,683,584 for albert-base."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    counts = params_lib.count(config_lib.get_preset("albert-base"))
    assert counts["backbone"] == 11_683_584  # the published count
    hf_config = transformers.AlbertConfig(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                                          num_attention_heads=12, intermediate_size=3072)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        hf_model = transformers.AlbertModel(hf_config)
        hf_pretraining = transformers.AlbertForPreTraining(hf_config)
    assert counts["backbone"] == sum(p.numel() for p in hf_model.parameters())
    # with the MLM head (dense to E, norm, output bias) and the SOP classifier: AlbertForPreTraining, whose tied
    # decoder weight PyTorch counts once and whose decoder bias is the same tensor as the head's bias
    assert counts["total"] == sum(p.numel() for p in hf_pretraining.parameters())
    # the shared layer is stored once but runs 12 times: FLOPs count every layer
    unshared = params_lib.count(config_lib.apply_overrides(config_lib.get_preset("albert-base"),
                                                           ["model.share_layers=none"]))
    assert unshared["total"] - counts["total"] == 11 * 7_087_872  # 11 more copies of one 768/3072 layer
    assert unshared["forward_flops_per_token"] == counts["forward_flops_per_token"]


# ---------------------------------------------------------------------------------------------- sharing


@pytest.mark.parametrize("share,shared_parts", [("all", ("attn", "attn_norm", "mlp", "mlp_norm")),
                                                ("attention", ("attn", "attn_norm")), ("mlp", ("mlp", "mlp_norm"))])
def test_shared_parts_are_stored_once(share, shared_parts):
    cfg = tiny_config("mlm", f"model.share_layers={share}", "model.n_layer=3")
    state = nnx.state(build_model(cfg), nnx.Param)
    paths = {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
             for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    for layer in range(3):
        for part in ("attn", "attn_norm", "mlp", "mlp_norm"):
            stored = any(p[:3] == ("blocks", str(layer), part) for p in paths)
            assert stored == (layer == 0 or part not in shared_parts), (layer, part)
    base = build_model(tiny_config("mlm", "model.n_layer=3"))

    def size(tree) -> int:
        return sum(x.size for x in jax.tree.leaves(tree))

    part = sum(size(nnx.state(getattr(base.blocks[0], name), nnx.Param)) for name in shared_parts)
    assert size(state) == size(nnx.state(base, nnx.Param)) - 2 * part  # two of the three copies are gone


def test_shared_gradient_is_the_sum_over_layers():
    """The gradient of a shared weight = the sum of the per-layer gradients of an unshared model whose layers all
    hold that same weight (what sharing means), for the loss of the train step."""
    shared_cfg = tiny_config("mlm", *ALBERT, "model.n_layer=3")
    free_cfg = tiny_config("mlm", *ALBERT, "model.n_layer=3", "model.share_layers=none")
    shared = build_model(shared_cfg)
    free = build_model(free_cfg)
    def key(path) -> tuple:
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return ("blocks", "0", *keys[2:]) if keys[0] == "blocks" else keys  # every layer reads the shared block

    values = {key(p): v for p, v in jax.tree_util.tree_flatten_with_path(nnx.state(shared, nnx.Param))[0]}
    nnx.update(free, jax.tree_util.tree_map_with_path(lambda p, _: values[key(p)], nnx.state(free, nnx.Param)))

    def loss(model, cfg):
        from jaxformer import objectives

        objective = objectives.for_config(cfg)
        ex = objective.prepare(pair_batch(cfg), jax.random.key(1))
        loss_sum, stats = objective.loss_sums(model, ex, rng=None)
        return objective.total_loss(loss_sum, stats, objective.counts(ex))

    # one compiled program per model: run eagerly, every small op of the forward and backward pass is compiled
    # (and written to the test session's compilation cache) on its own, which took most of this test's time
    loss_shared, g_shared = nnx.jit(nnx.value_and_grad(lambda m: loss(m, shared_cfg)))(shared)
    loss_free, g_free = nnx.jit(nnx.value_and_grad(lambda m: loss(m, free_cfg)))(free)
    assert float(loss_shared) == pytest.approx(float(loss_free), rel=1e-6)
    summed = jax.tree.map(lambda *xs: sum(xs), *[nnx.state(g_free.blocks[i]) for i in range(3)])
    for a, b in zip(jax.tree.leaves(nnx.state(g_shared.blocks[0])), jax.tree.leaves(summed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # and it is not just one layer's gradient
    first = jax.tree.leaves(nnx.state(g_free.blocks[0]))
    assert any(not np.allclose(a, b, rtol=1e-3) for a, b in zip(first, jax.tree.leaves(summed), strict=True))


def test_remat_gives_the_same_step_with_shared_layers():
    _, plain = run_pair_steps(tiny_config("mlm", *ALBERT), 2, jax.devices()[:1])
    state_remat, remat = run_pair_steps(tiny_config("mlm", *ALBERT, "model.remat=true"), 2, jax.devices()[:1])
    for key in ("loss", "mlm_loss", "pair_loss", "grad_norm"):
        assert [m[key] for m in remat] == pytest.approx([m[key] for m in plain], rel=1e-5), key


def test_sharded_step_and_checkpoint_with_shared_layers(tmp_path):
    """8 devices (data x fsdp x tensor = 2x2x2) give the 1-device step; the sharded state checkpoints and
    restores bit-exactly onto one device."""
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by tests/conftest.py)")
    one, m_one = run_pair_steps(tiny_config("mlm", *ALBERT), 2, jax.devices()[:1])
    many, m_many = run_pair_steps(tiny_config("mlm", *ALBERT, mesh=dict(data=2, fsdp=2, tensor=2)), 2)
    assert [m["loss"] for m in m_many] == pytest.approx([m["loss"] for m in m_one], rel=2e-5)
    for a, b in zip(flat_params(many), flat_params(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=4e-5)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(many.params)}
    assert any(s != "PartitionSpec()" for s in specs), specs

    ckpt = Checkpointer(tmp_path)
    ckpt.save(many)
    ckpt.wait()
    cfg1 = tiny_config("mlm", *ALBERT)
    mesh1 = parallel.make_mesh(cfg1.mesh, jax.devices()[:1])
    fresh, shardings1 = train.init_train_state(cfg1, mesh1)
    restored = Checkpointer(tmp_path).restore_latest(fresh, shardings1)
    assert int(restored.step) == 2
    for a, b in zip(flat_params(restored), flat_params(many), strict=True):
        np.testing.assert_array_equal(a, b)


def test_factorised_decoder_ties_back_through_the_projection():
    """CLM logits of a factorised model = h P^T E^T (numpy), P the E->D projection, E the embedding table."""
    cfg = tiny_config("clm", "model.embed_dim=8")
    model = build_model(cfg)
    h = np.random.default_rng(0).standard_normal((3, cfg.model.d_model)).astype(np.float32)
    want = h @ np.asarray(model.embed_proj.kernel[...]).T @ np.asarray(model.embed[...]).T
    np.testing.assert_allclose(np.asarray(model.logits(jnp.asarray(h))), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- HF parity


def albert_values(t: dict) -> dict:
    """jaxformer parameter path -> value from AlbertForPreTraining tensors (one layer group, one layer)."""
    n = lambda x: np.asarray(x.detach().numpy(), np.float32)  # noqa: E731
    e, layer = "albert.embeddings.", "albert.encoder.albert_layer_groups.0.albert_layers.0."
    d = t["albert.pooler.weight"].shape[0]
    heads = 4
    out = {"embed": n(t[e + "word_embeddings.weight"]), "pos_embed": n(t[e + "position_embeddings.weight"]),
           "type_embed": n(t[e + "token_type_embeddings.weight"]),
           "embed_norm.scale": n(t[e + "LayerNorm.weight"]), "embed_norm.bias": n(t[e + "LayerNorm.bias"]),
           "embed_proj.kernel": n(t["albert.encoder.embedding_hidden_mapping_in.weight"]).T,
           "embed_proj.bias": n(t["albert.encoder.embedding_hidden_mapping_in.bias"]),
           "pooler.kernel": n(t["albert.pooler.weight"]).T, "pooler.bias": n(t["albert.pooler.bias"]),
           "pair_head.kernel": n(t["sop_classifier.classifier.weight"]).T,
           "pair_head.bias": n(t["sop_classifier.classifier.bias"]),
           "mlm_transform.kernel": n(t["predictions.dense.weight"]).T, "mlm_transform.bias": n(t["predictions.dense.bias"]),
           "mlm_norm.scale": n(t["predictions.LayerNorm.weight"]), "mlm_norm.bias": n(t["predictions.LayerNorm.bias"]),
           "mlm_bias": n(t["predictions.bias"])}
    b = "blocks.0."
    for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
        out[b + f"attn.{ours}.kernel"] = n(t[layer + f"attention.{theirs}.weight"]).T.reshape(d, heads, d // heads)
        out[b + f"attn.{ours}.bias"] = n(t[layer + f"attention.{theirs}.bias"]).reshape(heads, d // heads)
    out.update({b + "attn.o.kernel": n(t[layer + "attention.dense.weight"]).T.reshape(heads, d // heads, d),
                b + "attn.o.bias": n(t[layer + "attention.dense.bias"]),
                b + "attn_norm.scale": n(t[layer + "attention.LayerNorm.weight"]),
                b + "attn_norm.bias": n(t[layer + "attention.LayerNorm.bias"]),
                b + "mlp.up.kernel": n(t[layer + "ffn.weight"]).T, b + "mlp.up.bias": n(t[layer + "ffn.bias"]),
                b + "mlp.down.kernel": n(t[layer + "ffn_output.weight"]).T,
                b + "mlp.down.bias": n(t[layer + "ffn_output.bias"]),
                b + "mlp_norm.scale": n(t[layer + "full_layer_layer_norm.weight"]),
                b + "mlp_norm.bias": n(t[layer + "full_layer_layer_norm.bias"])})
    return out


def test_forward_parity_with_hf_albert():
    """Random AlbertForPreTraining (3 layers sharing one, E=16 < D=32): the MLM logits at every real position and
    the SOP logits equal jaxformer's with model.embed_dim / share_layers=all / type_vocab_size / pair_task=sop."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxformer.hf.convert import _fill

    torch.set_num_threads(1)
    vocab, positions = 100, 24
    hf_cfg = transformers.AlbertConfig(vocab_size=vocab, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                       num_attention_heads=4, intermediate_size=64, max_position_embeddings=positions)
    hf = randomize(transformers.AlbertForPreTraining(hf_cfg), seed=2)
    cfg = config_lib.resolve(config_lib.load_config("albert-base", [
        f"model.vocab_size={vocab}", "model.n_layer=3", "model.d_model=32", "model.n_heads=4", "model.mlp_ratio=2",
        "model.embed_dim=16", f"model.max_seq_len={positions}", f"train.seq_len={positions}", "model.dropout=0"]),
        n_devices=1)
    graphdef, params = _fill(cfg, albert_values(dict(hf.state_dict())), "HF ALBERT")
    model = nnx.merge(graphdef, params)

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (2, 19))
    types = np.zeros_like(tokens)
    types[:, 9:] = 1
    mask = np.ones_like(tokens)
    mask[1, 15:] = 0  # the second row is padded
    with torch.no_grad():
        out = hf(torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask), token_type_ids=torch.as_tensor(types))
    @nnx.jit  # one compilation instead of one per eager operation
    def logits(model, tokens, mask, types):
        hidden, _, _ = model(tokens, causal=False, segment_ids_BxT=mask, token_types_BxT=types)
        return model.mlm_logits(hidden), model.pair_logits(hidden[:, 0])

    mlm, sop = (np.asarray(x) for x in logits(model, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(types)))
    real = mask.astype(bool)
    np.testing.assert_allclose(mlm[real], out.prediction_logits.numpy()[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(sop, out.sop_logits.numpy(), atol=1e-4, rtol=0)
