"""Sentence-pair pretraining (objective.pair_task = nsp | sop beside MLM): the pair batches, the loss against a
numpy re-computation, bert-base against the published BertForPreTraining count and HF, NSP logits parity with
HF BertForPreTraining, and the pair accuracy rising on real text."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FAST_COMPILE_FLAGS
from flax import nnx
from hf_fixtures import randomize
from tiny import tiny_config

from jaxformer import config as config_lib
from jaxformer import objectives
from jaxformer import params as params_lib
from jaxformer.data import pairs
from jaxformer.data.tokenizer_base import DEFAULT_SPECIALS as SP
from jaxformer.data.tokenizers import train_tokenizer
from jaxformer.errors import UserError
from jaxformer.model import build_model

# ---------------------------------------------------------------------------------------------- batches


def numbered_stream(n_docs=12, length=40):
    """Documents whose token ids say where they come from: 1000 * (doc + 1) + position, EOS between them."""
    parts = []
    for d in range(n_docs):
        parts += [np.arange(length) + 1000 * (d + 1), [SP.eos]]
    return np.concatenate(parts[:-1]).astype(np.int64)


def segments(row_tokens, row_types):
    real = row_tokens[row_tokens != SP.pad]
    assert real[0] == SP.cls and real[-1] == SP.sep
    sep = int(np.flatnonzero(real == SP.sep)[0])
    a, b = real[1:sep], real[sep + 1:-1]
    n = len(real)
    assert (row_types[:sep + 1] == 0).all() and (row_types[sep + 1:n] == 1).all() and (row_types[n:] == 0).all()
    return a, b


@pytest.mark.parametrize("task", ["nsp", "sop"])
def test_pair_rows_follow_bert_and_albert(task):
    stream = numbered_stream()
    docs = pairs.documents(stream, SP)
    assert len(docs) == 12
    batch = pairs.pair_batch_at(stream, docs, task=task, batch_size=256, seq_len=24, seed=3, step=7, specials=SP)
    assert batch["tokens"].shape == (256, 25) and batch["pair_labels"].shape == (256,)
    assert 0.4 < batch["pair_labels"].mean() < 0.6  # half negatives
    for row in range(256):
        a, b = segments(batch["tokens"][row], batch["token_types"][row])
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= 21
        assert (batch["segment_ids"][row] == (batch["tokens"][row] != SP.pad)).all()
        assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # spans of consecutive tokens of one document
        same_doc = a[0] // 1000 == b[0] // 1000
        if batch["pair_labels"][row] == 0:  # the true order: B starts right after A
            assert same_doc and b[0] == a[-1] + 1
        elif task == "nsp":  # B from another document
            assert not same_doc
        else:  # sop: the same two segments, swapped
            assert same_doc and a[0] == b[-1] + 1
    # deterministic in (seed, step), and process slices tile the global batch
    again = pairs.pair_batch_at(stream, docs, task=task, batch_size=256, seq_len=24, seed=3, step=7, specials=SP)
    halves = [pairs.pair_batch_at(stream, docs, task=task, batch_size=256, seq_len=24, seed=3, step=7, specials=SP,
                                  process_index=p, process_count=2) for p in range(2)]
    for key in batch:
        np.testing.assert_array_equal(again[key], batch[key])
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), batch[key])
    other = pairs.pair_batch_at(stream, docs, task=task, batch_size=256, seq_len=24, seed=3, step=8, specials=SP)
    assert not np.array_equal(other["tokens"], batch["tokens"])


def test_paragraph_documents_split_at_blank_lines():
    text = "ROMEO:\nHark.\n\nJULIET:\nAy me.\nSweet.\n\n\nNURSE:\nAnon!"
    tok = train_tokenizer("char", text, 0)
    tokens = tok.encode(text)
    docs = pairs.documents(tokens, tok.special_ids, paragraphs=True, tokenizer=tok)
    assert [tok.decode(tokens[s:e]) for s, e in zip(docs.starts, docs.ends, strict=True)] == [
        "ROMEO:\nHark.", "JULIET:\nAy me.\nSweet.", "NURSE:\nAnon!"]
    whole = pairs.documents(tokens, tok.special_ids, paragraphs=False, tokenizer=tok)
    assert len(whole) == 1
    with pytest.raises(UserError, match="objective.pair_documents=paragraphs"):
        pairs.check_documents(whole, "nsp", "the train split")
    pairs.check_documents(whole, "sop", "the train split")  # SOP needs no second document


def test_pair_task_settings_are_checked():
    with pytest.raises(UserError, match="masked-LM pretraining only"):
        tiny_config("clm", "objective.pair_task=nsp")
    with pytest.raises(UserError, match="objective.pair_task"):
        tiny_config("mlm", "objective.pair_task=nextsentence")


# ---------------------------------------------------------------------------------------------- loss


def test_pair_loss_is_mlm_plus_numpy_cross_entropy_of_the_pooled_cls():
    cfg = tiny_config("mlm", "objective.pair_task=nsp", "model.type_vocab_size=2")
    model = build_model(cfg)
    objective = objectives.for_config(cfg)
    stream = numbered_stream(6, 30) % 50 + 8  # ordinary ids of the tiny vocabulary
    stream[np.arange(len(stream)) % 31 == 30] = SP.eos
    docs = pairs.documents(stream, SP)
    batch = {k: jnp.asarray(v) for k, v in pairs.pair_batch_at(stream, docs, task="nsp", batch_size=8, seq_len=16,
                                                                seed=0, step=0, specials=SP).items()}
    ex = objective.prepare(batch, jax.random.key(0))
    # Compiled: op by op, each forward pass is hundreds of tiny compiles.
    loss_sums = nnx.jit(lambda model, ex, objective: objective.loss_sums(model, ex, rng=None), static_argnums=2)
    hidden_of = nnx.jit(lambda model, ex, types: model(ex["inputs"], causal=False, segment_ids_BxT=ex["segment_ids"],
                                                       token_types_BxT=types)[0])
    loss_sum, stats = loss_sums(model, ex, objective)
    counts = objective.counts(ex)
    metrics = objective.step_metrics(loss_sum, stats, counts)

    hidden = hidden_of(model, ex, ex["token_types"])
    cls = np.asarray(hidden[:, 0], np.float64)
    pooled = np.tanh(cls @ np.asarray(model.pooler.kernel[...]) + np.asarray(model.pooler.bias[...]))
    logits = pooled @ np.asarray(model.pair_head.kernel[...]) + np.asarray(model.pair_head.bias[...])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    labels = np.asarray(batch["pair_labels"])
    pair_loss = -log_probs[np.arange(8), labels].mean()
    assert float(metrics["pair_loss"]) == pytest.approx(pair_loss, rel=1e-5)
    assert float(metrics["pair_accuracy"]) == pytest.approx((logits.argmax(-1) == labels).mean())
    plain = objectives.for_config(tiny_config("mlm"))  # the MLM term is what MLM alone computes
    mlm_sum, _ = loss_sums(model, ex, plain)
    assert float(metrics["mlm_loss"]) == pytest.approx(float(mlm_sum / ex["weights"].sum()), rel=1e-6)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["mlm_loss"]) + pair_loss, rel=1e-5)
    total = objective.total_loss(loss_sum, stats, counts)
    assert float(total) == pytest.approx(float(metrics["loss"]), rel=1e-6)
    # the segment embeddings are used: other token types give other states
    flipped = hidden_of(model, ex, 1 - ex["token_types"])
    assert not np.allclose(np.asarray(flipped), np.asarray(hidden))


def test_no_segment_embeddings_and_no_pair_head_by_default():
    """type_vocab_size=0 and no pair task: the parameter tree is the one of before (golden losses unchanged)."""
    state = nnx.state(build_model(tiny_config("mlm")), nnx.Param)
    names = {str(getattr(p[0], "key", p[0])) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]}
    assert not names & {"type_embed", "pooler", "pair_head", "embed_proj"}


# ---------------------------------------------------------------------------------------------- BERT


def test_bert_base_matches_published_and_hf_bert_for_pretraining():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    counts = params_lib.count(config_lib.get_preset("bert-base"))
    assert counts["total"] == 110_106_428  # BertForPreTraining, published
    assert counts["backbone"] == counts["bertmodel_convention"]["params"] == 109_482_240  # BertModel
    with torch.device("meta"):
        hf = transformers.BertForPreTraining(transformers.BertConfig())
    assert counts["total"] == sum(p.numel() for p in hf.parameters())
    assert counts["by_component"]["pair_head"] == 768 * 2 + 2 and counts["by_component"]["pooler"] == 768 * 768 + 768


def test_nsp_parity_with_hf_bert_for_pretraining():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxformer.hf import bert
    from jaxformer.hf.convert import _fill
    from jaxformer.hf.files import strip

    torch.set_num_threads(1)
    vocab, positions = 100, 32
    hf = randomize(transformers.BertForPreTraining(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=vocab,
        max_position_embeddings=positions)), seed=3)
    tensors = strip({k: v.detach().numpy() for k, v in hf.state_dict().items()}, bert.PREFIX)
    settings = bert.model_settings(hf.config.to_dict(), tied=True)
    cfg = config_lib.resolve(config_lib.apply_overrides(config_lib.Config(), {
        **{f"model.{k}": v for k, v in settings.items()}, "model.type_vocab_size": 2, "objective.kind": "mlm",
        "objective.pair_task": "nsp", "train.seq_len": positions}), n_devices=1)
    graphdef, params = _fill(cfg, bert.to_jaxformer(tensors, cfg.model, pair_head=True), "HF BERT")
    model = nnx.merge(graphdef, params)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, (2, 21))
    types = (np.arange(21) >= 11).astype(np.int64)[None].repeat(2, 0)
    with torch.no_grad():
        out = hf(torch.as_tensor(tokens), token_type_ids=torch.as_tensor(types))
    hidden, _, _ = model(jnp.asarray(tokens), causal=False, token_types_BxT=jnp.asarray(types))
    np.testing.assert_allclose(np.asarray(model.mlm_logits(hidden)), out.prediction_logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.pair_logits(hidden[:, 0])), out.seq_relationship_logits.numpy(),
                               atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------- real text

# One layer: half the cost of two, and the same result. Held-out pair accuracy at step 500 (measured): 1 layer
# 0.703 / 0.695 / 0.695 with train.seed 0 / 1 / 2, 2 layers 0.727 (seed 0); chance is 0.5. A shorter run is not
# safe: the accuracy sits at chance for 100-200 steps before it rises, and with 250 or 300 steps (cosine or
# constant rate) some seeds end at 0.47-0.62.
SOP_RUN = ["data.source=text:@data/tinyshakespeare/input.txt", "objective.pair_task=sop",
           "objective.pair_documents=paragraphs", "model.type_vocab_size=2", "model.n_layer=1", "model.d_model=64",
           "train.seq_len=128", "train.batch_size=32", "train.steps=500", "train.log_every=50",
           "train.eval_every=500", "train.eval_batches=8", "train.checkpoint_every=500", "optimizer.lr=3e-3",
           "optimizer.warmup_steps=20"]


@pytest.mark.slow
def test_sentence_order_is_learned_on_tiny_shakespeare(shared_data, tmp_path):
    """SOP on tiny shakespeare's speeches (blank-line paragraphs), char level, 1 layer x 64, 500 steps: the
    held-out pair accuracy (256 pairs) ends well above chance (0.5; measured 0.70), the MLM loss falls too.

    The one test here whose time is running steps, not compiling them: it trains through the command line in a
    process of its own with XLA's optimised settings (34 s; 70 s at the suite's fast-compiling ones)."""
    if not (shared_data / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("tinyshakespeare/input.txt is not under the data root")
    flags = [f for f in os.environ["XLA_FLAGS"].split() if f.split("=")[0] not in FAST_COMPILE_FLAGS]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "jaxformer.cli", "train", "--preset", "encoder-tiny", "--workdir",
                           str(run), "--no-progress", "--set", *SOP_RUN], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "mlm_loss", "pair_loss", "pair_accuracy"} <= set(rows[0])
    assert rows[-1]["step"] == 500 and rows[-1]["mlm_loss"] < rows[0]["mlm_loss"]
    assert rows[-1]["valid_pair_accuracy"] > 0.65, rows[-1]["valid_pair_accuracy"]
