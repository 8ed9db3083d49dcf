"""Task names to lm-eval tasks: shipped gauntlet names (`tasks/gauntlet.yaml`), paths to gauntlet JSONL files, and
lm-eval's own task names. A file task is written at run time into a private folder as a normalized JSONL copy plus
an lm-eval YAML filled from the layout's template (`tasks/<layout>.yaml`), since every user's path differs; lm-eval
then reads it through `TaskManager(include_path=folder)` like any task of its own.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lightning_pretrain.errors import InputError
from lightning_pretrain.evaluate.layouts import TaskFile, read_task_file

TASKS_DIR = Path(__file__).parent / "tasks"


@functools.cache
def shipped() -> dict[str, dict]:
    """The shipped task names: layout, default file names, prompt delimiter, published random baseline."""
    return yaml.safe_load((TASKS_DIR / "gauntlet.yaml").read_text())


@dataclass
class TaskSpec:
    name: str  # as reported: the table's task column, `eval/<name>/<metric>`
    lm_eval_name: str  # the name lm-eval loads it by
    file: TaskFile | None = None  # a gauntlet file we generate the task for; None: one of lm-eval's own tasks
    delimiter: str = " "  # the gauntlet's continuation_delimiter
    baseline: float | None = None  # random baseline of an lm-eval task (a file's is computed from its rows)
    config: dict | None = None  # a task generated from rows already read (MMLU): its lm-eval YAML, data files
    splits: dict[str, list[dict]] | None = None  # filled in by `write_task_folder` from these rows per split
    source: str | None = None  # what the rows were read from, as reported (default: the file, or "lm-eval")

    def random_baseline(self, limit: int | None = None) -> float | None:
        return self.file.random_baseline(limit) if self.file is not None else self.baseline


def parse_task_files(items: list[str] | None) -> dict[str, str]:
    """`NAME=PATH` pairs (`--task_file piqa=data/piqa.jsonl`) as a dict."""
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--task_file takes NAME=PATH (e.g. piqa=data/piqa.jsonl), got '{item}'")
        out[name] = path
    return out


def _looks_like_path(name: str) -> bool:
    return name.endswith((".jsonl", ".json")) or "/" in name or os.sep in name or Path(name).is_file()


def _lm_eval_name(name: str, used: set[str]) -> str:
    base = "lp_" + re.sub(r"\W+", "_", name)
    candidate, i = base, 2
    while candidate in used:
        candidate, i = f"{base}_{i}", i + 1
    used.add(candidate)
    return candidate


def resolve(
    names: list[str] | None, task_files: dict[str, str] | None = None, data_dir: str | Path | None = None
) -> list[TaskSpec]:
    """What each requested task is. A name given a file (`task_files`), a path, or a name with a matching file in
    `data_dir` (a shipped name's `files`, else `<name>.jsonl`) becomes a file task; anything else is left to lm-eval."""
    task_files = dict(task_files or {})
    names = list(names or [])
    names += [n for n in task_files if n not in names]
    if not names:
        raise InputError("no tasks: give --tasks (names or JSONL paths) and/or --task_file NAME=PATH")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputError(f"--data_dir {data_dir} is not a directory")
    specs, used_names, used_ids = [], set(), set()
    for name in names:
        entry = shipped().get(name)
        if name in task_files:
            path, display = Path(task_files[name]), name
        elif _looks_like_path(name):
            path, display = Path(name), Path(name).stem
            entry = shipped().get(display)
        else:
            names_in_dir = entry["files"] if entry else [f"{name}.jsonl"]
            candidates = [Path(data_dir) / f for f in names_in_dir] if data_dir else []
            path = next((p for p in candidates if p.is_file()), None)
            if path is None and entry is not None and data_dir is not None:
                raise InputError(
                    f"task '{name}': none of {entry['files']} is in {data_dir}; give its file with "
                    f"--task_file {name}=PATH"
                )
            display = name
            if path is None:  # one of lm-eval's own tasks (checked when the task manager is built)
                specs.append(TaskSpec(name, name, baseline=(entry or {}).get("random_baseline")))
                continue
        file = read_task_file(path)
        delimiter = " "
        if entry is not None and entry["layout"] == file.layout:
            delimiter = entry.get("continuation_delimiter", " ")
        while display in used_names:
            display += "_"
        used_names.add(display)
        specs.append(TaskSpec(display, _lm_eval_name(display, used_ids), file, delimiter))
    return specs


def write_task_folder(specs: list[TaskSpec], folder: str | Path) -> Path:
    """For every file task: `<folder>/<id>.jsonl` (rows in the template's fields) and `<folder>/<id>.yaml`; for a
    generated task its YAML and `<folder>/<id>.<split>.jsonl` per split."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        if spec.config is not None:
            _write_generated(spec, folder)
        if spec.file is None:
            continue
        rows, target_delimiter = spec.file.normalized(spec.delimiter)
        data = folder / f"{spec.lm_eval_name}.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        config = yaml.safe_load((TASKS_DIR / f"{spec.file.layout}.yaml").read_text())
        config["task"] = spec.lm_eval_name
        config["dataset_kwargs"]["data_files"]["test"] = str(data.resolve())
        config["target_delimiter"] = target_delimiter
        config["metadata"]["source_file"] = str(spec.file.path.resolve())
        (folder / f"{spec.lm_eval_name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return folder


def _write_generated(spec: TaskSpec, folder: Path) -> None:
    files = {}
    for split, rows in (spec.splits or {}).items():
        files[split] = folder / f"{spec.lm_eval_name}.{split}.jsonl"
        files[split].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = {**spec.config, "dataset_kwargs": {"data_files": {k: str(p.resolve()) for k, p in files.items()}}}
    (folder / f"{spec.lm_eval_name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def _mentioned_by_lm_eval(name: str) -> bool:
    """Cheap pre-check (~3 s) before lm-eval's full task index (~13 s): does any of its task YAMLs name `name`?"""
    import lm_eval

    pattern = re.compile(rb"(?<![\w-])" + re.escape(name.encode()) + rb"(?![\w-])")
    root = Path(lm_eval.__file__).parent / "tasks"
    return any(pattern.search(p.read_bytes()) for p in root.rglob("*.yaml"))


def task_manager(specs: list[TaskSpec], folder: str | Path, include_path: list[str] | None = None):
    """An lm-eval TaskManager that knows every spec: our folder and the user's `include_path` first, lm-eval's own
    task index (slow to build) only when a name is not found there. Unknown names are an InputError."""
    from lm_eval.tasks import TaskManager

    for p in include_path or []:
        if not Path(p).is_dir():
            raise InputError(f"--include_path {p} is not a directory")
    paths = [str(folder), *(include_path or [])]
    manager = TaskManager(include_path=paths, include_defaults=False)
    missing = [s.name for s in specs if s.lm_eval_name not in manager.all_tasks]
    if not missing:
        return manager
    unknown = [n for n in missing if not _mentioned_by_lm_eval(n)]
    if not unknown:
        manager = TaskManager(include_path=paths, include_defaults=True)
        unknown = [n for n in missing if n not in manager.all_tasks]
    if unknown:
        raise InputError(
            f"unknown task(s) {', '.join(unknown)}: not a shipped name ({', '.join(sorted(shipped()))}), "
            f"not a JSONL file, and not an lm-eval task"
        )
    return manager


def load_tasks(manager, specs: list[TaskSpec]) -> dict:
    """lm-eval's loaded tasks (`{"tasks": {name: Task}, "groups": ...}`; groups expand to their tasks). Failing to
    load one (a hub dataset while offline, a broken YAML under --include_path) is an InputError."""
    try:
        loaded = manager.load([s.lm_eval_name for s in specs])
    except Exception as e:  # lm-eval / datasets raise many types here; all mean "this task cannot be read"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        names = ", ".join(s.name for s in specs)
        raise InputError(f"could not load task(s) {names}: {type(e).__name__}: {first}") from e
    return loaded
