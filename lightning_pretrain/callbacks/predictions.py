"""`JsonlPredictions`: writes what a module's `predict_step` returns, `{"rows": [dict, ...]}`, as JSON lines in input
order (`<run dir>/predictions.jsonl` or a chosen file; one file per rank under DDP, suffixed `.rank<N>`)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_pretrain.callbacks.export import run_dir


class JsonlPredictions(BasePredictionWriter):
    def __init__(self, path: str | None = None):
        """
        Args:
            path: the file to write (default `<run dir>/predictions.jsonl`).
        """
        super().__init__(write_interval="batch")
        self.path, self._fh, self.written = path, None, None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(self.path) if self.path else run_dir(trainer) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written, self._fh = path, open(path, "w", encoding="utf-8")

    def write_on_batch_end(self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        for row in prediction["rows"]:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            print(f"predictions: {self.written}")
