"""Fine-tuning: a sequence classifier on a pretrained backbone, text-to-text and generative tasks, and the
trainability policies (fine-tuning modes)."""

from lightning_pretrain.finetune.causal_sft import CausalSFT
from lightning_pretrain.finetune.classifier import SequenceClassifier
from lightning_pretrain.finetune.generative import GenerativeFineTune
from lightning_pretrain.finetune.seq2seq import Seq2SeqFineTune
from lightning_pretrain.finetune.trainability import (Frozen, Full, GradualUnfreezing, LayerwiseLRDecay, LoRA, TopK,
                                                      Trainability)

__all__ = ["CausalSFT", "Frozen", "Full", "GenerativeFineTune", "GradualUnfreezing", "LayerwiseLRDecay", "LoRA",
           "Seq2SeqFineTune", "SequenceClassifier", "TopK", "Trainability"]
