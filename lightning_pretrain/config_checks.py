"""The checks of a parsed command's settings before anything is built (`check_settings`, called by cli.py): trainer
options Lightning would accept and then misuse (divide by zero, silently not clip, train nothing), HF model configs
with sizes below 1 or outputs our code does not read, `null` where a constructor's type has no None, TensorBoard's
untyped options, and one-line warnings for options that other options leave unused.
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
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and not interval > 0:
        raise InputError(
            f"--trainer.val_check_interval must be > 0 (batches, a fraction of an epoch, or a time), got {interval}"
        )
    check_summary_writer(trainer.get("logger"))
    for key in ("max_steps", "max_epochs", "limit_train_batches"):
        if subcommand == "fit" and trainer.get(key) is not None and trainer.get(key) == 0:
            raise InputError(
                f"--trainer.{key} 0 trains nothing (the export would be the untrained model); give it a positive value"
            )
    model, data = (
        section.get("init_args") if hasattr(section, "get") else None
        for section in (config.get("model"), config.get("data"))
    )
    for name in ("model", "data"):
        refuse_nulls(config.get(name), f"--{name}")
    for _, value in fields(model):  # an HF config built from the command line
        if hasattr(value, "get") and str(value.get("class_path", "")).startswith("transformers."):
            check_model_config(dict(fields(value.get("init_args"))), str(value.get("class_path")))
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


def fields(section) -> list[tuple[str, object]]:
    """A config section's own keys and values (jsonargparse's `Namespace.items()` flattens nested sections)."""
    if section is None or isinstance(section, (str, bool, int, float)):
        return []
    return list(vars(section).items() if hasattr(section, "__dict__") else section.items())


def check_model_config(args: dict, class_path: str) -> None:
    bad = {
        k: v for k, v in args.items() if k in MODEL_SIZES and isinstance(v, int) and not isinstance(v, bool) and v < 1
    }
    if bad:
        raise InputError(
            f"model config {', '.join(f'{k}={v}' for k, v in bad.items())}: sizes and counts must be at least 1"
        )
    kind = args.get("is_encoder_decoder")
    if isinstance(kind, bool) and kind != bool(class_default({"class_path": class_path}, "is_encoder_decoder")):
        raise InputError(
            f"model config is_encoder_decoder={kind}: it is {class_path.rpartition('.')[2]}'s own fact (an "
            f"encoder-decoder is a T5Config / BartConfig); leave it at the default"
        )
    changed = {k: v for k, v in args.items() if k in OUTPUTS and v is not None and v != OUTPUTS[k]}
    if changed:  # every objective and task reads outputs by name and asks for hidden states per call
        raise InputError(
            f"model config {', '.join(f'{k}={v}' for k, v in changed.items())}: this package reads the model's "
            f"outputs by name and asks for what it needs per call; leave {', '.join(changed)} at the default"
        )


# config flags that change the structure of a model's outputs, and the values our code reads
OUTPUTS = {"return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False}

# TensorBoardLogger hands options it does not know to SummaryWriter, whose signature has no types: a wrong type builds,
# then fails at the first write, after the run folder exists
SUMMARY_WRITER = {"comment": str, "purge_step": int, "max_queue": int, "flush_secs": int, "filename_suffix": str}


def check_summary_writer(logger) -> None:
    if not hasattr(logger, "get") or not str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return
    for key, value in fields(logger.get("init_args")):
        kind = SUMMARY_WRITER.get(key)
        if kind is None or (value is None and key == "purge_step"):
            continue
        number = kind is int and isinstance(value, int) and not isinstance(value, bool)
        if kind is int and not (number and value >= (0 if key == "purge_step" else 1)):
            least = "0" if key == "purge_step" else "1"
            raise InputError(f"--trainer.logger.init_args.{key} must be a whole number >= {least}, got {value!r}")
        if kind is str and not isinstance(value, str):
            raise InputError(f"--trainer.logger.init_args.{key} must be text, got {value!r}")
    suffix = dict(fields(logger.get("init_args"))).get("filename_suffix")
    if suffix and os.sep in str(suffix):  # TensorBoard appends it to its events file's name
        raise InputError(f"--trainer.logger.init_args.filename_suffix must be a name ending, not a path: {suffix}")


def refuse_nulls(section, where: str) -> None:
    """`null` for a constructor argument whose type has no None (jsonargparse lets it through for the init_args of a
    subclass), refused naming the option, before the class divides by it or indexes with it; nested classes too."""
    if not hasattr(section, "get") or not section.get("class_path"):
        return
    hints = constructor_hints(str(section.get("class_path")))
    for name, value in fields(section.get("init_args")):
        option = f"{where}.init_args.{name}"
        if value is None and name in hints and not accepts_none(*hints[name]):
            raise InputError(f"{option} cannot be null: it takes {type_name(hints[name][0])}")
        refuse_nulls(value, option)


def resolve_class(class_path: str):
    """The object a config's `class_path` names, or None when it does not import."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def constructor_hints(class_path: str) -> dict[str, tuple[object, object]]:
    """{argument: (type, default)} over the class's MRO (arguments a subclass passes on through **kwargs)."""
    import inspect
    import typing

    cls = resolve_class(class_path)
    hints: dict[str, tuple[object, object]] = {}
    for klass in getattr(cls, "__mro__", ()):
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            types, parameters = typing.get_type_hints(init), inspect.signature(init).parameters
        except Exception:  # an annotation that does not resolve here: no claim about that class
            continue
        for arg, p in parameters.items():
            if arg in types and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                hints.setdefault(arg, (types[arg], p.default))
    return hints


def accepts_none(hint, default) -> bool:
    import types
    import typing

    if default is None or hint in (typing.Any, object, type(None)):
        return True
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    return type(None) in args or any(accepts_none(a, ...) for a in args if a is typing.Any)


def type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def class_default(section, name: str):
    """The default of constructor argument `name` of the class a config section names (None if unknown)."""
    import inspect

    try:
        parameter = inspect.signature(resolve_class(str(section.get("class_path", "")))).parameters.get(name)
    except (ValueError, TypeError):  # nothing imported (None), or no signature
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
