"""`lightning-pretrain {fit,validate,test,predict}`: LightningCLI with the model and data chosen by `class_path`.

The glue beyond LightningCLI: the data module's contract (tokenizer, lengths, task, labels: `publish`) is handed to
the model's constructor, once, in one direction; every run gets the HF export, an LR monitor, exact resume, throughput
logging and the outside-the-model transforms (`parallel.Parallelize`); TensorBoard logs land in
`logs/<name>/version_N/`; bad input ends as one `error: ...` line with exit status 2.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import lightning as L
from jsonargparse import ActionConfigFile
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerStatus

from lightning_pretrain import entry, runs
from lightning_pretrain.allocator import keep_freed_memory
from lightning_pretrain.callbacks.budget import TimeBudget
from lightning_pretrain.callbacks.export import HFExport
from lightning_pretrain.callbacks.guard import StopGuard
from lightning_pretrain.callbacks.progress import progress_bar
from lightning_pretrain.callbacks.resume import ResumeState
from lightning_pretrain.callbacks.summary import Summary
from lightning_pretrain.callbacks.throughput import Throughput
from lightning_pretrain.callbacks.zero_shot import ZeroShot
from lightning_pretrain.checkpoint_io import AtomicCheckpointIO, load_checkpoint_file
from lightning_pretrain.config_checks import check_settings
from lightning_pretrain.data.contract import publish
from lightning_pretrain.errors import LIBRARIES, InputError, refused_values
from lightning_pretrain.parallel import ActivationCheckpointing, Compile, Parallelize
from lightning_pretrain.quiet import quiet_known_noise

# what builds the model, data and trainer from the settings: an error raised inside one of them while doing so is
# about a configured value (jsonargparse instantiates the classes; lightning_utilities checks accelerator packages)
LIBRARIES_OF_SETTINGS = (*LIBRARIES, "lightning", "lightning_utilities", "jsonargparse")


class OneLineErrors(LightningArgumentParser):
    """A parser whose errors are one `error:` line (jsonargparse prints the whole usage first, ~70 lines)."""

    def error(self, message: str, ex: Exception | None = None):
        text = entry.user_error(ex) or " ".join(str(message).split())
        hint = "" if text.endswith("(options: --help)") else " (options: --help)"  # a subcommand's parser said it
        raise entry.UsageError(f"{text[:600]}{hint}") from ex


class ConfigAfterChecks(SaveConfigCallback):
    """Lightning saves config.yaml at setup; a fit saves it once training starts, when the data, the model and the
    checkpoint it resumes from have all been read: a refused resume leaves the run's config.yaml as it was."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        super().setup(trainer, pl_module, "fit")


