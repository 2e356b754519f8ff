"""Property-based tests: the `--set KEY=VALUE` parser and every tokenizer, on text nobody thought of."""

from __future__ import annotations

import re
import typing
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxformer import config as config_lib
from jaxformer.data import tokenizer_base
from jaxformer.data import tokenizers as T
from jaxformer.data.sources import builtin_documents
from jaxformer.errors import UserError

SETTINGS = settings(max_examples=200, deadline=None)
PRESET = config_lib.get_preset("decoder-tiny")
KEY_TYPES = {f"{s.name}.{f.name}": typing.get_type_hints(type(getattr(PRESET, s.name)))[f.name]
             for s in fields(PRESET) for f in fields(getattr(PRESET, s.name))}


def _value_of(cfg: config_lib.Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


# ---------------------------------------------------------------------------------------------- --set parser

@SETTINGS
@given(st.text())
def test_any_override_text_is_applied_or_refused_in_one_sentence(text):
    try:
        config_lib.apply_overrides(PRESET, [text])
    except UserError as err:
        assert "\n" not in str(err)


@SETTINGS
@given(key=st.sampled_from(sorted(KEY_TYPES)),
       value=st.one_of(st.text(), st.integers().map(str), st.floats().map(repr),
                       st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "1e3", "1_000", "0x10", "9" * 5000])))
def test_any_value_for_any_key_is_accepted_or_refused_never_crashes(key, value):
    """Parsing and then resolving for 8 devices (every check that needs no data) raises nothing but UserError."""
    try:
        config_lib.resolve(config_lib.apply_overrides(PRESET, [f"{key}={value}"]), n_devices=8)
    except UserError as err:
        assert "\n" not in str(err)


def _typed_value(kind):
    if kind is bool:
        return st.booleans().flatmap(lambda b: st.tuples(st.just(b), st.sampled_from(
            ["true", "True", "1", "yes", "on"] if b else ["false", "FALSE", "0", "no", "off"])))
    if kind is int:
        return st.integers(-10**30, 10**30).map(lambda n: (n, str(n)))
    if kind is float:
        return st.floats(allow_nan=False, allow_infinity=False).map(lambda x: (x, repr(x)))
    # strings are taken as written, minus surrounding whitespace (which the parser strips)
    return st.text().map(str.strip).map(lambda s: (s, s))


@SETTINGS
@given(st.sampled_from(sorted(KEY_TYPES)).flatmap(lambda key: st.tuples(st.just(key), _typed_value(KEY_TYPES[key]))))
def test_typed_values_round_trip(key_and_value):
    key, (value, text) = key_and_value
    cfg = config_lib.apply_overrides(PRESET, [f"{key}={text}"])
    assert _value_of(cfg, key) == value and type(_value_of(cfg, key)) is type(value)
    assert config_lib.from_dict(cfg.to_dict()) == cfg  # and through config.json


@SETTINGS
@given(st.integers(-10**6, 10**6), st.integers(0, 6))
def test_integer_keys_take_exponent_notation(mantissa, exponent):
    cfg = config_lib.apply_overrides(PRESET, [f"train.steps={mantissa}e{exponent}"])
    assert cfg.train.steps == mantissa * 10**exponent


# ---------------------------------------------------------------------------------------------- tokenizers

TRAIN_TEXT = "\n".join(builtin_documents())[:60_000]
# Pieces random text rarely contains by chance but real text does: literal specials, SentencePiece's own
# whitespace mark, control characters, combining marks, emoji, CRLF, BOM, zero-width space.
TRICKY = ["[MASK]", "[CLS]", "[SEP]", "[RESERVED7]", "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[", "]", "\u2581",
          "\u2581\u2581", " ", "  ", "\0", "\t", "\r\n", "e\u0301", "\u0308", "🙂", "👩‍👩‍👧", "\ufeff", "\u200b",
          "\u3000", "ﬁ", "Å", "\x7f"]


