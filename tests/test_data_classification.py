"""Classification task loaders: SST-2 (GLUE TSV), rt-polarity (seeded split), generic TSV / JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxformer.data import classification as C
from jaxformer.data import classification_batches as CB
from jaxformer.data import data_root
from jaxformer.data.labels import LabelMap
from jaxformer.data.tokenizers import CLS, EOS, PAD, SEP, CharTokenizer
from jaxformer.errors import UserError

DATA = data_root()  # tests/conftest.py points JAXFORMER_DATA at ../shared/data when it is there
needs_shared = pytest.mark.skipif(not (DATA / "sst-2-glue").is_dir() or not (DATA / "rt-polarity").is_dir(),
                                  reason=f"sst-2-glue and rt-polarity are not under the data root {DATA}")


@needs_shared
def test_sst2_counts_and_first_row():
    texts, labels = C.load_task("sst2", "train")
    assert len(texts) == 67_349 and labels.dtype == np.int64 and int(labels.sum()) == 37_569
    assert texts[0] == "hide new secretions from the parental units" and labels[0] == 0
    dev_texts, dev_labels = C.load_task("sst2", "validation")
    assert len(dev_texts) == 872 and int(dev_labels.sum()) == 444
    assert dev_texts[0] == "it 's a charming and often affecting journey ."


@needs_shared
def test_rt_polarity_split_is_fixed_disjoint_and_complete():
    train, train_y = C.load_task("rt-polarity", "train")
    dev, dev_y = C.load_task("rt-polarity", "dev")
    assert len(train) + len(dev) == 2 * 5_331 and len(dev) == round(0.1 * 2 * 5_331)
    assert int(train_y.sum()) + int(dev_y.sum()) == 5_331
    again, again_y = C.load_task("rt-polarity", "dev")
    assert again == dev and np.array_equal(again_y, dev_y)
    every_line = [line.strip() for suffix in ("pos", "neg")
                  for line in (DATA / "rt-polarity" / f"rt-polarity.{suffix}").read_text().splitlines()]
    assert sorted(train + dev) == sorted(every_line)  # each row in exactly one split
    assert any("é" in t for t in train + dev)  # non-ASCII decoded, not mangled
    assert 0.4 < dev_y.mean() < 0.6


def test_rt_polarity_reads_latin1_files(tmp_path):
    (tmp_path / "rt-polarity.pos").write_bytes("une comédie charmante\nfine\n".encode("latin-1"))
    (tmp_path / "rt-polarity.neg").write_bytes("dull\nflat\n".encode("latin-1"))
    train, _ = C.read_rt_polarity(tmp_path, "train")
    dev, _ = C.read_rt_polarity(tmp_path, "dev")
    assert sorted(train + dev) == sorted(["une comédie charmante", "fine", "dull", "flat"])


def test_generic_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "task.tsv"
    tsv.write_text("id\ttext\tlabel\n1\tgood film\t1\n2\tbad film\t0\n")
    texts, labels = C.load_task(str(tsv), "train")
    assert texts == ["good film", "bad film"] and labels.tolist() == [1, 0]
    jsonl = tmp_path / "task.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [{"sentence": "meh", "label": "neutral"},
                                                       {"sentence": "yay", "label": "positive"},
                                                       {"sentence": "boo", "label": "negative"}]))
    texts, labels = C.load_task(str(jsonl), "train")
    assert texts == ["meh", "yay", "boo"] and labels.tolist() == [1, 2, 0]  # names -> ids in sorted order


def test_bad_tasks_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="Unknown task"):
        C.load_task("imdb", "train")
    with pytest.raises(UserError, match="does not exist"):
        C.load_task(str(tmp_path / "missing.tsv"), "train")
    with pytest.raises(UserError, match="no split"):
        C.load_task("sst2", "test")
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tbar\nx\ty\n")
    with pytest.raises(UserError, match="no label column"):
        C.load_task(str(bad), "train")


def test_missing_data_is_a_user_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path))
    with pytest.raises(UserError, match=r"sst-2-glue/ \(the sst2 data\) is not under the data root .*JAXFORMER_DATA"):
        C.load_task("sst2", "train")
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path / "absent"))
    with pytest.raises(UserError, match="does not exist.*set JAXFORMER_DATA"):
        C.load_task("rt-polarity", "dev")
    with pytest.raises(UserError, match="mine.tsv is not under the data root.*JAXFORMER_DATA"):
        C.load_task("@data/mine.tsv", "train")


def test_task_file_under_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFORMER_DATA", str(tmp_path))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.tsv").write_text("text\tlabel\ngood\t1\nbad\t0\n")
    texts, labels = C.load_task("@data/tasks/mine.tsv", "train")
    assert texts == ["good", "bad"] and labels.tolist() == [1, 0]


def test_inputs_batches_and_epochs():
    tok = CharTokenizer("abc ")
    enc = CB.encode_examples(["ab", "abcabc"], tok, 5, causal=False)
    np.testing.assert_array_equal(enc[0], [CLS, *tok.encode("ab"), SEP, PAD])
    np.testing.assert_array_equal(enc[1], [CLS, *tok.encode("abc"), SEP])  # truncated to fit the specials
    dec = CB.encode_examples(["ab"], tok, 5, causal=True)
    np.testing.assert_array_equal(dec[0], [*tok.encode("ab"), EOS, PAD, PAD])

    n, b = 10, 4
    tokens, labels = np.arange(n, dtype=np.int32)[:, None], np.arange(n) % 2
    first = [CB.classification_batch_at(tokens, labels, batch_size=b, seed=3, step=s)["tokens"][:, 0] for s in range(5)]
    again = CB.classification_batch_at(tokens, labels, batch_size=b, seed=3, step=2)["tokens"][:, 0]
    np.testing.assert_array_equal(first[2], again)  # addressed by (seed, step) only
    stream = np.concatenate(first)
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))  # each epoch once
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # a fresh order per epoch
    halves = [CB.classification_batch_at(tokens, labels, batch_size=b, seed=3, step=1, process_index=p, process_count=2)
              for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["tokens"][:, 0] for h in halves]), first[1])
    ev = CB.classification_eval_batches(tokens, labels, 4)
    assert len(ev) == 3 and list(ev[-1]["labels"]) == [0, 1, -1, -1]  # padding rows carry label -1


# ---------------------------------------------------------------------------------------------- label maps

def _raw(values) -> list:
    return [C.RawLabel(v, f"f:{i + 2}") for i, v in enumerate(values)]


def test_a_file_missing_a_class_keeps_the_runs_ids(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                             for t, lab in [("a", "red"), ("b", "green"), ("c", "blue"), ("d", "red")]))
    labels = LabelMap.from_examples(C.read_task(str(train), "train")[1], str(train))
    assert labels.names == ("blue", "green", "red") and not labels.integer
    test = tmp_path / "test.tsv"  # no "blue": numbered on its own, red would become 1
    test.write_text("text\tlabel\nx\tred\ny\tgreen\nz\tred\n")
    texts, ids = C.load_task(str(test), "test", labels)
    assert ids.tolist() == [2, 1, 2]
    labels.save(tmp_path)
    assert LabelMap.load(tmp_path) == labels and LabelMap.load(tmp_path / "nowhere") is None
    ints = LabelMap.from_examples(_raw([0, 1, 2, 1]), "t")
    assert ints.integer and ints.ids(_raw([2, 2])).tolist() == [2, 2]


def test_an_unseen_label_is_one_sentence(tmp_path):
    labels = LabelMap(("negative", "positive"), integer=False)
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"text": "x", "label": "positive"}) + "\n" + json.dumps({"text": "y", "label": "meh"}))
    with pytest.raises(UserError, match=r"test.jsonl:2 has the label 'meh', which is not one of the run's classes "
                                        r"\(negative, positive\)"):
        C.load_task(str(test), "test", labels)
    with pytest.raises(UserError, match=r"has the label 3, which is not one of the run's classes \(the integers 0..2"):
        LabelMap(("0", "1", "2"), integer=True).ids(_raw([1, 3]))
    with pytest.raises(UserError, match="mixes integer labels"):
        LabelMap.from_examples(_raw([0, "pos", 1]), "t")


# ---------------------------------------------------------------------------------------------- files

def test_latin1_and_cp1252_files_are_read(tmp_path):
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n"
                              for t, lab in [("très bon", 1), ("mauvais café", 0)]).encode("latin-1"))
    texts, labels = C.load_task(str(jsonl), "train")
    assert texts == ["très bon", "mauvais café"] and labels.tolist() == [1, 0]
    tsv = tmp_path / "cp1252.tsv"
    tsv.write_bytes("text\tlabel\nit’s “fine”\tpos\nnot €5 worth\tneg\n".encode("cp1252"))
    texts, labels = C.load_task(str(tsv), "train")
    assert texts == ["it’s “fine”", "not €5 worth"] and labels.tolist() == [1, 0]
    bom = tmp_path / "bom.tsv"  # Excel's "UTF-8 CSV": the BOM must not become part of the first column's name
    bom.write_bytes("\ufefftext\tlabel\nok\t1\nno\t0\n".encode("utf-8"))
    assert C.load_task(str(bom), "train")[0] == ["ok", "no"]
    utf16 = tmp_path / "utf16.tsv"
    utf16.write_bytes("text\tlabel\nçà\t1\nno\t0\n".encode("utf-16"))
    assert C.load_task(str(utf16), "train")[0] == ["çà", "no"]
    binary = tmp_path / "binary.tsv"
    binary.write_bytes(b"text\tlabel\n\x00\x01\x02\t1\n")
    with pytest.raises(UserError, match="is not a text file"):
        C.load_task(str(binary), "train")


def test_headerless_tsv_is_not_read_as_column_names(tmp_path):
    tsv = tmp_path / "noheader.tsv"
    tsv.write_text("a gripping thriller\t1\na dull mess\t0\n")
    with pytest.raises(UserError) as err:
        C.load_task(str(tsv), "train")
    message = str(err.value)
    assert "does not start with a header line" in message and "gripping" not in message, message


def test_columns_can_be_named(tmp_path):
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text("id\tReview_Body\tmood\tlabel\n1\tgreat\thappy\tx\n2\tawful\tsad\ty\n")
    texts, labels = C.load_task(str(tsv), "train", columns=C.Columns(text="review_body", label="mood"))
    assert texts == ["great", "awful"] and labels.tolist() == [0, 1]  # mood, not the column called label
    with pytest.raises(UserError, match=r"has no column named 'rating' \(found: id, Review_Body, mood, label\): "
                                        r"check --label-column"):
        C.load_task(str(tsv), "train", columns=C.Columns(text="review_body", label="rating"))


def test_texts_to_predict(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_bytes("first\n\nthird café\n".encode("latin-1"))
    assert C.read_texts(str(lines)) == ["first", "", "third café"]  # line i answers line i, blank or not
    jsonl = tmp_path / "unlabelled.jsonl"
    jsonl.write_text(json.dumps({"sentence": "a"}) + "\n" + json.dumps({"sentence": "b", "label": 1}) + "\n")
    assert C.read_texts(str(jsonl)) == ["a", "b"]
    with pytest.raises(UserError, match="does not exist"):
        C.read_texts(str(tmp_path / "missing.txt"))


def test_real_tokens_count_no_padding():
    tokens = np.full((6, 8), PAD, np.int32)
    for i in range(6):
        tokens[i, :i + 2] = 9  # row i has i + 2 real tokens
    rows = CB.batch_rows(6, batch_size=4, seed=0, step=3)
    assert CB.real_tokens_at(tokens, batch_size=4, seed=0, step=3) == int(sum(r + 2 for r in rows))
