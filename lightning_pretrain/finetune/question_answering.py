"""`QuestionAnswering`: extractive question answering (SQuAD 1.1 / 2.0, TyDi QA GoldP, MLQA) on a pretrained encoder
with `AutoModelForQuestionAnswering`'s span head, fine-tuned on `SquadData` windows in any mode (`--model.trainability`).

A question's answer is its best span over all its windows: start <= end, at most `max_answer_length` tokens, inside
the context, scored start + end logit (every such pair, not only the top-n starts and ends). With `null_threshold`
set, the empty answer wins when the null score (token 0's start + end logit, the lowest over the windows, as BERT's
and Hugging Face's SQuAD 2.0 scripts take it) exceeds the best span's by more than the threshold. Validation logs the
official SQuAD 2.0 EM / F1 (`squad_metrics.py`); `predict` writes a JSON line per question with the answer's character
offsets; the export is a plain `...ForQuestionAnswering` directory with its tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torchmetrics import MeanMetric
from transformers import AutoModelForQuestionAnswering

from lightning_pretrain import architecture, optim
from lightning_pretrain.checkpoint_io import check_checkpoint_fits
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.backbone_load import load_backbone
from lightning_pretrain.finetune.classifier import MODEL_INPUTS
from lightning_pretrain.finetune.epoch_scores import log_epoch_scores
from lightning_pretrain.finetune.squad_metrics import SquadScores
from lightning_pretrain.finetune.trainability import Full, Trainability
from lightning_pretrain.runs import JsonlPredictions


def window_spans(
    start: torch.Tensor, end: torch.Tensor, context: torch.Tensor, max_answer_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each window's best span from its start / end logits [W, T] over its `context` tokens (bool [W, T]): score
    (-inf when there is none), first and last token, with first <= last < first + max_answer_length."""
    width = min(max_answer_length, start.shape[1])
    start = start.float().masked_fill(~context, float("-inf"))
    end = F.pad(end.float().masked_fill(~context, float("-inf")), (0, width - 1), value=float("-inf"))
    scores = start[:, :, None] + end.unfold(1, width, 1)  # [W, T, width]: start at t, end at t + k
    best, flat = scores.flatten(1).max(1)
    first = torch.div(flat, width, rounding_mode="floor")
    return best, first, first + flat % width


def best_answers(
    start: torch.Tensor,
    end: torch.Tensor,
    offsets: torch.Tensor,
    window_question: torch.Tensor,
    contexts: list[str],
    max_answer_length: int,
    null_threshold: float | None,
) -> list[dict]:
    """One answer per question (`contexts[q]`, its windows where `window_question == q`): {'answer', 'start', 'end'
    (character offsets into the context, end exclusive; None for no answer), 'score'}: the best span's start + end
    logit, or the null score when the empty answer wins (`null_threshold`: see the module docstring; None: never)."""
    span, first, last = window_spans(start, end, offsets[..., 0] >= 0, max_answer_length)
    null = start[:, 0].float() + end[:, 0].float()
    answers = []
    for q, context in enumerate(contexts):
        windows = (window_question == q).nonzero().flatten()
        w = windows[span[windows].argmax()]
        best, null_score = span[w].item(), null[windows].min().item()
        if best == float("-inf") or (null_threshold is not None and null_score > best + null_threshold):
            answers.append({"answer": "", "start": None, "end": None, "score": round(null_score, 4)})
            continue
        a, b = offsets[w, first[w], 0].item(), offsets[w, last[w], 1].item()
        answers.append({"answer": context[a:b], "start": a, "end": b, "score": round(best, 4)})
    return answers


