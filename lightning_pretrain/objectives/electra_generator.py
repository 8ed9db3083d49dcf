"""ELECTRA's generator, the small masked LM that fills the masked positions: its config derived from the
discriminator's (`generator_config`: a fraction of its width and/or depth, the same vocabulary and positions), and
the model built or loaded from a previous export and tied to the discriminator's embeddings wherever their shapes
allow (`build_generator`). Kept apart from electra.py, whose objective trains the pair.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformers import AutoModelForMaskedLM, ElectraForPreTraining, PretrainedConfig, PreTrainedModel

from lightning_pretrain.errors import InputError


def generator_config(config: PretrainedConfig, size: float, layers: int | None = None) -> PretrainedConfig:
    """The discriminator's config with `size` x its hidden width (whole heads of the same head width; the feed-forward
    width scaled alike), its first `layers` layers' settings (default: all) and the same vocabulary and positions
    (ELECTRA: the same embedding size, so the embeddings can be shared). A discriminator's one-output token head does
    not carry over."""
    head = config.hidden_size // config.num_attention_heads
    heads = max(1, round(config.num_attention_heads * size))
    gen = copy.deepcopy(config)
    gen.hidden_size, gen.num_attention_heads = heads * head, heads
    gen.intermediate_size = max(1, round(config.intermediate_size * heads / config.num_attention_heads))
    gen.architectures, gen.num_labels = None, 2
    if layers is not None:
        gen.num_hidden_layers = layers
        if isinstance(getattr(gen, "layer_types", None), list):  # per-layer settings (ModernBERT's attention kinds)
            gen.layer_types = gen.layer_types[:layers]
    return gen


def build_generator(
    discriminator: PreTrainedModel,
    model_dir: str | None,
    size: float,
    attn_implementation: str | None,
    layers: int | None = None,
) -> PreTrainedModel:
    """The generator for `discriminator` (a previous export's, `model_dir/generator`, or a fresh one `size` wide and
    `layers` deep). ELECTRA's is tied to the discriminator's embeddings module (one set of tensors, trained by both
    losses). Another architecture embeds in its hidden width: a generator as wide as the discriminator (shallower
    instead) shares its token embedding matrix, and so its tied output layer; a narrower one keeps its own."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    saved = Path(model_dir) / "generator" if model_dir else None
    if saved is not None and (saved / "config.json").is_file():
        generator = AutoModelForMaskedLM.from_pretrained(saved, **kwargs)
        generator.train()
    else:
        try:
            generator = AutoModelForMaskedLM.from_config(generator_config(discriminator.config, size, layers), **kwargs)
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
        shared = discriminator.get_input_embeddings()
        if generator.get_input_embeddings().weight.shape == shared.weight.shape:
            # ELECTRA's embedding sharing: the generator's MLM gradient trains the discriminator's embeddings too
            generator.set_input_embeddings(shared)
            generator.tie_weights()  # its output layer, tied to its input embeddings, follows them
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
