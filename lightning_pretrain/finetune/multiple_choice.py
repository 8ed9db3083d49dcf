"""`MultipleChoice`: a pretrained backbone with `AutoModelForMultipleChoice`'s head (one score per (context, choice)
pair, a softmax over the N choices), fine-tuned on `MultipleChoiceData`; export loadable by the same class.

Everything but the head and its metrics is `SequenceClassifier`'s: the fine-tuning modes (`--model.trainability`),
optimizer and schedule, checkpoints, and the Hugging Face export.
"""

from __future__ import annotations

from dataclasses import replace

from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy
from transformers import AutoModelForMultipleChoice

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.backbone_load import load_backbone
from lightning_pretrain.finetune.classifier import SequenceClassifier


class MultipleChoice(SequenceClassifier):
    def __init__(self, backbone: str, data: DataContract | None = None, **kwargs):
        """
        Args:
            backbone: a local directory (e.g. a run's `hf/` export) or hub id of a pretrained encoder; a fresh
                multiple-choice head (hidden -> 1 score per choice) goes on top, unless the checkpoint has one.
            data: what `MultipleChoiceData` publishes (tokenizer, number of choices, max length); the CLI passes
                `data.contract`.
            **kwargs: the options of `SequenceClassifier` (trainability, optimizer, warmup, schedule, dropout,
                attention implementation, predictions file).
        """
        if data is None or data.task != "multiple_choice":
            raise InputError(
                "the multiple-choice model needs a multiple-choice data module's contract (the CLI passes "
                "--data's `contract`; use lightning_pretrain.data.finetune.multiple_choice."
                "MultipleChoiceData)"
            )
        # the classifier's constructor, handed the choice positions as its classes (its `build` is replaced below)
        super().__init__(backbone, replace(data, task="classification"), **kwargs)

    def build(self, label_names: list[str] | None) -> None:
        """Load the backbone with a multiple-choice head for len(`label_names`) choices and apply the policy."""
        kwargs = {}
        if self.classifier_dropout is not None:
            kwargs["classifier_dropout"] = self.classifier_dropout
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        model, report = load_backbone(
            AutoModelForMultipleChoice,
            self.backbone,
            self.tokenizer,
            " for multiple choice",
            ignore_mismatched_sizes=True,
            **kwargs,
        )
        self.newly_initialised, self.unused_weights = report.newly_initialised, report.unused
        self.label_names = label_names
        self.model = self.trainability.prepare(model)
        metrics = MetricCollection({"acc": MulticlassAccuracy(len(label_names), average="micro")})
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def model_input_shape(self, batch: dict) -> tuple[tuple[int, int], None]:
        """What the encoder runs on, for the FLOPs the throughput callback logs: every (context, choice) pair."""
        examples, choices, length = batch["input_ids"].shape
        return (examples * choices, length), None

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One JSON line per row, in input order: the context and choices, the chosen index with its probability,
        and every choice's probability."""
        probs, rows = self(batch).float().softmax(-1), []
        for i, example_id in enumerate(batch["example_id"].tolist()):
            p = probs[i].tolist()
            best = max(range(len(p)), key=p.__getitem__)
            rows.append(
                {
                    "id": example_id,
                    **{k: batch[k][i] for k in ("context", "choices") if k in batch},
                    "choice": best,
                    "score": round(p[best], 6),
                    "probabilities": [round(x, 6) for x in p],
                }
            )
        return {"rows": rows}

    def label_info(self) -> dict:
        return {"task": "multiple_choice", "num_choices": len(self.label_names)}
