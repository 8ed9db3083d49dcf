"""What the GLUE and SuperGLUE suites share: one `lightning-pretrain fit` run per task into OUT/<task>/version_N, its
`val/` metrics read back, a score per task (the mean of its metrics, x 100) and their average, and the tables
rewritten as Markdown and JSON after every task (a suite stopped midway keeps what it measured)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# inside the package (a link to the repository's configs/ in a checkout, the files themselves in a wheel)
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune"
REFUSED = 2  # a task's run refused its input (its one `error:` line is out): the same input would fail the next


def next_version(root: Path) -> int:
    versions = [int(d.name[8:]) for d in root.glob("version_*") if d.name[8:].isdigit()]
    return max(versions, default=-1) + 1


def run_task(args: list[str], in_process: bool) -> int:
    """`lightning-pretrain ARGS` in this process or a fresh one; its exit status."""
    if in_process:
        from lightning_pretrain.cli import main

        try:
            main(args)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        return 0
    return subprocess.run([sys.executable, "-m", "lightning_pretrain", *args], check=False).returncode


def fit_task(task: str, args: list[str], out: Path, in_process: bool) -> dict:
    """`lightning-pretrain fit ARGS` logging to OUT/<task>/version_N: {'status', 'seconds', 'run_dir', 'metrics'
    (its final `val/` metrics, empty when it wrote none)}."""
    version, t0 = next_version(out / task), time.perf_counter()
    run_dir = out / task / f"version_{version}"
    logger = ["--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", task]
    status = run_task(["fit", *args, *logger, "--trainer.logger.init_args.version", str(version)], in_process)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {
        "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "run_dir": run_dir,
        "metrics": {k: v for k, v in metrics.items() if k.startswith("val/")},
    }


def mean_score(names: tuple[str, ...], metrics: dict) -> float | None:
    """The mean of `val/<name>` over `names`, x 100; None when one is missing."""
    values = [metrics.get(f"val/{m}") for m in names]
    return None if any(v is None for v in values) else 100 * sum(values) / len(values)


def write_tables(results: dict, out: Path, stem: str, title: str, columns: list[str], row: Callable) -> None:
    """`results['average']` over the tasks' scores, and OUT/<stem>.md (a row per task by `row(task_result)`, then
    the average under the 'score' column) and OUT/<stem>.json."""
    scores = [t["score"] for t in results["tasks"].values()]
    results["average"] = sum(scores) / len(scores) if scores and None not in scores else None
    lines = [title, "", f"| {' | '.join(columns)} |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += [f"| {' | '.join(row(t))} |" for t in results["tasks"].values()]
    average = f"**{results['average']:.1f}**" if results["average"] is not None else "n/a"
    cells = ["**average**", *("" for _ in columns[1:])]
    cells[columns.index("score")] = average
    lines.append(f"| {' | '.join(cells)} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
