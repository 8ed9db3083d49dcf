"""Hugging Face exports. `HFExport`: at the end of `fit`, the model under `<run dir>/hf/` and the final metrics in
`<run dir>/metrics.json`; at the end of `validate` / `test`, `<run dir>/{validate,test}_metrics.json`; the tokenizer
in `<run dir>/tokenizer/` as soon as fit starts, so a run cut short still has it. `lightning-pretrain-export`
turns any training checkpoint (a `.ckpt` file or an FSDP2 sharded folder) into a Hugging Face directory:

    lightning-pretrain-export logs/run/version_0/checkpoints/last.ckpt --out exported/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

from lightning_pretrain import parallel
from lightning_pretrain.callbacks.guard import RunStopped
from lightning_pretrain.checkpoint_io import load_checkpoint_file
from lightning_pretrain.errors import InputError
from lightning_pretrain.quiet import no_save_bars


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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # every finished run reports its final numbers: when this is the last optimizer step (max_steps) or the last
        # batch of the last epoch, `should_stop` makes Lightning's epoch loop validate right after it, unless the
        # val_check_interval already does (a run of 150 steps whose validation is per epoch would otherwise end
        # with no metrics at all)
        last_epoch_end = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and \
            trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
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
            metrics = {"global_step": checkpoint_step(trainer),
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
        model = getattr(pl_module, "model", None)
        model = model if isinstance(model, torch.nn.Module) else None
        bad = [k for k, v in self.last_val.items() if not math.isfinite(v)]
        if bad or (model is not None and not all_finite(trainer, model)):
            what = f"validation {', '.join(bad)} not finite" if bad else "non-finite weights"
            raise RunStopped(f"the run ended at step {trainer.global_step} with {what}: nothing was exported and no "
                             f"{self.metrics_file} written (lower the learning rate, or use fp32 / bf16)")
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
    local = (p.to_local() if hasattr(p, "to_local") else p for p in model.parameters())
    ok = all(bool(torch.isfinite(p.detach()).all()) for p in local)
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


# -- training checkpoint -> Hugging Face -------------------------------------------------------------------------
def load_training_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as one dict on CPU: a single `.ckpt` file, or a sharded folder (FSDP2) merged."""
    path = Path(path)
    if path.is_file():
        return load_checkpoint_file(path)
    if not (path / ".metadata").is_file():
        raise InputError(f"{path} is neither a checkpoint file nor a sharded checkpoint folder (no .metadata)")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:  # torch's public merge writes a file; read it straight back
        dcp_to_torch_save(path, Path(tmp) / "full.pt")
        state = load_checkpoint_file(Path(tmp) / "full.pt")
    meta = path / "meta.pt"  # Lightning's non-tensor part: epoch, loops, hyperparameters, our hf_config
    return {**(torch.load(meta, map_location="cpu", weights_only=True) if meta.is_file() else {}), **state}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write a Hugging Face directory from a training checkpoint of a `PretrainingModule` objective.

    The checkpoint carries the model's config and class (`hf_config`, saved by `PretrainingModule`); the tokenizer
    defaults to `<run dir>/tokenizer`, which `HFExport` saves when fit starts.
    """
    import transformers

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = load_training_checkpoint(checkpoint)
    if "hf_config" not in state:
        raise InputError(f"{checkpoint} holds no 'hf_config': it was not written by a lightning_pretrain objective")
    config_dict = dict(state["hf_config"])
    architecture = config_dict["architectures"][0]
    model_class = getattr(transformers, architecture, None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise InputError(f"{checkpoint} names {architecture!r}, which is not a transformers model class")
    config = transformers.AutoConfig.for_model(**config_dict)
    model = model_class(config)
    prefix = "model."  # the HF model is the objective's `model` attribute
    weights = {k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise InputError(f"checkpoint does not match {architecture}: missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok_dir = Path(tokenizer) if tokenizer else checkpoint.resolve().parent.parent / "tokenizer"
    if tok_dir.is_dir():
        for f in tok_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, out_dir / f.name)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """`lightning-pretrain-export CHECKPOINT --out DIR [--tokenizer DIR]`."""
    from lightning_pretrain.quiet import quiet_known_noise

    quiet_known_noise()
    parser = argparse.ArgumentParser(prog="lightning-pretrain-export",
                                     description="Export a training checkpoint (sharded folder or .ckpt file) to a "
                                                 "Hugging Face directory.")
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint folder")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: <run dir>/tokenizer)")
    args = parser.parse_args(argv)
    try:
        print(f"Hugging Face export: {export_checkpoint(args.checkpoint, args.out, args.tokenizer)}")
    except InputError as e:  # the CLI's convention: one line, exit status 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
