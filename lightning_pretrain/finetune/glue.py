"""GLUE suite: fine-tune one backbone on a list of GLUE tasks (one `lightning-pretrain fit` run each) and write a
table of every task's dev score and their average, as Markdown and JSON.

    lightning-pretrain-glue --backbone logs/mlm_tiny/version_0/hf --tasks cola mrpc rte stsb \\
        --glue_dir ../shared/data/glue --mode full --out glue_runs --trainer.max_epochs 1

Each task's settings come from its YAML (configs/finetune/glue/<task>.yaml, sst2.yaml, mnli.yaml), the mode from
configs/finetune/modes/<mode>.yaml, any further `--section.key value` goes to every run; `--glue_dir` reads GLUE's
own TSV folders, else the hub's `glue`. Scores are GLUE's (CoLA: MCC; MRPC/QQP: mean of F1 and accuracy; STS-B:
mean of Pearson and Spearman; else accuracy; x 100).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from lightning_pretrain import entry
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.suite import CONFIGS, REFUSED, fit_task, mean_score, write_tables


@dataclass(frozen=True)
class GlueTask:
    name: str  # as GLUE writes it, also its directory in a GLUE download
    config: str  # under configs/finetune/
    metrics: tuple[str, ...]  # val/<metric> values averaged into the task's score
    local: tuple[str, ...] = ()  # overrides that read GLUE's TSV files instead of the hub dataset


TASKS = {
    "cola": GlueTask("CoLA", "glue/cola.yaml", ("mcc",), ("--data.text_column", "3", "--data.label_column", "1")),
    "sst2": GlueTask("SST-2", "sst2.yaml", ("acc",)),
    # MRPC's text columns are '#1 String' / '#2 String', which YAML (and so the CLI) reads as comments: by position
    "mrpc": GlueTask(
        "MRPC",
        "glue/mrpc.yaml",
        ("f1_pos", "acc"),
        (
            "--data.header",
            "true",
            "--data.text_column",
            "3",
            "--data.text_pair_column",
            "4",
            "--data.label_column",
            "0",
        ),
    ),
    "stsb": GlueTask("STS-B", "glue/stsb.yaml", ("pearson", "spearman"), ("--data.label_column", "score")),
    "qqp": GlueTask("QQP", "glue/qqp.yaml", ("f1_pos", "acc"), ("--data.label_column", "is_duplicate")),
    "mnli": GlueTask(
        "MNLI",
        "mnli.yaml",
        ("acc",),
        (
            "--data.text_column",
            "sentence1",
            "--data.text_pair_column",
            "sentence2",
            "--data.label_column",
            "gold_label",
        ),
    ),
    "qnli": GlueTask("QNLI", "glue/qnli.yaml", ("acc",)),
    "rte": GlueTask("RTE", "glue/rte.yaml", ("acc",)),
    "wnli": GlueTask("WNLI", "glue/wnli.yaml", ("acc",)),
}


def task_args(task: str, backbone: str, mode: str, glue_dir: Path | None, configs: Path, extra: list[str]) -> list[str]:
    """The `lightning-pretrain fit` arguments of one task's run (its logger folder: suite.fit_task)."""
    spec = TASKS[task]
    args = [
        "-c",
        str(configs / spec.config),
        "-c",
        str(configs / "modes" / f"{mode}.yaml"),
        "--model.backbone",
        backbone,
    ]
    if glue_dir is not None:
        args += ["--data.source", str(glue_dir / spec.name), *spec.local]
    return args + extra


def score(task: str, metrics: dict) -> float | None:
    return mean_score(TASKS[task].metrics, metrics)