def _texts(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.text(chars, max_size=12), st.sampled_from(TRICKY)), max_size=8).map("".join)


ANY_TEXT = _texts(st.characters())  # every code point but lone surrogates
WITH_SURROGATES = _texts(st.one_of(st.characters(), st.characters(categories=["Cs"])))
_SURROGATE = re.compile("[\ud800-\udfff]")
LITERAL_IDS = set(T.LITERAL_SPECIALS.values())


def _expected(text: str, keep=lambda c: True) -> str:
    """What decode(encode(text)) must give: lone surrogates read as U+FFFD, literal specials dropped (they
    encode to special ids, which decode leaves out), and characters the tokenizer cannot represent dropped."""
    plain = tokenizer_base._LITERAL_RE.sub("", _SURROGATE.sub("\ufffd", text))
    return "".join(c for c in plain if keep(c))


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, T.Tokenizer]:
    """Every kind, trained once on a small corpus; SentencePiece with byte fallback (vocab >= 1024) and without."""
    return {"char": T.train_tokenizer("char", TRAIN_TEXT, 0), "byte": T.train_tokenizer("byte", "", 0),
            "bpe": T.train_tokenizer("bpe", TRAIN_TEXT, 1024), "unigram": T.train_tokenizer("unigram", TRAIN_TEXT, 1024),
            "bpe-small": T.train_tokenizer("bpe", TRAIN_TEXT, 300),
            "unigram-small": T.train_tokenizer("unigram", TRAIN_TEXT, 300)}


FULL_UNICODE = ("byte", "bpe", "unigram")  # byte-level, or byte fallback: any text comes back
ALL_KINDS = ("char", "byte", "bpe", "unigram", "bpe-small", "unigram-small")


@pytest.mark.parametrize("name", ALL_KINDS)
@SETTINGS
@given(text=WITH_SURROGATES)
def test_encode_never_crashes_and_emits_only_allowed_ids(tokenizers, name, text):
    ids = tokenizers[name].encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ((ids >= 0) & (ids < tokenizers[name].vocab_size)).all()
    # below N_SPECIAL only UNK and the specials written literally; never PAD/BOS/EOS (EOS marks documents)
    assert set(ids[ids < T.N_SPECIAL].tolist()) <= {T.UNK} | LITERAL_IDS
    assert isinstance(tokenizers[name].decode(ids), str)


@pytest.mark.parametrize("name", FULL_UNICODE)
@SETTINGS
@given(text=WITH_SURROGATES)
def test_round_trip_on_any_unicode(tokenizers, name, text):
    tok = tokenizers[name]
    assert tok.decode(tok.encode(text)) == _expected(text)


@pytest.mark.parametrize("name", ALL_KINDS)
@SETTINGS
@given(data=st.data())
def test_round_trip_on_the_training_alphabet(tokenizers, name, data):
    alphabet = sorted(set(TRAIN_TEXT))
    text = data.draw(st.lists(st.one_of(st.text(st.sampled_from(alphabet), max_size=16),
                                        st.sampled_from(list(T.LITERAL_SPECIALS))), max_size=8).map("".join))
    tok = tokenizers[name]
    assert tok.decode(tok.encode(text)) == _expected(text)


@pytest.mark.parametrize("name", ("char", "bpe-small", "unigram-small"))
@SETTINGS
@given(text=ANY_TEXT)
def test_unseen_characters_become_unk_and_the_rest_survives(tokenizers, name, text):
    """Tokenizers without byte fallback: characters never seen in training are UNK (dropped by decode)."""
    tok = tokenizers[name]
    seen = set(TRAIN_TEXT)
    if name == "char":  # one token per character: exactly the seen ones come back, in order
        assert tok.decode(tok.encode(text)) == _expected(text, keep=seen.__contains__)
    else:  # pieces may merge across an unseen character's neighbours, but nothing unseen ever comes back
        assert set(tok.decode(tok.encode(text))) <= seen
