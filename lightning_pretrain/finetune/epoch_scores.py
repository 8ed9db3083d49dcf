"""Logging a metric whose `compute` returns several values (seqeval's entity scores, SQuAD's EM/F1 breakdown).

Lightning logs a torchmetrics object itself only when it returns one value; these are computed at the epoch's end
(synchronised across ranks by torchmetrics, so no `sync_dist`), logged as `<prefix>/<name>` beside the mean loss,
and reset.
"""

from __future__ import annotations

import lightning as L
from torchmetrics import MeanMetric, Metric


def log_epoch_scores(module: L.LightningModule, prefix: str, scores: Metric, mean_loss: MeanMetric) -> None:
    if mean_loss.update_count == 0:
        return
    values = {f"{prefix}/{k}": v.float() for k, v in scores.compute().items()}
    module.log_dict({f"{prefix}/loss": mean_loss.compute(), **values}, prog_bar=True)
    scores.reset()
    mean_loss.reset()
