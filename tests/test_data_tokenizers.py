"""Tokenizers: round trips on real text, fixed special ids, literal [MASK], save/load, resume guard."""

from __future__ import annotations

import numpy as np
import pytest

from jaxformer.data import data_root
from jaxformer.data import tokenizers as T
from jaxformer.data.sources import builtin_documents
from jaxformer.errors import UserError

SHAKESPEARE = data_root() / "tinyshakespeare" / "input.txt"  # conftest.py sets the data root
TRAIN_CHARS = 300_000  # enough for every tokenizer kind, small enough to train unigram in about a second


@pytest.fixture(scope="module")
def real_text() -> str:
    """Tiny shakespeare when the data root holds it, else the interpreter's bundled docs (always there)."""
    if SHAKESPEARE.exists():
        return SHAKESPEARE.read_text()
    return "\n".join(builtin_documents())


@pytest.fixture(scope="module")
def trained(real_text) -> dict[str, T.Tokenizer]:
    # char: the whole text (a char vocabulary cannot cover characters it never saw); subword kinds: a prefix,
    # the rest of the text then exercises pieces and byte fallback on unseen text
    return {kind: T.train_tokenizer(kind, real_text if kind == "char" else real_text[:TRAIN_CHARS], 2048)
            for kind in T.KINDS}


@pytest.mark.parametrize("kind", T.EXACT_KINDS)  # word normalises whitespace: tests/test_word_tokenizer.py
def test_round_trip_on_real_text(trained, real_text, kind):
    tok = trained[kind]
    ids = tok.encode(real_text)
    assert ids.dtype == np.int32 and ids.ndim == 1 and len(ids) > 0
    assert ids.min() >= T.N_SPECIAL, "plain text must never produce special ids"
    assert ids.max() < tok.vocab_size
    assert tok.decode(ids) == real_text
    if kind in ("bpe", "unigram"):
        assert len(ids) < len(real_text) / 2, "a subword tokenizer should compress the text"


def test_special_ids_are_fixed_and_shared(trained):
    assert (T.PAD, T.UNK, T.BOS, T.EOS, T.MASK, T.CLS, T.SEP, T.N_SPECIAL) == (0, 1, 2, 3, 4, 5, 6, 8)
    assert T.SPECIAL_TOKENS == {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3, "[MASK]": 4, "[CLS]": 5,
                                "[SEP]": 6}
    for kind, tok in trained.items():
        if kind not in T.EXACT_KINDS:
            continue
        ids = tok.encode("the [MASK] sat on the [SEP] mat [CLS]")
        assert T.MASK in ids and T.SEP in ids and T.CLS in ids, kind
        assert list(tok.encode("[MASK]")) == [T.MASK], kind
        # specials are dropped by decode; the rest comes back
        assert tok.decode(ids) == "the  sat on the  mat ", kind
        assert tok.decode([T.BOS, *tok.encode("to be"), T.EOS, T.PAD]) == "to be", kind


def test_sentencepiece_vocab_layout(trained):
    for kind in ("bpe", "unigram"):
        sp = trained[kind]._sp
        assert [sp.id_to_piece(i) for i in range(7)] == list(T.SPECIAL_TOKENS), kind
        assert trained[kind].vocab_size <= 2048


def test_unseen_characters(trained):
    text = "naïve café — 🙂"
    assert trained["byte"].decode(trained["byte"].encode(text)) == text
    assert trained["bpe"].decode(trained["bpe"].encode(text)) == text  # byte fallback (vocab >= 1024)
    char = T.CharTokenizer.train("abc ")
    assert list(char.encode("abz")) == [char.encode("a")[0], char.encode("b")[0], T.UNK]


def test_char_and_byte_tokenizers_are_char_level(trained):
    assert trained["char"].char_level and trained["byte"].char_level
    assert not trained["bpe"].char_level and not trained["unigram"].char_level
    assert trained["byte"].vocab_size == 256 + T.N_SPECIAL


@pytest.mark.parametrize("kind", T.KINDS)
def test_save_load_keeps_fingerprint_and_ids(trained, tmp_path, kind):
    tok = trained[kind]
    assert T.load_tokenizer(tmp_path) is None
    tok.save(tmp_path)
    again = T.load_tokenizer(tmp_path)
    assert again.kind == kind and again.fingerprint == tok.fingerprint and again.vocab_size == tok.vocab_size
    sample = "Hark, the [MASK] doth sing.\n"
    np.testing.assert_array_equal(again.encode(sample), tok.encode(sample))


def test_fingerprints_differ_between_tokenizers(trained):
    prints = {tok.fingerprint for tok in trained.values()}
    assert len(prints) == len(trained)
    assert T.CharTokenizer.train("abc").fingerprint != T.CharTokenizer.train("abd").fingerprint


def test_training_is_deterministic(real_text):
    a = T.train_tokenizer("bpe", real_text[:100_000], 1024)
    b = T.train_tokenizer("bpe", real_text[:100_000], 1024)
    assert a.fingerprint == b.fingerprint


def test_saved_tokenizer_is_reloaded_and_another_kind_refused(real_text, tmp_path):
    tok = T.train_tokenizer("char", real_text[:10_000], 0)
    tok.save(tmp_path)
    assert (tmp_path / T.TOKENIZER_DIR / "tokenizer.json").exists()
    assert not list((tmp_path / T.TOKENIZER_DIR).glob(".*"))  # atomic writes leave no temp file behind
    loaded = T.load_tokenizer(tmp_path)
    assert loaded.fingerprint == tok.fingerprint
    T.check_kind(loaded, "char", tmp_path)
    with pytest.raises(UserError, match="different tokenizer"):
        T.check_kind(loaded, "bpe", tmp_path)


def test_corrupt_saved_tokenizer_is_a_user_error(trained, tmp_path):
    trained["bpe"].save(tmp_path)
    (tmp_path / T.TOKENIZER_DIR / "spm.model").write_bytes(b"not a model")
    with pytest.raises(UserError):
        T.load_tokenizer(tmp_path)


def test_impossible_vocab_size_is_a_user_error():
    with pytest.raises(UserError, match="vocab_size=10"):
        T.train_tokenizer("bpe", "a tiny text " * 10, 10)
