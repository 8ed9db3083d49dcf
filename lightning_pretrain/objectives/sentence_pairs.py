"""BERT's full pretraining: masked LM plus a sentence-pair classification, next-sentence (NSP) or ALBERT's
sentence-order (SOP) prediction, on `[CLS] A [SEP] B [SEP]` pairs with segment ids.

The pairs and their labels come from the data (`data/sentence_pairs.py`, which decides whether the task is NSP or
SOP); the masking is MaskedLM's (`mask_tokens`, whole-word masking included), drawn fresh for every batch. The loss
is the sum of the two, as in BERT. `val/loss` and `val/ppl` stay the masked-LM numbers, so they compare with a
plain `MaskedLM` run; the pair task adds `val/<task>_loss` and `val/<task>_acc` (chance: 0.5).

Both heads run on what they need only: the vocabulary projection on the masked positions, the pair classifier on
the pooled [CLS] vector (the same loss and gradients as `BertForPreTraining(labels=, next_sentence_label=)`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy
from transformers import AutoModelForPreTraining

from lightning_pretrain import compat
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.masked_lm import MaskedLM


def pretraining_heads(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """`(mlm_head, pair_head)` of an HF `...ForPreTraining` model, or None for an architecture without both."""
    cls = getattr(model, "cls", None)
    if cls is not None and hasattr(cls, "predictions") and hasattr(cls, "seq_relationship"):  # BERT family
        return cls.predictions, cls.seq_relationship
    if hasattr(model, "predictions") and hasattr(model, "sop_classifier"):  # ALBERT
        return model.predictions, model.sop_classifier
    return None


class SentencePairMLM(MaskedLM):
    document_masking = False  # its own losses take plain blocks
    auto_class = AutoModelForPreTraining

    def __init__(self, **kwargs):
        """BERT's MLM plus the pair task the data publishes ('nsp' or 'sop', from `SentencePairCorpus`). The
        model: an HF config (`transformers.BertConfig` -> `BertForPreTraining`, or `AlbertConfig` ->
        `AlbertForPreTraining`), or a local directory / hub id of such a pretrained model."""
        super().__init__(**kwargs)
        if self.data.task not in ("nsp", "sop"):
            raise InputError(
                "SentencePairMLM trains on sentence pairs: use the data module "
                "lightning_pretrain.data.SentencePairCorpus (task nsp or sop)"
            )
        if pretraining_heads(self.model) is None:
            raise InputError(
                f"{type(self.model).__name__} has no masked-LM plus sentence-pair heads; use BertConfig "
                f"(BertForPreTraining) or AlbertConfig (AlbertForPreTraining)"
            )
        self.task = self.data.task  # in the metric names: train/nsp_loss, val/sop_acc, ...
        self.val_pair_loss = MeanMetric()
        self.val_pair_acc = BinaryAccuracy()

    @property
    def mlm_head(self) -> torch.nn.Module | None:
        heads = pretraining_heads(self.model)
        return heads[0] if heads else None

    def losses(
        self, batch: dict[str, torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(mlm_loss, pair_loss, pair_logits)` from one encoder pass."""
        mlm_head, pair_head = pretraining_heads(self.model)
        out = self.model.base_model(
            input_ids=inputs, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
        selected = labels != IGNORE_INDEX
        mlm_loss = F.cross_entropy(mlm_head(out.last_hidden_state[selected]).float(), labels[selected])
        pair_logits = pair_head(out.pooler_output).float()
        return mlm_loss, F.cross_entropy(pair_logits, batch["pair_label"]), pair_logits

    def training_loss(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, labels = self.corrupt(batch["input_ids"], self.current_epoch, batch_idx)
        mlm_loss, pair_loss, logits = self.losses(batch, inputs, labels)
        loss = mlm_loss + pair_loss
        accuracy = (logits.argmax(-1) == batch["pair_label"]).float().mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(
            {"train/mlm_loss": mlm_loss, f"train/{self.task}_loss": pair_loss, f"train/{self.task}_acc": accuracy}
        )
        return loss

    def validation_update(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        inputs, labels = self.corrupt(batch["input_ids"], -1, batch_idx)  # epoch -1: never a training batch's seed
        mlm_loss, pair_loss, logits = self.losses(batch, inputs, labels)
        self.val_nll.update(mlm_loss, weight=(labels != IGNORE_INDEX).sum())
        self.val_pair_loss.update(pair_loss, weight=len(logits))
        self.val_pair_acc.update(logits.argmax(-1), batch["pair_label"])
        # the metric objects themselves: Lightning computes them (synchronised across ranks) and resets them
        prefix = "test" if compat.trainer_of(self) is not None and self.trainer.testing else "val"
        self.log(f"{prefix}/{self.task}_loss", self.val_pair_loss, prog_bar=True)
        self.log(f"{prefix}/{self.task}_acc", self.val_pair_acc, prog_bar=True)
