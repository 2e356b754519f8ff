"""A Hugging Face model's own tokenizer (GPT-2 byte-level BPE, BERT WordPiece, ...) behind jaxformer's
`Tokenizer` interface, through the `tokenizers` library (no transformers, no torch).

It is read from a model folder's `tokenizer.json` (the file every fast tokenizer's `save_pretrained` writes) and
the special-token roles in `tokenizer_config.json` / `special_tokens_map.json`; it keeps the vocabulary's own
ids, so `special_ids` reports where PAD, EOS, MASK, ... are in it (a BERT vocabulary has no EOS: its [SEP]
separates documents). `encode` adds no specials (no [CLS]/[SEP] framing) but reads the literal special texts in
the input ("[MASK]", "<|endoftext|>") as those tokens, as the reference tokenizer does; `decode` drops them.

Saved with the run as `tokenizer/hf_tokenizer.json` plus the roles in jaxformer's `tokenizer/tokenizer.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from jaxformer.data.tokenizer_base import SpecialIds, Tokenizer, without_surrogates
from jaxformer.errors import UserError

HF_FILE = "hf_tokenizer.json"
# The roles a Hugging Face tokenizer config names, and where jaxformer keeps them.
_ROLE_KEYS = {"pad": "pad_token", "unk": "unk_token", "bos": "bos_token", "eos": "eos_token", "mask": "mask_token",
              "cls": "cls_token", "sep": "sep_token"}


def _token_text(value) -> str | None:
    """A tokenizer config's special-token entry: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def read_roles(folder: Path) -> dict[str, str]:
    """role -> token text from a model folder's tokenizer_config.json and special_tokens_map.json."""
    roles: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not readable JSON ({type(err).__name__}): restore the model folder's "
                            f"tokenizer files.") from None
        for role, key in _ROLE_KEYS.items():
            text = _token_text(data.get(key))
            if text is not None:
                roles.setdefault(role, text)
    return roles


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, tokenizer_json: bytes, roles: dict[str, str]):
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError:  # pragma: no cover - a core dependency
            raise UserError("Hugging Face tokenizers need the `tokenizers` package: pip install tokenizers.") from None
        self.tokenizer_json = bytes(tokenizer_json)
        try:
            self._tok = RustTokenizer.from_str(self.tokenizer_json.decode("utf-8"))
        except Exception as err:  # the library raises plain Exception for a malformed file
            raise ValueError(f"not a Hugging Face tokenizer.json: {err}") from None
        self.roles = {role: text for role, text in roles.items() if role in _ROLE_KEYS}
        ids = {}
        for role, text in self.roles.items():
            token_id = self._tok.token_to_id(text)
            if token_id is None:
                raise ValueError(f"its {role} token {text!r} is not in the vocabulary")
            ids[role] = token_id
        # No EOS (BERT): [SEP] separates documents, as in BERT's own pretraining data.
        self._special_ids = SpecialIds(**{r: ids.get(r) for r in SpecialIds.ROLES if r != "eos"},
                                       eos=ids.get("eos", ids.get("sep")), reserved=())

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFTokenizer:
        """The tokenizer of a saved Hugging Face model folder (its tokenizer.json and special-token roles)."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise UserError(f"{folder} has no tokenizer.json: save the model's fast tokenizer there "
                            f"(`AutoTokenizer.from_pretrained(...).save_pretrained('{folder}')`).")
        try:
            return cls(path.read_bytes(), read_roles(folder))
        except ValueError as err:
            raise UserError(f"The tokenizer in {folder} is unusable ({err}): restore its tokenizer files.") from None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> SpecialIds:
        return self._special_ids

    @property
    def mask_token(self) -> str | None:
        return self.roles.get("mask")

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(without_surrogates(text), add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids < self.vocab_size)]
        return self._tok.decode(ids.tolist(), skip_special_tokens=True)

    def save_pretrained(self, out: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json, which `transformers.AutoTokenizer.from_pretrained` reads."""
        from jaxformer import atomic

        out = Path(out)
        atomic.write_bytes(out / "tokenizer.json", self.tokenizer_json)
        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  **{_ROLE_KEYS[role]: text for role, text in self.roles.items()}}
        atomic.write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")

    def _content(self) -> bytes:
        return b"hf\0" + self.tokenizer_json + b"\0" + json.dumps(self.roles, sort_keys=True).encode()

    def _meta(self) -> dict:
        return {"roles": self.roles}

    def _files(self) -> dict[str, bytes]:
        return {HF_FILE: self.tokenizer_json}
