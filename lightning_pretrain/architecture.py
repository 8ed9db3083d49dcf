"""Facts about Hugging Face architectures, in one place: positions, transformer blocks, output and MLM heads,
layer depths and attention width. Objectives, fine-tuning policies, FLOPs accounting and sharding ask here."""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from lightning_pretrain.errors import InputError

# model types whose logits are exactly `get_output_embeddings()(base_model(...).last_hidden_state)`
PLAIN_HEAD = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3"}


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the architecture can embed (None for relative-position models like T5)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            # RoBERTa reserves padding_idx + 1 positions before the first real one
            return value - (config.pad_token_id + 1 if config.model_type in {"roberta", "xlm-roberta", "camembert"}
                            and config.pad_token_id is not None else 0)
    return None


def check_length(config: PretrainedConfig, length: int, what: str) -> None:
    """Refuse inputs of `length` tokens that the model cannot embed (`what` names the setting to lower)."""
    limit = max_positions(config)
    if limit is not None and length > limit:
        raise InputError(f"{what}={length} is larger than the model's {limit} positions; lower --data.{what} "
                         f"or raise the config's max_position_embeddings / n_positions")


def plain_head(model: nn.Module) -> nn.Linear | None:
    """The output layer of a causal LM whose logits are just `head(last hidden state)`, else None (logit scaling,
    soft-capping or auxiliary losses: the loss must go through the HF model)."""
    head = model.get_output_embeddings()
    return head if model.config.model_type in PLAIN_HEAD and type(head) is nn.Linear else None


def mlm_head(model: nn.Module) -> nn.Module | None:
    """BERT's `cls` / RoBERTa's `lm_head`: hidden states to vocabulary logits (None for other architectures)."""
    return getattr(model, "cls", None) or getattr(model, "lm_head", None)


def attention_width(config: PretrainedConfig) -> int:
    """heads x head_dim: the width of the query/key products (hidden size, except e.g. T5's d_kv * num_heads)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads * head_dim


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an HF model (GPT2Block, BertLayer, T5Block, LlamaDecoderLayer, ...), outermost only.

    A block is an instance of transformers' `GradientCheckpointingLayer` (the unit HF itself recomputes); failing
    that, a module whose class is listed in `_no_split_modules` and occurs more than once (the list also names
    one-off modules such as BertEmbeddings); failing both, the items of every `nn.ModuleList` of one class.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    def outermost(is_block) -> list[nn.Module]:
        found, inside = [], set()
        for module in model.modules():  # pre-order: a block is seen before anything nested in it
            if id(module) not in inside and is_block(module):
                found.append(module)
                inside.update(id(m) for m in module.modules())
        return found

    blocks = outermost(lambda m: isinstance(m, GradientCheckpointingLayer))
    if not blocks:
        names = set(getattr(model, "_no_split_modules", None) or ())
        counts: dict[str, int] = {}
        for module in model.modules():
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        blocks = outermost(lambda m: type(m).__name__ in names and counts[type(m).__name__] > 1)
    if not blocks:
        blocks = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) and len(lst) > 1
                  and len({type(m) for m in lst}) == 1 for m in lst]
    return blocks


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """`({parameter name: depth}, number of transformer blocks)` of an HF model with a task head.

    Depth counts from the top: 0 is the head (parameters outside `model.base_model`), 1 the top block (with what the
    backbone applies after its blocks: BERT's pooler, GPT-2's final norm), L the bottom block, L + 1 the embeddings
    (backbone parameters registered before the first block). The blocks are the longest `nn.ModuleList` in the
    backbone: BERT's `encoder.layer`, GPT-2's `h`, Llama's `layers`.
    """
    backbone = model.base_model
    if backbone is model:
        raise InputError(f"{type(model).__name__} has no separate backbone (base_model) to count layers in")
    stacks = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not stacks:
        raise InputError(f"found no stack of transformer blocks (an nn.ModuleList) in {type(backbone).__name__}")
    _, stack = max(stacks, key=lambda s: len(s[1]))
    n_layers = len(stack)
    block_of = {id(p): i for i, block in enumerate(stack) for p in block.parameters()}
    backbone_ids = {id(p) for p in backbone.parameters()}
    depths, seen_block = {}, False
    for name, p in model.named_parameters():
        if id(p) not in backbone_ids:
            depths[name] = 0
        elif id(p) in block_of:
            seen_block = True
            depths[name] = n_layers - block_of[id(p)]
        else:
            depths[name] = 1 if seen_block else n_layers + 1
    return depths, n_layers