class QuestionAnswering(L.LightningModule):
    def __init__(
        self,
        backbone: str,
        data: DataContract | None = None,
        trainability: Trainability | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
        lr_schedule: optim.Schedule = "linear",
        max_answer_length: int = 30,
        null_threshold: float | None = 0.0,
        attn_implementation: str | None = "sdpa",
        predictions_file: str | None = None,
    ):
        """
        Args:
            backbone: a local directory (e.g. a run's `hf/` export) or hub id of a pretrained model; its encoder is
                loaded with a span head (start / end logit per token), fresh unless the checkpoint has one.
            data: what the data module publishes (the tokenizer, the window length); the CLI passes `data.contract`.
            trainability: the fine-tuning mode (`lightning_pretrain.finetune.{Full,Frozen,TopK,GradualUnfreezing,
                LayerwiseLRDecay,LoRA}`, composed from configs/finetune/modes/); default: full fine-tuning.
            optimizer: optimizer class and its arguments (weight decay applies to matrices only).
            warmup_ratio: share of the optimizer steps spent in linear LR warmup from 0.
            warmup_steps: warmup length in steps; overrides warmup_ratio.
            lr_schedule: decay after warmup, per step: 'linear' or 'cosine' to 0, or 'constant'.
            max_answer_length: longest answer in tokens.
            null_threshold: answer nothing when the null score exceeds the best span's score by more than this
                (SQuAD 2.0); null: always answer (data where every question has an answer: SQuAD 1.1, MLQA, TyDi).
            attn_implementation: 'sdpa' (fused kernels) or 'eager'.
            predictions_file: where `predict` writes JSON lines (default `<run dir>/predictions.jsonl`).
        """
        super().__init__()
        if data is None or data.task != "question_answering":
            raise InputError(
                "QuestionAnswering needs a question-answering data module's contract (the CLI passes "
                "--data's `contract`; use lightning_pretrain.data.finetune.squad.SquadData)"
            )
        if not 0.0 <= warmup_ratio < 1.0:
            raise InputError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if max_answer_length < 1:
            raise InputError(f"max_answer_length must be at least 1, got {max_answer_length}")
        # how answers are picked stays out of the hyperparameters: LightningCLI applies a checkpoint's over the
        # command line, and validate / predict may choose them anew
        self.save_hyperparameters(
            ignore=["data", "optimizer", "trainability", "predictions_file", "max_answer_length", "null_threshold"]
        )
        self.backbone, self.tokenizer = backbone, data.tokenizer
        self.trainability, self.optimizer = trainability or Full(), optimizer
        self.warmup_ratio, self.warmup_steps, self.lr_schedule = warmup_ratio, warmup_steps, lr_schedule
        self.max_answer_length, self.null_threshold = max_answer_length, null_threshold
        self.attn_implementation, self.predictions_file = attn_implementation, predictions_file
        self.build()
        if data.max_length is not None:
            architecture.check_length(self.model.config, data.max_length, "max_length")

    def build(self) -> None:
        """Load the backbone with a span head and apply the fine-tuning mode."""
        kwargs = {"attn_implementation": self.attn_implementation} if self.attn_implementation else {}
        model, report = load_backbone(AutoModelForQuestionAnswering, self.backbone, self.tokenizer, **kwargs)
        self.newly_initialised, self.unused_weights = report.newly_initialised, report.unused
        self.model = self.trainability.prepare(model)
        self.val_scores, self.test_scores = SquadScores(), SquadScores()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def configure_callbacks(self):
        return [self.trainability, JsonlPredictions(self.predictions_file)]

    # -- steps --------------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits [windows, tokens] in fp32, padding at the lowest value (never a span, no loss)."""
        out = self.model(**{k: batch[k] for k in MODEL_INPUTS if k in batch})
        pad = batch["attention_mask"] == 0
        low = torch.finfo(torch.float32).min
        return out.start_logits.float().masked_fill(pad, low), out.end_logits.float().masked_fill(pad, low)

    @staticmethod
    def loss(start: torch.Tensor, end: torch.Tensor, batch: dict) -> torch.Tensor:
        return (F.cross_entropy(start, batch["start_positions"]) + F.cross_entropy(end, batch["end_positions"])) / 2

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(*self(batch), batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def answers(self, batch: dict, start: torch.Tensor, end: torch.Tensor) -> list[dict]:
        return best_answers(
            start,
            end,
            batch["offsets"],
            batch["window_example"],
            batch["context"],
            self.max_answer_length,
            self.null_threshold,
        )

    def _evaluate(self, batch: dict, scores: SquadScores, mean_loss: MeanMetric) -> None:
        start, end = self(batch)
        mean_loss.update(self.loss(start, end, batch), weight=start.shape[0])
        scores.update([a["answer"] for a in self.answers(batch, start, end)], batch["answers"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_scores, self.val_loss)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_scores, self.test_loss)

    def on_validation_epoch_end(self) -> None:
        log_epoch_scores(self, "val", self.val_scores, self.val_loss)

    def on_test_epoch_end(self) -> None:
        log_epoch_scores(self, "test", self.test_scores, self.test_loss)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One JSON line per question, in input order: id, question, answer ('' for none), its start / end character
        offsets in the context (end exclusive; null for none) and score."""
        answers = self.answers(batch, *self(batch))
        return {"rows": [{"id": i, "question": q, **a} for i, q, a in zip(batch["id"], batch["question"], answers)]}

    # -- optimisation, checkpoints, export ----------------------------------------------------------------------
    def configure_optimizers(self):
        return optim.finetune_optimizers(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_fits(self, checkpoint)

    def export_hf(self, out_dir: str | Path, state_dict: dict | None = None) -> Path:
        """The fine-tuned model (LoRA merged) and tokenizer: `AutoModelForQuestionAnswering` loads it (as does
        `pipeline("question-answering")` on transformers 4; version 5 removed that pipeline)."""
        out_dir = Path(out_dir)
        model = self.trainability.exportable(self.model, out_dir)
        model.save_pretrained(out_dir, state_dict=state_dict if model is self.model else None, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir
