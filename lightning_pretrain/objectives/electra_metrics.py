"""ELECTRA's replaced-token detection metrics, "replaced" being the positive class: one batch's losses and calls
(`ElectraLosses`), and the torchmetrics collection each evaluation stage accumulates them in (`detection_metrics`,
`update_detection`). Kept apart from electra.py, whose objective computes the losses and logs these.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score, BinaryPrecision, BinaryRecall


class ElectraLosses(NamedTuple):
    gen: torch.Tensor  # generator MLM cross-entropy, mean over the selected positions
    disc: torch.Tensor  # discriminator BCE, mean over the non-padding tokens
    logits: torch.Tensor  # discriminator logits of the non-padding tokens (1-D)
    labels: torch.Tensor  # their labels: 1 replaced, 0 original
    selected: int  # positions the generator predicted


def detection_metrics(prefix: str) -> MetricCollection:
    """Replaced-token detection, "replaced" being the positive class: accuracy, precision, recall and F1 of the
    discriminator's calls (logit > 0) over the non-padding tokens, their AUROC (threshold-free: above 0.5 once the
    discriminator ranks replaced tokens higher, before any crosses probability 1/2), the generator's MLM loss and the
    share of tokens replaced. A discriminator that calls every token original has recall 0 (and precision 0)."""
    return MetricCollection(
        {
            "gen_loss": MeanMetric(),
            "replaced_fraction": MeanMetric(),
            "disc_acc": BinaryAccuracy(),
            "disc_precision": BinaryPrecision(),
            "disc_recall": BinaryRecall(),
            "disc_f1": BinaryF1Score(),
            # fixed thresholds, every 0.05 in logit space: constant memory, whatever the size of the validation set
            "disc_auroc": BinaryAUROC(thresholds=torch.linspace(-10, 10, 401).sigmoid()),
        },
        prefix=f"{prefix}/",
        compute_groups=False,
    )


def update_detection(metrics: MetricCollection, out: ElectraLosses) -> None:
    """Add one batch's losses and calls to `detection_metrics`."""
    prefix = metrics.prefix
    metrics[f"{prefix}gen_loss"].update(out.gen, weight=out.selected)
    metrics[f"{prefix}replaced_fraction"].update(out.labels.float().mean(), weight=len(out.labels))
    calls = (out.logits > 0).long()
    for name in ("disc_acc", "disc_precision", "disc_recall", "disc_f1"):
        metrics[f"{prefix}{name}"].update(calls, out.labels)
    metrics[f"{prefix}disc_auroc"].update(out.logits.sigmoid(), out.labels)
