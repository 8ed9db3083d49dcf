"""Every access to a private attribute of Lightning, torch or torchdata, in one place.

Each accessor names the version it was checked against; tests/test_compat.py exercises each one on real objects, so
an upgrade that moves one fails there, loudly, instead of silently disabling exact resume or FLOPs accounting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CHECKED = {"lightning": "2.6.6", "torch": "2.13.0", "torchdata": "0.11.0", "transformers": "5.25"}


# -- torch ------------------------------------------------------------------------------------------------------
def is_compiled(module: nn.Module) -> bool:
    """`module.compile()` ran (torch 2.13: `nn.Module.compile` stores the compiled call in `_compiled_call_impl`)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def grad_scaler_scale(scaler) -> torch.Tensor | None:
    """A GradScaler's current scale, None before its first step (torch 2.13: `_scale`; `get_scale()` syncs)."""
    return scaler._scale


# -- transformers -----------------------------------------------------------------------------------------------
def attn_implementation(config) -> str | None:
    """The attention kernel a model was built with (transformers 5.25: `config._attn_implementation`)."""
    return getattr(config, "_attn_implementation", None)


def no_split_modules(model: nn.Module) -> set[str]:
    """Class names of a model's blocks that must not be split across devices (transformers 5.25:
    `PreTrainedModel._no_split_modules`); empty for a model that names none."""
    return set(getattr(model, "_no_split_modules", None) or ())


# -- torchdata --------------------------------------------------------------------------------------------------
def loader_state_workers(state: dict[str, Any]) -> int:
    """Worker processes of the StatefulDataLoader that wrote `state` (torchdata 0.11 snapshot layout)."""
    snapshot = state.get("_snapshot")
    return snapshot["_main_snapshot"]["_num_workers"] if snapshot else 0


# -- Lightning --------------------------------------------------------------------------------------------------
def set_sampler_epoch(loader, epoch: int) -> None:
    """What Lightning's loops call at each epoch start (lightning 2.6.6: `fabric.utilities.data._set_sampler_epoch`)."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(loader, epoch)


def train_loaders(trainer) -> list | None:
    """The fit loop's train loaders as built (lightning 2.6.6: `fit_loop._combined_loader`), None before setup."""
    combined = trainer.fit_loop._combined_loader
    return None if combined is None else combined.flattened


def load_train_loader_states(trainer, states: list[dict[str, Any]]) -> None:
    """Apply loader states to the fit loop's train loaders and restart its fetcher on them (lightning 2.6.6)."""
    trainer.fit_loop._combined_loader._load_state_dicts(states)
    iter(trainer.fit_loop._data_fetcher)


def ddp_finds_unused_parameters(strategy) -> bool:
    """DDPStrategy's `find_unused_parameters` (lightning 2.6.6 keeps the DDP kwargs in `_ddp_kwargs`)."""
    return bool(getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False))


def set_data_parallel_size(strategy, size: int) -> None:
    """ModelParallelStrategy's data-parallel size before it builds its mesh (lightning 2.6.6: `_data_parallel_size`)."""
    strategy._data_parallel_size = size


def compute_dtype(precision_plugin) -> torch.dtype:
    """The dtype a precision plugin computes in (lightning 2.6.6: `throughput_monitor._plugin_to_compute_dtype`)."""
    from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

    return _plugin_to_compute_dtype(precision_plugin)


def trainer_of(module):
    """The Trainer a LightningModule is attached to, None when it is not (lightning 2.6.6: `_trainer`; the public
    `trainer` property raises instead)."""
    return module._trainer


def val_check_time_interval(trainer) -> float | None:
    """Seconds between validations when `val_check_interval` is a time, else None (lightning 2.6.6:
    `_val_check_time_interval`)."""
    return getattr(trainer, "_val_check_time_interval", None)


def summary_kwargs(callback) -> dict:
    """The keyword arguments ModelSummary hands its table (lightning 2.6.6: `_summarize_kwargs`), to add columns."""
    return callback._summarize_kwargs


def tqdm_train_bar_exists(bar) -> bool:
    """TQDMProgressBar has built its training bar (lightning 2.6.6: the property raises before `_train_progress_bar`
    exists)."""
    return bar._train_progress_bar is not None


def monitor_throughputs(monitor) -> dict:
    """ThroughputMonitor's per-stage `Throughput` trackers (lightning 2.6.6: `_throughputs`)."""
    return monitor._throughputs


# -- data/ (added with the data rooms) -----------------------------------------------------------------------------
def train_batches_run(batches: int, limit: int | float | None) -> int:
    """How many of an epoch's `batches` Lightning runs under `limit_train_batches` (lightning 2.6.6:
    `trainer.connectors.data_connector._parse_num_batches`); no limit, or one Lightning refuses, leaves it whole."""
    from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    if limit is None or isinstance(limit, bool):
        return batches
    try:
        run = int(_parse_num_batches(RunningStage.TRAINING, batches, limit))
    except MisconfigurationException:  # a fraction of less than one batch: Lightning refuses it before any epoch
        return batches
    return run if run > 0 else batches


def dataset_fingerprint(dataset) -> str | None:
    """A `datasets.Dataset`'s content fingerprint, None for a streamed one (datasets 5.2.0: `_fingerprint`)."""
    return getattr(dataset, "_fingerprint", None)
