"""Classification task loaders: SST-2 (GLUE TSV), rt-polarity (seeded split), generic TSV / JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxformer.data import classification as C
from jaxformer.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not on this machine")


@pytest.fixture(autouse=True)
def _point_at_shared_data(monkeypatch):
    monkeypatch.setenv("JAXFORMER_DATA_DIR", str(SHARED_DATA))


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
                  for line in (SHARED_DATA / "rt-polarity" / f"rt-polarity.{suffix}").read_text().splitlines()]
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


def test_missing_shared_data_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXFORMER_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match="JAXFORMER_DATA_DIR"):
        C.load_task("sst2", "train")
