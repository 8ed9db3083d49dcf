"""SuperGLUE's official jsonl rows -> the rows our DataModules read, one converter per task, and the scores the
DataModules' own metrics do not give (MultiRC's exact match per question).

Classification tasks become `{"text", "text_pair", "label"}` rows for `TextClassification`, COPA becomes
`{"context", "choice1", "choice2", "label"}` for `MultipleChoiceData`; a missing field, a blank text, an unknown
label or a span outside its sentence is refused naming the file and line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning_pretrain.data.sources.records import describe, records
from lightning_pretrain.errors import InputError

COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}
BINARY = ("false", "true")  # id 1 is the positive class: MultiRC's F1a is its F1


KINDS = {str: "text", dict: "an object", list: "a list"}


def _field(record: dict, key: str, at: str, kind: type = str):
    if key not in record:
        raise InputError(f"{at}: no {key!r} field (fields: {', '.join(record) or 'none'})")
    value = record[key]
    if not isinstance(value, kind):
        raise InputError(f"{at}: {key!r} is {describe(value)}, not {KINDS[kind]}")
    if isinstance(value, str) and not value.strip():
        raise InputError(f"{at}: {key!r} is empty")
    return value


def _label(record: dict, at: str, names: tuple[str, ...]) -> str:
    """The label as one of `names`: a JSON boolean or 0/1 is 'false'/'true' (BoolQ, WiC, WSC, MultiRC)."""
    if "label" not in record:
        raise InputError(f"{at}: no 'label' field (an unlabelled test file cannot be scored)")
    value = record["label"]
    if isinstance(value, bool) or (isinstance(value, int) and names == BINARY and value in (0, 1)):
        value = BINARY[int(value)]
    if not isinstance(value, str) or value.strip().lower() not in names:
        raise InputError(f"{at}: label {value!r} is not one of {', '.join(names)}")
    return value.strip().lower()


def _mark(text: str, start, end, marker: str, at: str, what: str) -> str:
    """`text` with the characters start:end wrapped in `marker`."""
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        raise InputError(
            f"{at}: the span {what} ({start!r}, {end!r}) is not inside its sentence ({len(text)} characters)"
        )
    return f"{text[:start]}{marker}{text[start:end]}{marker}{text[end:]}"


def pair(first: str, second: str, labels: tuple[str, ...]) -> Callable[[dict, str], list[dict]]:
    """CB, RTE (premise, hypothesis) and BoolQ (question, passage): two official fields as a text pair."""

    def convert(record: dict, at: str) -> list[dict]:
        return [
            {
                "idx": record.get("idx"),
                "text": _field(record, first, at),
                "text_pair": _field(record, second, at),
                "label": _label(record, at, labels),
            }
        ]

    return convert


def wic(record: dict, at: str) -> list[dict]:
    """The word, then both sentences with the word's occurrence marked by asterisks."""
    word, s1, s2 = (_field(record, k, at) for k in ("word", "sentence1", "sentence2"))
    first = _mark(s1, record.get("start1"), record.get("end1"), "*", at, "start1/end1")
    second = _mark(s2, record.get("start2"), record.get("end2"), "*", at, "start2/end2")
    return [
        {"idx": record.get("idx"), "text": f"{word}: {first}", "text_pair": second, "label": _label(record, at, BINARY)}
    ]


def _words(span: str) -> list[str]:
    return [w.lower().strip(".,;:!?'\"") for w in span.split()]


def wsc(record: dict, at: str) -> list[dict]:
    """The text with the candidate (span1) in asterisks and the pronoun (span2) in hashes, paired with the question
    whether one refers to the other. Spans are word positions of `text.split()`."""
    text, target = _field(record, "text", at), _field(record, "target", at, dict)
    words, taken = text.split(), set()
    for k, marker in (("1", "*"), ("2", "#")):
        span, index = _field(target, f"span{k}_text", at), target.get(f"span{k}_index")
        n = len(span.split())
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= len(words) - n:
            raise InputError(f"{at}: span{k}_index {index!r} is not a word position of the text ({len(words)} words)")
        if taken & set(range(index, index + n)):
            raise InputError(f"{at}: span1 and span2 overlap")
        if _words(" ".join(words[index : index + n])) != _words(span):
            raise InputError(
                f"{at}: span{k}_text {span!r} is not the text's words at span{k}_index {index} "
                f"({' '.join(words[index : index + n])!r})"
            )
        taken |= set(range(index, index + n))
        words[index] = marker + words[index]
        words[index + n - 1] += marker
    return [
        {
            "idx": record.get("idx"),
            "text": " ".join(words),
            "text_pair": f'Does "{target["span2_text"]}" refer to "{target["span1_text"]}"?',
            "label": _label(record, at, BINARY),
        }
    ]


