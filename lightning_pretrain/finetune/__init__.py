"""Fine-tuning: a sequence classifier on a pretrained backbone, text-to-text and generative tasks, and the
trainability policies (fine-tuning modes); token classification (NER), extractive QA and multiple choice."""

from lightning_pretrain.finetune.causal_sft import CausalSFT
from lightning_pretrain.finetune.classifier import SequenceClassifier
from lightning_pretrain.finetune.generative import GenerativeFineTune
from lightning_pretrain.finetune.multiple_choice import MultipleChoice
from lightning_pretrain.finetune.question_answering import QuestionAnswering
from lightning_pretrain.finetune.seq2seq import Seq2SeqFineTune
from lightning_pretrain.finetune.token_classifier import TokenClassifier
from lightning_pretrain.finetune.trainability import (
    Frozen,
    Full,
    GradualUnfreezing,
    LayerwiseLRDecay,
    LoRA,
    TopK,
    Trainability,
)

__all__ = [
    "CausalSFT",
    "Frozen",
    "Full",
    "GenerativeFineTune",
    "GradualUnfreezing",
    "LayerwiseLRDecay",
    "LoRA",
    "MultipleChoice",
    "QuestionAnswering",
    "Seq2SeqFineTune",
    "SequenceClassifier",
    "TokenClassifier",
    "TopK",
    "Trainability",
]
