"""Tagged sentences as token rows for a tagger: first-subword labelling, truncation that is counted.

    enc = encode_tagged(sentences, tokenizer, seq_len, causal=..., labels=tag_map)
    enc.tokens_NxT        int32, `[CLS] words [SEP]` (encoder) or `words [EOS]` (decoder), padded with the fill id
    enc.labels_NxT        int32 tag id at each word's first subword, -1 elsewhere (specials, padding, later
                          subwords): those positions carry exactly zero loss weight
    enc.n_words_kept_N    how many leading words of each sentence fit in seq_len (the rest are truncated)
    enc.word_positions    per sentence, the position of each kept word's tagged subword (where predictions are read)
    enc.n_truncated_words, enc.n_truncated_entities     what truncation cost, reported, never silent
    tagging_eval_batches(tokens, labels, B, fill_id=...)  the whole split in full-size batches (last one padded)

Words are tokenized one at a time with the pretrained run's tokenizer, so subwords never straddle two words.
Words after the first are encoded with the space that separated them in the text the backbone was pretrained
on (a character-level model saw " word", a GPT-2 vocabulary has "Ġword"); tokens that decode to whitespace
alone carry no label, so the tag goes on the first subword that holds the word (for characters: its first
character). A word that does not fit in the row whole is dropped with every word after it (its tags are
predicted as O for scoring, so a truncated entity counts as missed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from jaxformer.data.batching import local_rows
from jaxformer.data.conll import TaggedSentence
from jaxformer.data.labels import LabelMap, RawLabel
from jaxformer.data.tokenizers import Tokenizer
from jaxformer.errors import UserError
from jaxformer.evaluation.entities import entity_spans

IGNORE = -1  # label of a position that carries no loss and is not scored


@dataclass
class EncodedTags:
    tokens_NxT: np.ndarray
    labels_NxT: np.ndarray
    n_words_kept_N: np.ndarray
    word_positions: list[np.ndarray]
    n_truncated_words: int
    n_truncated_entities: int


def tag_map(sentences: list[TaggedSentence], source: str) -> LabelMap:
    """The tag set of a new tagging run: every tag of the training sentences, sorted (`O` included)."""
    return LabelMap.from_examples([RawLabel(tag, s.where) for s in sentences for tag in s.tags if tag], source)


def tag_ids(sentences: list[TaggedSentence], labels: LabelMap) -> list[np.ndarray]:
    """Each sentence's tags as ids of the run's map (a tag the run never trained on is one sentence)."""
    return [labels.ids([RawLabel(tag, s.where) for tag in s.tags]) for s in sentences]


def word_pieces(tokenizer: Tokenizer, word: str, *, first: bool) -> tuple[np.ndarray, int]:
    """The ids of one word as it appears in running text, and the index of the subword that carries its tag."""
    ids = np.asarray(tokenizer.encode(word if first else " " + word), np.int32)
    return ids, _first_content(tokenizer, tuple(int(i) for i in ids))


@lru_cache(maxsize=65536)
def _whitespace_only(tokenizer: Tokenizer, token_id: int) -> bool:
    return not tokenizer.decode([token_id]).strip()


def _first_content(tokenizer: Tokenizer, ids: tuple[int, ...]) -> int:
    for i, token_id in enumerate(ids):
        if not _whitespace_only(tokenizer, token_id):
            return i
    return 0


def encode_tagged(sentences: list[TaggedSentence], tokenizer: Tokenizer, seq_len: int, *, causal: bool,
                  labels: LabelMap | None) -> EncodedTags:
    """Rows for `sentences` (see the module docstring); `labels=None` encodes words only (prediction)."""
    ids_of = tokenizer.special_ids
    frame = [ids_of.eos] if causal else [ids_of.cls, ids_of.sep]
    if None in frame:
        raise UserError(f"The run's {tokenizer.kind} tokenizer has no {'EOS' if causal else '[CLS]/[SEP]'} token to "
                        f"frame a tagging input with: fine-tune a run whose tokenizer has one.")
    room = seq_len - len(frame)
    if room < 1:
        raise UserError(f"train.seq_len={seq_len} leaves no room for words next to the special tokens: raise it.")
    tags = tag_ids(sentences, labels) if labels is not None else None
    out_tokens = np.full((len(sentences), seq_len), ids_of.fill, np.int32)
    out_labels = np.full((len(sentences), seq_len), IGNORE, np.int32)
    kept_N = np.zeros(len(sentences), np.int64)
    positions: list[np.ndarray] = []
    lost_words = lost_entities = 0
    offset = 0 if causal else 1
    for n, sentence in enumerate(sentences):
        pos, starts = offset, []
        for w, word in enumerate(sentence.words):
            ids, first = word_pieces(tokenizer, word, first=w == 0)
            if pos + len(ids) > offset + room:
                break
            out_tokens[n, pos:pos + len(ids)] = ids
            starts.append(pos + first)
            if tags is not None:
                out_labels[n, pos + first] = tags[n][w]
            pos += len(ids)
            kept_N[n] = w + 1
        if causal:
            out_tokens[n, pos] = frame[0]
        else:
            out_tokens[n, 0], out_tokens[n, pos] = frame
        positions.append(np.asarray(starts, np.int64))
        kept = int(kept_N[n])
        if kept < len(sentence.words):
            lost_words += len(sentence.words) - kept
            lost_entities += sum(end > kept for _, _, end in entity_spans(sentence.tags))
    return EncodedTags(out_tokens, out_labels, kept_N, positions, lost_words, lost_entities)


def tagging_eval_batches(tokens_NxT: np.ndarray, labels_NxT: np.ndarray, batch_size: int, *, fill_id: int,
                         process_index: int = 0, process_count: int = 1) -> list[dict]:
    """The whole split in order, in full-size batches: the last is padded with rows of `fill_id` labelled -1."""
    n = len(tokens_NxT)
    n_batches = math.ceil(n / batch_size)
    pad = n_batches * batch_size - n
    tokens = np.concatenate([tokens_NxT, np.full((pad, tokens_NxT.shape[1]), fill_id, np.int32)])
    labels = np.concatenate([labels_NxT, np.full((pad, labels_NxT.shape[1]), IGNORE, np.int32)])
    rows = local_rows(batch_size, process_index, process_count)
    return [{"tokens": tokens[i * batch_size:(i + 1) * batch_size][rows],
             "labels": labels[i * batch_size:(i + 1) * batch_size][rows]} for i in range(n_batches)]
