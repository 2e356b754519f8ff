"""load_corpus and its token cache: tokenize once, reuse, split 90/10, atomic writes, resume guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxformer.config import DataConfig
from jaxformer.data import data_root, pipeline, token_cache
from jaxformer.data.tokenizers import EOS, load_tokenizer
from jaxformer.errors import UserError

SHAKESPEARE = data_root() / "tinyshakespeare" / "input.txt"  # conftest.py sets the data root


def _cfg(tmp_path: Path, **kw) -> DataConfig:
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def _token_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "tokens").glob("*.bin"))


def test_second_load_reuses_the_cache_without_retraining(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, source="builtin", tokenizer="bpe", vocab_size=1000)
    first = pipeline.load_corpus(cfg, tmp_path / "run1", show_progress=False)
    [cache_file] = _token_files(tmp_path)
    stamp = cache_file.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was retrained although it is cached")

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the corpus was re-tokenized although it is cached")

    monkeypatch.setattr(pipeline, "train_tokenizer", no_training)
    monkeypatch.setattr(pipeline, "_token_chunks", no_tokenizing)
    for workdir in (tmp_path / "run1", tmp_path / "run2"):  # same run resumed, and a fresh run
        again = pipeline.load_corpus(cfg, workdir, show_progress=False)
        assert again.tokenizer.fingerprint == first.tokenizer.fingerprint
        np.testing.assert_array_equal(again.train, first.train)
        np.testing.assert_array_equal(again.valid, first.valid)
    assert cache_file.stat().st_mtime_ns == stamp
    assert _token_files(tmp_path) == [cache_file]
    # loading data writes nothing into a run directory: the run saves its tokenizer once its config is checked
    assert load_tokenizer(tmp_path / "run2") is None


def test_tokens_are_memmapped_documents_joined_by_eos(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first document")
    (docs / "b.txt").write_text("")  # empty files are skipped, not an empty segment
    (docs / "sub").mkdir()
    (docs / "sub" / "c.txt").write_text("second\ndocument")
    corpus = pipeline.load_corpus(_cfg(tmp_path, source=f"text:{docs}", tokenizer="char", valid_fraction=0.25),
                                  tmp_path / "run", show_progress=False)
    stream = np.asarray(corpus.tokens)
    assert isinstance(corpus.tokens, np.memmap) and corpus.tokens.dtype == np.uint16
    assert corpus.n_documents == 2 and (stream == EOS).sum() == 1
    eos_at = int(np.flatnonzero(stream == EOS)[0])
    assert corpus.tokenizer.decode(stream[:eos_at]) == "first document"
    assert corpus.tokenizer.decode(stream[eos_at + 1:]) == "second\ndocument"
    n = len(stream)
    assert len(corpus.train) == int(n * 0.75) and len(corpus.train) + len(corpus.valid) == n


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} is not on this machine")
def test_tiny_shakespeare_char_split_is_nanogpts(tmp_path):
    corpus = pipeline.load_corpus(_cfg(tmp_path, source=f"text:{SHAKESPEARE}", tokenizer="char"),
                                  tmp_path / "run", show_progress=False)
    assert corpus.vocab_size == 65 + 8  # nanoGPT's 65 characters, plus our 8 special ids
    assert (len(corpus.train), len(corpus.valid)) == (1_003_854, 111_540)  # nanoGPT's prepare.py numbers
    text = SHAKESPEARE.read_text()
    assert corpus.tokenizer.decode(corpus.valid) == text[1_003_854:]


def test_tokenizer_is_trained_on_the_training_split_only(tmp_path):
    (tmp_path / "c.txt").write_text("abab" * 300 + "XYZ" * 100)  # the last 20% holds new characters
    corpus = pipeline.load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'c.txt'}", tokenizer="char",
                                       valid_fraction=0.2), None, show_progress=False)
    assert corpus.vocab_size == 8 + 2
    assert corpus.tokenizer.decode(corpus.train) == "abab" * 300


def test_interrupted_write_leaves_no_cache_entry(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, source="builtin", tokenizer="byte")

    def broken_chunks(source, tok, stats, show_progress):
        yield np.arange(10, dtype=np.int32) + 8
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_token_chunks", broken_chunks)
    with pytest.raises(KeyboardInterrupt):
        pipeline.load_corpus(cfg, None, show_progress=False)
    assert list((tmp_path / "cache" / "tokens").iterdir()) == []  # no .bin, no .json, no temp file
    monkeypatch.undo()
    corpus = pipeline.load_corpus(cfg, None, show_progress=False)
    assert len(corpus.train) > 10_000


def test_truncated_cache_file_is_rebuilt(tmp_path):
    cfg = _cfg(tmp_path, source="builtin", tokenizer="byte")
    good = np.asarray(pipeline.load_corpus(cfg, None, show_progress=False).tokens).copy()
    [cache_file] = _token_files(tmp_path)
    cache_file.write_bytes(cache_file.read_bytes()[:1000])
    assert token_cache.read_tokens(tmp_path / "cache", cache_file.stem) is None
    np.testing.assert_array_equal(pipeline.load_corpus(cfg, None, show_progress=False).tokens, good)


def test_changed_text_gets_a_new_cache_entry(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one two three " * 50)
    cfg = _cfg(tmp_path, source=f"text:{path}", tokenizer="byte")
    a = pipeline.load_corpus(cfg, None, show_progress=False)
    path.write_text("four five six " * 50)
    b = pipeline.load_corpus(cfg, None, show_progress=False)
    assert len(_token_files(tmp_path)) == 2
    assert b.tokenizer.decode(b.train).startswith("four") and a.tokenizer.decode(a.train).startswith("one")


def test_resuming_with_another_tokenizer_is_refused(tmp_path):
    first = pipeline.load_corpus(_cfg(tmp_path, source="builtin", tokenizer="char"), tmp_path / "run",
                                 show_progress=False)
    first.tokenizer.save(tmp_path / "run")  # as Run.write_run_files does
    with pytest.raises(UserError, match="different tokenizer"):
        pipeline.load_corpus(_cfg(tmp_path, source="builtin", tokenizer="byte"), tmp_path / "run",
                             show_progress=False)


def test_empty_and_missing_sources_are_user_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty corpus"):
        pipeline.load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'empty.txt'}"), None, show_progress=False)
    with pytest.raises(UserError, match="empty corpus"):
        pipeline.load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'empty.txt'}", tokenizer="byte"), None,
                             show_progress=False)
    with pytest.raises(UserError, match="No file matches"):
        pipeline.load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'nope.txt'}"), None, show_progress=False)
    with pytest.raises(UserError, match="too few"):
        (tmp_path / "tiny.txt").write_text("abc")
        pipeline.load_corpus(_cfg(tmp_path, source=f"text:{tmp_path / 'tiny.txt'}"), None, show_progress=False)


def test_local_tfds_source_gives_the_same_tokens_as_the_text_source(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"document number {i}\n" * (20 + i))
    via_text = pipeline.load_corpus(_cfg(tmp_path, source=f"text:{docs}", tokenizer="char"), None,
                                    show_progress=False)
    via_tfds = pipeline.load_corpus(_cfg(tmp_path, source=f"tfds:{docs}", tokenizer="char"), None,
                                    show_progress=False)
    assert via_tfds.n_documents == 3
    np.testing.assert_array_equal(via_tfds.tokens, via_text.tokens)
