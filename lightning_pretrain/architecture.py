"""Facts about Hugging Face architectures, in one place: positions, transformer blocks, output and MLM heads,
layer depths and attention width. Objectives, fine-tuning policies, FLOPs accounting and sharding ask here."""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig

from lightning_pretrain import compat
from lightning_pretrain.errors import InputError

# model types whose logits are exactly `get_output_embeddings()(base_model(...).last_hidden_state)`
PLAIN_HEAD = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3"}
# model types that count positions from padding_idx + 1 (RoBERTa's embeddings)
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}


def position_offset(config: PretrainedConfig) -> int:
    """The position id of a sequence's first token (0, or RoBERTa's padding_idx + 1)."""
    if config.model_type in PADDING_OFFSET_POSITIONS and config.pad_token_id is not None:
        return config.pad_token_id + 1
    return 0


def max_positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the architecture can embed (None for relative-position models like T5)."""
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value - position_offset(config)  # RoBERTa reserves positions before the first real one
    return None


def check_length(config: PretrainedConfig, length: int, what: str) -> None:
    """Refuse inputs of `length` tokens that the model cannot embed (`what` names the setting to lower)."""
    limit = max_positions(config)
    if limit is not None and length > limit:
        raise InputError(
            f"{what}={length} is larger than the model's {limit} positions; lower --data.{what} "
            f"or raise the config's max_position_embeddings / n_positions"
        )


def map_decoder_token_ids(config: PretrainedConfig, tokenizer) -> None:
    """Point a fresh encoder-decoder config's decoder start token (and BART's forced BOS/EOS) at `tokenizer`'s ids,
    each keeping the role the architecture gives it (T5, Pegasus start with pad; BART with eos)."""
    try:
        defaults = type(config)()
    except (TypeError, ValueError):  # a composite config (EncoderDecoderConfig) has no defaults: read its own values
        defaults = config
    for name in ("decoder_start_token_id", "forced_eos_token_id", "forced_bos_token_id"):
        default = getattr(defaults, name, None)
        if default is None and name != "decoder_start_token_id":
            continue
        role = next(
            (
                r
                for r in ("pad_token_id", "eos_token_id", "bos_token_id")
                if default is not None and getattr(defaults, r, None) == default
            ),
            "pad_token_id",
        )
        setattr(config, name, getattr(tokenizer, role))


def plain_head(model: nn.Module) -> nn.Linear | None:
    """The output layer of a causal LM whose logits are just `head(last hidden state)`, else None (logit scaling,
    soft-capping or auxiliary losses: the loss must go through the HF model)."""
    head = model.get_output_embeddings()
    return head if model.config.model_type in PLAIN_HEAD and type(head) is nn.Linear else None


def mlm_head(model: nn.Module) -> nn.Module | None:
    """BERT's `cls` / RoBERTa's `lm_head` / ModernBERT's `head` + `decoder`: hidden states to vocabulary logits (None
    for other architectures), so the loss computes logits only at the selected positions."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is None and model.config.model_type == "modernbert" and hasattr(model, "decoder"):
        head = nn.Sequential(model.head, model.decoder)
    return head


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
        names = compat.no_split_modules(model)
        counts: dict[str, int] = {}
        for module in model.modules():
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        blocks = outermost(lambda m: type(m).__name__ in names and counts[type(m).__name__] > 1)
    if not blocks:
        blocks = [
            m
            for lst in model.modules()
            if isinstance(lst, nn.ModuleList) and len(lst) > 1 and len({type(m) for m in lst}) == 1
            for m in lst
        ]
    return blocks


def block_stacks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The stacks of transformer blocks (`transformer_blocks`) of an HF model with a head, top first: an
    encoder-decoder's `("decoder", blocks)` then `("encoder", blocks)` (T5, BART, EncoderDecoderModel), otherwise the
    backbone's `("", blocks)` (BERT's `encoder.layer`, GPT-2's `h`, Llama's `layers`)."""
    if getattr(model.config, "is_encoder_decoder", False):
        parts = [("decoder", model.get_decoder()), ("encoder", model.get_encoder())]
    elif model.base_model is model:
        raise InputError(f"{type(model).__name__} has no separate backbone (base_model) to count layers in")
    else:
        parts = [("", model.base_model)]
    stacks = [(name, transformer_blocks(part)) for name, part in parts]
    for (_, blocks), (_, part) in zip(stacks, parts):
        if not blocks:
            raise InputError(f"found no stack of transformer blocks in {type(part).__name__}")
    return stacks


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """`({parameter name: depth}, number of transformer blocks)` of an HF model with a task or LM head.

    Depth counts from the top: 0 is the head (parameters outside `model.base_model`, and the output layer of a
    language model, also when it is tied to the input embeddings: the tied matrix trains wherever the head does),
    1 the top block (with what its part applies after its blocks: BERT's pooler, GPT-2's final norm), L the bottom
    block, L + 1 the embeddings (parameters registered before the first block, or named `*embed*`, or outside every
    part). An encoder-decoder's L counts both stacks, the decoder's blocks above the encoder's: depth 1 is the top
    decoder block, Ld + 1 the top encoder block (with the encoder's final norm), Ld + Le the bottom encoder block.
    """
    stacks = block_stacks(model)
    n_layers = sum(len(blocks) for _, blocks in stacks)
    head = (
        set()
        if model.base_model is model
        else {id(p) for p in model.parameters()} - {id(p) for p in model.base_model.parameters()}
    )
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(output, nn.Module):
        head.update(id(p) for p in output.parameters())
    parts = {
        "decoder": lambda: model.get_decoder(),
        "encoder": lambda: model.get_encoder(),
        "": lambda: model.base_model,
    }
    block_depth, part_top = {}, {}  # part_top: a part's parameters after its blocks go with its top block
    above = 0
    for name, blocks in stacks:
        for i, block in enumerate(blocks):
            block_depth.update({id(p): above + len(blocks) - i for p in block.parameters()})
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        part_top[above + 1] = ({id(p) for p in parts[name]().parameters()}, in_blocks)
        above += len(blocks)
    depths, passed = {}, set()  # passed: the parts whose first block came earlier in registration order
    for name, p in model.named_parameters():
        if id(p) in head:
            depths[name] = 0
        elif id(p) in block_depth:
            depths[name] = block_depth[id(p)]
            passed.update(top for top, (_, in_blocks) in part_top.items() if id(p) in in_blocks)
        else:
            top = next((t for t, (in_part, _) in part_top.items() if id(p) in in_part), None)
            depths[name] = top if top in passed and "embed" not in name else n_layers + 1
    return depths, n_layers


def depth_name(model: nn.Module, depth: int) -> str:
    """A readable name of a depth for the LR monitor: 'head', 'layer.5' ('decoder.layer.1' / 'encoder.layer.3' in
    an encoder-decoder), 'embeddings'."""
    if depth == 0:
        return "head"
    for name, blocks in block_stacks(model):
        if depth <= len(blocks):
            return f"{name}.layer.{len(blocks) - depth}" if name else f"layer.{len(blocks) - depth}"
        depth -= len(blocks)
    return "embeddings"
