"""Generation metrics on sacreBLEU's 0-100 scale, as torchmetrics whose states sum across DDP ranks: sacreBLEU (13a
tokens, sacreBLEU's default exponential smoothing; equal to `sacrebleu.corpus_bleu`), chrF (character 6-grams,
beta 2; equal to `sacrebleu.corpus_chrf`, also for empty generations), ROUGE-1/2/L F-measure (torchmetrics' `ROUGEScore`, no stemming; ROUGE-Lsum
is left out: it needs nltk's punkt download) and exact match after whitespace normalisation. Each metric's `update`
takes the generations and one reference per generation, both lists of strings.
"""

from __future__ import annotations

import torch
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.helpers import extract_all_char_ngrams
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from lightning_pretrain.errors import InputError


class SacreBLEU(SacreBLEUScore):
    """torchmetrics accumulates sacreBLEU's n-gram statistics; sacreBLEU itself turns them into the score, so the
    smoothing is sacreBLEU's default ('exp', torchmetrics has only add-1) and the number is `corpus_bleu`'s."""

    def update(self, preds: list[str], refs: list[str]) -> None:
        super().update(preds, [[r] for r in refs])

    def compute(self) -> torch.Tensor:
        score = BLEU.compute_bleu(
            [int(c) for c in self.numerator.tolist()],
            [int(t) for t in self.denominator.tolist()],
            int(self.preds_len),
            int(self.target_len),
            smooth_method="exp",
        ).score
        return torch.tensor(score, dtype=torch.float64)


class ChrF(Metric):
    """chrF (character 6-grams, beta 2, no word n-grams: sacreBLEU's defaults), 0-100, from per-order statistics
    summed over the corpus as sacreBLEU does. (torchmetrics' `CHRFScore` drops the reference n-grams of a generation
    that matches nothing, an empty one say, which inflates the score.)"""

    order, beta = 6, 2.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("stats", torch.zeros(self.order, 3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: list[str], refs: list[str]) -> None:
        for pred, ref in zip(preds, refs, strict=True):
            pairs = zip(
                extract_all_char_ngrams(pred, self.order, False), extract_all_char_ngrams(ref, self.order, False)
            )
            counts = [[sum(h.values()), sum(r.values()), sum((h & r).values())] for h, r in pairs]
            self.stats += torch.tensor(counts, dtype=torch.float64, device=self.stats.device)

    def compute(self) -> torch.Tensor:
        hyp, ref, match = self.stats.unbind(-1)
        valid = (hyp > 0) & (ref > 0)  # sacreBLEU averages precision and recall over the orders both sides have
        if not valid.any():
            return torch.tensor(0.0, dtype=torch.float64)
        precision, recall = (match[valid] / hyp[valid]).mean(), (match[valid] / ref[valid]).mean()
        b2 = self.beta**2
        return 100 * (1 + b2) * precision * recall / (b2 * precision + recall).clamp_min(1e-300)


class Rouge(ROUGEScore):
    """One ROUGE variant's F-measure, 0-100 (torchmetrics lower-cases and keeps only [a-z0-9] tokens)."""

    def __init__(self, key: str, **kwargs):
        super().__init__(rouge_keys=key, **kwargs)
        self.key = key

    def compute(self) -> torch.Tensor:
        return super().compute()[f"{self.key}_fmeasure"] * 100


class ExactMatch(Metric):
    """Share of generations equal to their reference once runs of whitespace are one space, 0-100."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: list[str], refs: list[str]) -> None:
        self.correct += sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(preds, refs, strict=True))
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        return 100 * self.correct / self.total.clamp_min(1)


METRICS = {
    "sacrebleu": SacreBLEU,
    "chrf": ChrF,
    "rouge1": lambda: Rouge("rouge1"),
    "rouge2": lambda: Rouge("rouge2"),
    "rougeL": lambda: Rouge("rougeL"),
    "exact_match": ExactMatch,
}


def text_metrics(names: list[str] | tuple[str, ...]) -> MetricCollection:
    """The named metrics (keys of `METRICS`) as one collection: `update(generations, references)`, `compute()` ->
    {name: score}."""
    unknown = [n for n in names if n not in METRICS]
    if unknown or len(set(names)) != len(names):
        raise InputError(f"generation metrics must be distinct names among {', '.join(METRICS)}; got {list(names)}")
    return MetricCollection({n: METRICS[n]() for n in names}, compute_groups=False)
