"""Entity-level precision / recall / F1 of BIO tag sequences, with the CoNLL shared tasks' semantics (conlleval).

    spans = entity_spans(["B-PER", "I-PER", "O", "I-LOC"])    # {("PER", 0, 2), ("LOC", 3, 4)}   end exclusive
    scores = entity_scores(gold_seqs, pred_seqs)              # precision, recall, f1, per_type, counts

An entity counts as found only when its type and its exact span match a gold entity. As in conlleval, an `I-X`
that does not continue an `X` entity (after `O`, after another type, or first in the sentence) opens a new
entity rather than being dropped, and `B-X` right after an `X` entity starts a second, adjacent one. Precision
is 0 when nothing is predicted (and likewise recall with no gold entities), so the all-`O` baseline scores F1 0.
Overall figures are micro-averaged over all entities; `per_type` has each type's own P/R/F1 and gold support.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def _split(tag: str) -> tuple[str, str]:
    """("B" | "I" | "O", type); a tag without a prefix (e.g. "PER") is read as I-PER, as conlleval does."""
    if tag == "O" or not tag:
        return "O", ""
    prefix, dash, kind = tag.partition("-")
    if dash and prefix in ("B", "I"):
        return prefix, kind
    return "I", tag


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The (type, start, end) entities of one tag sequence, end exclusive."""
    spans: set[tuple[str, int, int]] = set()
    kind, start = "", -1  # the open entity
    for i, tag in enumerate(tags):
        prefix, this = _split(tag)
        continues = prefix == "I" and this == kind and start >= 0
        if start >= 0 and not continues:
            spans.add((kind, start, i))
            kind, start = "", -1
        if prefix != "O" and not continues:
            kind, start = this, i
    if start >= 0:
        spans.add((kind, start, len(tags)))
    return spans


def _prf(correct: int, predicted: int, gold: int) -> dict:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro P/R/F1 over all entities of all sentences, per-type P/R/F1 with gold support, and the counts."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    n_gold, n_pred, n_correct = Counter(), Counter(), Counter()
    for g_tags, p_tags in zip(gold, predicted, strict=True):
        if len(g_tags) != len(p_tags):
            raise ValueError(f"a sentence of {len(g_tags)} gold tags has {len(p_tags)} predicted ones")
        g, p = entity_spans(g_tags), entity_spans(p_tags)
        n_gold.update(kind for kind, _, _ in g)
        n_pred.update(kind for kind, _, _ in p)
        n_correct.update(kind for kind, _, _ in g & p)
    totals = (sum(n_correct.values()), sum(n_pred.values()), sum(n_gold.values()))
    per_type = {kind: {**_prf(n_correct[kind], n_pred[kind], n_gold[kind]), "support": n_gold[kind]}
                for kind in sorted(set(n_gold) | set(n_pred))}
    return {**_prf(*totals), "per_type": per_type, "n_gold_entities": totals[2], "n_predicted_entities": totals[1],
            "n_correct_entities": totals[0]}