def run_suite(
    backbone: str,
    tasks: list[str],
    mode: str = "full",
    out: str | Path = "glue_runs",
    glue_dir: str | Path | None = None,
    configs: str | Path = CONFIGS,
    extra: list[str] | None = None,
    in_process: bool = False,
) -> dict:
    """Fine-tune `backbone` on each task in turn; returns (and writes to `out/glue_<mode>.{md,json}`) the table."""
    out, configs = Path(out), Path(configs)
    glue_dir = Path(glue_dir) if glue_dir else None
    results: dict = {"backbone": backbone, "mode": mode, "tasks": {}}
    for task in tasks:
        run = fit_task(task, task_args(task, backbone, mode, glue_dir, configs, extra or []), out, in_process)
        if run["status"] == REFUSED:
            results["refused"] = task
            return results
        results["tasks"][task] = {
            "name": TASKS[task].name,
            "metric": "/".join(TASKS[task].metrics),
            "score": score(task, run["metrics"]),
            "metrics": run["metrics"],
            "exit_status": run["status"],
            "seconds": run["seconds"],
            "run_dir": str(run["run_dir"]),
        }
        write_tables(results, out, f"glue_{mode}", f"GLUE dev scores of `{backbone}` (mode: {mode})", COLUMNS, row)
    return results


COLUMNS = ["task", "metric", "score", "seconds", "run"]


def row(t: dict) -> list[str]:
    shown = f"{t['score']:.1f}" if t["score"] is not None else f"failed (exit {t['exit_status']})"
    return [t["name"], t["metric"], shown, f"{t['seconds']:.0f}", t["run_dir"]]


@entry.console
def main(argv: list[str] | None = None) -> int:
    parser = entry.Parser(
        prog="lightning-pretrain-glue",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Any other --section.key value arguments are passed to every task's lightning-pretrain fit run.",
    )
    parser.add_argument("--backbone", required=True, help="HF checkpoint directory (e.g. a run's hf/) or hub id")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"],
        choices=sorted(TASKS),
        metavar="TASK",
        help=f"GLUE tasks, of: {' '.join(TASKS)}",
    )
    parser.add_argument(
        "--glue_dir",
        help="a GLUE download (CoLA/, MRPC/, ... with train.tsv, dev.tsv); default: the hub's glue dataset",
    )
    parser.add_argument("--mode", default="full", help="fine-tuning mode: a configs/finetune/modes/<mode>.yaml")
    parser.add_argument(
        "--out", default="glue_runs", help="runs go to OUT/<task>/version_N, tables to OUT/glue_<mode>.md and .json"
    )
    parser.add_argument("--configs", default=str(CONFIGS), help="the configs/finetune directory")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="run every task in this process (faster start; a crash ends the suite)",
    )
    args, extra = parser.parse_known_args(argv)
    check_inputs(args)
    results = run_suite(
        args.backbone, args.tasks, args.mode, args.out, args.glue_dir, args.configs, extra, args.in_process
    )
    if "refused" in results:
        return REFUSED
    print((Path(args.out) / f"glue_{args.mode}.md").read_text())
    return 0 if all(t["score"] is not None for t in results["tasks"].values()) else 1


def check_inputs(args) -> None:
    """Everything the suite reads, before its first run: a missing task folder must not cost the tasks before it."""
    if not (Path(args.configs) / "modes" / f"{args.mode}.yaml").is_file():
        raise InputError(f"no mode '{args.mode}' in {Path(args.configs) / 'modes'}")
    if args.glue_dir and not Path(args.glue_dir).is_dir():
        raise InputError(f"--glue_dir {args.glue_dir} is not a directory")
    missing = [
        TASKS[t].name for t in args.tasks if args.glue_dir and not (Path(args.glue_dir) / TASKS[t].name).is_dir()
    ]
    if missing:
        raise InputError(f"--glue_dir {args.glue_dir} has no folder {', '.join(missing)} (GLUE's own layout)")
    out = Path(args.out)
    if (out.exists() and not out.is_dir()) or any(p.exists() and not p.is_dir() for p in out.parents):
        raise InputError(f"--out {args.out} is (or lies below) a file: name a folder")


if __name__ == "__main__":  # ddp re-executes the entry point per rank
    sys.exit(main())
