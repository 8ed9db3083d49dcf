"""The checks of a parsed command's settings before anything is built (`check_settings`, called by cli.py): trainer
options Lightning would accept and then misuse (divide by zero, silently not clip, train nothing), HF model configs
with sizes below 1, and one-line warnings for options that other options leave unused.
"""

from __future__ import annotations

import math
import os

from lightning_pretrain import entry
from lightning_pretrain.errors import InputError


def check_settings(subcommand: str, config) -> None:
    """Refuse trainer settings that make no sense (Lightning would divide by zero, silently not clip, or train nothing
    and export the untrained model); warn in one line about options that the other options make unused (a config
    file may carry them for a later run)."""
    trainer = config.get("trainer") or {}
    accumulate, clip = trainer.get("accumulate_grad_batches"), trainer.get("gradient_clip_val")
    if isinstance(accumulate, int) and accumulate < 1:
        raise InputError(f"--trainer.accumulate_grad_batches must be at least 1, got {accumulate}")
    if isinstance(clip, (int, float)) and not (math.isfinite(clip) and clip >= 0):
        raise InputError(
            f"--trainer.gradient_clip_val must be a finite number >= 0 (0 or null: no clipping), got {clip}"
        )
    logger = trainer.get("logger")
    suffix = logger.get("init_args", {}).get("filename_suffix") if hasattr(logger, "get") else None
    if suffix and os.sep in str(suffix):  # TensorBoard appends it to its events file's name
        raise InputError(f"--trainer.logger.init_args.filename_suffix must be a name ending, not a path: {suffix}")
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        if subcommand == "fit" and trainer.get(key) is not None and trainer.get(key) == 0:
            raise InputError(
                f"--trainer.{key} 0 trains nothing (the export would be the untrained model); give it a positive value"
            )
    model, data = (
        section.get("init_args") if hasattr(section, "get") else None
        for section in (config.get("model"), config.get("data"))
    )
    for value in model.values() if hasattr(model, "values") else ():  # an HF config built from the command line
        if hasattr(value, "get") and str(value.get("class_path", "")).startswith("transformers."):
            bad = {
                k: v
                for k, v in (value.get("init_args") or {}).items()
                if k in MODEL_SIZES and isinstance(v, int) and not isinstance(v, bool) and v < 1
            }
            if bad:
                raise InputError(
                    f"model config {', '.join(f'{k}={v}' for k, v in bad.items())}: sizes and counts must be at least 1"
                )
    if hasattr(model, "get") and model.get("wsd") is not None and model.get("lr_schedule") not in (None, "wsd"):
        entry.warn(
            f"--model.init_args.wsd is not used: lr_schedule is {model.get('lr_schedule')!r} (set "
            f"--model.init_args.lr_schedule wsd to use it)"
        )
    if (
        hasattr(data, "get")
        and data.get("sources")
        and data.get("source") not in (None, class_default(config.data, "source"))
    ):
        entry.warn(f"--data.source {data.get('source')} is not read: --data.sources names the corpus")


# sizes and counts of an HF config that must be >= 1 (a model with -1 heads builds, then fails in its first forward)
MODEL_SIZES = {
    "n_head",
    "num_attention_heads",
    "num_heads",
    "num_key_value_heads",
    "n_embd",
    "hidden_size",
    "d_model",
    "n_layer",
    "num_hidden_layers",
    "num_layers",
    "num_decoder_layers",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "vocab_size",
    "intermediate_size",
    "n_inner",
    "d_ff",
    "d_kv",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "n_positions",
    "max_position_embeddings",
}


def class_default(section, name: str):
    """The default of constructor argument `name` of the class a config section names (None if unknown)."""
    import importlib
    import inspect

    module, _, cls = str(section.get("class_path", "")).rpartition(".")
    try:
        parameter = inspect.signature(getattr(importlib.import_module(module), cls)).parameters.get(name)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
