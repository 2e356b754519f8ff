"""Evaluation on held-out text, the way papers report it (`heldout.py`: every token once, per token / byte /
word), and the n-gram baseline it is compared with (`ngram.py`: interpolated Kneser-Ney in numpy)."""
