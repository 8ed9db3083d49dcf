"""The model a generative fine-tuning task trains and its fit to the data (`GenerativeFineTune.build_model`,
`check_lengths`): loaded from a pretrained directory / hub id (`trust_remote_code=False`) or built fresh from an HF
config sized to the data's tokenizer, with the weights it initialised and those the checkpoint left unused; refused
when the tokenizer or the data's lengths do not fit it. The task comes in as a `ModelHooks` (its `check_config` /
`adapt_config` overrides apply).
"""

from __future__ import annotations

import copy
from typing import Protocol

from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from lightning_pretrain import architecture
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.backbone_load import load_pretrained


class ModelHooks(Protocol):
    """What `build_generative_model` reads of the task (a `GenerativeFineTune`)."""

    auto_class: type
    tokenizer: PreTrainedTokenizerBase

    def check_config(self, config: PretrainedConfig, name: str) -> None: ...

    def adapt_config(self, config: PretrainedConfig) -> None: ...


def build_generative_model(
    task: ModelHooks, spec: PretrainedConfig | str | None, attn_implementation: str | None
) -> tuple[PreTrainedModel, list[str], list[str]]:
    """`(model, newly initialised weights, unused checkpoint weights)`: the task's `auto_class` loaded from `spec` (a
    directory / hub id), or built from a copy of the config `spec` given the tokenizer's vocabulary size and special
    ids (every weight then newly initialised)."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if spec is None:
        raise InputError(
            f"{type(task).__name__} needs --model.model: a pretrained directory / hub id or an HF "
            f"config to train from scratch"
        )
    if isinstance(spec, str):
        try:
            config = AutoConfig.from_pretrained(spec, trust_remote_code=False)
            task.check_config(config, spec)
            model, report = load_pretrained(task.auto_class, spec, config=config, trust_remote_code=False, **kwargs)
        except (OSError, ValueError) as e:
            raise InputError(f"could not load pretrained model '{spec}': {str(e).splitlines()[0]}") from e
        report.log()
        return model, report.newly_initialised, report.unused
    config = copy.deepcopy(spec)
    task.check_config(config, type(config).__name__)
    config.vocab_size = len(task.tokenizer)
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        if getattr(task.tokenizer, name, None) is not None:
            setattr(config, name, getattr(task.tokenizer, name))
    task.adapt_config(config)
    model = task.auto_class.from_config(config, **kwargs)
    return model, sorted(n for n, _ in model.named_parameters()), []


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> None:
    """Refuse a tokenizer with more tokens than the model embeds."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer"
        )


def check_data_lengths(config: PretrainedConfig, data: DataContract) -> None:
    """Refuse data longer than the model's positions: the contract's max_length and max_target_length."""
    for what in ("max_length", "max_target_length"):
        if getattr(data, what) is not None:
            architecture.check_length(config, getattr(data, what), what)
