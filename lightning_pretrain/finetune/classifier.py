"""`SequenceClassifier`: a pretrained backbone plus a classification (or regression) head, fine-tuned on labelled
text, with torchmetrics per task type and a Hugging Face export that `pipeline("text-classification")` loads.

The head is sized from the label names the data publishes (`DataContract.label_names`), so classes are never typed
twice; the names travel in the export's `id2label` / `label2id`, in every checkpoint and in `<run dir>/labels.json`.
Which parameters train is the trainability policy's business (`--model.trainability`, `finetune/trainability.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassF1Score, MulticlassMatthewsCorrCoef
from torchmetrics.regression import MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef
from transformers import AutoModelForSequenceClassification

from lightning_pretrain import architecture, optim
from lightning_pretrain.checkpoint_io import check_checkpoint_fits
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.backbone_load import load_backbone
from lightning_pretrain.finetune.epoch_scores import log_epoch_scores
from lightning_pretrain.finetune.trainability import Full, Trainability
from lightning_pretrain.runs import JsonlPredictions, run_dir

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def task_metrics(label_names: list[str] | None) -> MetricCollection:
    """Classification: accuracy, macro-F1 and Matthews correlation (CoLA's metric), plus the positive class's F1
    for two classes (MRPC/QQP's); regression (no label names): Pearson, Spearman (STS-B's) and MSE."""
    if label_names is None:
        return MetricCollection(
            {"pearson": PearsonCorrCoef(), "spearman": SpearmanCorrCoef(), "mse": MeanSquaredError()}
        )
    n = len(label_names)
    metrics = {
        "acc": MulticlassAccuracy(n, average="micro"),
        "f1": MulticlassF1Score(n, average="macro"),
        "mcc": MulticlassMatthewsCorrCoef(n),
    }
    if n == 2:
        metrics["f1_pos"] = BinaryF1Score()
    return MetricCollection(metrics)


class SequenceClassifier(L.LightningModule):
    def __init__(
        self,
        backbone: str,
        data: DataContract | None = None,
        trainability: Trainability | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_ratio: float = 0.06,
        warmup_steps: int | None = None,
        lr_schedule: optim.Schedule = "linear",
        classifier_dropout: float | None = None,
        attn_implementation: str | None = "sdpa",
        predictions_file: str | None = None,
    ):
        """
        Args:
            backbone: a local directory (e.g. a run's `hf/` export) or hub id of a pretrained model; its encoder is
                loaded and a fresh head sized to the data's labels is put on top (an existing head of another
                size is replaced).
            data: what the data module publishes (the backbone's tokenizer, the task, label names, max length); the
                CLI passes `data.contract`.
            trainability: the fine-tuning mode: which parameters train, when and at which LR
                (`lightning_pretrain.finetune.{Full,Frozen,TopK,GradualUnfreezing,LayerwiseLRDecay,LoRA}`, composed
                from configs/finetune/modes/); default: full fine-tuning.
            optimizer: optimizer class and its arguments (weight decay applies to matrices only).
            warmup_ratio: share of the optimizer steps spent in linear LR warmup from 0.
            warmup_steps: warmup length in steps; overrides warmup_ratio.
            lr_schedule: decay after warmup, per step: 'linear' or 'cosine' to 0, or 'constant'.
            classifier_dropout: dropout before the head (default: the backbone config's).
            attn_implementation: 'sdpa' (fused kernels) or 'eager'.
            predictions_file: where `predict` writes JSON lines (default `<run dir>/predictions.jsonl`).
        """
        super().__init__()
        if data is None or data.task not in ("classification", "regression"):
            raise InputError(
                "the classifier needs a classification data module's contract (the CLI passes "
                "--data's `contract`; use lightning_pretrain.data.TextClassification)"
            )
        if not 0.0 <= warmup_ratio < 1.0:
            raise InputError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        # predictions_file stays out of the hyperparameters: LightningCLI applies a checkpoint's over the command line
        self.save_hyperparameters(ignore=["data", "optimizer", "trainability", "predictions_file"])
        self.backbone, self.tokenizer = backbone, data.tokenizer
        self.trainability = trainability or Full()
        self.optimizer = optimizer
        self.warmup_ratio, self.warmup_steps, self.lr_schedule = warmup_ratio, warmup_steps, lr_schedule
        self.classifier_dropout, self.attn_implementation = classifier_dropout, attn_implementation
        self.predictions_file = predictions_file
        self.build(list(data.label_names) if data.task == "classification" else None)
        if data.max_length is not None:
            architecture.check_length(self.model.config, data.max_length, "max_length")

    def build(self, label_names: list[str] | None) -> None:
        """Load the backbone with a head for `label_names` (None: one regression output) and apply the policy."""
        if label_names is not None and len(label_names) < 2:
            raise InputError(f"classification needs at least 2 classes, the data has {label_names}")
        kwargs = (
            {"num_labels": 1, "problem_type": "regression"}
            if label_names is None
            else {
                "num_labels": len(label_names),
                "problem_type": "single_label_classification",
                "id2label": dict(enumerate(label_names)),
                "label2id": {n: i for i, n in enumerate(label_names)},
            }
        )
        if self.classifier_dropout is not None:
            kwargs["classifier_dropout"] = self.classifier_dropout
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        model, report = load_backbone(
            AutoModelForSequenceClassification, self.backbone, self.tokenizer, ignore_mismatched_sizes=True, **kwargs
        )
        # what the checkpoint did not provide (e.g. an MLM export's pooler and the head) and what it had unused
        self.newly_initialised, self.unused_weights = report.newly_initialised, report.unused
        if model.config.pad_token_id is None:  # GPT-style heads pool the last non-pad token: they must know pad
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label_names = label_names
        self.model = self.trainability.prepare(model)
        metrics = task_metrics(label_names)
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    @property
    def regression(self) -> bool:
        return self.label_names is None

    def configure_callbacks(self):
        return [self.trainability, JsonlPredictions(self.predictions_file)]

    # -- steps --------------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = self.loss(logits, batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        if not self.regression:
            self.log("train/acc", (logits.argmax(-1) == batch["labels"]).float().mean())
        return loss

    def _evaluate(self, batch: dict, metrics: MetricCollection, mean_loss: MeanMetric) -> None:
        logits = self(batch)
        labels = batch["labels"]
        mean_loss.update(self.loss(logits, labels), weight=labels.numel())
        metrics.update(logits.squeeze(-1).float() if self.regression else logits.argmax(-1), labels)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_loss)
        self._log_metrics("val", self.val_metrics, self.val_loss)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_loss)
        self._log_metrics("test", self.test_metrics, self.test_loss)

    def _log_metrics(self, prefix: str, metrics: Metric | MetricCollection, mean_loss: MeanMetric) -> None:
        # metrics of one value each: the objects themselves, which Lightning computes at the epoch's end
        # (synchronised across ranks by torchmetrics, so no sync_dist) and resets; one metric of several values
        # (seqeval's entity scores) waits for the epoch's end (epoch_scores.py)
        if isinstance(metrics, MetricCollection):
            self.log(f"{prefix}/loss", mean_loss, prog_bar=True)
            self.log_dict(metrics, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if not isinstance(self.val_metrics, MetricCollection):
            log_epoch_scores(self, "val", self.val_metrics, self.val_loss)

    def on_test_epoch_end(self) -> None:
        if not isinstance(self.test_metrics, MetricCollection):
            log_epoch_scores(self, "test", self.test_metrics, self.test_loss)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One JSON line per input, in input order: the text(s), and the label with its probability and every
        class's probability (classification) or the predicted score (regression)."""
        logits, rows = self(batch).float(), []
        for i, example_id in enumerate(batch["example_id"].tolist()):
            row = {"id": example_id, **{k: batch[k][i] for k in ("text", "text_pair") if k in batch}}
            if self.regression:
                row["score"] = round(logits[i, 0].item(), 6)
            else:
                probs = logits[i].softmax(-1).tolist()
                best = max(range(len(probs)), key=probs.__getitem__)
                row.update(
                    label=self.label_names[best],
                    score=round(probs[best], 6),
                    probabilities={n: round(p, 6) for n, p in zip(self.label_names, probs)},
                )
            rows.append(row)
        return {"rows": rows}

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return optim.finetune_optimizers(self)

    # -- the labels travel with the run -------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        root = run_dir(self.trainer)  # a broadcast under DDP: every rank asks
        if self.trainer.is_global_zero:
            root.mkdir(parents=True, exist_ok=True)
            (root / "labels.json").write_text(json.dumps(self.label_info(), indent=2) + "\n")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_fits(self, checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["labels"] = self.label_info()

    def label_info(self) -> dict:
        if self.regression:
            return {"task": "regression"}
        return {"task": "classification", "id2label": dict(enumerate(self.label_names))}

    # -- export -------------------------------------------------------------------------------------------------
    def export_hf(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """The fine-tuned model (LoRA merged) and tokenizer, loadable by `pipeline("text-classification")`."""
        out_dir = Path(out_dir)
        model = self.trainability.exportable(self.model, out_dir)
        model.save_pretrained(out_dir, state_dict=state_dict if model is self.model else None, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir
