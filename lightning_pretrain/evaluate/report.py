"""`eval_results.json` and the Markdown table (task, metric, value, stderr, random baseline, rescaled) of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from lightning_pretrain.evaluate.harness import TaskResult
from lightning_pretrain.evaluate.rolling import TextScore


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.4g}"


def table(rows: list[TaskResult], text: tuple[str, TextScore] | None = None) -> str:
    lines = [
        "| task | n | metric | value | stderr | random baseline | rescaled |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for m in row.metrics:
            lines.append(
                f"| {row.task} | {row.samples} | {m.name} | {_fmt(m.value)} | {_fmt(m.stderr)} | "
                f"{_fmt(m.random_baseline, 3)} | {_fmt(m.rescaled)} |"
            )
    if text is not None:
        name, score = text
        pseudo = " (PLL)" if score.method != "exact" else ""
        for metric, value in score.metrics().items():
            lines.append(f"| {name} | {score.tokens} tok | {metric}{pseudo} | {_fmt(value)} | — | — | — |")
    return "\n".join(lines) + "\n"


def write(
    output_dir: str | Path, header: dict, rows: list[TaskResult], text: tuple[str, TextScore] | None = None
) -> tuple[Path, Path]:
    """Write `eval_results.json` and `eval_results.md` into `output_dir`; return their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {**header, "tasks": {r.task: r.to_dict() for r in rows}}
    if text is not None:
        name, score = text
        results["text"] = {
            "file": name,
            "method": score.method,
            "max_length": score.max_length,
            "stride": score.stride,
            "nll_nats": score.nll,
            "tokens": score.tokens,
            "bytes": score.bytes,
            "words": score.words,
            **{k: (v if math.isfinite(v) else None) for k, v in score.metrics().items()},
        }
    json_path, md_path = out / "eval_results.json", out / "eval_results.md"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    notes = "".join(f"\n- {n}" for n in header.get("notes", []))
    md_path.write_text(f"# {header.get('model', '')}\n\n{header.get('summary', '')}{notes}\n\n{table(rows, text)}")
    return json_path, md_path