def copa(record: dict, at: str) -> list[dict]:
    """The premise with its question phrased ("What was the cause?" / "What happened as a result?"), two choices."""
    question = _field(record, "question", at)
    if question not in COPA_QUESTIONS:
        raise InputError(f"{at}: question {question!r} is neither 'cause' nor 'effect'")
    label = record.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or label not in (0, 1):
        raise InputError(f"{at}: label {label!r} is not 0 or 1 (the right choice)")
    return [
        {
            "idx": record.get("idx"),
            "context": f"{_field(record, 'premise', at)} {COPA_QUESTIONS[question]}",
            "choice1": _field(record, "choice1", at),
            "choice2": _field(record, "choice2", at),
            "label": label,
        }
    ]


def multirc(record: dict, at: str) -> list[dict]:
    """One (paragraph, question + answer) row per answer option, labelled whether the answer is right; `question`
    keys the rows of one question for its exact match."""
    passage = _field(record, "passage", at, dict)
    paragraph, questions = _field(passage, "text", at), _field(passage, "questions", at, list)
    rows = []
    for qi, q in enumerate(questions):
        where = f"{at} question {qi}"
        if not isinstance(q, dict):
            raise InputError(f"{where}: {describe(q)}, not an object")
        question, answers = _field(q, "question", where), _field(q, "answers", where, list)
        if not answers:
            raise InputError(f"{where}: no answers")
        for ai, a in enumerate(answers):
            if not isinstance(a, dict):
                raise InputError(f"{where} answer {ai}: {describe(a)}, not an object")
            rows.append(
                {
                    "idx": a.get("idx"),
                    "question": f"{record.get('idx')}/{q.get('idx', qi)}",
                    "text": paragraph,
                    "text_pair": f"{question} {_field(a, 'text', f'{where} answer {ai}')}",
                    "label": _label(a, f"{where} answer {ai}", BINARY),
                }
            )
    if not rows:
        raise InputError(f"{at}: the passage has no questions")
    return rows


@dataclass(frozen=True)
class SuperGlueTask:
    name: str  # as SuperGLUE writes it, also its directory
    convert: Callable[[dict, str], list[dict]]  # (official record, "file line N") -> our rows
    metrics: tuple[str, ...]  # val/<metric> values averaged into the task's score
    labels: tuple[str, ...] = ()  # class names in id order; () for multiple choice (COPA)
    max_length: int = 128


TASKS = {
    "boolq": SuperGlueTask("BoolQ", pair("question", "passage", BINARY), ("acc",), BINARY, 256),
    "cb": SuperGlueTask(
        "CB",
        pair("premise", "hypothesis", ("entailment", "contradiction", "neutral")),
        ("acc", "f1"),
        ("entailment", "contradiction", "neutral"),
        256,
    ),
    "copa": SuperGlueTask("COPA", copa, ("acc",), (), 64),
    "multirc": SuperGlueTask("MultiRC", multirc, ("f1a", "em"), BINARY, 384),
    "rte": SuperGlueTask(
        "RTE",
        pair("premise", "hypothesis", ("entailment", "not_entailment")),
        ("acc",),
        ("entailment", "not_entailment"),
        256,
    ),
    "wic": SuperGlueTask("WiC", wic, ("acc",), BINARY, 128),
    "wsc": SuperGlueTask("WSC", wsc, ("acc",), BINARY, 128),
}
RECORD_LEFT_OUT = (
    "ReCoRD is left out: it is a cloze task (fill @placeholder with one of the passage's entities, "
    "scored by the best token F1 / exact match over the gold answers), i.e. ranking a varying number "
    "of entity candidates per query over long passages; neither the pair classifier nor the "
    "fixed-N multiple-choice head expresses it"
)


def convert_file(task: str, path: Path) -> tuple[list[dict], int]:
    """The converted rows of an official jsonl file and the number of official examples in it."""
    if not path.is_file():
        raise InputError(f"{TASKS[task].name}: file not found: {path}")
    _, found = records(str(path))
    rows, n = [], 0
    for where, record in found:
        rows.extend(TASKS[task].convert(record, f"{path} {where}"))
        n += 1
    return rows, n


def exact_match(questions: list[str], gold: list[int], predicted: list[int]) -> float:
    """MultiRC's EM: the share of questions whose every answer option is predicted right."""
    right: dict[str, bool] = {}
    for q, g, p in zip(questions, gold, predicted, strict=True):
        right[q] = right.get(q, True) and g == p
    return sum(right.values()) / len(right)


def f1a(gold: list[int], predicted: list[int]) -> float:
    """MultiRC's F1a: binary F1 of the 'true' answers over all answer options (torchmetrics' BinaryF1Score)."""
    import torch
    from torchmetrics.functional.classification import binary_f1_score

    return float(binary_f1_score(torch.tensor(predicted), torch.tensor(gold)))
