"""Pretraining objectives: one file each, holding its pure corruption function and its LightningModule."""

from lightning_pretrain.objectives.causal_lm import CausalLM
from lightning_pretrain.objectives.denoising import Denoising
from lightning_pretrain.objectives.distillation import CausalDistillation, Distillation
from lightning_pretrain.objectives.electra import ELECTRA
from lightning_pretrain.objectives.masked_lm import MaskedLM
from lightning_pretrain.objectives.sentence_pairs import SentencePairMLM
from lightning_pretrain.objectives.span_corruption import SpanCorruption
from lightning_pretrain.objectives.unilm import UniLM

__all__ = [
    "CausalDistillation",
    "CausalLM",
    "Denoising",
    "Distillation",
    "ELECTRA",
    "MaskedLM",
    "SentencePairMLM",
    "SpanCorruption",
    "UniLM",
]
