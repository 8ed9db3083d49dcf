"""Lightning's progress bar (Rich when installed, else tqdm) made truthful for step-based runs: the bar says
`step 150/1000` where Lightning prints `Epoch 0/-2` (max_epochs -1), and the run's version number is not shown
among the metrics (`v_num: 0.000`)."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from lightning_pretrain import compat


def _describe(trainer, epoch: int) -> str:
    if trainer.max_steps > 0 and (trainer.max_epochs is None or trainer.max_epochs < 0):
        return f"Epoch {epoch} · {trainer.max_steps} steps"
    return f"Epoch {epoch}/{trainer.max_epochs - 1}" if trainer.max_epochs else f"Epoch {epoch}"


def _metrics(items: dict) -> dict:
    items.pop("v_num", None)
    return items


class RichBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        description = _describe(self.trainer, current_epoch)
        return f"{description:{len(self.validation_description)}}"  # padded as Lightning does (no flicker)

    def get_metrics(self, trainer, pl_module) -> dict:
        return _metrics(super().get_metrics(trainer, pl_module))

    def refresh_description(self, trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            theme = self.theme.description
            self.progress.update(
                self.train_progress_bar_id, description=f"[{theme}]{description}" if theme else description
            )


class TQDMBar(TQDMProgressBar):
    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer, *_)
        self.train_progress_bar.set_description(_describe(trainer, trainer.current_epoch))

    def get_metrics(self, trainer, pl_module) -> dict:
        return _metrics(super().get_metrics(trainer, pl_module))

    def refresh_description(self, trainer) -> None:
        if compat.tqdm_train_bar_exists(self):
            self.train_progress_bar.set_description(_describe(trainer, trainer.current_epoch))


def refresh(trainer) -> None:
    """Rewrite our bar's description now (the bars write it only at each epoch's start): after the run's total
    changed mid-epoch (the time budget fixing it)."""
    bar = trainer.progress_bar_callback
    if isinstance(bar, (RichBar, TQDMBar)):
        bar.refresh_description(trainer)


def progress_bar():
    """The bar Lightning would pick (Rich when installed), corrected as above."""
    return RichBar() if _RICH_AVAILABLE else TQDMBar()
