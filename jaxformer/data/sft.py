"""Instruction-tuning data: prompt → response pairs, the chat template, and rows of token ids with a loss mask.

    pairs = read_pairs("gsm8k", "train")                 # or a .jsonl file: {"prompt": ..., "response": ...}
    template = Template.parse(cfg.objective.template)    # "### Question:\n{prompt}\n### Answer:\n{response}"
    rows = build_rows([encode_pair(tok, template, p) for p in pairs], seq_len + 1, packing=..., fill_id=..., seed=...)
    batch = rows.batch_at(batch_size=B, seed=s, step=i)  # {"tokens", "loss_mask"[, "segment_ids", "positions"]}

- The template has one `{prompt}` and one `{response}`. Everything up to `{response}` is the prompt part: its
  tokens (template text included) carry loss weight 0. `{response}`, any template text after it and the EOS that
  closes every pair carry weight 1. The two parts are tokenized separately, so training sees exactly the prompt
  tokens that decoding is given. `\\n` and `\\t` written in a template (e.g. through --set) mean newline and tab.
- Rows hold `seq_len + 1` tokens, as pretraining windows do (the objective shifts them by one). Unpacked: one
  pair per row, right-padded with the vocabulary's fill id (loss 0). Packed (`data.packing=true`): whole pairs
  are placed one after another (next fit, in a seeded order) with `segment_ids` 1, 2, ... per pair (0 on the
  padding) and `positions` restarting at 0 in each pair, so attention and positions never cross a pair (the
  same arrays as document-aware pretraining packing). A pair longer than a row is cut at the row's end.
- Batches are addressed by (seed, step), a fresh seeded permutation of the rows each epoch (as fine-tuning's),
  so resuming sees exactly what an uninterrupted run would.
- Named tasks live in the data root: `gsm8k` is `@data/gsm8k/{train,test}.jsonl` (question → answer). Files are
  JSON lines in UTF-8; the prompt and response fields are found by their usual names (`PROMPT_FIELDS`,
  `RESPONSE_FIELDS`) or named with `PairColumns` (`--prompt-column`, `--response-column`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxformer.data.batching import local_rows
from jaxformer.data.classification_batches import batch_rows
from jaxformer.data.root import PREFIX, data_root, is_data_path, not_under_root, resolve_data_path
from jaxformer.data.tokenizers import Tokenizer
from jaxformer.errors import UserError

DEFAULT_TEMPLATE = "### Question:\n{prompt}\n### Answer:\n{response}"
PROMPT_FIELDS = ("prompt", "question", "instruction", "input")
RESPONSE_FIELDS = ("response", "answer", "output", "completion")
NAMED_TASKS = {"gsm8k": ("gsm8k", ("train", "test"))}  # name -> (folder under the data root, its splits)
_SPLIT_ALIASES = {"valid": "test", "validation": "test", "dev": "test"}


# ---------------------------------------------------------------------------------------------- template

@dataclass(frozen=True)
class Template:
    """A chat template cut at its placeholders: before + prompt + between | response + after."""

    before: str
    between: str
    after: str

    @classmethod
    def parse(cls, text: str) -> Template:
        text = text.replace("\\n", "\n").replace("\\t", "\t")
        if text.count("{prompt}") != 1 or text.count("{response}") != 1 or \
                text.index("{prompt}") > text.index("{response}"):
            raise UserError(f"Bad value {text!r} for objective.template: it needs one {{prompt}} followed by one "
                            f"{{response}}, e.g. {DEFAULT_TEMPLATE!r}.")
        before, rest = text.split("{prompt}")
        between, after = rest.split("{response}")
        return cls(before, between, after)

    def prompt_part(self, prompt: str) -> str:
        """What decoding is given: the template up to where the response starts."""
        return self.before + prompt + self.between

    def response_part(self, response: str) -> str:
        return response + self.after


# ---------------------------------------------------------------------------------------------- files

@dataclass(frozen=True)
class PairColumns:
    """The prompt and response field names; empty: the first of the usual names present."""

    prompt: str = ""
    response: str = ""


@dataclass(frozen=True)
class Pair:
    prompt: str
    response: str
    where: str = ""  # "path:line", for messages


def is_named_task(name: str) -> bool:
    return name in NAMED_TASKS


def pairs_path(name_or_path: str, split: str = "train") -> Path:
    """A named task's split file, or a .jsonl path (`@data/` resolved); one sentence when it is not there."""
    if is_named_task(name_or_path):
        folder, splits = NAMED_TASKS[name_or_path]
        split = _SPLIT_ALIASES.get(split, split)
        if split not in splits:
            raise UserError(f"Task {name_or_path} has no split {split!r}: use one of {', '.join(splits)}.")
        path = data_root() / folder / f"{split}.jsonl"
        if not path.is_file():
            raise UserError(not_under_root(f"{folder}/{split}.jsonl (the {name_or_path} data)"))
        return path
    if Path(name_or_path).suffix not in (".jsonl", ".json"):
        raise UserError(f"Unknown instruction data {name_or_path!r}: use {', '.join(NAMED_TASKS)} or a .jsonl file "
                        f"with a prompt and a response field per line.")
    path = resolve_data_path(name_or_path)
    if path.is_file():
        return path
    if is_data_path(name_or_path):
        raise UserError(not_under_root(name_or_path[len(PREFIX):]))
    raise UserError(f"{path} does not exist: check the path of the prompt/response file.")


