"""Run tasks through lm-evaluation-harness (`lm_eval.evaluator.evaluate`) and turn its results into rows: each
metric with its standard error, the random baseline beside every accuracy, and the Eval Gauntlet's chance-rescaled
score (acc - baseline) / (1 - baseline).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

from lightning_pretrain.errors import InputError
from lightning_pretrain.evaluate.ranks import broadcast_from_zero
from lightning_pretrain.evaluate.registry import TaskSpec

ACCURACIES = ("acc", "acc_norm", "acc_bytes", "exact_match")


@dataclass
class Metric:
    name: str
    value: float
    stderr: float | None = None
    random_baseline: float | None = None

    @property
    def rescaled(self) -> float | None:
        b = self.random_baseline
        return None if b is None or b >= 1 else (self.value - b) / (1 - b)


@dataclass
class TaskResult:
    task: str
    samples: int
    num_fewshot: int
    source: str  # the JSONL file, or "lm-eval"
    metrics: list[Metric] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "metrics": {
                m.name: {
                    "value": m.value,
                    "stderr": m.stderr,
                    "random_baseline": m.random_baseline,
                    "rescaled": m.rescaled,
                }
                for m in self.metrics
            },
        }


def quiet_lm_eval(level: int = logging.ERROR) -> None:
    """lm-eval logs every task's defaults and warnings at INFO/WARNING; keep only errors unless asked."""
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(level)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):  # lm-eval writes "N/A" where it has no standard error
        return None
    return value if math.isfinite(value) else None


def run_tasks(
    lm,
    specs: list[TaskSpec],
    loaded: dict,
    limit: int | None = None,
    num_fewshot: int | None = 0,
    bootstrap_iters: int = 1000,
    seed: int = 1234,
) -> list[TaskResult]:
    """Score the tasks of `loaded` (`registry.load_tasks`) with `lm`. Under torch.distributed with a rank-aware
    `lm`, every rank calls this, scores its share of the documents, and gets rank 0's results. `num_fewshot`
    None: each task's own setting (MMLU's 5; 0 where a task has none).

    lm-eval's `evaluate` is called directly, with the seeding and few-shot setup `simple_evaluate` would do: that
    skips its per-call environment report (git, pip and GPU queries in subprocesses), seconds per callback call."""
    import random

    import numpy as np
    import torch
    from lm_eval.evaluator import evaluate

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for name, task in loaded["tasks"].items():
        own = task.get_config("num_fewshot")
        if num_fewshot is None:
            task.set_config(key="num_fewshot", value=own or 0)
        elif own != 0:  # as simple_evaluate: a task fixed at 0-shot stays 0-shot
            task.set_config(key="num_fewshot", value=num_fewshot)
        task.set_fewshot_seed(seed=seed)
        shots = task.get_config("num_fewshot") or 0
        pool = len(task.fewshot_docs() or []) if shots else 0
        # drawn from the scored split itself, lm-eval draws shots + 1 and drops the scored document
        split = getattr(getattr(task, "fewshot_cfg", None), "split", None)
        needed = shots + (split is not None and split == task.get_config("test_split"))
        if shots and pool < needed:
            raise InputError(
                f"--num_fewshot {shots}: task {name} has {pool} examples to draw shots from (its few-shot split, "
                f"else train, validation or test), fewer than {needed}"
            )
    out = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=bootstrap_iters, log_samples=False)
    out = broadcast_from_zero(None if out is None else {k: out[k] for k in ("results", "n-shot", "n-samples")})
    by_id = {s.lm_eval_name: s for s in specs}
    rows = []
    for name, res in out["results"].items():
        spec = by_id.get(name)
        baseline = spec.random_baseline(limit) if spec else None
        samples = out["n-samples"].get(name, {})
        row = TaskResult(
            spec.name if spec else name,
            int(samples.get("effective", res.get("sample_len", 0)) or 0),
            int(out["n-shot"].get(name, num_fewshot or 0) or 0),
            (spec.source or (str(spec.file.path) if spec.file else "lm-eval")) if spec else "lm-eval",
        )
        for key, value in res.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or _number(value) is None:
                continue
            row.metrics.append(
                Metric(
                    metric if filt == "none" else f"{metric}/{filt}",
                    _number(value),
                    _number(res.get(f"{metric}_stderr,{filt}")),
                    baseline if metric in ACCURACIES else None,
                )
            )
        rows.append(row)
    return rows
