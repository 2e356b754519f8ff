"""`jaxformer import-hf` / `export-hf` on small random GPT-2 and BERT folders built locally (tests/hf_fixtures.py),
each with its own tokenizer whose special tokens sit at other ids than jaxformer's table.

Checked against the Hugging Face reference: token ids of the model's own tokenizer; import -> sample gives HF
`generate`'s greedy tokens; import -> eval gives HF's loss on the same windows; fill-mask gives HF's argmax;
export -> HF loads the same logits; finetune runs on an imported encoder and decoder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hf_fixtures import SENTENCES, bert_folder, gpt2_folder

from jaxformer import cli
from jaxformer.config import load_config
from jaxformer.data.batching import eval_batches
from jaxformer.data.hf_tokenizer import HFTokenizer
from jaxformer.data.pipeline import load_corpus
from jaxformer.data.tokenizers import load_tokenizer
from jaxformer.objectives import for_config
from jaxformer.run import open_run

torch = pytest.importorskip("torch", reason="HF parity tests need torch (the hf extra)")
transformers = pytest.importorskip("transformers", reason="HF parity tests need transformers (the hf extra)")

RUN = ["train.seq_len=32", "train.batch_size=8", "train.eval_batches=2"]
TOL = 1e-4


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    return {"gpt2": gpt2_folder(root / "gpt2"), "bert": bert_folder(root / "bert")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A JSONL corpus of many short documents: the token stream holds many document separators (EOS)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    rng = np.random.default_rng(0)
    rows = [{"id": i, "text": " ".join(rng.choice(SENTENCES, 2))} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def imported(folders, tmp_path_factory, corpus):
    runs = {}
    for kind, (folder, _, _) in folders.items():
        workdir = tmp_path_factory.mktemp(f"run-{kind}") / "run"
        assert cli.main(["import-hf", str(folder), "--workdir", str(workdir), "--set", *RUN,
                         f"data.source=jsonl:{corpus}:text"]) == 0
        runs[kind] = workdir
    return runs


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_tokenizer_ids_match_the_reference(folders, kind):
    folder, _, reference = folders[kind]
    tok = HFTokenizer.from_folder(folder)
    texts = [*SENTENCES[:6], "Unseen wörds, émojis 😀 and [MASK] <|endoftext|> specials", "  spaces\tand\nlines  "]
    for text in texts:
        assert tok.encode(text).tolist() == reference(text, add_special_tokens=False)["input_ids"], text
    ids = tok.special_ids
    if kind == "bert":
        assert (ids.mask, ids.sep, ids.unk, ids.cls, ids.pad) == (0, 1, 2, 3, 4) == tuple(
            reference.convert_tokens_to_ids(t) for t in ("[MASK]", "[SEP]", "[UNK]", "[CLS]", "[PAD]"))
        assert ids.eos == ids.sep  # no EOS in a BERT vocabulary: [SEP] separates documents
    else:
        assert ids.eos == reference.eos_token_id == 0 and ids.pad is None and ids.mask is None


def test_imported_run_is_an_ordinary_run(imported, folders):
    for kind, workdir in imported.items():
        run = open_run(workdir)
        assert run.step == 0 and run.cfg.data.tokenizer == "hf"
        assert run.cfg.objective.kind == {"gpt2": "clm", "bert": "mlm"}[kind]
        assert run.cfg.data.special_ids == run.tokenizer.special_ids.spec() != ""
        assert for_config(run.cfg).specials == run.tokenizer.special_ids  # what the jitted step sees
        assert load_tokenizer(workdir).fingerprint == HFTokenizer.from_folder(folders[kind][0]).fingerprint


def test_sample_is_hf_greedy_generate(imported, folders, capsys):
    _, hf, reference = folders["gpt2"]
    prompt = "The quick brown"
    ids = reference(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)
    expected = out[0, len(ids):].tolist()
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", str(imported["gpt2"]), "--prompt", prompt, "--temperature", "0",
                     "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out
    assert printed == prompt + reference.decode(expected, skip_special_tokens=True) + "\n"
    run = open_run(imported["gpt2"])
    from jaxformer import generate

    got = generate.generate(run.state.graphdef, run.state.params, [ids], max_new_tokens=12, temperature=0.0,
                            eos_id=run.tokenizer.special_ids.eos)[0]
    assert got == expected


def test_eval_is_hf_loss_on_the_same_windows(imported, folders, corpus, capsys):
    _, hf, _ = folders["gpt2"]
    workdir = imported["gpt2"]
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(workdir)]) == 0
    result = json.loads(capsys.readouterr().out)
    run = open_run(workdir)
    data = load_corpus(run.cfg.data, workdir, show_progress=False)
    t = run.cfg.train
    windows = np.concatenate([b["tokens"] for b in eval_batches(data.valid, t.batch_size, t.seq_len, t.eval_batches)])
    assert (windows == run.tokenizer.special_ids.eos).any()  # document boundaries are inside the windows
    with torch.no_grad():
        logits = hf(torch.as_tensor(windows[:, :-1])).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.as_tensor(windows[:, 1:]).reshape(-1).long())
    assert result["n_tokens"] == windows[:, 1:].size  # every target counts: GPT-2 has no PAD to skip
    assert result["loss"] == pytest.approx(float(loss), abs=TOL)


def test_fill_mask_is_hf_argmax(imported, folders, capsys):
    _, hf, reference = folders["bert"]
    text = "the quick brown [MASK] jumps over the lazy dog."
    ids = reference(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, ids.index(reference.mask_token_id)]
    best = int(torch.argmax(logits))
    capsys.readouterr()
    assert cli.main(["fill-mask", "--workdir", str(imported["bert"]), text, "--top-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[MASK] #1:" and repr(reference.decode([best])) in out[1]


def test_mlm_never_masks_the_imported_specials(imported):
    import jax

    run = open_run(imported["bert"])
    ids = run.tokenizer.special_ids
    tokens = np.tile(np.array([[ids.cls, 10, 11, ids.pad, 12, ids.sep, 13, 14, ids.unk, 15] * 3]), (4, 1))
    ex = run.objective.mask_tokens(jax.numpy.asarray(tokens), jax.random.key(0))
    chosen, positions = np.asarray(ex["weights"]) > 0, np.asarray(ex["mask_positions"])
    assert chosen.any() and not np.isin(np.take_along_axis(tokens, positions, 1)[chosen], ids.all).any()
    written = np.take_along_axis(np.asarray(ex["inputs"]), positions, 1)[chosen]
    assert (written == ids.mask).any()  # the vocabulary's [MASK] (id 0 here), not jaxformer's 4
    assert not np.isin(written, [i for i in ids.all if i != ids.mask]).any()


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_export_round_trip_gives_hf_the_same_logits(imported, folders, tmp_path, kind, capsys):
    _, hf, reference = folders[kind]
    out = tmp_path / "exported"
    assert cli.main(["export-hf", "--workdir", str(imported[kind]), "--out", str(out)]) == 0
    auto = transformers.AutoModelForCausalLM if kind == "gpt2" else transformers.AutoModelForMaskedLM
    back = auto.from_pretrained(out).eval()
    ids = torch.tensor([reference(SENTENCES[3], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(back(ids).logits.numpy(), hf(ids).logits.numpy(), atol=TOL, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out)(SENTENCES[0])["input_ids"] == \
        reference(SENTENCES[0])["input_ids"]
    capsys.readouterr()
    assert cli.main(["export-hf", "--workdir", str(imported[kind]), "--out", str(out)]) == 2  # never overwrites
    assert "not an empty directory" in capsys.readouterr().err


def test_export_of_a_native_encoder_as_bert(tmp_path):
    """A jaxformer-trained BERT-shaped encoder (post-norm, embedding norm) exports; a pre-norm one is refused."""
    from flax import nnx

    from jaxformer.config import resolve
    from jaxformer.errors import UserError
    from jaxformer.hf import to_hf_bert
    from jaxformer.model import build_model

    shape = ["model.n_layer=2", "model.d_model=32", "model.n_heads=4", "model.max_seq_len=32", "train.seq_len=32",
             "model.gelu_approximate=false"]
    cfg = resolve(load_config("encoder-tiny", [*shape, "model.post_norm=true", "model.embed_norm=true"]),
                  vocab_size=50, n_devices=1)
    model = build_model(cfg, seed=3)
    tokens = np.random.default_rng(1).integers(0, 50, (2, 20))
    h, _, _ = model(np.asarray(tokens), causal=False)
    expected = np.asarray(model.mlm_logits(h))
    to_hf_bert(cfg, nnx.split(model)[1], tmp_path / "bert")
    back = transformers.BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.as_tensor(tokens)).logits.numpy(), expected, atol=TOL, rtol=0)
    pre_norm = resolve(load_config("encoder-tiny", shape), vocab_size=50, n_devices=1)
    with pytest.raises(UserError, match="post-norm"):
        to_hf_bert(pre_norm, nnx.split(build_model(pre_norm))[1], tmp_path / "no")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_finetune_an_imported_run(imported, tmp_path, kind):
    from jaxformer import finetune
    from jaxformer.data.classification_batches import encode_examples

    rng = np.random.default_rng(0)
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"text": str(rng.choice(SENTENCES)), "label": i % 2}) + "\n"
                            for i in range(40)))
    result = finetune.finetune(imported[kind], str(task), tmp_path / "ft",
                               ["train.steps=4", "train.batch_size=8", "train.eval_every=0", "train.log_every=2"],
                               show_progress=False)
    assert result["step"] == 4 and np.isfinite(result["dev_loss"])
    tok = open_run(imported[kind]).tokenizer
    row = encode_examples(["the dog"], tok, 8, causal=kind == "gpt2")[0]
    ids = tok.special_ids
    body = tok.encode("the dog").tolist()
    if kind == "bert":  # the vocabulary's own [CLS] text [SEP] [PAD]...
        assert row.tolist() == [ids.cls, *body, ids.sep] + [ids.pad] * (8 - len(body) - 2)
    else:  # text <|endoftext|>, padded with it (GPT-2 has no PAD)
        assert row.tolist() == [*body, ids.eos] + [ids.eos] * (8 - len(body) - 1)


def test_distill_from_an_imported_bert(imported, tmp_path):
    """An imported BERT teaches a smaller MLM student (with the hidden-state cosine term): the student encodes
    with the model's own WordPiece tokenizer and special ids, and logs the hard, soft and cosine terms."""
    from jaxformer.metrics import read_metrics

    student = tmp_path / "student"
    assert cli.main(["distill", "--teacher", str(imported["bert"]), "--preset", "encoder-tiny", "--set", *RUN,
                     "model.n_layer=1", "model.d_model=32", "model.n_heads=4", "train.steps=2", "train.log_every=1",
                     "objective.distill_hidden=0.5", "--workdir", str(student), "--no-progress"]) == 0
    assert load_tokenizer(student).fingerprint == load_tokenizer(imported["bert"]).fingerprint
    teacher_data = json.loads((imported["bert"] / "config.json").read_text())["data"]
    assert json.loads((student / "config.json").read_text())["data"]["special_ids"] == teacher_data["special_ids"]
    last = read_metrics(student)[-1]
    assert last["step"] == 2 and all(np.isfinite(last[k]) for k in ("loss", "distill_loss", "hidden_loss"))


def test_import_refusals(folders, tmp_path, capsys):
    folder = folders["gpt2"][0]
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert cli.main(["import-hf", str(folder), "--workdir", str(busy)]) == 2
    assert (busy / "notes.txt").read_text() == "mine" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert cli.main(["import-hf", str(folder), "--workdir", str(tmp_path / "a"), "--set", "model.n_layer=3"]) == 2
    assert "model.n_layer comes from the model" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((folder / name).read_bytes())
    assert cli.main(["import-hf", str(no_tok), "--workdir", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer.json" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_an_hf_tokenizer_is_never_trained(tmp_path, capsys):
    assert cli.main(["train", "--workdir", str(tmp_path / "w"), "--no-progress", "--set", "data.tokenizer=hf"]) == 2
    assert "import-hf" in capsys.readouterr().err and not (tmp_path / "w").exists()