def _field(record: dict, named: str, usual: tuple[str, ...], where: str, what: str) -> str:
    if named:
        if named not in record:
            raise UserError(f"{where} has no {named!r} field (found: {', '.join(record) or 'none'}): give every line "
                            f"one, or name the {what} field with --{what}-column.")
        key = named
    else:
        key = next((k for k in usual if k in record), None)
        if key is None:
            raise UserError(f"{where} has no {what} field (found: {', '.join(record) or 'none'}): name it one of "
                            f"{', '.join(usual)}, or pass --{what}-column NAME.")
    if not isinstance(record[key], str):
        raise UserError(f"{where} has a {type(record[key]).__name__} as its {key!r}, not a string: fix that line.")
    return record[key]


def read_pairs(name_or_path: str, split: str = "train", columns: PairColumns = PairColumns()) -> list[Pair]:
    """Every pair of a named task's split or of a JSON-lines file (blank lines skipped), in file order."""
    path = pairs_path(name_or_path, split)
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a .jsonl file: give the file's path.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded): save it as UTF-8.") from None
    pairs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{where} is not valid JSON: fix that line.") from None
        if not isinstance(record, dict):
            raise UserError(f"{where} is a JSON {type(record).__name__}, not an object: write one object with a "
                            f"prompt and a response field per line.")
        pairs.append(Pair(_field(record, columns.prompt, PROMPT_FIELDS, where, "prompt"),
                          _field(record, columns.response, RESPONSE_FIELDS, where, "response"), where))
    if not pairs:
        raise UserError(f"{path} has no prompt/response pairs: it needs one JSON object per line.")
    return pairs


# ---------------------------------------------------------------------------------------------- answers

_FINAL_ANSWER = re.compile(r"####\s*(-?[0-9][0-9.,]*)")


def final_answer(text: str) -> str | None:
    """The number after the first `#### ` (GSM8K's answer line), commas and a trailing period dropped; None if
    there is none."""
    match = _FINAL_ANSWER.search(text)
    return match.group(1).replace(",", "").rstrip(".") if match else None


def is_exact_match(generated: str, reference: str) -> bool:
    """GSM8K style: the final numbers agree when the reference has one; otherwise the whole responses agree
    (surrounding whitespace aside)."""
    wanted = final_answer(reference)
    if wanted is None:
        return generated.strip() == reference.strip()
    return final_answer(generated) == wanted


# ---------------------------------------------------------------------------------------------- encoding

@dataclass(frozen=True)
class EncodedPair:
    ids: np.ndarray  # int32 [n]: prompt part, response part, EOS
    n_prompt: int  # the first n_prompt ids carry no loss


def encode_pair(tokenizer: Tokenizer, template: Template, pair: Pair) -> EncodedPair:
    eos = tokenizer.special_ids.eos
    if eos is None:
        raise UserError(f"The run's {tokenizer.kind} tokenizer has no EOS token to end a response with: "
                        f"instruction-tune a run whose tokenizer has one.")
    prompt_ids = tokenizer.encode(template.prompt_part(pair.prompt))
    response_ids = tokenizer.encode(template.response_part(pair.response))
    if len(prompt_ids) == 0:
        raise UserError(f"{pair.where or 'A pair'} has an empty prompt and the template adds no text before the "
                        f"response: give the template text before {{response}}.")
    return EncodedPair(np.concatenate([prompt_ids, response_ids, [eos]]).astype(np.int32), len(prompt_ids))


