"""MMLU (Hendrycks et al.) from local CSV files, scored as lm-eval's own `mmlu_<subject>` tasks: each subject's
generated task `include`s lm-eval's installed YAML (its description, "Question\\nA. ...\\nAnswer:" prompt, " A".." D"
choices, first-n few-shot examples from dev) and only swaps its hub dataset for the local rows.

    <dir>/dev/<subject>_dev.csv, <dir>/test/<subject>_test.csv    (also under <dir>/data/, as the release unpacks)
    no header: question,A,B,C,D,answer-letter (the released layout) | header question,choice0..3,answer: answers 0-3
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from lightning_pretrain.errors import InputError
from lightning_pretrain.evaluate.harness import Metric, TaskResult
from lightning_pretrain.evaluate.registry import TaskSpec

HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
LETTERS = "ABCD"
DEFAULT_FEWSHOT = 5  # MMLU's standard setting: the first 5 dev questions of the subject


def lm_eval_yaml(subject: str) -> tuple[Path, str | None]:
    """lm-eval's YAML for `subject` and, for a subject it does not know, the description its generator writes."""
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    own = folder / f"mmlu_{subject}.yaml"
    if own.is_file():
        return own, None
    return (
        folder / "_default_template_yaml",
        f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n",
    )


def read_csv(path: Path, subject: str) -> list[dict]:
    """Rows of one subject file as lm-eval's `cais/mmlu` records: {question, subject, choices, answer (0-3)}."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from e
    header = bool(rows) and [c.strip().lower() for c in rows[0]] == HEADER
    answers = "0123" if header else LETTERS
    out = []
    for lineno, row in enumerate(rows[1:] if header else rows, 2 if header else 1):
        if not any(c.strip() for c in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != 6:
            raise InputError(f"{where}: {len(row)} columns, expected 6 (question, 4 choices, answer)")
        if not row[0].strip():
            raise InputError(f"{where}: empty question")
        answer = row[5].strip()
        if len(answer) != 1 or answer not in answers:
            raise InputError(
                f"{where}: answer {row[5]!r} is not one of {', '.join(answers)}"
                + (
                    " (a file with the header question,choice0..3,answer takes 0-3)"
                    if header
                    else " (a file without a header takes letters; with the header "
                    "question,choice0..3,answer it takes 0-3)"
                )
            )
        out.append({"question": row[0], "subject": subject, "choices": row[1:5], "answer": answers.index(answer)})
    if not out:
        raise InputError(f"{path} holds no questions")
    return out


def _layout_root(mmlu_dir: str | Path) -> Path:
    root = Path(mmlu_dir)
    if not root.is_dir():
        raise InputError(f"--mmlu_dir {mmlu_dir} is not a directory")
    if not (root / "test").is_dir() and (root / "data" / "test").is_dir():
        root = root / "data"
    if not (root / "test").is_dir():
        raise InputError(
            f"--mmlu_dir {mmlu_dir} has no test/ folder (expected test/<subject>_test.csv and dev/<subject>_dev.csv)"
        )
    return root


def subjects_in(mmlu_dir: str | Path) -> list[str]:
    """The subjects that have a test file, sorted."""
    root = _layout_root(mmlu_dir)
    try:
        return sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv") if p.is_file())
    except OSError as e:
        raise InputError(f"cannot list {root / 'test'}: {e.strerror or e}") from e


def resolve(
    mmlu_dir: str | Path,
    subjects: list[str] | None = None,
    num_fewshot: int = DEFAULT_FEWSHOT,
    used_names: set[str] | None = None,
) -> list[TaskSpec]:
    """One lm-eval task per subject (all subjects with a test file by default), rows read and checked now."""
    root = _layout_root(mmlu_dir)
    available = subjects_in(root)
    if not available:
        raise InputError(f"--mmlu_dir {mmlu_dir}: no <subject>_test.csv files in {root / 'test'}")
    wanted = list(dict.fromkeys(subjects or available))
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise InputError(
            f"MMLU subject(s) {', '.join(unknown)} have no test file in {root / 'test'}; "
            f"available: {', '.join(available)}"
        )
    specs = []
    for subject in wanted:
        test = read_csv(root / "test" / f"{subject}_test.csv", subject)
        dev_path = root / "dev" / f"{subject}_dev.csv"
        dev = []
        if num_fewshot > 0:
            if not dev_path.is_file():
                raise InputError(
                    f"{num_fewshot}-shot MMLU needs {dev_path} (few-shot examples come from dev; "
                    f"--num_fewshot 0 scores without it)"
                )
            dev = read_csv(dev_path, subject)
            if len(dev) < num_fewshot:
                raise InputError(f"{dev_path} holds {len(dev)} questions, fewer than --num_fewshot {num_fewshot}")
        include, description = lm_eval_yaml(subject)
        config = {
            "include": str(include),
            "task": "lp_mmlu_" + re.sub(r"\W+", "_", subject),
            "task_alias": subject.replace("_", " "),
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "test_split": "test",
            "fewshot_split": "dev" if dev else None,
            "num_fewshot": num_fewshot,
            "metadata": {"version": 1.0, "source_file": str((root / "test" / f"{subject}_test.csv").resolve())},
        }
        if description is not None:
            config["description"] = description
        name = f"mmlu_{subject}"
        while used_names is not None and name in used_names:
            name += "_"
        specs.append(
            TaskSpec(
                name,
                config["task"],
                baseline=0.25,
                config=config,
                splits={"test": test, **({"dev": dev} if dev else {})},
                source=str(root / "test" / f"{subject}_test.csv"),
            )
        )
    return specs


def summary(rows: list[TaskResult], specs: list[TaskSpec]) -> TaskResult | None:
    """The `mmlu` row: `acc` over all questions (micro, weighted by size as lm-eval's `mmlu` group) and `acc_macro`,
    the mean of the subjects' accuracies, with standard errors by lm-eval's own pooling functions."""
    from lm_eval.api.metrics import pooled_sample_stderr, unweighted_mean_stderr

    names = {s.name for s in specs if s.lm_eval_name.startswith("lp_mmlu_")}
    mine = [r for r in rows if r.task in names]
    accs = [(r.samples, m) for r in mine for m in r.metrics if m.name == "acc"]
    if not accs:
        return None
    sizes, errors = [n for n, _ in accs], [m.stderr for _, m in accs]
    known = all(e is not None for e in errors)
    micro = sum(n * m.value for n, m in accs) / sum(sizes)
    macro = sum(m.value for _, m in accs) / len(accs)
    micro_se = float(pooled_sample_stderr(errors, sizes)) if known and sum(sizes) > len(sizes) else None
    macro_se = float(unweighted_mean_stderr(errors)) if known else None
    return TaskResult(
        "mmlu",
        sum(sizes),
        mine[0].num_fewshot,
        f"{len(accs)} subjects",
        [Metric("acc", micro, micro_se, 0.25), Metric("acc_macro", macro, macro_se, 0.25)],
    )


def resolve_tasks(
    names: list[str] | None,
    task_files: dict[str, str] | None,
    data_dir: str | None,
    mmlu_dir: str | None,
    subjects: list[str] | None,
    num_fewshot: int | None,
) -> list[TaskSpec]:
    """`registry.resolve` for `names`, plus MMLU's subjects from `mmlu_dir` (which stands for the name `mmlu`)."""
    from lightning_pretrain.evaluate import registry

    if subjects and not mmlu_dir:
        raise InputError("--mmlu_subjects needs --mmlu_dir (the folder with dev/ and test/)")
    names = [n for n in names or [] if not (mmlu_dir and n == "mmlu")]
    specs = registry.resolve(names, task_files, data_dir) if names or task_files else []
    if mmlu_dir:
        specs += resolve(
            mmlu_dir, subjects, DEFAULT_FEWSHOT if num_fewshot is None else num_fewshot, {s.name for s in specs}
        )
    return specs


def with_summary(rows: list[TaskResult], specs: list[TaskSpec]) -> list[TaskResult]:
    row = summary(rows, specs)
    return rows + [row] if row is not None else rows
