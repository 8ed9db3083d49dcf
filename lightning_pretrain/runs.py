"""Run folders and what goes into them, for models, callbacks and the CLI alike. `run_dir`: a run's folder;
`JsonlPredictions`: `predict`'s JSON lines, written under a temporary name and renamed at the end (a refused or
interrupted predict leaves an earlier file whole). The CLI's rules: only `fit` owns a run folder and writes into an
existing one only to resume it (paths resolved first: `../name/version_0` is that run); validate/test/predict and
`--trainer.logger false` runs get a fresh `version_N`; a run refused before it trained leaves no folder behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_pretrain import entry
from lightning_pretrain.errors import InputError


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder: the logger's `version_N`, else the trainer's root (a broadcast: every rank must ask)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class JsonlPredictions(BasePredictionWriter):
    def __init__(self, path: str | None = None):
        """Writes what a module's `predict_step` returns, `{"rows": [dict, ...]}`, as JSON lines in input order
        (one file per rank under DDP, suffixed `.rank<N>`).

        Args:
            path: the file to write (default `<run dir>/predictions.jsonl`).
        """
        super().__init__(write_interval="batch")
        self.path, self._fh, self.written, self._partial = path, None, None, None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = Path(self.path) if self.path else run_dir(trainer) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        if path.is_dir():
            raise InputError(f"--model.predictions_file {path} is a directory: name a file")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written, self._partial = path, path.with_name(f".{path.name}.partial-{os.getpid()}")
        self._fh = open(self._partial, "w", encoding="utf-8")  # noqa: SIM115 (open across the predict loop)

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict, batch_indices, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for row in prediction["rows"]:
            self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            os.replace(self._partial, self.written)  # all or nothing: an earlier file stays whole until now
            print(f"predictions: {self.written}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            Path(self._partial).unlink(missing_ok=True)


# -- the CLI's run folders ------------------------------------------------------------------------------------------
def versioned_logger_args(trainer_config):
    """The init_args of a logger that numbers its runs `version_N` (TensorBoard, CSV), else None."""
    logger = trainer_config.get("logger")
    versioned = hasattr(logger, "get") and str(logger.get("class_path")).endswith(("TensorBoardLogger", "CSVLogger"))
    return logger.get("init_args") if versioned else None


def no_logger(trainer_config) -> bool:
    return trainer_config.get("logger") is False


def logger_run(args) -> Path:
    """The folder the logger will write to, as the logger computes it (a string version is used as given)."""
    version = args.get("version")
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(args.get("save_dir") or ".") / (args.get("name") or "") / version


def own_run_directory(subcommand: str, config) -> None:
    """Only `fit` owns a run directory. validate/test/predict always open a fresh `version_N` (a config saved by a
    resumed fit pins that run's version, which would rewrite its config.yaml and add to its TensorBoard files), and
    fit writes into an existing run only to resume it."""
    if no_logger(config.trainer):
        fresh_root_run(subcommand, config)
        return
    args = versioned_logger_args(config.trainer)
    if args is None or args.get("version") is None:
        return
    if subcommand != "fit":
        args.version = None
        return
    refuse_unless_resumed(logger_run(args), config, "drop --trainer.logger.init_args.version to start a new version_N")


def refuse_writes_into_runs(config) -> None:
    """Paths a command writes to that are not its run folder: a logger `sub_dir` stays inside the run (an absolute
    one replaces the run folder), a cache never goes inside a run folder, and predictions never replace a run's own
    records (its config, metrics, checkpoints, export)."""
    args = versioned_logger_args(config.trainer)
    sub_dir = args.get("sub_dir") if args is not None else None
    if sub_dir and (Path(str(sub_dir)).is_absolute() or ".." in Path(str(sub_dir)).parts):
        raise InputError(f"--trainer.logger.init_args.sub_dir must be a folder name inside the run, got {sub_dir}")
    data, model = (getattr(config.get(k), "get", lambda *_: None)("init_args") for k in ("data", "model"))
    cache = data.get("cache_dir") if hasattr(data, "get") else None
    if cache and (run := run_holding(Path(str(cache)).expanduser())) is not None:
        raise InputError(
            f"--data.init_args.cache_dir {cache} is inside the run folder {run}: give a folder outside runs"
        )
    out = model.get("predictions_file") if hasattr(model, "get") else None
    if out and (run := run_holding(Path(str(out)).expanduser())) is not None:
        part = Path(str(out)).expanduser().resolve().relative_to(run).parts
        if part and (part[0] in RUN_RECORDS or part[0].startswith("events.out.tfevents")):
            raise InputError(
                f"--model.init_args.predictions_file {out} is a record of the run {run}: name another file"
            )


# what a run folder holds that no other command may replace
RUN_RECORDS = {"config.yaml", "hparams.yaml", "metrics.json", "checkpoints", "hf", "tokenizer", "payoff_run.json"}


def run_holding(path: Path) -> Path | None:
    """The run folder `path` is in (or is): the nearest folder at or above it with a run's config or hyperparameters
    beside its logs or checkpoints."""
    for folder in (path.resolve(), *path.resolve().parents):
        if (folder / "config.yaml").is_file() or (folder / "hparams.yaml").is_file():
            if (
                (folder / "checkpoints").is_dir()
                or (folder / "metrics.json").is_file()
                or any(folder.glob("events.out.tfevents*"))
            ):
                return folder
    return None


def refuse_unless_resumed(run: Path, config, hint: str) -> None:
    run = run.resolve()  # `../name/version_0` and `./version_0` are the runs they point at
    if not run.is_dir() or not any(run.iterdir()):
        return
    ckpt = config.get("ckpt_path")
    newest = max(run.rglob("*.ckpt"), key=lambda f: f.stat().st_mtime, default=None)
    # resuming the run from its newest checkpoint continues it; from an older one, it would overwrite later work
    if ckpt != "last" and not (ckpt and newest and Path(ckpt).resolve() == newest.resolve()):
        raise InputError(f"{run} already holds a run: resume it with --ckpt_path last, or {hint}")


def fresh_root_run(subcommand: str, config) -> None:
    """`--trainer.logger false`: the run still gets its own `<default_root_dir>/version_N` (a resumed fit: the run
    it resumes), so two runs never share config.yaml, checkpoints or the export."""
    root = Path(config.trainer.get("default_root_dir") or ".")
    if subcommand == "fit" and config.get("ckpt_path") == "last":
        run = latest_run_with(root, "last*.ckpt")
        if run is not None:
            config.trainer.default_root_dir = str(run)
            return
    taken = [int(d.name[8:]) for d in root.glob("version_*") if d.name[8:].isdigit()]
    config.trainer.default_root_dir = str(root / f"version_{max(taken, default=-1) + 1}")


def runs_root(trainer_config) -> Path | None:
    """`<save_dir>/<name>` of the configured versioned logger (or the root of `--trainer.logger false` runs), where
    its `version_N` runs live; None without one, or when checkpoints go to a fixed directory (Lightning then finds
    "last" itself)."""
    fixed_dir = any(
        getattr(cb, "init_args", None) and cb.init_args.get("dirpath") for cb in trainer_config.get("callbacks") or []
    )
    if fixed_dir:
        return None
    if no_logger(trainer_config):
        return Path(trainer_config.get("default_root_dir") or ".")
    args = versioned_logger_args(trainer_config)
    return None if args is None else Path(args.get("save_dir") or ".") / (args.get("name") or "")


def latest_run_with(root: Path, pattern: str) -> Path | None:
    """The newest `version_N` under `root` whose `checkpoints/` holds a `pattern` file. With the logger's default
    versioning every run opens a fresh `version_N+1/` whose `checkpoints/` is empty, and Lightning's "last" would
    find nothing there and silently start from scratch."""
    runs = [d for d in root.glob("version_*") if d.name[8:].isdigit() and any((d / "checkpoints").glob(pattern))]
    return max(runs, key=lambda d: int(d.name[8:])) if runs else None


def resolve_last(subcommand: str, config) -> Path | None:
    """`--ckpt_path last`: fit continues the latest run in its own directory (same TensorBoard curves, same
    checkpoints); validate/test/predict read the newest run's `last*.ckpt` (else its newest checkpoint: presets
    that keep no `last.ckpt`) and write into a fresh version; with none at all they refuse rather than evaluate
    freshly initialised weights. Returns the checkpoint file that will be read, if one is known."""
    root = runs_root(config.trainer)
    if root is None:
        return None
    if subcommand == "fit":
        run, args = latest_run_with(root, "last*.ckpt"), versioned_logger_args(config.trainer)
        if run is not None and args is not None and args.get("version") is None:
            args.version = int(run.name[8:])
        return None if run is None else max(run.glob("checkpoints/last*.ckpt"), key=lambda f: f.stat().st_mtime)
    run = latest_run_with(root, "last*.ckpt") or latest_run_with(root, "*.ckpt")
    if run is None:
        raise InputError(
            f"--ckpt_path last: no checkpoint in {root}/version_*/checkpoints/; train first, or pass --ckpt_path FILE"
        )
    ckpts = list(run.glob("checkpoints/last*.ckpt")) or list(run.glob("checkpoints/*.ckpt"))
    config.ckpt_path = str(max(ckpts, key=lambda f: f.stat().st_mtime))
    return Path(config.ckpt_path)


def track(trainer: L.Trainer) -> None:
    """Remember the run folder the trainer was given: a run refused before it trained removes it again (only a
    folder this process created, never one holding a checkpoint or the logs of a single trained step), and the empty
    folders above it that it made (`logs/<name>/`)."""
    run = run_dir(trainer).resolve()
    roots = [
        run,
        Path(trainer.default_root_dir).resolve(),
        *(
            Path(d).resolve()
            for lg in trainer.loggers
            for d in (getattr(lg, "save_dir", None), getattr(lg, "root_dir", None))
            if isinstance(d, (str, Path))
        ),
    ]
    existed = run.exists()
    made = sorted({p for r in roots for p in (r, *r.parents) if not p.exists()}, key=lambda p: -len(p.parts))

    def remove() -> None:
        if trainer.global_step > 0:
            return
        if not existed and run.is_dir() and not any(run.rglob("*.ckpt")):
            shutil.rmtree(run, ignore_errors=True)
        for folder in made:  # deepest first; only empty ones (another run may have started in one meanwhile)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    entry.on_refusal(remove)
