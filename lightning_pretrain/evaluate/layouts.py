"""The llm-foundry "Eval Gauntlet" JSONL layouts: which one a file is (from its keys), checked row by row, and the
rows rewritten into the fields our lm-eval task templates read (`tasks/<layout>.yaml`).

    multiple_choice    {"query", "choices", "gold"}                answer = choices[gold] continuing the query
    schema             {"context_options", "continuation", "gold"} the right context makes the continuation likely
    language_modeling  {"context", "continuation"}                 the continuation's tokens follow the context

As in llm-foundry, the text is stripped and the gauntlet's `continuation_delimiter` (default " ") joins prompt and
answer: its non-space part ends the prompt, its trailing space starts the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lightning_pretrain.errors import InputError

LAYOUTS: dict[str, tuple[str, ...]] = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}


def detect_layout(keys: set[str]) -> str | None:
    """The layout whose keys a row has (extra keys, e.g. `category`, are allowed); None if none fits."""
    for layout, needed in LAYOUTS.items():
        if set(needed) <= keys:
            return layout
    return None


def _expected() -> str:
    return "; ".join(f"{name.replace('_', ' ')} {{{', '.join(keys)}}}" for name, keys in LAYOUTS.items())


def _check_row(row: dict, layout: str, where: str) -> None:
    def text(key: str, allow_empty: bool = False) -> None:
        if not isinstance(row[key], str) or (not allow_empty and not row[key].strip()):
            raise InputError(f"{where}: '{key}' must be a non-empty string")

    def options(key: str) -> None:
        value = row[key]
        if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) and v.strip() for v in value):
            raise InputError(f"{where}: '{key}' must be a list of at least 2 non-empty strings")
        gold = row["gold"]
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(value):
            raise InputError(f"{where}: 'gold' must be an index into '{key}' (0..{len(value) - 1}), got {gold!r}")

    if layout == "multiple_choice":
        text("query", allow_empty=True)
        options("choices")
    elif layout == "schema":
        text("continuation")
        options("context_options")
    else:
        text("context", allow_empty=True)
        text("continuation")


@dataclass
class TaskFile:
    """A checked gauntlet JSONL file: its layout and rows, as read."""

    path: Path
    layout: str
    rows: list[dict] = field(repr=False)

    def random_baseline(self, limit: int | None = None) -> float:
        """Expected accuracy of a uniform random guess over the scored rows (LAMBADA-style files: 0)."""
        rows = self.rows[:limit] if limit else self.rows
        key = {"multiple_choice": "choices", "schema": "context_options"}.get(self.layout)
        return 0.0 if key is None else sum(1 / len(r[key]) for r in rows) / len(rows)

    def normalized(self, delimiter: str = " ") -> tuple[list[dict], str]:
        """Rows in the templates' fields, and lm-eval's `target_delimiter` (the delimiter's trailing space; for
        language modelling it is part of each continuation instead, as in lm-eval's lambada task)."""
        suffix = delimiter.rstrip(" ")
        target_delimiter = delimiter[len(suffix) :]
        out = []
        for r in self.rows:
            if self.layout == "multiple_choice":
                out.append(
                    {
                        "text": r["query"].strip() + suffix,
                        "choices": [c.strip() for c in r["choices"]],
                        "gold": r["gold"],
                    }
                )
            elif self.layout == "schema":
                out.append(
                    {
                        "contexts": [c.strip() + suffix for c in r["context_options"]],
                        "continuation": r["continuation"].strip(),
                        "gold": r["gold"],
                    }
                )
            else:  # lm-eval does not put target_delimiter before a loglikelihood target: the row carries it
                out.append(
                    {
                        "context": r["context"].strip() + suffix,
                        "continuation": target_delimiter + r["continuation"].strip(),
                    }
                )
        return out, "" if self.layout == "language_modeling" else target_delimiter


def read_task_file(path: str | Path) -> TaskFile:
    """Read and check a gauntlet JSONL file; any problem is an InputError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"task file {path} does not exist" if not path.exists() else f"task file {path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"task file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    rows, layout = [], None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not a JSON object ({e.msg})") from e
        if not isinstance(row, dict):
            raise InputError(f"{where}: not a JSON object (one object per line)")
        row_layout = detect_layout(set(row))
        if row_layout is None:
            raise InputError(f"{where}: keys {sorted(row)} fit no task layout; expected {_expected()}")
        if layout is not None and row_layout != layout:
            raise InputError(f"{where}: a {row_layout.replace('_', ' ')} row in a {layout.replace('_', ' ')} file")
        layout = row_layout
        _check_row(row, layout, where)
        rows.append(row)
    if not rows:
        raise InputError(f"task file {path} holds no rows")
    return TaskFile(path, layout, rows)
