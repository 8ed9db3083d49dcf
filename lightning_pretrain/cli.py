"""`lightning-pretrain {fit,validate,test,predict}`: LightningCLI with the model and data chosen by `class_path`.

The glue beyond LightningCLI: the data module's `contract` (tokenizer, lengths, task, labels) is handed to the
model's constructor, once, in one direction; every run gets the HF export, an LR monitor, exact resume, throughput
logging and the outside-the-model transforms (`parallel.Parallelize`); TensorBoard logs land in
`logs/<name>/version_N/`; bad input ends as one `error: ...` line with exit status 2.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
import lightning as L
from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lightning_pretrain.allocator import keep_freed_memory
from lightning_pretrain.callbacks.budget import TimeBudget
from lightning_pretrain.callbacks.export import HFExport
from lightning_pretrain.callbacks.guard import RunStopped, StopGuard
from lightning_pretrain.callbacks.progress import progress_bar
from lightning_pretrain.callbacks.zero_shot import ZeroShot
from lightning_pretrain.callbacks.resume import ResumeState
from lightning_pretrain.callbacks.summary import Summary
from lightning_pretrain.callbacks.throughput import Throughput
from lightning_pretrain.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from lightning_pretrain.errors import InputError
from lightning_pretrain.parallel import ActivationCheckpointing, Compile, Parallelize
from lightning_pretrain.quiet import quiet_known_noise


class OneLineErrors(LightningArgumentParser):
    """A parser whose errors are one `error:` line (jsonargparse prints the whole usage first, ~70 lines)."""

    def error(self, message: str, ex: Exception | None = None):
        text = user_error(ex) or " ".join(str(message).split())
        sys.stderr.write(f"error: {text[:600]} (options: --help)\n")
        self.exit(2)


class PretrainCLI(LightningCLI):
    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={L.__version__}"])
        parser = OneLineErrors(**kwargs)
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help="Path to a configuration file in json or yaml format.")
        return parser

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads the checkpoint's hyperparameters right after parsing: a missing, truncated or untrusted
        # file must be one line here, not a traceback from inside torch.load
        subcommand = self.config.get("subcommand")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt and ckpt not in ("last", "best", "hpc") and not Path(ckpt).is_dir():
            load_checkpoint_file(ckpt, mmap=True)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(HFExport, "export")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # throughput/MFU logging, and the speed switches applied to the model from outside (parallel.Parallelize)
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_class_arguments(Compile, "compile")
        parser.add_class_arguments(ActivationCheckpointing, "activation_checkpointing")
        # every checkpoint carries each rank's RNG and data position, so `--ckpt_path` resumes exactly; a step with a
        # NaN loss or gradient is skipped, and too many in a row or a SIGTERM end the run with a resumable checkpoint
        # and a non-zero exit (on for every run: pretraining and fine-tuning)
        parser.add_lightning_class_args(ResumeState, "resume_state")
        parser.add_lightning_class_args(StopGuard, "stop_guard")
        # --trainer.max_time as a time budget: the total steps fixed from the measured throughput, the LR schedule
        # decayed by the end (a no-op without max_time)
        parser.add_lightning_class_args(TimeBudget, "time_budget")
        # zero-shot benchmarks on the live model during pretraining (off unless --zero_shot.tasks is given)
        parser.add_lightning_class_args(ZeroShot, "zero_shot")
        # a data mixture's realised proportions and per-source epochs (a no-op without --data.sources)
        from lightning_pretrain.callbacks.mixture import MixtureLog
        parser.add_lightning_class_args(MixtureLog, "mixture_log")
        # data -> model, once, before the model is built: what the data publishes (its tokenizer, lengths, labels)
        parser.link_arguments("data.contract", "model.init_args.data", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is not None and config.get("ckpt_path") == "last":
            resolve_last(self.subcommand, config)
        if config is not None:
            own_run_directory(self.subcommand, config)
            tokenizer_from_backbone(config)

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = config["trainer"].get("callbacks") or []
        callbacks = [*(callbacks if isinstance(callbacks, list) else [callbacks]),
                     Parallelize(config["activation_checkpointing"], config["compile"])]
        if config["trainer"].get("enable_progress_bar") is not False and not any(
                isinstance(cb, ProgressBar) for cb in callbacks):
            callbacks.append(progress_bar())
        if config["trainer"].get("enable_model_summary") is not False and not any(
                isinstance(cb, ModelSummary) for cb in callbacks):
            callbacks.append(Summary())  # Lightning's, less its FLOPs column (0 without an example input)
        kwargs["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        if trainer.logger is not None and trainer.logger.log_dir:
            _RUN.update(dir=Path(trainer.logger.log_dir), existed=Path(trainer.logger.log_dir).exists(), trainer=trainer)
        # Lightning's default writer can leave a truncated last.ckpt when killed mid-write (see checkpoint_io.py);
        # a CheckpointIO the user chose, or a strategy's own (FSDP sharded checkpoints), is left alone
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def tokenizer_from_backbone(config) -> None:
    """Fine-tuning: a data module whose `tokenizer` is unset loads the tokenizer of the model's `backbone` (or of its
    `model` when that names a pretrained directory / hub id), so it is typed once and still reaches the model
    through the link."""
    model, data = config.get("model"), config.get("data")
    model_args = model.get("init_args") if hasattr(model, "get") else None
    data_args = data.get("init_args") if hasattr(data, "get") else None
    if model_args is None or data_args is None or "tokenizer" not in data_args:
        return
    pretrained = model_args.get("backbone") or (model_args.get("model") if isinstance(model_args.get("model"), str)
                                                else None)
    if data_args.get("tokenizer") is None and pretrained:
        data_args.tokenizer = pretrained


def versioned_logger_args(trainer_config):
    """The init_args of a logger that numbers its runs `version_N` (TensorBoard, CSV), else None."""
    logger = trainer_config.get("logger")
    versioned = hasattr(logger, "get") and str(logger.get("class_path")).endswith(("TensorBoardLogger", "CSVLogger"))
    return logger.get("init_args") if versioned else None


def own_run_directory(subcommand: str, config) -> None:
    """Only `fit` owns a run directory. validate/test/predict always open a fresh `version_N` (a config saved by a
    resumed fit pins that run's version, which would rewrite its config.yaml and add to its TensorBoard files), and
    fit writes into an existing run only to resume it."""
    args = versioned_logger_args(config.trainer)
    if args is None or args.get("version") is None:
        return
    if subcommand != "fit":
        args.version = None
        return
    version = str(args.version)
    run = Path(args.get("save_dir") or ".") / (args.get("name") or "") / (
        version if version.startswith("version_") else f"version_{version}")
    if not run.is_dir() or not any(run.iterdir()):
        return
    ckpt = config.get("ckpt_path")
    newest = max(run.rglob("*.ckpt"), key=lambda f: f.stat().st_mtime, default=None)
    # resuming the run from its newest checkpoint continues it; from an older one, it would overwrite later work
    if ckpt != "last" and not (ckpt and newest and Path(ckpt).resolve() == newest.resolve()):
        raise InputError(f"{run} already holds a run: resume it with --ckpt_path last, or drop "
                         f"--trainer.logger.init_args.version to start a new version_N")


def runs_root(trainer_config) -> Path | None:
    """`<save_dir>/<name>` of the configured versioned logger, where its `version_N` runs live; None without one,
    or when checkpoints go to a fixed directory (Lightning then finds "last" itself)."""
    args = versioned_logger_args(trainer_config)
    fixed_dir = any(getattr(cb, "init_args", None) and cb.init_args.get("dirpath")
                    for cb in trainer_config.get("callbacks") or [])
    return None if args is None or fixed_dir else Path(args.get("save_dir") or ".") / (args.get("name") or "")


def latest_run_with(root: Path, pattern: str) -> Path | None:
    """The newest `version_N` under `root` whose `checkpoints/` holds a `pattern` file. With the logger's default
    versioning every run opens a fresh `version_N+1/` whose `checkpoints/` is empty, and Lightning's "last" would
    find nothing there and silently start from scratch."""
    runs = [d for d in root.glob("version_*") if d.name[8:].isdigit() and any((d / "checkpoints").glob(pattern))]
    return max(runs, key=lambda d: int(d.name[8:])) if runs else None


def resolve_last(subcommand: str, config) -> None:
    """`--ckpt_path last`: fit continues the latest run in its own directory (same TensorBoard curves, same
    checkpoints); validate/test/predict read the newest run's `last*.ckpt` (else its newest checkpoint: presets
    that keep no `last.ckpt`) and write into a fresh version; with none at all they refuse rather than evaluate
    freshly initialised weights."""
    root = runs_root(config.trainer)
    if root is None:
        return
    if subcommand == "fit":
        run, args = latest_run_with(root, "last*.ckpt"), versioned_logger_args(config.trainer)
        if run is not None and args.get("version") is None:
            args.version = int(run.name[8:])
        return
    run = latest_run_with(root, "last*.ckpt") or latest_run_with(root, "*.ckpt")
    if run is None:
        raise InputError(f"--ckpt_path last: no checkpoint in {root}/version_*/checkpoints/; train first, or pass "
                         f"--ckpt_path FILE")
    ckpts = list(run.glob("checkpoints/last*.ckpt")) or list(run.glob("checkpoints/*.ckpt"))
    config.ckpt_path = str(max(ckpts, key=lambda f: f.stat().st_mtime))


TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
               "init_args": {"save_dir": "logs", "name": "default", "default_hp_metric": False}},
    "default_root_dir": "logs",
}


def main(args: list[str] | None = None) -> None:
    keep_freed_memory()  # CPU steps stop re-faulting their large tensors (see allocator.py)
    quiet_known_noise()  # Lightning's tips and deprecations raised inside libraries (quiet.py)
    log = logging.getLogger("lightning_pretrain")
    if not log.handlers and not logging.getLogger().handlers:  # data-preparation progress, cache notices
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    # the corpus is tokenized in this process with the Rust thread pool, before any DataLoader worker forks;
    # saying so explicitly silences tokenizers' fork warning (memory-mapped block workers never tokenize)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        PretrainCLI(
            args=args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=1234,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except SIGTERMException as e:  # preempted: the guard saved a resumable checkpoint
        saved = getattr(e, "checkpoint", None)
        print(f"error: stopped by SIGTERM at step {getattr(e, 'step', '?')}; "
              + (f"resumable checkpoint: {saved} (continue with the same command and --ckpt_path last)" if saved
                 else "no checkpoint was saved"), file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except RunStopped as e:
        saved = getattr(e, "checkpoint", None)
        print(f"error: {e}" + (f"; resumable checkpoint of the weights before that step: {saved}" if saved else ""),
              file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise  # a bug: keep the traceback
        remove_unused_run_dir()
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


_RUN: dict = {}  # the run directory the trainer was given, and whether it existed before this process


def remove_unused_run_dir() -> None:
    """A run refused for bad input before it trained leaves no empty `version_N` behind (only a directory this
    process created, never one holding a checkpoint or the logs of a single trained step)."""
    run, existed, trainer = _RUN.pop("dir", None), _RUN.pop("existed", True), _RUN.pop("trainer", None)
    trained = trainer is not None and trainer.global_step > 0
    if run is not None and not existed and not trained and run.is_dir() and not any(run.rglob("*.ckpt")):
        shutil.rmtree(run, ignore_errors=True)


# OS errors that are the user's to fix (permissions, a full disk, a file where a folder belongs), said in one line
OS_ERRORS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
             errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory",
             errno.EEXIST: "file exists", errno.ENAMETOOLONG: "file name too long"}


def user_error(e: BaseException | None) -> str | None:
    """The one-line message of an error that is the user's to fix, or None for a bug (which keeps its traceback).

    Follows explicit causes only (jsonargparse re-raises errors of instantiation `from` the original): an exception
    merely raised *while handling* an InputError is a bug, not bad input.
    """
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, InputError):
            return worker_message(str(e))
        if isinstance(e, OSError) and e.errno in OS_ERRORS:
            where = f": {e.filename}" if e.filename else ""
            return f"{OS_ERRORS[e.errno]}{where} ({e.strerror or e})"
        if isinstance(e, MisconfigurationException):  # Lightning's own check of the Trainer's settings
            return " ".join(str(e).split())
        seen.add(id(e))
        e = e.__cause__
    return None


def worker_message(message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker ("Caught InputError in DataLoader worker
    process 0. Original Traceback ..." ends with the line "lightning_pretrain.errors.InputError: <message>")."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


if __name__ == "__main__":
    main()
