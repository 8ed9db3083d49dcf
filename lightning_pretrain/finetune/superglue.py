"""SuperGLUE suite: fine-tune one backbone on SuperGLUE tasks (one `lightning-pretrain fit` run each) from the
official jsonl files, and write a table of every task's score and their average, as Markdown and JSON.

    lightning-pretrain-superglue --backbone DIR --tasks cb rte wic boolq copa multirc wsc \\
        --superglue_dir ../shared/data/superglue --out superglue_runs --trainer.max_epochs 10

Each task's files (`<Task>/train.jsonl`, and `val.jsonl`, else FewGLUE's `dev32.jsonl`) are converted by
`superglue_tasks.py` into OUT/data/<task>/; pair tasks run configs/finetune/glue/rte.yaml's classifier, COPA
configs/finetune/copa.yaml's multiple choice; any further `--section.key value` goes to every run. Scores are
SuperGLUE's (x 100): CB mean of accuracy and macro-F1, MultiRC mean of F1a and EM, else accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning_pretrain import entry
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.suite import CONFIGS, REFUSED, fit_task, mean_score, run_task, write_tables
from lightning_pretrain.finetune.superglue_tasks import RECORD_LEFT_OUT, TASKS, convert_file, exact_match, f1a

DEFAULT_TASKS = ["boolq", "cb", "copa", "multirc", "rte", "wic", "wsc"]
# what a score's metric keys are called in the table
SHOWN = {"acc": "acc", "f1": "macro-F1", "f1a": "F1a", "em": "EM"}


def prepare(task: str, superglue_dir: Path, out: Path, train_name: str, val_name: str | None) -> dict:
    """Convert the task's training and evaluation files into OUT/data/<task>/{train,val}.jsonl; says which
    evaluation file was chosen (`val_name`, else val.jsonl where present, else FewGLUE's dev32.jsonl)."""
    folder = superglue_dir / TASKS[task].name
    if not folder.is_dir():
        raise InputError(f"--superglue_dir {superglue_dir} has no {TASKS[task].name}/ folder (task {task})")
    eval_name = val_name or next((n for n in ("val.jsonl", "dev32.jsonl") if (folder / n).is_file()), "val.jsonl")
    data = out / "data" / task
    data.mkdir(parents=True, exist_ok=True)
    info = {"train_file": str(folder / train_name), "eval_file": str(folder / eval_name)}
    for split, name in (("train", train_name), ("val", eval_name)):
        rows, n = convert_file(task, folder / name)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        info[f"{split}_examples"], info[f"{split}_rows"] = n, len(rows)
    print(
        f"{task}: train on {info['train_file']} ({info['train_examples']} examples), evaluate on "
        f"{info['eval_file']} ({info['val_examples']} examples, {info['val_rows']} rows)",
        flush=True,
    )
    return {**info, "data_dir": str(data)}


def task_args(task: str, backbone: str, mode: str, data_dir: str, configs: Path, extra: list[str]) -> list[str]:
    """The `lightning-pretrain` arguments of one task's run, less the subcommand and the logger."""
    spec = TASKS[task]
    config = "copa.yaml" if not spec.labels else "glue/rte.yaml"  # multiple choice, or a pair classifier
    args = [
        "-c",
        str(configs / config),
        "-c",
        str(configs / "modes" / f"{mode}.yaml"),
        "--model.backbone",
        backbone,
        "--data.source",
        data_dir,
        "--data.max_length",
        str(spec.max_length),
    ]
    if spec.labels:
        args += [
            "--data.text_column",
            "text",
            "--data.text_pair_column",
            "text_pair",
            "--data.label_column",
            "label",
            "--data.labels",
            json.dumps(list(spec.labels)),
        ]
    return args + extra


def multirc_scores(run_dir: Path, data_dir: Path, args: list[str], in_process: bool) -> dict:
    """F1a and EM of the exported model on the evaluation rows: a `predict` run, its answers grouped per question."""
    predictions = run_dir / "val_predictions.jsonl"
    status = run_task(
        [
            "predict",
            *args,
            "--model.backbone",
            str(run_dir / "hf"),
            "--data.predict_file",
            str(data_dir / "val.jsonl"),
            "--model.predictions_file",
            str(predictions),
            "--trainer.logger.init_args.save_dir",
            str(run_dir),
            "--trainer.logger.init_args.name",
            "predict",
        ],
        in_process,
    )
    if status or not predictions.is_file():
        return {}
    rows = [json.loads(line) for line in (data_dir / "val.jsonl").read_text().splitlines()]
    out = sorted((json.loads(line) for line in predictions.read_text().splitlines()), key=lambda r: r["id"])
    if len(out) != len(rows):  # a predict cut short
        return {}
    gold = [TASKS["multirc"].labels.index(r["label"]) for r in rows]
    predicted = [TASKS["multirc"].labels.index(r["label"]) for r in out]
    return {"val/f1a": f1a(gold, predicted), "val/em": exact_match([r["question"] for r in rows], gold, predicted)}


def score(task: str, metrics: dict) -> float | None:
    return mean_score(TASKS[task].metrics, metrics)


def run_suite(
    backbone: str,
    tasks: list[str],
    superglue_dir: str | Path,
    mode: str = "full",
    out: str | Path = "superglue_runs",
    train_name: str = "train.jsonl",
    val_name: str | None = None,
    configs: str | Path = CONFIGS,
    extra: list[str] | None = None,
    in_process: bool = False,
) -> dict:
    """Fine-tune `backbone` on each task in turn; returns (and writes to `out/superglue_<mode>.{md,json}`) the
    table."""
    out, configs, superglue_dir = Path(out), Path(configs), Path(superglue_dir)
    prepared = {task: prepare(task, superglue_dir, out, train_name, val_name) for task in tasks}  # all input first
    results: dict = {"backbone": backbone, "mode": mode, "superglue_dir": str(superglue_dir), "tasks": {}}
    for task in tasks:
        args = task_args(task, backbone, mode, prepared[task]["data_dir"], configs, extra or [])
        run = fit_task(task, args, out, in_process)
        if run["status"] == REFUSED:
            results["refused"] = task
            return results
        metrics = run["metrics"]
        if task == "multirc" and metrics:
            metrics.update(multirc_scores(run["run_dir"], Path(prepared[task]["data_dir"]), args, in_process))
        results["tasks"][task] = {
            "name": TASKS[task].name,
            "metric": "/".join(SHOWN[m] for m in TASKS[task].metrics),
            "score": score(task, metrics),
            "parts": {m: metrics.get(f"val/{m}") for m in TASKS[task].metrics},
            "metrics": metrics,
            **{k: v for k, v in prepared[task].items() if k != "data_dir"},
            "exit_status": run["status"],
            "seconds": run["seconds"],
            "run_dir": str(run["run_dir"]),
        }
        title = f"SuperGLUE scores of `{backbone}` (mode: {mode})"
        write_tables(results, out, f"superglue_{mode}", title, COLUMNS, row)
    return results


COLUMNS = ["task", "metric", "train", "evaluated on", "score", "parts", "seconds", "run"]


def row(t: dict) -> list[str]:
    shown = f"{t['score']:.1f}" if t["score"] is not None else f"no val metrics (exit {t['exit_status']})"
    parts = " / ".join(f"{SHOWN[m]} {100 * v:.1f}" for m, v in t["parts"].items() if v is not None)
    evaluated = f"{Path(t['eval_file']).name} ({t['val_examples']})"
    shown_parts = parts if len(t["parts"]) > 1 else ""
    return [
        t["name"],
        t["metric"],
        str(t["train_examples"]),
        evaluated,
        shown,
        shown_parts,
        f"{t['seconds']:.0f}",
        t["run_dir"],
    ]


@entry.console
def main(argv: list[str] | None = None) -> int:
    parser = entry.Parser(
        prog="lightning-pretrain-superglue",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Any other --section.key value arguments are passed to every task's run.",
    )
    parser.add_argument("--backbone", required=True, help="HF checkpoint directory (e.g. a run's hf/) or hub id")
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=DEFAULT_TASKS,
        metavar="TASK",
        help=f"SuperGLUE tasks, of: {' '.join(TASKS)} (record: left out, see its message)",
    )
    parser.add_argument(
        "--superglue_dir",
        required=True,
        help="a folder of the official SuperGLUE / FewGLUE jsonl files: CB/train.jsonl, CB/val.jsonl..",
    )
    parser.add_argument("--train_file_name", default="train.jsonl", help="each task's training file")
    parser.add_argument(
        "--val_file_name",
        default=None,
        help="each task's evaluation file (default: val.jsonl where present, else dev32.jsonl)",
    )
    parser.add_argument("--mode", default="full", help="fine-tuning mode: a configs/finetune/modes/<mode>.yaml")
    parser.add_argument(
        "--out",
        default="superglue_runs",
        help="runs go to OUT/<task>/version_N, tables to OUT/superglue_<mode>.md and .json",
    )
    parser.add_argument("--configs", default=str(CONFIGS), help="the configs/finetune directory")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="run every task in this process (faster start; a crash ends the suite)",
    )
    args, extra = parser.parse_known_args(argv)
    tasks = [t.lower() for t in args.tasks]
    if "record" in tasks:
        parser.error(RECORD_LEFT_OUT)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task {unknown[0]!r}; SuperGLUE tasks here: {', '.join(TASKS)}")
    if not (Path(args.configs) / "modes" / f"{args.mode}.yaml").exists():
        parser.error(f"no mode '{args.mode}' in {Path(args.configs) / 'modes'}")
    if not Path(args.superglue_dir).is_dir():
        parser.error(f"--superglue_dir {args.superglue_dir} is not a directory")
    results = run_suite(
        args.backbone,
        tasks,
        args.superglue_dir,
        args.mode,
        args.out,
        args.train_file_name,
        args.val_file_name,
        args.configs,
        extra,
        args.in_process,
    )
    if "refused" in results:
        return REFUSED
    print((Path(args.out) / f"superglue_{args.mode}.md").read_text())
    return 0 if all(t["score"] is not None for t in results["tasks"].values()) else 1


if __name__ == "__main__":  # ddp re-executes the entry point per rank
    sys.exit(main())
