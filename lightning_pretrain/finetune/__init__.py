"""Fine-tuning: a sequence classifier on a pretrained backbone, and the trainability policies (fine-tuning modes)."""

from lightning_pretrain.finetune.classifier import SequenceClassifier
from lightning_pretrain.finetune.trainability import (Frozen, Full, GradualUnfreezing, LayerwiseLRDecay, LoRA, TopK,
                                                      Trainability)

__all__ = ["Frozen", "Full", "GradualUnfreezing", "LayerwiseLRDecay", "LoRA", "SequenceClassifier", "TopK",
           "Trainability"]
