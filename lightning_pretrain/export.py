"""Training checkpoint -> Hugging Face directory (`lightning-pretrain-export`), for a `.ckpt` file or an FSDP2 sharded
folder, and the finiteness check every export and evaluation shares (no NaN model is ever exported or scored):

    lightning-pretrain-export logs/run/version_0/checkpoints/last.ckpt --out exported/

The folder appears whole or not at all (written beside it, then renamed); an existing file or a non-empty folder as
`--out` is refused, so no earlier export is overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from lightning_pretrain import entry
from lightning_pretrain.checkpoint_io import load_checkpoint_file
from lightning_pretrain.errors import InputError, refused_values


def non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[list[str], int]:
    """The names of the floating-point tensors holding a NaN or an infinity, and how many tensors were checked."""
    bad, seen = [], 0
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            seen += 1
            local = t.to_local() if hasattr(t, "to_local") else t  # a sharded (DTensor) parameter: this rank's shard
            if not bool(torch.isfinite(local.detach()).all()):
                bad.append(name)
    return bad, seen


def refuse_non_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    bad, seen = non_finite(tensors)
    if bad:
        raise InputError(
            f"{what} has non-finite weights: {len(bad)} of {seen} tensors hold NaN or infinite values "
            f"(e.g. {bad[0]}); a diverged run: use an earlier checkpoint"
        )


def load_training_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as one dict on CPU: a single `.ckpt` file, or a sharded folder (FSDP2) merged."""
    path = Path(path)
    if path.is_file():
        return load_checkpoint_file(path)
    if not (path / ".metadata").is_file():
        raise InputError(
            f"{path} is neither a checkpoint file nor a sharded checkpoint folder (no .metadata)"
            if path.exists()
            else f"checkpoint not found: {path}"
        )
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:  # torch's public merge writes a file; read it straight back
        with refused_values(f"{path} is not a readable sharded checkpoint"):
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
        state = load_checkpoint_file(Path(tmp) / "full.pt")
    meta = path / "meta.pt"  # Lightning's non-tensor part: epoch, loops, hyperparameters, our hf_config
    return {**(load_checkpoint_file(meta) if meta.is_file() else {}), **state}


def check_out_dir(out_dir: Path) -> None:
    if not out_dir.name:  # "" and "." (the export is written beside its folder, then renamed to it)
        raise InputError(f"--out {str(out_dir)!r} names no folder of its own: name a new folder")
    if out_dir.is_file() or (out_dir.exists() and not out_dir.is_dir()):
        raise InputError(f"--out {out_dir} is a file: name a new folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise InputError(f"--out {out_dir} already holds files: name a new or empty folder (nothing is overwritten)")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out {out_dir}: {parent} is a file, not a folder")
            break


def export_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None, require_tokenizer: bool = True
) -> Path:
    """Write a Hugging Face directory from a training checkpoint of a `PretrainingModule` objective.

    The checkpoint carries the model's config and class (`hf_config`, saved by `PretrainingModule`); the tokenizer
    defaults to `<run dir>/tokenizer`, which `HFExport` saves when fit starts. Without one the export would not
    tokenize (transformers builds an empty tokenizer from it): refused unless `require_tokenizer` is False (the
    caller brings its own).
    """
    import transformers

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_out_dir(out_dir)
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise InputError(f"--tokenizer {tokenizer} is not a tokenizer folder")
    state = load_training_checkpoint(checkpoint)
    if not isinstance(state.get("hf_config"), dict) or not isinstance(state.get("state_dict"), dict):
        raise InputError(f"{checkpoint} holds no 'hf_config': it was not written by a lightning_pretrain objective")
    config_dict = dict(state["hf_config"])
    architecture = (config_dict.get("architectures") or [None])[0]
    model_class = getattr(transformers, str(architecture), None)
    if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
        raise InputError(f"{checkpoint} names {architecture!r}, which is not a transformers model class")
    prefix = "model."  # the HF model is the objective's `model` attribute
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    refuse_non_finite(weights.items(), str(checkpoint))
    with refused_values(f"{checkpoint} holds a model config that cannot be built"):
        config = transformers.AutoConfig.for_model(**config_dict)
        model = model_class(config)
    with refused_values(f"{checkpoint} does not match {architecture}"):
        missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise InputError(
            f"checkpoint does not match {architecture}: missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    model.tie_weights()
    tok_dir = Path(tokenizer) if tokenizer else checkpoint.resolve().parent.parent / "tokenizer"
    if require_tokenizer and not tok_dir.is_dir():
        raise InputError(
            f"no tokenizer for {checkpoint}: {tok_dir} does not exist (the checkpoint is not in its run's "
            f"checkpoints/ folder); pass --tokenizer DIR"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    try:
        model.save_pretrained(partial, safe_serialization=True)
        if tok_dir.is_dir():
            for f in tok_dir.iterdir():
                if f.is_file():
                    shutil.copy2(f, partial / f.name)
        os.replace(partial, out_dir)  # whole or nothing (an empty `out_dir` is replaced too)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


@entry.console
def main(argv: list[str] | None = None) -> None:
    """`lightning-pretrain-export CHECKPOINT --out DIR [--tokenizer DIR]`."""
    from lightning_pretrain.quiet import quiet_known_noise

    quiet_known_noise()
    parser = entry.Parser(
        prog="lightning-pretrain-export",
        description="Export a training checkpoint (sharded folder or .ckpt file) to a Hugging Face directory.",
    )
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint folder")
    parser.add_argument("--out", required=True, help="output directory (new or empty)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: <run dir>/tokenizer)")
    args = parser.parse_args(argv)
    print(f"Hugging Face export: {export_checkpoint(args.checkpoint, args.out, args.tokenizer)}")


if __name__ == "__main__":
    main()
