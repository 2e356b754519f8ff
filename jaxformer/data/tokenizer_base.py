"""The `Tokenizer` interface and the special-token ids, shared by jaxformer's own tokenizers (tokenizers.py)
and a Hugging Face model's (hf_tokenizer.py), which each import this module and not each other.

jaxformer's own tokenizers reserve ids 0..7 for the same specials (`DEFAULT_SPECIALS`); an imported vocabulary
keeps its own ids and reports them as its `special_ids`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from jaxformer import atomic
from jaxformer.errors import UserError

PAD, UNK, BOS, EOS, MASK, CLS, SEP = 0, 1, 2, 3, 4, 5, 6
N_SPECIAL = 8  # id 7 is reserved
SPECIAL_TOKENS = {"[PAD]": PAD, "[UNK]": UNK, "[BOS]": BOS, "[EOS]": EOS, "[MASK]": MASK, "[CLS]": CLS,
                  "[SEP]": SEP}
# Specials that may be written literally in input text. PAD/BOS/EOS/UNK are not: a corpus that happens to
# contain "[EOS]" must not fake a document boundary.
LITERAL_SPECIALS = {"[MASK]": MASK, "[CLS]": CLS, "[SEP]": SEP}
_LITERAL_RE = re.compile("(" + "|".join(re.escape(t) for t in LITERAL_SPECIALS) + ")")


@dataclass(frozen=True)
class SpecialIds:
    """Which id plays which special role in a vocabulary (None: the vocabulary has no such token).

    `eos` separates documents in the token stream and stops sampling; `pad` fills classification rows (its
    positions carry no loss); `mask` is what MLM and fill-mask write; `cls`/`sep` frame an encoder's input.
    `reserved` are further ids that are never ordinary text (jaxformer's id 7)."""

    pad: int | None = PAD
    unk: int | None = UNK
    bos: int | None = BOS
    eos: int | None = EOS
    mask: int | None = MASK
    cls: int | None = CLS
    sep: int | None = SEP
    reserved: tuple[int, ...] = (7,)

    ROLES: ClassVar[tuple[str, ...]] = ("pad", "unk", "bos", "eos", "mask", "cls", "sep")

    @property
    def all(self) -> tuple[int, ...]:
        """Every special id, sorted: MLM never masks these, nor draws them as random replacements."""
        return tuple(sorted({getattr(self, r) for r in self.ROLES if getattr(self, r) is not None}
                            | set(self.reserved)))

    @property
    def fill(self) -> int:
        """The id that right-pads classification rows: PAD, else EOS (as GPT-2, which has no PAD, does)."""
        for value in (self.pad, self.eos, self.sep):
            if value is not None:
                return value
        return 0

    def spec(self) -> str:
        """The config string (`data.special_ids`): empty for jaxformer's fixed table."""
        if self == DEFAULT_SPECIALS:
            return ""
        roles = [f"{r}={getattr(self, r)}" for r in self.ROLES if getattr(self, r) is not None]
        return ",".join(roles + [f"reserved={i}" for i in self.reserved])

    @classmethod
    def parse(cls, spec: str) -> SpecialIds:
        """Inverse of `spec`; UserError for anything else."""
        if not spec:
            return DEFAULT_SPECIALS
        values: dict = dict.fromkeys(cls.ROLES)
        reserved = []
        for item in spec.split(","):
            role, _, raw = item.partition("=")
            role = role.strip()
            if role not in (*cls.ROLES, "reserved") or not raw.strip().isdigit():
                raise UserError(f"Bad data.special_ids {spec!r}: it is recorded from the tokenizer as "
                                f"role=id,... with roles {', '.join(cls.ROLES)}; leave it unset.")
            if role == "reserved":
                reserved.append(int(raw))
            else:
                values[role] = int(raw)
        return cls(**values, reserved=tuple(reserved))


DEFAULT_SPECIALS = SpecialIds()

TOKENIZER_DIR = "tokenizer"
META_FILE = "tokenizer.json"
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """Lone surrogates (from JSON "\\ud800" escapes or surrogateescape'd file names) cannot be UTF-8/UTF-32
    encoded: they become U+FFFD, as an invalid byte does when a file is decoded."""
    return text if text.isascii() else _SURROGATE_RE.sub("\ufffd", text)


def _split_literals(text: str) -> list[str]:
    """Split text around literal specials: ["the ", "[MASK]", " sat"]; cheap when there are none."""
    if "[" not in text:
        return [text]
    return [part for part in _LITERAL_RE.split(text) if part]


class Tokenizer:
    """Base: `encode` str -> int32 ids (no specials added), `decode` ids -> str (specials dropped)."""

    kind: str = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def special_ids(self) -> SpecialIds:
        """Which ids are PAD, EOS, MASK, ... in this vocabulary (jaxformer's fixed table by default)."""
        return DEFAULT_SPECIALS

    @property
    def mask_token(self) -> str | None:
        """The text that stands for a masked token in fill-mask input (None: the vocabulary has none)."""
        return "[MASK]"

    @property
    def char_level(self) -> bool:
        """True when one token is at most one character (bits per character = bits per token)."""
        return self.kind in ("char", "byte")

    @property
    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:  # tokenizers are immutable: hash once
            self._fingerprint = hashlib.sha256(self._content()).hexdigest()[:16]
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        parts = _split_literals(without_surrogates(text))
        if len(parts) == 1 and parts[0] not in LITERAL_SPECIALS:
            return self._encode_plain(parts[0])
        chunks = [np.array([LITERAL_SPECIALS[p]], np.int32) if p in LITERAL_SPECIALS else self._encode_plain(p)
                  for p in parts]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._decode_plain(ids[ids >= N_SPECIAL])

    def save(self, workdir: str | os.PathLike) -> None:
        folder = Path(workdir) / TOKENIZER_DIR
        for name, data in self._files().items():
            atomic.write_bytes(folder / name, data)
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint,
                **self._meta()}
        atomic.write_bytes(folder / META_FILE, json.dumps(meta, indent=2).encode())

    # subclass hooks
    def _encode_plain(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def _decode_plain(self, ids: np.ndarray) -> str:
        raise NotImplementedError

    def _content(self) -> bytes:
        raise NotImplementedError

    def _meta(self) -> dict:
        return {}

    def _files(self) -> dict[str, bytes]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size}, fp={self.fingerprint})"
