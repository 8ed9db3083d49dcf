"""Every access to a private attribute of Lightning, torch or torchdata, in one place.

Each accessor names the version it was checked against; tests/test_compat.py exercises each one on real objects, so
an upgrade that moves one fails there, loudly, instead of silently disabling exact resume or FLOPs accounting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CHECKED = {"lightning": "2.6.6", "torch": "2.13.0", "torchdata": "0.11.0"}


# -- torch ------------------------------------------------------------------------------------------------------
def is_compiled(module: nn.Module) -> bool:
    """`module.compile()` ran (torch 2.13: `nn.Module.compile` stores the compiled call in `_compiled_call_impl`)."""
    return getattr(module, "_compiled_call_impl", None) is not None


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


def monitor_throughputs(monitor) -> dict:
    """ThroughputMonitor's per-stage `Throughput` trackers (lightning 2.6.6: `_throughputs`)."""
    return monitor._throughputs
