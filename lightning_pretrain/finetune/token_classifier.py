"""`TokenClassifier`: a pretrained backbone with a per-token head (`AutoModelForTokenClassification`), fine-tuned on
IOB2-tagged words (`data.finetune.token_tags.TokenTagging`, e.g. named entities), in every `--model.trainability`
mode. A `SequenceClassifier` whose head, loss, metrics and predictions are per word: cross-entropy over each word's
first sub-token; `val/precision`, `val/recall`, `val/f1` over entities as seqeval scores them, `val/acc` over words,
`val/loss`; `predict` writes each sentence's entities as character spans of its text; the export loads in
`pipeline("token-classification", aggregation_strategy="simple")`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Tokens
from torchmetrics import MeanMetric, Metric
from transformers import AutoModelForTokenClassification

from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.backbone_load import load_backbone
from lightning_pretrain.finetune.classifier import SequenceClassifier


def entities(tags: list[str], strict: bool = False) -> set[tuple[str, int, int]]:
    """(type, first word, last word) of the entities in one sentence's IOB2 `tags`, found by seqeval: its default
    mode (conlleval's rules: an I-X after O or another type begins an entity), or `strict` IOB2 (such a tag is no
    entity; only B-X I-X* is)."""
    if strict:
        return {(e.tag, e.start, e.end - 1) for e in Tokens(tags, scheme=IOB2).entities}
    return set(get_entities(tags))


class EntityScores(Metric):
    """Entity-level micro precision / recall / F1 exactly as `seqeval.metrics` computes them over the same sentences
    (default mode, or mode='strict' with scheme=IOB2), and word accuracy. Why not seqeval's functions themselves:
    they need every tag sequence in one place; this keeps counts, which torchmetrics sums across DDP ranks (the
    entities still come from seqeval, per sentence)."""

    full_state_update = False

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict
        for name in ("correct", "predicted", "gold", "words_right", "words"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: list[list[str]], golds: list[list[str]]) -> None:
        for pred, gold in zip(preds, golds):
            p, g = entities(pred, self.strict), entities(gold, self.strict)
            self.correct += len(p & g)
            self.predicted += len(p)
            self.gold += len(g)
            self.words_right += sum(a == b for a, b in zip(pred, gold))
            self.words += len(gold)

    def compute(self) -> dict[str, torch.Tensor]:
        precision = self.correct / self.predicted if self.predicted else torch.tensor(0.0)  # seqeval: 0 when undefined
        recall = self.correct / self.gold if self.gold else torch.tensor(0.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else torch.tensor(0.0)
        acc = self.words_right / self.words if self.words else torch.tensor(0.0)
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float(), "acc": acc.float()}


class TokenClassifier(SequenceClassifier):
    def __init__(self, data: DataContract | None = None, strict_entities: bool = False, **kwargs):
        """
        Args:
            data: what the token tagging data module publishes (the backbone's tokenizer, the IOB2 tag names in id
                order, the max length); the CLI passes `data.contract`.
            strict_entities: score (and predict) entities by seqeval's strict IOB2 mode, where an I-X that does
                not continue a B-X / I-X is no entity; default: seqeval's default mode (conlleval's rules, as
                published CoNLL-2003 scores are computed), where it begins one.
        """
        if data is None or data.task != "token_classification":
            raise InputError(
                "the token classifier needs a token tagging data module's contract (the CLI passes "
                "--data's `contract`; use lightning_pretrain.data.finetune.token_tags.TokenTagging)"
            )
        self.strict_entities = strict_entities  # read by `build`, which the parent's constructor calls
        # the parent takes a classification contract: the tag names size the head as class names do
        super().__init__(data=dataclasses.replace(data, task="classification"), **kwargs)

    def build(self, label_names: list[str] | None) -> None:
        """Load the backbone with a per-token head for the tag names and apply the trainability policy."""
        kwargs = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }
        if self.classifier_dropout is not None:
            kwargs["classifier_dropout"] = self.classifier_dropout
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        model, report = load_backbone(
            AutoModelForTokenClassification, self.backbone, self.tokenizer, ignore_mismatched_sizes=True, **kwargs
        )
        self.newly_initialised, self.unused_weights = report.newly_initialised, report.unused
        self.label_names = label_names
        self.model = self.trainability.prepare(model)
        self.val_metrics, self.test_metrics = EntityScores(self.strict_entities), EntityScores(self.strict_entities)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    # -- steps --------------------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled tokens (each word's first sub-token; the rest are -100)."""
        total = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, labels = self(batch), batch["labels"]
        loss = self.loss(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        mask = labels != IGNORE_INDEX
        self.log("train/acc", (logits.argmax(-1)[mask] == labels[mask]).float().mean())
        return loss

    @staticmethod
    def first_tokens(word_ids: torch.Tensor, lengths: list[int]) -> list[list[int | None]]:
        """Per sentence, the position of each word's first sub-token (None: the word has none, e.g. truncated)."""
        first = (word_ids >= 0) & (word_ids != F.pad(word_ids, (1, 0), value=-1)[:, :-1])
        out: list[list[int | None]] = [[None] * n for n in lengths]
        rows, cols = first.nonzero(as_tuple=True)
        for b, t, w in zip(rows.tolist(), cols.tolist(), word_ids[rows, cols].tolist()):
            out[b][w] = t
        return out

    def word_tags(self, best: list[list[int]], positions: list[list[int | None]]) -> list[list[str]]:
        """Each word's predicted tag name; a word without a sub-token is O."""
        return [["O" if t is None else self.label_names[row[t]] for t in words] for row, words in zip(best, positions)]

    def _evaluate(self, batch: dict, metrics: EntityScores, mean_loss: MeanMetric) -> None:
        logits, labels = self(batch), batch["labels"]
        mean_loss.update(self.loss(logits, labels), weight=(labels != IGNORE_INDEX).sum())
        positions = self.first_tokens(batch["word_ids"], [len(t) for t in batch["tags"]])
        preds = self.word_tags(logits.argmax(-1).tolist(), positions)
        metrics.update(preds, [[self.label_names[i] for i in tags] for tags in batch["tags"]])

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One JSON line per sentence, in input order: its text and entities, each with its type, text, [start,
        end) character span in the text, and score (the mean probability of its words' tags)."""
        score, best = self(batch).float().softmax(-1).max(-1)
        score, best = score.tolist(), best.tolist()
        positions = self.first_tokens(batch["word_ids"], [len(s) for s in batch["spans"]])
        rows = []
        for i, example_id in enumerate(batch["example_id"].tolist()):
            text, spans, words = batch["text"][i], batch["spans"][i], positions[i]
            tags = self.word_tags([best[i]], [words])[0]
            found = []
            for kind, first, last in sorted(entities(tags, self.strict_entities), key=lambda e: e[1]):
                start, end = spans[first][0], spans[last][1]
                probs = [score[i][t] for t in words[first : last + 1] if t is not None]
                found.append(
                    {
                        "type": kind,
                        "text": text[start:end],
                        "start": start,
                        "end": end,
                        "score": round(sum(probs) / len(probs), 6),
                    }
                )
            rows.append({"id": example_id, "text": text, "entities": found})
        return {"rows": rows}

    def label_info(self) -> dict:
        return {"task": "token_classification", "id2label": dict(enumerate(self.label_names))}
