"""Token classification (NER): the entity metric against hand counts, CoNLL parsing (WNUT-17's tab-only sentence
breaks, its published counts), first-subword loss weights against a naive computation, a tagger that overfits a
handful of sentences to entity F1 1.0, and the finetune / eval / predict commands for both families."""

import json

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from tiny import tiny_config

from jaxformer import cli, objectives, tagging, trainer
from jaxformer.data.conll import read_conll, read_tag_task
from jaxformer.data.labels import LabelMap
from jaxformer.data.tagging_batches import IGNORE, encode_tagged, tag_map
from jaxformer.data.tokenizers import CharTokenizer, train_tokenizer
from jaxformer.evaluation.entities import entity_scores, entity_spans
from jaxformer.model import build_model

# ---------------------------------------------------------------------------------------------- the metric


def test_entity_spans_follow_conll_semantics():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    # I- without B- opens an entity (first in the sentence, after O, after another type)
    assert entity_spans(["I-PER", "I-PER", "O", "I-LOC", "I-ORG"]) == {("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 5)}
    # adjacent entities of the same type: B- after an entity starts a second one
    assert entity_spans(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 1), ("PER", 1, 3)}
    # an entity that ends the sentence, and a type change inside a run of I- tags
    assert entity_spans(["O", "B-LOC", "I-LOC"]) == {("LOC", 1, 3)}
    assert entity_spans(["B-LOC", "I-PER"]) == {("LOC", 0, 1), ("PER", 1, 2)}
    assert entity_spans(["O", "O"]) == set()


def test_entity_scores_against_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"],          # PER(0,2) LOC(3,4)
            ["B-PER", "B-PER", "O", "O"],              # PER(0,1) PER(1,2)
            ["O", "B-ORG", "I-ORG", "I-ORG"]]          # ORG(1,4)
    pred = [["B-PER", "I-PER", "O", "B-PER"],          # PER(0,2) right; PER(3,4) wrong type
            ["B-PER", "I-PER", "O", "O"],              # PER(0,2): merges the two adjacent ones, wrong
            ["O", "I-ORG", "I-ORG", "I-ORG"]]          # ORG(1,4) opened by I-: right
    s = entity_scores(gold, pred)
    # 5 gold, 4 predicted, 2 correct
    assert (s["n_gold_entities"], s["n_predicted_entities"], s["n_correct_entities"]) == (5, 4, 2)
    assert s["precision"] == pytest.approx(2 / 4) and s["recall"] == pytest.approx(2 / 5)
    assert s["f1"] == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    per = s["per_type"]
    assert per["PER"]["support"] == 3 and per["PER"]["precision"] == pytest.approx(1 / 3)
    assert per["PER"]["recall"] == pytest.approx(1 / 3)
    assert per["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per["ORG"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    # the all-O baseline: nothing predicted, F1 0; perfect prediction: F1 1
    assert entity_scores(gold, [["O"] * len(g) for g in gold])["f1"] == 0.0
    assert entity_scores(gold, gold)["f1"] == 1.0


# ---------------------------------------------------------------------------------------------- parsing


def test_conll_whitespace_only_lines_break_sentences(tmp_path):
    path = tmp_path / "t.conll"
    path.write_text("Paris\tB-loc\nis\tO\n\t\nNew\tB-loc\nYork\tI-loc\n   \n\nhi\tO\n")
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [("Paris", "is"), ("New", "York"), ("hi",)]
    assert [s.tags for s in sentences] == [("B-loc", "O"), ("B-loc", "I-loc"), ("O",)]
    assert all("" not in s.words for s in sentences)


def test_wnut17_splits_match_published_counts(shared_data):
    """Sentence, token and entity counts of WNUT-17 as SOURCE.md tabulates them (train's 2,394 tab-only breaks
    included: a loader that split them on TAB would find empty words and more sentences or tokens)."""
    expected = {"train": (3394, 62730, 1975), "dev": (1009, 15733, 836), "test": (1287, 23394, 1079)}
    for split, (n_sent, n_tok, n_ent) in expected.items():
        sentences = read_tag_task("wnut17", split)
        found = (len(sentences), sum(len(s.words) for s in sentences),
                 sum(len(entity_spans(s.tags)) for s in sentences))
        assert found == (n_sent, n_tok, n_ent), split
    assert tag_map(read_tag_task("wnut17", "train"), "wnut17").n_classes == 13


# ---------------------------------------------------------------------------------------------- loss weights

SENTENCES_TEXT = """\
Alice\tB-per
visited\tO
New\tB-loc
York\tI-loc

the\tO
Zorblax\tB-org
company\tO
"""


@pytest.fixture(scope="module")
def sentences(tmp_path_factory):
    path = tmp_path_factory.mktemp("conll") / "s.conll"
    path.write_text(SENTENCES_TEXT)
    return read_conll(path)


def naive_rows(sentences, encode_piece, frame, seq_len, fill, labels):
    """Tokens and 0/1 weights built by hand: the first word as is, later words after a space whose tokens are
    whitespace; the weight 1 sits on the first token of the word itself."""
    tokens, weights, targets = [], [], []
    for s in sentences:
        row, w, t = [frame[0]], [0], [0]
        for i, (word, tag) in enumerate(zip(s.words, s.tags, strict=True)):
            space, pieces = encode_piece(word, i == 0)
            row += space + pieces
            w += [0] * len(space) + [1] + [0] * (len(pieces) - 1)
            t += [0] * len(space) + [labels.names.index(tag)] + [0] * (len(pieces) - 1)
        row, w, t = row + frame[1:], w + [0] * len(frame[1:]), t + [0] * len(frame[1:])
        pad = seq_len - len(row)
        tokens.append(row + [fill] * pad)
        weights.append(w + [0] * pad)
        targets.append(t + [0] * pad)
    return np.array(tokens), np.array(weights, np.float32), np.array(targets)


def test_char_tokenizer_labels_first_character_only(sentences):
    tok = CharTokenizer.train(SENTENCES_TEXT)
    labels = tag_map(sentences, "s")
    ids = tok.special_ids

    def by_hand(word, first):  # one id per character, looked up one at a time
        space = [] if first else [int(tok.encode(" ")[0])]
        return space, [int(tok.encode(c)[0]) for c in word]

    enc = encode_tagged(sentences, tok, 40, causal=False, labels=labels)
    tokens, weights, targets = naive_rows(sentences, by_hand, [ids.cls, ids.sep], 40, ids.fill, labels)
    np.testing.assert_array_equal(enc.tokens_NxT, tokens)
    np.testing.assert_array_equal((enc.labels_NxT >= 0).astype(np.float32), weights)
    np.testing.assert_array_equal(np.maximum(enc.labels_NxT, 0) * weights, targets)
    assert (enc.n_truncated_words, enc.n_truncated_entities) == (0, 0)


def test_subword_weights_and_loss_against_naive_numpy(sentences):
    """A BPE vocabulary splits rare words; prepare's weights are exactly zero off the first subword, and the loss
    is the cross-entropy of the first subwords alone (computed in numpy from the full logits)."""
    text = ("Alice visited the company in New York . " * 30) + "the old car ran to the big house . " * 30
    tok = train_tokenizer("bpe", text, 60)
    labels = tag_map(sentences, "s")
    enc = encode_tagged(sentences, tok, 24, causal=False, labels=labels)
    ids = tok.special_ids

    def by_hand(word, first):
        pieces = [int(i) for i in tok.encode(word if first else " " + word)]
        space = []
        while pieces and not tok.decode([pieces[0]]).strip():
            space.append(pieces.pop(0))
        return space, pieces

    tokens, weights, targets = naive_rows(sentences, by_hand, [ids.cls, ids.sep], 24, ids.fill, labels)
    assert (weights.sum(1) == [4, 3]).all() and (tokens != ids.fill).sum() > weights.sum() + 4  # split words
    np.testing.assert_array_equal(enc.tokens_NxT, tokens)
    cfg = tiny_config("classify", "objective.kind=tag", f"objective.n_classes={labels.n_classes}",
                      "train.seq_len=24", vocab_size=tok.vocab_size)
    objective = objectives.for_config(cfg)
    ex = objective.prepare({"tokens": enc.tokens_NxT, "labels": enc.labels_NxT}, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(ex["weights"]), weights)
    model = build_model(cfg, seed=1)

    @nnx.jit  # one compilation instead of one per eager operation
    def loss_and_logits(model, ex):
        hidden, _, _ = model(ex["inputs"], causal=False, segment_ids_BxT=ex["segment_ids"])
        return objective.loss_sums(model, ex, rng=None), model.classify(hidden)

    (loss_sum, stats), logits = loss_and_logits(model, ex)
    log_probs = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32), -1))
    rows, cols = np.nonzero(weights)
    naive = -log_probs[rows, cols, targets[rows, cols]].sum()
    np.testing.assert_allclose(float(loss_sum), naive, rtol=1e-5)
    assert float(stats["n_tokens"]) == 7.0
    np.testing.assert_allclose(float(optax.softmax_cross_entropy_with_integer_labels(
        log_probs[rows, cols], targets[rows, cols]).sum()), naive, rtol=1e-5)


def test_truncation_is_counted(sentences):
    tok = CharTokenizer.train(SENTENCES_TEXT)
    labels = tag_map(sentences, "s")
    # 13 slots: "Alice visited" fits (5 + 8), " New" does not: New York is cut (2 words, 1 entity); "the Zorblax"
    # fits (3 + 8) but " company" does not (1 word, no entity)
    enc = encode_tagged(sentences, tok, 15, causal=False, labels=labels)
    assert enc.n_words_kept_N.tolist() == [2, 2]
    assert (enc.n_truncated_words, enc.n_truncated_entities) == (3, 1)
    assert (enc.labels_NxT[0] != IGNORE).sum() == 2


# ---------------------------------------------------------------------------------------------- runs

PRETRAIN = ["model.d_model=64", "train.seq_len=48", "train.batch_size=16", "train.steps=10", "train.log_every=10",
            "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=10"]
TOY = ["Alice\tB-per\nmet\tO\nBob\tB-per\nin\tO\nParis\tB-loc\n", "the\tO\nNew\tB-loc\nYork\tI-loc\nteam\tO\n",
       "Bob\tB-per\nJones\tI-per\nlikes\tO\nLondon\tB-loc\n", "we\tO\nsaw\tO\nAlice\tB-per\n",
       "Paris\tB-loc\nand\tO\nLondon\tB-loc\n", "Carol\tB-per\nleft\tO\nNew\tB-loc\nYork\tI-loc\n",
       "a\tO\ncat\tO\nsat\tO\n", "Carol\tB-per\nand\tO\nBob\tB-per\n"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    runs = {}
    for family, kind in (("encoder", "mlm"), ("decoder", "clm")):
        workdir = tmp_path_factory.mktemp(f"pretrained-{family}")
        trainer.train_loop(tiny_config(kind, *PRETRAIN, resolved=False), workdir, show_progress=False)
        runs[family] = workdir
    return runs


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.conll"
    path.write_text("\n".join(TOY))
    return path


@pytest.mark.slow
def test_tagger_overfits_a_handful_of_sentences(pretrained, toy_file, tmp_path):
    """Trained and validated on the same 8 sentences, the tagger reaches entity F1 1.0: the head, the first-
    subword labels and the read-back positions line up."""
    result = tagging.finetune_tags(pretrained["encoder"], str(toy_file), tmp_path / "fit",
                                   ["train.steps=80", "train.batch_size=8", "train.eval_every=40",
                                    "train.log_every=40", "optimizer.lr=3e-3", "optimizer.warmup_steps=5",
                                    "train.checkpoint_every=1000"], valid=str(toy_file), show_progress=False)
    assert result["dev_f1"] == 1.0, result
    assert result["dev_n_gold_entities"] == 13 and result["dev_truncated_words"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_cli_finetune_eval_predict_tagger(pretrained, toy_file, tmp_path, capsys, family):
    out = tmp_path / "tagger"
    code = cli.main(["finetune", "--workdir", str(pretrained[family]), "--task", str(toy_file), "--valid",
                     str(toy_file), "--test", str(toy_file), "--set", "train.steps=3", "train.batch_size=8",
                     "train.log_every=1", "train.eval_every=0", "--out", str(out), "--no-progress"])
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (last["backbone"], last["objective"], last["step"]) == (family, "tag", 3)
    assert {"precision", "recall", "f1", "per_type", "truncated_words"} <= set(last["test"])
    assert LabelMap.load(out).names == ("B-loc", "B-per", "I-loc", "I-per", "O")
    saved = json.loads((out / "config.json").read_text())["objective"]
    assert (saved["kind"], saved["n_classes"], saved["causal"]) == ("tag", 5, family == "decoder")

    assert cli.main(["eval", "--workdir", str(out), "--data", str(toy_file)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"loss", "accuracy", "precision", "recall", "f1", "per_type", "n_gold_entities"} <= set(metrics)
    assert metrics["n_gold_entities"] == 13 and metrics["f1"] == last["test"]["f1"]

    text = tmp_path / "in.txt"
    text.write_text("Alice met Bob\n\nthe New York team\n")
    assert cli.main(["predict", "--workdir", str(out), str(text)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["words"] for p in lines] == [["Alice", "met", "Bob"], ["the", "New", "York", "team"]]
    assert all(len(p["tags"]) == len(p["words"]) and set(p["tags"]) <= set(LabelMap.load(out).names)
               for p in lines)


def test_tagging_refusals(pretrained, tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("Alice\tB-per\nlonely\n")
    code = cli.main(["finetune", "--workdir", str(pretrained["encoder"]), "--task", str(bad), "--out",
                     str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no tag" in err
    code = cli.main(["finetune", "--workdir", str(pretrained["encoder"]), "--task", str(tmp_path / "none.conll"),
                     "--out", str(tmp_path / "x")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
