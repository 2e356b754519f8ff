"""Tokenizers (char, byte, SentencePiece BPE / unigram, word) that share one fixed table of special-token ids, and
loading any saved tokenizer (these, or a Hugging Face model's from hf_tokenizer.py) from a run directory. The
interface and the special ids are in tokenizer_base.py, re-exported here.

jaxformer's own tokenizers reserve ids 0..7 for the same specials (`DEFAULT_SPECIALS`); ordinary tokens start
at N_SPECIAL. An imported Hugging Face tokenizer keeps its vocabulary's own ids, so code downstream (MLM
masking, padding, packing, EOS, fill-mask) asks `tokenizer.special_ids`, or, inside the jitted step, the
config's `data.special_ids` (the same table, recorded from the tokenizer by `config.resolve`).

The literal texts "[MASK]", "[CLS]" and "[SEP]" inside input text encode to their special ids in every
tokenizer (fill-mask writes "[MASK]" into a prompt). `decode` drops every special id (the word tokenizer writes
UNK as "<unk>"). `encode` takes any str: lone surrogates (which no UTF encoding accepts) are read as U+FFFD.

char, byte, bpe and unigram give text back exactly (`EXACT_KINDS`); `word` keeps the words and the line ends
and normalises other whitespace (word-level corpora such as Penn Treebank are whitespace-tokenized already).

A tokenizer is saved as `<workdir>/tokenizer/tokenizer.json` (+ `spm.model` for SentencePiece,
`hf_tokenizer.json` for a Hugging Face one) and reused on resume; its `fingerprint` keys the token cache and
guards against resuming with a different tokenizer.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from jaxformer.data.tokenizer_base import (
    BOS,
    CLS,
    DEFAULT_SPECIALS,
    EOS,
    LITERAL_SPECIALS,
    MASK,
    META_FILE,
    N_SPECIAL,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    TOKENIZER_DIR,
    UNK,
    SpecialIds,
    Tokenizer,
    without_surrogates,
)
from jaxformer.errors import UserError

__all__ = ["BOS", "CLS", "DEFAULT_SPECIALS", "EOS", "EXACT_KINDS", "KINDS", "LITERAL_SPECIALS", "MASK", "N_SPECIAL", "PAD", "SEP",
           "SPECIAL_TOKENS", "UNK", "ByteTokenizer", "CharTokenizer", "SentencePieceTokenizer", "SpecialIds",
           "Tokenizer", "WordTokenizer", "check_kind", "load_tokenizer", "train_tokenizer"]

EXACT_KINDS = ("char", "byte", "bpe", "unigram")  # decode(encode(text)) == text for text they can represent
KINDS = (*EXACT_KINDS, "word")
_SPM_FILE = "spm.model"
_RESERVED7 = "[RESERVED7]"  # the user symbol holding id 7 in every SentencePiece model
# Text SentencePiece would not give back: its whitespace mark U+2581 (decodes to " ") and the reserved symbol.
_SP_ESCAPE_RE = re.compile("(\u2581|" + re.escape(_RESERVED7) + ")")


class CharTokenizer(Tokenizer):
    """One id per Unicode character seen in the training text (sorted); unseen characters become UNK."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        # Sorted code points + searchsorted: vectorised lookup without a dense table over all of Unicode.
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._table = np.array(self.chars + [""], dtype=object)

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + len(self.chars)

    def _encode_plain(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if not len(self._codepoints):
            return np.full(len(cps), UNK, np.int32)
        idx = np.searchsorted(self._codepoints, cps)
        idx_clipped = np.minimum(idx, len(self._codepoints) - 1)
        known = self._codepoints[idx_clipped] == cps
        return np.where(known, idx_clipped + N_SPECIAL, UNK).astype(np.int32)

    def _decode_plain(self, ids: np.ndarray) -> str:
        idx = ids - N_SPECIAL
        idx = np.where((idx >= 0) & (idx < len(self.chars)), idx, len(self.chars))
        return "".join(self._table[idx])

    def _content(self) -> bytes:
        return ("char\0" + "".join(self.chars)).encode("utf-8", "surrogatepass")

    def _meta(self) -> dict:
        return {"chars": "".join(self.chars)}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id = byte + N_SPECIAL. Never UNK; a decode of a cut multi-byte char uses U+FFFD."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256 + N_SPECIAL

    def _encode_plain(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + N_SPECIAL

    def _decode_plain(self, ids: np.ndarray) -> str:
        ids = ids[ids < 256 + N_SPECIAL]
        return (ids - N_SPECIAL).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def _content(self) -> bytes:
        return b"byte\0v1"


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE or unigram, trained so that its ids 0..7 are exactly our specials.

    Text is kept byte-exact (identity normalisation, no whitespace collapsing, no dummy prefix), so
    `decode(encode(text)) == text` for any text made of characters seen in training. With a vocabulary of
    at least 1024, unseen characters fall back to UTF-8 byte pieces instead of UNK, so any text comes back.
    Two strings SentencePiece itself would change are encoded around it: U+2581 (its whitespace mark) as
    byte pieces, and "[RESERVED7]" (the user symbol at id 7, dropped by decode) as ordinary pieces.
    """

    def __init__(self, model_proto: bytes, kind: str):
        import sentencepiece as spm

        self.kind = kind
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)

    @classmethod
    def train(cls, kind: str, text: str, vocab_size: int) -> SentencePieceTokenizer:
        import sentencepiece as spm

        if not text:
            raise UserError(f"Cannot train a {kind} tokenizer on an empty training text: check data.source.")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_chunks(text), model_writer=model, model_type=kind,
                vocab_size=vocab_size,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
                pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[BOS]", eos_piece="[EOS]",
                # user-defined symbols take the free ids in order (4, 5, 6, 7) and match literally in text
                user_defined_symbols=["[MASK]", "[CLS]", "[SEP]", _RESERVED7],
                normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
                allow_whitespace_only_pieces=True, character_coverage=1.0, byte_fallback=vocab_size >= 1024,
                hard_vocab_limit=False,  # small corpora cannot always fill a unigram vocabulary
                max_sentence_length=1 << 16, input_sentence_size=2_000_000, shuffle_input_sentence=True,
                num_threads=1,  # deterministic: the same text always gives the same model
                minloglevel=2,
            )
        except RuntimeError as err:
            reason = str(err).splitlines()[0].rpartition("] ")[2][:160]  # drop the C++ file/assert prefix
            raise UserError(f"SentencePiece could not train a {kind} tokenizer with data.vocab_size={vocab_size} "
                            f"({reason}): choose another data.vocab_size or use more text.") from None
        tok = cls(model.getvalue(), kind)
        ids = [tok._sp.piece_to_id(p) for p in ("[MASK]", "[CLS]", "[SEP]")]
        assert ids == [MASK, CLS, SEP], f"sentencepiece placed the specials at {ids}"
        return tok

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def _encode_plain(self, text: str) -> np.ndarray:
        if "\u2581" not in text and _RESERVED7 not in text:
            return np.asarray(self._sp.encode(text), dtype=np.int32)
        # SentencePiece would read U+2581 as its own whitespace mark (decoding to " ") and the reserved
        # user symbol as id 7 (which decode drops): give both ids that decode back to the same text.
        ids: list[int] = []
        for part in _SP_ESCAPE_RE.split(text):
            if part == "\u2581":
                ids += self._mark_ids()
            elif part == _RESERVED7:
                ids += self._sp.encode(_RESERVED7[:-2]) + self._sp.encode(_RESERVED7[-2:])
            elif part:
                ids += self._sp.encode(part)
        return np.asarray(ids, dtype=np.int32)

    def _mark_ids(self) -> list[int]:
        """U+2581 as its three UTF-8 byte pieces (decoded literally), or UNK without byte fallback."""
        ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in "\u2581".encode()]
        return ids if all(self._sp.is_byte(i) for i in ids) else [UNK]

    def _decode_plain(self, ids: np.ndarray) -> str:
        return self._sp.decode(ids.tolist())

    def _content(self) -> bytes:
        return self.kind.encode() + b"\0" + self.model_proto

    def _files(self) -> dict[str, bytes]:
        return {_SPM_FILE: self.model_proto}


UNK_WORD = "<unk>"  # how word-level corpora (PTB) write an out-of-vocabulary word; read and written as UNK
END_OF_LINE = "\n"  # the word tokenizer's token for a line end (PTB's "<eos>"): always the first word id


class WordTokenizer(Tokenizer):
    """Whitespace-separated words plus one token per line end; the vocabulary is every word of the training text
    (`data.vocab_size` is not used), most frequent first. Words it never saw, and the literal word "<unk>", are
    UNK. `decode` joins words with one space, lines with a newline."""

    kind = "word"

    def __init__(self, words: Iterable[str]):
        self.words = [END_OF_LINE, *(w for w in words if w != END_OF_LINE)]
        self._index = {w: i + N_SPECIAL for i, w in enumerate(self.words)}
        self._index[UNK_WORD] = UNK

    @classmethod
    def train(cls, text: str) -> WordTokenizer:
        from collections import Counter

        counts = Counter(without_surrogates(text).split())
        for word in (UNK_WORD, *LITERAL_SPECIALS):
            counts.pop(word, None)
        return cls(sorted(counts, key=lambda w: (-counts[w], w)))  # frequency order, ties by spelling: stable

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + len(self.words)

    def _encode_plain(self, text: str) -> np.ndarray:
        index, eol = self._index, self._index[END_OF_LINE]
        ids: list[int] = []
        lines = text.split("\n")
        for i, line in enumerate(lines):
            ids += [index.get(w, UNK) for w in line.split()]
            if i < len(lines) - 1:
                ids.append(eol)
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = ids[((ids >= N_SPECIAL) & (ids < self.vocab_size)) | (ids == UNK)]
        lines, line = [], []
        for i in ids.tolist():
            word = UNK_WORD if i == UNK else self.words[i - N_SPECIAL]
            if word == END_OF_LINE:
                lines.append(" ".join(line) + END_OF_LINE)
                line = []
            else:
                line.append(word)
        return "".join(lines) + " ".join(line)

    def _content(self) -> bytes:
        return ("word\0" + "\0".join(self.words)).encode("utf-8", "surrogatepass")

    def _meta(self) -> dict:
        return {"words": self.words}


def _training_chunks(text: str, size: int = 4096) -> Iterator[str]:
    """Feed SentencePiece pieces of ~size chars cut after a newline, so that "\\n" is part of the vocabulary
    (splitting into lines would drop it and break the round trip)."""
    i = 0
    while i < len(text):
        cut = text.rfind("\n", i, i + size)
        end = i + size if cut <= i or i + size >= len(text) else cut + 1
        yield text[i:end]
        i = end


def train_tokenizer(kind: str, train_text: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(train_text)
    if kind == "byte":
        return ByteTokenizer()
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(kind, train_text, vocab_size)
    if kind == "word":
        return WordTokenizer.train(train_text)
    if kind == "hf":
        raise UserError("data.tokenizer=hf is a Hugging Face model's own tokenizer, which is not trained here: "
                        "make the run with `jaxformer import-hf`, or choose char, byte, bpe, unigram or word.")
    raise UserError(f"Unknown tokenizer '{kind}' in data.tokenizer: choose one of {', '.join(KINDS)}.")


def load_tokenizer(workdir: str | os.PathLike | None) -> Tokenizer | None:
    """The tokenizer saved in `workdir` (or in a folder that directly holds tokenizer.json); None if absent."""
    if workdir is None:
        return None
    folder = Path(workdir)
    if not (folder / META_FILE).exists():
        folder = folder / TOKENIZER_DIR
    meta_path = folder / META_FILE
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        kind = meta["kind"]
        if kind == "char":
            tok: Tokenizer = CharTokenizer(meta["chars"])
        elif kind == "byte":
            tok = ByteTokenizer()
        elif kind == "word":
            tok = WordTokenizer(meta["words"])
        elif kind == "hf":
            from jaxformer.data.hf_tokenizer import HF_FILE, HFTokenizer

            tok = HFTokenizer((folder / HF_FILE).read_bytes(), meta["roles"])
        else:
            tok = SentencePieceTokenizer((folder / _SPM_FILE).read_bytes(), kind)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"The tokenizer in {folder} is unreadable ({type(err).__name__}): delete that folder "
                        f"to rebuild it, or use the workdir it came from.") from None
    if meta.get("fingerprint") not in (None, tok.fingerprint):
        raise UserError(f"The tokenizer in {folder} does not match its recorded fingerprint (corrupt file?): "
                        f"restore it from the original run or delete the folder to retrain.")
    return tok


def check_kind(tok: Tokenizer, wanted: str, where: str | os.PathLike) -> None:
    if tok.kind != wanted:
        raise UserError(f"The run in {where} was tokenized with '{tok.kind}' but data.tokenizer={wanted}: "
                        f"resuming with a different tokenizer than the checkpoint's is refused (use a new "
                        f"--workdir or set data.tokenizer={tok.kind}).")
