"""ELECTRA's generator, the small masked LM that fills the masked positions: its config derived from the
discriminator's (`generator_config`: a fraction of its width, the same vocabulary and positions), and the model
built or loaded from a previous export and, for ELECTRA's own architecture, tied to the discriminator's embeddings
(`build_generator`). Kept apart from electra.py, whose objective trains the pair.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import AutoModelForMaskedLM, ElectraForPreTraining, PretrainedConfig, PreTrainedModel

from lightning_pretrain.errors import InputError


def generator_config(config: PretrainedConfig, size: float) -> PretrainedConfig:
    """The discriminator's config with `size` x its hidden width (whole heads of the same head width; the feed-forward
    width scaled alike) and the same vocabulary and positions (ELECTRA: the same embedding size, so the embeddings can
    be shared). A discriminator's one-output token head does not carry over."""
    head = config.hidden_size // config.num_attention_heads
    heads = max(1, round(config.num_attention_heads * size))
    gen = copy.deepcopy(config)
    gen.hidden_size, gen.num_attention_heads = heads * head, heads
    gen.intermediate_size = max(1, round(config.intermediate_size * heads / config.num_attention_heads))
    gen.architectures, gen.num_labels = None, 2
    return gen


def build_generator(
    discriminator: PreTrainedModel, model_dir: str | None, size: float, attn_implementation: str | None
) -> PreTrainedModel:
    """The generator for `discriminator` (a previous export's, `model_dir/generator`, or a fresh one `size` wide).
    ELECTRA's is tied to the discriminator's embeddings module (one set of tensors, trained by both losses); another
    architecture's embeddings are as wide as its hidden states, so a narrower generator keeps its own."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    saved = Path(model_dir) / "generator" if model_dir else None
    if saved is not None and (saved / "config.json").is_file():
        generator = AutoModelForMaskedLM.from_pretrained(saved, **kwargs)
        generator.train()
    else:
        try:
            generator = AutoModelForMaskedLM.from_config(generator_config(discriminator.config, size), **kwargs)
        except ValueError as e:  # no masked-LM class for this architecture (a decoder)
            raise InputError(
                f"ELECTRA needs an encoder with a masked-LM head for its generator; "
                f"{type(discriminator.config).__name__} has none (use transformers.ElectraConfig or "
                f"transformers.ModernBertConfig)"
            ) from e
    if (
        generator.config.model_type != discriminator.config.model_type
        or generator.config.vocab_size != discriminator.config.vocab_size
    ):
        raise InputError(
            f"the generator in {saved} is not a {discriminator.config.model_type} masked LM of the "
            f"discriminator's vocabulary"
        )
    if not isinstance(discriminator, ElectraForPreTraining):
        return generator
    own, shared = generator.electra.embeddings, discriminator.electra.embeddings
    if any(a.shape != b.shape for a, b in zip(own.parameters(), shared.parameters())):
        raise InputError(
            f"the generator in {saved} cannot share the discriminator's embeddings (another "
            f"vocabulary or embedding size)"
        )
    generator.electra.embeddings = shared
    generator.tie_weights()  # its output layer is the (now shared) token embedding matrix again
    return generator
