"""Classification task loaders: SST-2 (GLUE TSV), rt-polarity (seeded split), generic TSV / JSONL."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxformer.data import classification as C
from jaxformer.data import classification_batches as CB
from jaxformer.data import data_root
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
    train, _ = C.load_rt_polarity(tmp_path, "train")
    dev, _ = C.load_rt_polarity(tmp_path, "dev")
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
    bad.write_text("foo\tbar\nx\ty\n")
    with pytest.raises(UserError, match="no text column"):
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
