"""Pretraining objectives: one file each, holding its pure corruption function and its LightningModule."""

from lightning_pretrain.objectives.causal_lm import CausalLM
from lightning_pretrain.objectives.masked_lm import MaskedLM
from lightning_pretrain.objectives.sentence_pairs import SentencePairMLM
from lightning_pretrain.objectives.span_corruption import SpanCorruption

__all__ = ["CausalLM", "MaskedLM", "SentencePairMLM", "SpanCorruption"]
