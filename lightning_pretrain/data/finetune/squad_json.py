"""Reading one SQuAD-format JSON file (SQuAD 1.1 / 2.0, TyDi QA GoldP, MLQA) into question columns for `SquadData`:
what is refused with an `InputError` naming file and question, and what is only counted (dropped answers, skipped
questions). Kept apart from the windowing so the input rules read (and are tested) on their own.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lightning_pretrain.data.sources.records import check_encoding
from lightning_pretrain.errors import InputError

SHAPE = '{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}'


def read_squad(path: str, labelled: bool, drop_bad_answers: bool = False) -> tuple[dict[str, list], Counter]:
    """One SQuAD JSON file's questions as columns (id, question, context, answers: gold texts, [] if unanswerable;
    starts: their character offsets) and counts. Refused, naming file and question: not UTF-8 JSON shaped as SHAPE,
    a missing or blank id, a blank question or context; when `labelled` (predict ignores answers) also answers that
    are not a list, `is_impossible: false` without answers, and an answer that is not {text, answer_start}, is blank,
    or does not match the context at answer_start (`drop_bad_answers`: dropped instead, and a question left without
    answers skipped, both counted). `is_impossible: true`, or no answers without `is_impossible`, is unanswerable
    (as the official v2.0 script scores it). Duplicate ids are counted: rows are keyed by position."""
    check_encoding(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} is not JSON ({e.msg} at line {e.lineno} column {e.colno}); expected SQuAD JSON {SHAPE}"
        ) from e
    articles = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(articles, list):
        raise InputError(f"{path} is not SQuAD JSON: expected {SHAPE}")
    cols, counts = {k: [] for k in ("id", "question", "context", "answers", "starts")}, Counter()
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        for p, para in enumerate(paragraphs if isinstance(paragraphs, list) else [None]):
            context, qas = (para.get("context"), para.get("qas")) if isinstance(para, dict) else (None, None)
            if not isinstance(qas, list):
                raise InputError(f"{path}: article {a} paragraph {p} has no 'qas' list; expected SQuAD JSON {SHAPE}")
            for q, qa in enumerate(qas):
                where = f"{path}: article {a} paragraph {p} question {q}"
                qa = qa if isinstance(qa, dict) else {}
                qid = qa.get("id")
                if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
                    raise InputError(f"{where} has no id (every question needs its 'id')")
                where = f"{where} (id {qid})"
                for name, text in (("question", qa.get("question")), ("context", context)):
                    if not isinstance(text, str) or not text.strip():
                        raise InputError(f"{where}: the {name} is {'empty' if text == '' else 'missing or not text'}")
                answers, starts = _answers(qa, context, where, drop_bad_answers, counts) if labelled else ([], [])
                if answers is None:
                    counts["skipped_questions"] += 1
                    continue
                for key, value in zip(cols, (str(qid), qa["question"], context, answers, starts)):
                    cols[key].append(value)
    return cols, counts


def _answers(qa: dict, context: str, where: str, drop: bool, counts: Counter) -> tuple[list | None, list]:
    """A labelled question's gold answer texts and starts ([] when unanswerable; None: skip, all were bad)."""
    impossible, raw = qa.get("is_impossible"), qa.get("answers")
    if impossible not in (None, True, False):
        raise InputError(f"{where}: is_impossible must be true or false, got {impossible!r}")
    if impossible:
        return [], []
    if not isinstance(raw, list) or (not raw and impossible is False):
        raise InputError(
            f"{where}: "
            + (
                "'answers' must be a list of {'text', 'answer_start'}"
                if not isinstance(raw, list)
                else "marked answerable ('is_impossible': false) but has no answers"
            )
        )
    texts, starts = [], []
    for ans in raw:
        problem = _answer_problem(ans, context)
        if problem is None:
            texts.append(ans["text"])
            starts.append(ans["answer_start"])
        elif drop:
            counts["dropped_answers"] += 1
        else:
            raise InputError(f"{where}: {problem} (--data.drop_bad_answers true drops such answers)")
    return (texts, starts) if texts or not raw else (None, [])


def _answer_problem(ans, context: str) -> str | None:
    text, start = (ans.get("text"), ans.get("answer_start")) if isinstance(ans, dict) else (None, None)
    if not isinstance(text, str) or type(start) is not int:
        return f"answer {str(ans)[:80]} is not {{'text': a string, 'answer_start': an integer}}"
    if not text.strip():
        return "an answer's text is empty (an unanswerable question has 'is_impossible': true)"
    if not 0 <= start <= len(context) - len(text):
        return f"answer {text[:60]!r} at answer_start {start} lies outside the context ({len(context)} characters)"
    found = context[start : start + len(text)]
    return None if found == text else f"answer {text[:60]!r} does not match the context at {start}: {found[:60]!r}"
