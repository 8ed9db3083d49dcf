"""SQuAD exact match and F1, exactly as the official SQuAD 2.0 evaluation script (`evaluate-v2.0.py`) computes them:
answers normalised (lower case; punctuation, the articles a/an/the and extra whitespace removed), the best score over
a question's gold answers that normalise to something, the empty answer as the only gold of an unanswerable question
(or of one whose golds all normalise to nothing); F1 over normalised tokens. `SquadScores` accumulates them, with the
script's HasAns / NoAns breakdown (a question "has an answer" when its answer list is not empty), on a 0-100 scale.

Why not torchmetrics' `SQuAD`: it is the v1.1 metric. It cannot score an unanswerable question (no gold answer), keeps
golds that normalise to nothing, and has no HasAns/NoAns split; on answerable questions both agree (tests/test_qa.py).
"""

from __future__ import annotations

import collections
import re
import string

import torch
from torchmetrics import Metric

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the script's order of steps)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def answer_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1(gold: str, pred: str) -> float:
    gold_toks, pred_toks = answer_tokens(gold), answer_tokens(pred)
    if not gold_toks or not pred_toks:  # no answer on either side: 1 if both are empty, else 0
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def score(golds: list[str], pred: str) -> tuple[int, float]:
    """(exact, F1) of one predicted answer ('' for no answer) against a question's gold answer texts ([] when
    unanswerable): the maximum over the golds that normalise to something, else against ''."""
    golds = [g for g in golds if normalize_answer(g)] or [""]
    return max(exact(g, pred) for g in golds), max(f1(g, pred) for g in golds)


class SquadScores(Metric):
    """The official SQuAD 2.0 numbers over the questions seen: `update(predictions, golds)` (one predicted text and one
    list of gold texts per question), `compute()` -> {'exact', 'f1'} and, for each group that has questions,
    'has_ans_exact', 'has_ans_f1' / 'no_ans_exact', 'no_ans_f1' (the script's HasAns_* / NoAns_*), all 0-100.
    States are sums, so they add up across DDP ranks."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # rows: has answer, no answer; columns: exact sum, F1 sum, questions
        self.add_state("sums", torch.zeros(2, 3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: list[str], golds: list[list[str]]) -> None:
        rows = torch.zeros(2, 3, dtype=torch.float64)
        for pred, gold in zip(predictions, golds, strict=True):
            em, f = score(gold, pred)
            rows[0 if gold else 1] += torch.tensor([em, f, 1.0], dtype=torch.float64)
        self.sums += rows.to(self.sums.device)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.sums.sum(0)
        out = {"exact": 100 * total[0] / total[2].clamp_min(1), "f1": 100 * total[1] / total[2].clamp_min(1)}
        for name, (em, f, n) in zip(("has_ans", "no_ans"), self.sums):
            if n > 0:
                out.update({f"{name}_exact": 100 * em / n, f"{name}_f1": 100 * f / n})
        return out