class PretrainCLI(LightningCLI):
    def init_parser(self, **kwargs) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={L.__version__}"])
        parser = OneLineErrors(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
        )
        return parser

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads the checkpoint's hyperparameters right after parsing: a missing, truncated or untrusted
        # file must be one line here, not a traceback from inside torch.load
        subcommand = self.config.get("subcommand")
        seed = (self.config[subcommand] if subcommand else self.config).get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:  # numpy's seed range
            raise InputError(f"--seed_everything must be in [0, 2**32 - 1] (or true: a random seed), got {seed}")
        ckpt = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt == "hpc":  # Lightning looks for SLURM's requeue checkpoints in the root folder
            root = Path(self.config[subcommand].trainer.get("default_root_dir") or ".")
            if not any(root.glob("hpc_ckpt_*.ckpt")):
                raise InputError(f"--ckpt_path hpc: no hpc_ckpt_*.ckpt in {root}; pass a checkpoint file, or last")
        elif ckpt == "best":  # Lightning's "best" is a fit's in this same process: a fresh command never has one
            raise InputError(
                "--ckpt_path best names the best checkpoint of a fit run in the same process, which a command never "
                "has; pass the checkpoint file (<run>/checkpoints/*.ckpt) or last"
            )
        elif ckpt and ckpt != "last" and not Path(ckpt).is_dir():
            written_by = (load_checkpoint_file(ckpt, mmap=True).get("hyper_parameters") or {}).get("_class_path")
            model = self.config[subcommand].get("model")
            wanted = model.get("class_path") if hasattr(model, "get") else None
            # LightningCLI would swap in the checkpoint's own class (a pretraining objective for an SFT predict)
            if isinstance(written_by, str) and wanted and written_by != wanted:
                raise InputError(
                    f"--ckpt_path {ckpt} was written by {written_by}, not by {wanted} (--model): pass a checkpoint "
                    f"of this task, or its export as the model"
                )

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
        parser.link_arguments("data", "model.init_args.data", compute_fn=publish, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else None
        if config is None:
            return
        check_settings(self.subcommand, config)
        if config.get("ckpt_path") == "last":
            ckpt = runs.resolve_last(self.subcommand, config)
            if ckpt is not None:  # read before anything of the run changes (a cut file fails here, not mid-setup)
                load_checkpoint_file(ckpt, mmap=True)
        runs.own_run_directory(self.subcommand, config)
        runs.refuse_writes_into_runs(config)
        tokenizer_from_backbone(config)

    def instantiate_classes(self) -> None:
        # a library refusing a configured value (zero heads, an unknown attention kernel, Trainer options that
        # exclude each other) is the user's to fix; an error raised in this package's code stays a bug
        with refused_values("these settings cannot be built", LIBRARIES_OF_SETTINGS):
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = config["trainer"].get("callbacks") or []
        callbacks = [
            *(callbacks if isinstance(callbacks, list) else [callbacks]),
            Parallelize(config["activation_checkpointing"], config["compile"]),
        ]
        if config["trainer"].get("enable_progress_bar") is not False and not any(
            isinstance(cb, ProgressBar) for cb in callbacks
        ):
            callbacks.append(progress_bar())
        if config["trainer"].get("enable_model_summary") is not False and not any(
            isinstance(cb, ModelSummary) for cb in callbacks
        ):
            callbacks.append(Summary())  # Lightning's, less its FLOPs column (0 without an example input)
        kwargs["callbacks"] = callbacks
        # an accelerator whose package is missing (`tpu` without torch_xla), options Lightning refuses together
        with refused_values("these trainer settings cannot be built", LIBRARIES_OF_SETTINGS):
            trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # `--trainer.logger false`: nothing to log the LR to (metrics.json is still written)
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        runs.track(trainer)
        _TRAINER.append(trainer)
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
    pretrained = model_args.get("backbone") or (
        model_args.get("model") if isinstance(model_args.get("model"), str) else None
    )
    if data_args.get("tokenizer") is None and pretrained:
        data_args.tokenizer = pretrained


TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "default", "default_hp_metric": False},
    },
    "default_root_dir": "logs",
}


class CurrentStderr(logging.StreamHandler):
    """A handler writing to the `sys.stderr` of each message, not of its creation: a caller that swaps the stream
    (pytest's capture, a tool running several commands in one process) never gets a closed one."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@entry.console
def main(args: list[str] | None = None) -> None:
    keep_freed_memory()  # CPU steps stop re-faulting their large tensors (see allocator.py)
    quiet_known_noise()  # Lightning's tips and deprecations raised inside libraries (quiet.py)
    log = logging.getLogger("lightning_pretrain")
    if not log.handlers and not logging.getLogger().handlers:  # data-preparation progress, cache notices
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    # the corpus is tokenized in this process with the Rust thread pool, before any DataLoader worker forks;
    # saying so explicitly silences tokenizers' fork warning (memory-mapped block workers never tokenize)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    _TRAINER.clear()
    try:
        PretrainCLI(
            args=args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=1234,
            save_config_callback=ConfigAfterChecks,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except SystemExit as e:  # Lightning ends a Ctrl-C it caught (before the guard could stop the run) with exit(1)
        if e.code == 1 and _TRAINER and _TRAINER[-1].state.status == TrainerStatus.INTERRUPTED:
            raise KeyboardInterrupt from e
        raise
    finally:
        _TRAINER.clear()


_TRAINER: list[L.Trainer] = []  # the trainer of the command being run


if __name__ == "__main__":
    main()
