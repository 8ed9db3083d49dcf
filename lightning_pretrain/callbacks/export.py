"""At the end of `fit`: the model in Hugging Face format under `<run dir>/hf/` and the final metrics in
`<run dir>/metrics.json`; at the end of `validate` / `test`, their metrics in `<run dir>/validate_metrics.json` /
`<run dir>/test_metrics.json`. The tokenizer is saved with the run (`<run dir>/tokenizer/`) as soon as fit starts, so a
run cut short still has it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch

from lightning_pretrain import parallel


def run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


def _scalars(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix) and v.numel() == 1}


class HFExport(L.Callback):
    def __init__(self, dirname: str = "hf", metrics_file: str = "metrics.json", enabled: bool = True):
        """
        Args:
            dirname: sub-directory of the run directory that receives the Hugging Face export.
            metrics_file: file in the run directory that receives the final validation metrics.
            enabled: set false to skip the export (e.g. for throughput benchmarks).
        """
        self.dirname, self.metrics_file, self.enabled = dirname, metrics_file, enabled
        self.last_val: dict[str, float] = {}
        self.last_val_step: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        tokenizer = getattr(pl_module, "tokenizer", None)
        if self.enabled and tokenizer is not None:
            root = run_dir(trainer)  # trainer.log_dir is a broadcast: every rank must ask, or rank 0 stalls
            if trainer.is_global_zero:
                tokenizer.save_pretrained(root / "tokenizer")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.last_val = _scalars(trainer, "val/")
        self.last_val_step = trainer.global_step
        if trainer.state.fn == "validate":
            self._write(trainer, "validate_metrics.json", self.last_val)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, "test_metrics.json", _scalars(trainer, "test/"))

    def _write(self, trainer, name: str, values: dict[str, float]) -> None:
        root = run_dir(trainer)  # a broadcast: every rank asks
        if self.enabled and trainer.is_global_zero:
            metrics = {"global_step": trainer.global_step,
                       **{k: (v if math.isfinite(v) else None) for k, v in values.items()}}
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"metrics: {root / name}")

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        export = getattr(pl_module, "export_hf", None)
        root = run_dir(trainer)  # a broadcast: every rank asks
        out = root / self.dirname
        # a sharded (FSDP2) model is gathered to full weights first: a collective, so every rank takes part
        model = getattr(pl_module, "model", None)
        full = parallel.full_state_dict(model) if export is not None and isinstance(model, torch.nn.Module) else None
        if trainer.is_global_zero:
            if export is not None:
                export(out) if full is None else export(out, state_dict=full)
            metrics = {"step": self.last_val_step, "global_step": trainer.global_step,
                       **{k: (v if math.isfinite(v) else None) for k, v in self.last_val.items()}}
            (root / self.metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
            if export is not None:
                print(f"Hugging Face export: {out}")
            print(f"final metrics: {root / self.metrics_file}")
