"""An encoder's final hidden state at one chosen position per row, for pseudo-log-likelihood (pll.py), which reads
only the masked position. In a BERT-family encoder the last layer's keys and values need every position, but its
query, attention output, feed-forward block and layer norms only the chosen one: running that layer for one
position skips about 5/6 of its cost (~14% of a 6-layer MiniLM's forward). The equations are BertLayer's (post-LN,
absolute positions), checked against the model's own forward in tests/test_evaluate_pll.py; other architectures
run whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_pretrain import compat

BERT_LAYERS = ("BertLayer", "RobertaLayer", "XLMRobertaLayer", "CamembertLayer", "ElectraLayer")  # same layer code


class _Reached(Exception):
    """Raised by the hook on the last layer: the layers before it have run, the rest is computed here."""


def bert_last_layer(base: torch.nn.Module) -> torch.nn.Module | None:
    """The last encoder layer of `base` if it is one whose equations `hidden_at` reproduces, else None."""
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    config = getattr(base, "config", None)
    if not layers or config is None or type(layers[-1]).__name__ not in BERT_LAYERS or base.training:
        return None
    if (
        config.is_decoder
        or getattr(config, "add_cross_attention", False)
        or getattr(config, "position_embedding_type", "absolute") != "absolute"
        or (compat.attn_implementation(config) or "eager") not in ("eager", "sdpa")
    ):
        return None
    return layers[-1]


def hidden_at(base: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """`base(ids, mask).last_hidden_state[i, at[i]]` for every row i, the last layer run at `at` only where the
    architecture allows it."""
    rows = torch.arange(len(ids), device=ids.device)
    last = bert_last_layer(base)
    if last is None:
        return base(input_ids=ids, attention_mask=mask).last_hidden_state[rows, at]
    seen = {}

    def stop(module, args, kwargs):  # the last layer's input and the attention mask in the form the model made it
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["mask"] = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        raise _Reached

    handle = last.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        base(input_ids=ids, attention_mask=mask)
    except _Reached:
        pass
    finally:
        handle.remove()
    hidden, bias = seen["hidden"], seen["mask"]
    if bias is not None and bias.dim() == 4 and bias.shape[-2] > 1:  # (B, 1, L, L): the chosen query rows
        bias = bias[rows, :, at].unsqueeze(2)
    attn = last.attention.self
    b, length, _ = hidden.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size
    x = hidden[rows, at]
    q = attn.query(x).view(b, heads, 1, size)
    k = attn.key(hidden).view(b, length, heads, size).transpose(1, 2)
    v = attn.value(hidden).view(b, length, heads, size).transpose(1, 2)
    # a boolean mask (sdpa's: True = attend) and an additive one (eager's) mean the same to F.sdpa
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scaling).reshape(b, heads * size)
    a = last.attention.output(context, x)
    return last.output(last.intermediate(a), a)
