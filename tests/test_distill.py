"""Knowledge distillation (`jaxformer distill`): the loss terms against numpy, the frozen sharded teacher inside
the one train step, resume pinned to the teacher's checkpoint, the refusals, a distilled student beating the same
student trained alone, and the `distilbert` preset's parameter count."""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import VOCAB, tiny_config

from jaxformer import config as config_lib
from jaxformer import distill, objectives, parallel, train, trainer
from jaxformer import params as params_lib
from jaxformer.checkpoint import Checkpointer
from jaxformer.cli import main
from jaxformer.data.tokenizers import load_tokenizer
from jaxformer.errors import UserError
from jaxformer.metrics import read_metrics
from jaxformer.model import build_model
from jaxformer.objectives import Teacher
from jaxformer.run import open_run

# A small decoder teacher and a smaller student, both on the builtin corpus with the char tokenizer.
SHAPE = ["train.seq_len=32", "train.batch_size=16", "train.eval_every=0", "train.log_every=25"]
TEACHER = ["model.n_layer=2", "model.d_model=64", "train.steps=200", *SHAPE]
STUDENT = ["model.n_layer=1", "model.d_model=32", *SHAPE]
# Temperature 1 and mostly soft targets: what helps a one-layer character model most in 100 steps (README).
WEIGHTS = ["objective.temperature=1", "objective.distill_alpha=0.9"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher")
    trainer.train_loop(config_lib.load_config("decoder-tiny", TEACHER), workdir, show_progress=False)
    return workdir


# ---------------------------------------------------------------------------------------------- the loss terms

def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("kind", ["clm", "mlm"])
def test_loss_terms_match_numpy(kind):
    """Hard cross-entropy, T^2 KL(teacher_T || student_T) at the prediction slots and the mean hidden-state cosine
    distance, recomputed in numpy from each model's own logits on the SAME prepared inputs (for MLM: the masked
    tokens), weighted as configured."""
    alpha, temperature, beta = 0.7, 2.5, 0.3
    distilled = ["objective.teacher=/t", f"objective.distill_alpha={alpha}", f"objective.temperature={temperature}",
                 f"objective.distill_hidden={beta}"]
    student_cfg = tiny_config(kind, *distilled, model=dict(n_layer=1))
    teacher_cfg = tiny_config(kind, model=dict(n_layer=2))
    objective = objectives.for_config(student_cfg)
    assert isinstance(objective, objectives.Distillation) and objective.kind == kind
    s_graph, s_params = nnx.split(build_model(student_cfg, seed=0), nnx.Param)
    t_graph, t_params = nnx.split(build_model(teacher_cfg, seed=1), nnx.Param)
    plain = objectives.OBJECTIVES[kind](teacher_cfg.objective, VOCAB)  # the undistilled objective's forward pass
    rng = np.random.default_rng(0)
    tokens = rng.integers(8, VOCAB, (8, 17))
    tokens[0, 10:] = 0  # padding: no loss, no cosine term

    @jax.jit  # one compilation instead of one per eager operation
    def run(s_params, t_params, tokens):
        student, teacher_model = nnx.merge(s_graph, s_params), nnx.merge(t_graph, t_params)
        ex = objective.prepare({"tokens": tokens}, jax.random.key(3))
        with_teacher = objective.loss_sums(student, ex, rng=None, teacher=Teacher(t_params, t_graph, teacher_cfg))
        reference = {"student": plain.logits(student, ex)[0], "teacher": plain.logits(teacher_model, ex)[0],
                     "h_student": student(ex["inputs"], causal=plain.causal)[0],
                     "h_teacher": teacher_model(ex["inputs"], causal=plain.causal)[0]}
        return ex, with_teacher, objective.loss_sums(student, ex, rng=None), reference

    ex, (total, stats), (hard_only, eval_stats), ref = run(s_params, t_params, jnp.asarray(tokens, jnp.int32))
    terms = {k: float(v) for k, v in stats["terms"].items()}
    s_logits, t_logits = np.asarray(ref["student"], np.float64), np.asarray(ref["teacher"], np.float64)
    w, targets = np.asarray(ex["weights"]), np.asarray(ex["targets"])
    log_q1 = np.log(_softmax(s_logits))
    hard = -np.sum(np.take_along_axis(log_q1, targets[..., None], -1)[..., 0] * w)
    p, log_q = _softmax(t_logits / temperature), np.log(_softmax(s_logits / temperature))
    soft = temperature ** 2 * np.sum(np.sum(p * (np.log(p) - log_q), -1) * w)
    h_s, h_t = np.asarray(ref["h_student"], np.float64), np.asarray(ref["h_teacher"], np.float64)
    cos = np.sum(h_s * h_t, -1) / (np.linalg.norm(h_s, axis=-1) * np.linalg.norm(h_t, axis=-1))
    real = np.asarray(ex["inputs"]) != 0
    hidden = np.mean((1 - cos)[real]) * w.sum()  # a mean over real positions, in the per-prediction sum's units

    assert terms["loss"] == pytest.approx(hard, rel=1e-5)
    assert terms["distill_loss"] == pytest.approx(soft, rel=1e-4)
    assert terms["hidden_loss"] == pytest.approx(hidden, rel=1e-4)
    want = (1 - alpha) * hard + alpha * soft + beta * hidden
    assert float(total) == terms["total_loss"] == pytest.approx(want, rel=1e-4)
    # Without a teacher (evaluation) the objective is the hard loss alone.
    assert float(hard_only) == pytest.approx(hard, rel=1e-5) and "terms" not in eval_stats


# ---------------------------------------------------------------------------------------------- the sharded step

def _distill_state(student_cfg, teacher_cfg, mesh):
    state, shardings = train.init_train_state(student_cfg, mesh)
    graphdef, params = nnx.split(build_model(teacher_cfg, seed=1), nnx.Param)
    teacher_sh = Teacher(params=parallel.tree_shardings(params, mesh), graphdef=graphdef, cfg=teacher_cfg)
    teacher = jax.device_put(Teacher(params=params, graphdef=graphdef, cfg=teacher_cfg), teacher_sh)
    return state.replace(teacher=teacher), shardings.replace(teacher=teacher_sh)


def _two_steps(mesh_sizes, devices, grad_accum=1):
    extra = ["objective.teacher=/t", "objective.distill_hidden=0.5", "optimizer.warmup_steps=0",
             f"train.grad_accum={grad_accum}"]
    student_cfg = tiny_config("mlm", *extra, model=dict(n_layer=1), mesh=mesh_sizes)
    teacher_cfg = tiny_config("mlm", model=dict(n_layer=2), mesh=mesh_sizes)
    mesh = parallel.make_mesh(student_cfg.mesh, devices)
    state, shardings = _distill_state(student_cfg, teacher_cfg, mesh)
    before = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.teacher.params))]
    step = train.compile_train_step(shardings, mesh)
    tokens = np.random.default_rng(0).integers(8, VOCAB, (student_cfg.train.batch_size, 17))
    batch = jax.device_put({"tokens": jnp.asarray(tokens, jnp.int32)}, parallel.batch_sharding(mesh))
    metrics = []
    for _ in range(2):
        state, m = step(state, batch, jax.random.key(0))
        metrics.append({k: float(v) for k, v in m.items()})
    return state, metrics, before


