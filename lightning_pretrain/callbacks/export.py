"""`HFExport`: at the end of `fit`, the model under `<run dir>/hf/` and the final metrics in `<run dir>/metrics.json`;
at the end of `validate` / `test`, `<run dir>/{validate,test}_metrics.json`; the tokenizer in `<run dir>/tokenizer/`
as soon as fit starts, so a run cut short still has it. No non-finite model is exported. A training checkpoint is
turned into a Hugging Face directory by `lightning-pretrain-export` (lightning_pretrain/export.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L
import torch

from lightning_pretrain import parallel
from lightning_pretrain.errors import InputError, RunStopped
from lightning_pretrain.export import export_checkpoint, load_training_checkpoint, main, non_finite  # noqa: F401
from lightning_pretrain.quiet import no_save_bars
from lightning_pretrain.runs import run_dir

# (export_checkpoint, load_training_checkpoint and main are imported here for the old import path)


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
        for option, name in (("dirname", dirname), ("metrics_file", metrics_file)):
            if not name or Path(name).name != name or name in (".", ".."):
                raise InputError(f"--export.{option} must be a plain name inside the run directory, got {name!r}")
        self.dirname, self.metrics_file, self.enabled = dirname, metrics_file, enabled
        self.last_val: dict[str, float] = {}
        self.last_val_step: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        tokenizer = getattr(pl_module, "tokenizer", None)
        if self.enabled and tokenizer is not None:
            root = run_dir(trainer)  # trainer.log_dir is a broadcast: every rank must ask, or rank 0 stalls
            if trainer.is_global_zero:
                tokenizer.save_pretrained(root / "tokenizer")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # every finished run reports its final numbers: when this is the last optimizer step (max_steps) or the last
        # batch of the last epoch, `should_stop` makes Lightning's epoch loop validate right after it, unless the
        # val_check_interval already does (a run of 150 steps whose validation is per epoch would otherwise end
        # with no metrics at all)
        last_epoch_end = (
            trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            and trainer.max_epochs is not None
            and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        )
        if (0 < trainer.max_steps <= trainer.global_step) or last_epoch_end:
            trainer.should_stop = True

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
            metrics = {
                "global_step": checkpoint_step(trainer),
                **{k: (v if math.isfinite(v) else None) for k, v in values.items()},
            }
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"metrics: {root / name}")

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.enabled:
            return
        if trainer.global_step == 0:  # never an untrained model as a result (the CLI refuses such settings first)
            print("warning: the run trained no optimizer step: nothing exported, no metrics written")
            return
        export = getattr(pl_module, "export_hf", None)
        root = run_dir(trainer)  # a broadcast: every rank asks
        out = root / self.dirname
        model = getattr(pl_module, "model", None)
        model = model if isinstance(model, torch.nn.Module) else None
        bad = [k for k, v in self.last_val.items() if not math.isfinite(v)]
        if bad or (model is not None and not all_finite(trainer, model)):
            what = f"validation {', '.join(bad)} not finite" if bad else "non-finite weights"
            raise RunStopped(
                f"the run ended at step {trainer.global_step} with {what}: nothing was exported and no "
                f"{self.metrics_file} written (lower the learning rate, or use fp32 / bf16)"
            )
        # a sharded (FSDP2) model is gathered to full weights first: a collective, so every rank takes part
        full = parallel.full_state_dict(model) if export is not None and model is not None else None
        if trainer.is_global_zero:
            if export is not None:
                with no_save_bars():  # transformers' 'Writing model shards' bar for one small file
                    export(out) if full is None else export(out, state_dict=full)
                readable_by_umask(out)
            metrics = {"step": self.last_val_step, "global_step": trainer.global_step, **self.last_val}
            (root / self.metrics_file).write_text(json.dumps(metrics, indent=2) + "\n")
            if export is not None:
                print(f"Hugging Face export: {out}")
            print(f"final metrics: {root / self.metrics_file}")


def all_finite(trainer: L.Trainer, model: torch.nn.Module) -> bool:
    """Every parameter finite, on every rank (sharded parameters checked shard by shard)."""
    ok = not non_finite(model.named_parameters())[0]
    return trainer.strategy.reduce_boolean_decision(ok, all=True) if trainer.world_size > 1 else ok


def checkpoint_step(trainer: L.Trainer) -> int:
    """The global step of the model being evaluated: Lightning restores the loops (and so `global_step`) only for
    fit, so validate/test read it from the checkpoint they loaded (memory-mapped: no weights are read)."""
    path = trainer.ckpt_path
    if trainer.state.fn != "fit" and path and Path(path).is_file():
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    return trainer.global_step


def readable_by_umask(directory: Path) -> None:
    """Give the exported files the permissions the user's umask asks for (safetensors writes them 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in Path(directory).rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)