def prompt_ids(tokenizer: Tokenizer, template: Template, prompt: str) -> np.ndarray:
    """The tokens that decoding is given for `prompt` (the same ids `encode_pair` puts before the response)."""
    return tokenizer.encode(template.prompt_part(prompt))


@dataclass
class SFTRows:
    """Rows of `length` tokens: tokens [R, L] int32, loss_mask [R, L] uint8 (1 on response tokens and EOS), and
    with packing segment_ids / positions [R, L] int32."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    segment_ids: np.ndarray | None
    positions: np.ndarray | None
    n_real: np.ndarray  # int64 [R]: tokens of each row that belong to a pair (the rest is padding)
    n_pairs: int
    n_truncated: int  # pairs cut at the row's end
    n_no_response: int  # of those, pairs whose response did not fit at all (they train nothing)

    @property
    def n_rows(self) -> int:
        return len(self.tokens)

    def rows(self, index: np.ndarray) -> dict:
        out = {"tokens": self.tokens[index], "loss_mask": self.loss_mask[index]}
        if self.segment_ids is not None:
            out.update(segment_ids=self.segment_ids[index], positions=self.positions[index])
        return out

    def batch_at(self, *, batch_size: int, seed: int, step: int, process_index: int = 0,
                 process_count: int = 1) -> dict:
        """This process's rows of the global training batch at (seed, step)."""
        chosen = batch_rows(self.n_rows, batch_size=batch_size, seed=seed, step=step)
        return self.rows(chosen[local_rows(batch_size, process_index, process_count)])

    def real_tokens_at(self, *, batch_size: int, seed: int, step: int) -> int:
        """The tokens of the global batch at (seed, step) that belong to a pair (what throughput counts)."""
        chosen = batch_rows(self.n_rows, batch_size=batch_size, seed=seed, step=step)
        return int(self.n_real[chosen].sum())

    def eval_batches(self, batch_size: int, *, process_index: int = 0, process_count: int = 1) -> list[dict]:
        """Every row in order, in full-size batches; the last is filled with rows of no loss."""
        n = -(-self.n_rows // batch_size) * batch_size
        index = np.arange(n) % self.n_rows
        empty = np.arange(n) >= self.n_rows
        rows = local_rows(batch_size, process_index, process_count)
        out = []
        for start in range(0, n, batch_size):
            batch = self.rows(index[start:start + batch_size][rows])
            batch["loss_mask"] = np.where(empty[start:start + batch_size][rows, None], 0,
                                          batch["loss_mask"]).astype(np.uint8)
            out.append(batch)
        return out


def build_rows(pairs: list[EncodedPair], length: int, *, packing: bool, fill_id: int, seed: int) -> SFTRows:
    """Pairs -> rows of `length` tokens (see the module docstring). Packing places the pairs, in an order seeded
    by `seed`, into the current row while they fit and opens a new row when one does not."""
    if not pairs:
        raise UserError("There are no prompt/response pairs to train on.")
    cut = [p.ids[:length] for p in pairs]
    n_truncated = sum(len(p.ids) > length for p in pairs)
    n_no_response = sum(p.n_prompt >= length for p in pairs)
    if packing:
        order = np.random.default_rng(seed).permutation(len(pairs))
        layout: list[list[int]] = [[]]
        used = 0
        for i in order:
            if used + len(cut[i]) > length and layout[-1]:
                layout.append([])
                used = 0
            layout[-1].append(int(i))
            used += len(cut[i])
    else:
        layout = [[i] for i in range(len(pairs))]
    tokens = np.full((len(layout), length), fill_id, np.int32)
    loss_mask = np.zeros((len(layout), length), np.uint8)
    segment_ids = np.zeros((len(layout), length), np.int32)
    positions = np.zeros((len(layout), length), np.int32)
    n_real = np.zeros(len(layout), np.int64)
    for r, members in enumerate(layout):
        at = 0
        for k, i in enumerate(members):
            ids = cut[i]
            n = len(ids)
            tokens[r, at:at + n] = ids
            loss_mask[r, at + min(pairs[i].n_prompt, n):at + n] = 1
            segment_ids[r, at:at + n] = k + 1
            positions[r, at:at + n] = np.arange(n)
            at += n
        n_real[r] = at
    if not packing:  # one pair per row: causal attention alone keeps it from the padding after it
        segment_ids = positions = None
    return SFTRows(tokens, loss_mask, segment_ids, positions, n_real, len(pairs), n_truncated, n_no_response)