def test_sharded_distill_step_matches_one_device_and_leaves_the_teacher_untouched():
    """An MLM student with a 2-layer teacher on a 2x2x2 mesh (and 2 accumulated micro-batches) against one
    device: the same hard / soft / cosine terms; the teacher's parameters are sharded by the same rules as the
    student's and come out of the donated step bit-identical."""
    if len(jax.devices()) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by tests/conftest.py)")
    _, one, _ = _two_steps(dict(data=1), jax.devices()[:1])
    state, many, before = _two_steps(dict(data=2, fsdp=2, tensor=2), None, grad_accum=2)
    for name in ("loss", "distill_loss", "hidden_loss", "total_loss"):
        np.testing.assert_allclose([m[name] for m in many], [m[name] for m in one], rtol=2e-5, err_msg=name)
    assert many[1]["loss"] != many[0]["loss"]  # the student did learn between the steps
    after = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.teacher.params))]
    assert all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    # The embedding [vocab, embed] as the rules place it: vocab over tensor, embed over fsdp.
    assert state.teacher.params["embed"][...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


# ---------------------------------------------------------------------------------------------- the command

def test_distilled_student_beats_the_student_alone(teacher_run, tmp_path):
    """Same student, seed, data and 150 steps: `jaxformer distill` from the 200-step teacher ends with a lower
    validation loss on the hard (next-token) objective than `jaxformer train` alone. On the way: the distillation
    is preempted at step 75 with the teacher's parameters bit-identical to its checkpoint, and resumed by the
    command with that same teacher checkpoint; the metrics log the hard, soft and total losses separately; the
    student's checkpoints hold the student only. Then the teacher changes under the student, and a resume is
    refused: other parameters at the recorded step, or that step gone."""
    teacher_dir, alone, student = tmp_path / "teacher", tmp_path / "alone", tmp_path / "student"
    shutil.copytree(teacher_run, teacher_dir, ignore=shutil.ignore_patterns(".lock"))  # changed at the end
    settings = [*STUDENT, "train.steps=150"]
    assert main(["train", "--preset", "decoder-tiny", "--set", *settings, "--workdir", str(alone), "--no-progress",
                 "--sample-tokens", "0"]) == 0

    base = config_lib.get_preset("decoder-tiny")
    first = distill.distill(teacher_dir, base, [*settings, *WEIGHTS], student, show_progress=False, stop_after=75)
    assert first["preempted"] and first["step"] == 75
    teacher_cfg = config_lib.from_dict(json.loads((teacher_dir / "config.json").read_text()))
    tokenizer = load_tokenizer(teacher_dir)
    saved, _ = distill.load_teacher(teacher_dir, teacher_cfg, tokenizer, first["run"].mesh)
    for a, b in zip(jax.tree.leaves(first["run"].state.teacher.params), jax.tree.leaves(saved.params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert main(["distill", "--teacher", str(teacher_dir), "--preset", "decoder-tiny", "--set", *settings, *WEIGHTS,
                 "--workdir", str(student), "--no-progress", "--sample-tokens", "0"]) == 0

    rows = read_metrics(student)
    assert [r["step"] for r in rows] == [25, 50, 75, 100, 125, 150]
    for r in rows:  # the logged total is the weighted sum of the logged terms
        assert r["total_loss"] == pytest.approx(0.1 * r["loss"] + 0.9 * r["distill_loss"], rel=1e-4)
    assert rows[-1]["distill_loss"] < rows[0]["distill_loss"]
    distilled, plain = rows[-1]["valid_loss"], read_metrics(alone)[-1]["valid_loss"]
    print(f"valid loss after 150 steps: distilled {distilled:.4f}, alone {plain:.4f}")
    assert distilled < plain - 0.02, (distilled, plain)
    recorded = json.loads((student / "config.json").read_text())["objective"]
    assert recorded["teacher"] == str(teacher_dir.absolute()) and recorded["teacher_step"] == 200
    assert recorded["teacher_fingerprint"] == distill.params_fingerprint(saved.params)
    assert open_run(student).step == 150  # an ordinary run: the checkpoint restores into the student's own state

    # The teacher is "retrained" into its directory: the same step, other parameters.
    old = open_run(teacher_dir).state
    shutil.rmtree(teacher_dir / "checkpoints" / "200")
    ckpt = Checkpointer(teacher_dir, tokenizer_fingerprint=tokenizer.fingerprint)
    ckpt.save(old.replace(params=jax.tree.map(lambda x: x + 1e-3, old.params)))
    ckpt.close()
    with pytest.raises(UserError, match="the teacher changed"):
        distill.distill(teacher_dir, base, [*settings, *WEIGHTS], student, show_progress=False)
    shutil.rmtree(teacher_dir / "checkpoints" / "200")
    with pytest.raises(UserError, match="no longer in"):
        distill.distill(teacher_dir, base, [*settings, *WEIGHTS], student, show_progress=False)


@pytest.mark.parametrize("extra,message", [
    (["data.tokenizer=byte"], "comes from the teacher"),
    (["model.vocab_size=300"], "comes from the teacher"),
    (["objective.teacher_fingerprint=abc"], "recorded by distill"),
    (["objective.kind=mlm"], "pick a preset of the teacher's kind"),
    (["objective.distill_hidden=1"], "needs the student's model.d_model \\(32\\) to equal the teacher's \\(64\\)"),
    (["train.seq_len=64"], "longer than the teacher's 32 learned positions"),
    (["objective.distill_alpha=1.5"], "objective.distill_alpha"),
])
def test_refusals_are_one_sentence(teacher_run, tmp_path, capsys, extra, message):
    workdir = tmp_path / "student"
    code = main(["distill", "--teacher", str(teacher_run), "--set", *STUDENT, *extra, "--workdir", str(workdir),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not workdir.exists()  # nothing written


def test_train_refuses_a_teacher(tmp_path, capsys):
    assert main(["train", "--set", "objective.teacher=/somewhere", "--workdir", str(tmp_path / "w")]) == 2
    assert "jaxformer distill" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- distilbert

def test_distilbert_preset_is_66m_like_hf_distilbertmodel(capsys):
    """HF DistilBertModel (the published 66,362,880: embeddings with their LayerNorm, 6 blocks, no token types, no
    pooler) is jaxformer's encoder body; the MLM head on top (transform, its norm, the vocabulary bias; the
    projection is tied to the embedding) makes DistilBertForMaskedLM's count. Both are built here from
    DistilBertConfig() locally (on the meta device), no download."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    assert main(["params", "--preset", "distilbert", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    config = transformers.DistilBertConfig()
    with torch.device("meta"):  # shapes only: nothing allocated or initialised
        body = sum(p.numel() for p in transformers.DistilBertModel(config).parameters())
        with_head = transformers.DistilBertForMaskedLM(config).num_parameters()  # counts the tied matrix once
    assert counts["backbone"] == body == 66_362_880
    assert counts["total"] == with_head == body + 768 * 768 + 768 + 2 * 768 + 30522
    assert counts["by_component"]["positions"] == 512 * 768
    cfg = config_lib.get_preset("distilbert")
    assert objectives.for_config(cfg).head == "mlm" and cfg.objective.temperature == 2.0
    assert params_lib.count(cfg)["total"] == counts["total"]
