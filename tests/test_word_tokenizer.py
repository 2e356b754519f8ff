"""The word tokenizer (`data.tokenizer=word`): vocabulary from the training text, UNK for the rest, one token per
line end, fixed special ids, save/load/fingerprint, and a run trained with it end to end."""

from __future__ import annotations

import numpy as np
import pytest

from jaxformer.data import tokenizers as T

TRAIN = " the cat sat\n the dog sat on the <unk>\n"


def test_vocabulary_is_the_training_words_most_frequent_first():
    tok = T.train_tokenizer("word", TRAIN, 0)
    assert tok.kind == "word" and not tok.char_level
    # the line end first, then by count (the 3, sat 2), ties by spelling; "<unk>" is UNK, not a word
    assert tok.words == ["\n", "the", "sat", "cat", "dog", "on"]
    assert tok.vocab_size == T.N_SPECIAL + 6


def test_unseen_words_and_the_literal_unk_are_unk_and_lines_end_in_one_token():
    tok = T.train_tokenizer("word", TRAIN, 0)
    eol, the, sat, cat = (T.N_SPECIAL + i for i in range(4))
    ids = tok.encode("  the  zebra\tsat <unk>\n\ncat [MASK]")
    assert ids.tolist() == [the, T.UNK, sat, T.UNK, eol, eol, cat, T.MASK]
    assert tok.decode(ids) == "the <unk> sat <unk>\n\ncat"  # [MASK] dropped like every special; UNK written


def test_ptb_convention_one_token_per_word_and_per_line():
    text = " a b c \n b c \n a \n"
    ids = T.train_tokenizer("word", text, 0).encode(text)
    assert len(ids) == len(text.split()) + len(text.splitlines())  # PTB: 82,430 test tokens = words + lines


def test_save_load_and_fingerprint(tmp_path):
    tok = T.train_tokenizer("word", TRAIN, 0)
    tok.save(tmp_path)
    again = T.load_tokenizer(tmp_path)
    assert isinstance(again, T.WordTokenizer) and again.fingerprint == tok.fingerprint
    np.testing.assert_array_equal(again.encode(TRAIN), tok.encode(TRAIN))
    assert T.train_tokenizer("word", TRAIN + " mouse\n", 0).fingerprint != tok.fingerprint


@pytest.mark.slow
def test_a_word_level_run_trains_and_samples_words(tmp_path):
    from tiny import tiny_config

    from jaxformer import trainer

    corpus = tmp_path / "words.txt"
    rng = np.random.default_rng(0)
    corpus.write_text("".join(" " + " ".join(rng.choice(["a", "b", "c", "d", "<unk>"], 12)) + " \n"
                              for _ in range(200)))
    cfg = tiny_config("clm", resolved=False, data=dict(source=f"text:{corpus}", tokenizer="word"),
                      train=dict(steps=3, eval_every=3, log_every=3, eval_batches=1))
    result = trainer.train_loop(cfg, tmp_path / "run", show_progress=False)
    run = result["run"]
    assert run.tokenizer.kind == "word" and run.tokenizer.vocab_size == T.N_SPECIAL + 5  # a b c d + line end
    assert np.isfinite(result["valid_loss"])
