"""What is applied to a model from outside it, in one place and in order (torchtitan's `parallelize`):
activation checkpointing, then torch.compile, then FSDP2. Model code stays single-device.

`Parallelize` (a callback the CLI adds to every run, configured by `--activation_checkpointing.*` and `--compile.*`)
calls `parallelize` in `setup`, once the strategy has built its device mesh. Under FSDP2 the objectives' steps run
the model through `through_root`, an FSDP forward method of the sharded root, so every call pattern (MaskedLM's
sparse head calls `model.base_model` and `model.cls` directly) sees gathered weights; no step is ever replaced.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_pretrain import compat
from lightning_pretrain.architecture import transformer_blocks
from lightning_pretrain.errors import InputError

DType = Literal["bfloat16", "float16", "float32"]


@dataclass
class ActivationCheckpointing:
    """Activation checkpointing: keep only each transformer block's input in forward and recompute the block in
    backward (~1/3 more compute for activation memory that no longer grows with depth; any strategy).

    Args:
        enabled: recompute each transformer block in backward instead of storing its activations.
    """

    enabled: bool = False


@dataclass
class Compile:
    """`torch.compile` of the objective's HF model, in place (parameter names, checkpoints and exports unchanged).

    Args:
        enabled: compile (`--compile.enabled true`). On CPU it needs a C++ compiler and the first step takes tens
            of seconds; it pays off on GPUs.
        scope: 'blocks' compiles each transformer block (one graph reused by every layer: quick to compile, works
            with FSDP2 and with objectives that call parts of the model); 'model' compiles the whole forward
            (embeddings, head and loss fused too; helps objectives that call `model(...)`, like CausalLM).
        mode: torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs) or 'max-autotune'.
        fullgraph: fail on graph breaks instead of falling back to eager for that part.
        dynamic: false specialises on the (fixed) block shapes; None lets torch decide after a shape change.
    """

    enabled: bool = False
    scope: Literal["blocks", "model"] = "blocks"
    mode: str | None = None
    fullgraph: bool = False
    dynamic: bool | None = False


def parallelize(
    model: nn.Module,
    checkpointing: ActivationCheckpointing | None = None,
    compile: Compile | None = None,
    strategy=None,
) -> nn.Module:
    """Apply to `model`, in place and in this order: activation checkpointing (it wraps the blocks' forward),
    torch.compile (of the blocks so wrapped), FSDP2 (over the compiled blocks) when `strategy` is a
    `ModelParallelStrategy`. Idempotent: setup runs again for validate/test after fit."""
    if checkpointing is not None and checkpointing.enabled:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise InputError(
                f"activation checkpointing needs an HF model that supports gradient checkpointing; "
                f"{type(model).__name__} does not"
            )
        # transformers' own switch on the blocks it knows (it checkpoints `forward`, so FSDP2's hooks stay outside
        # the recompute); non-reentrant checkpointing composes with FSDP2, torch.compile and frozen inputs
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if compile is not None and compile.enabled:
        for module in transformer_blocks(model) if compile.scope == "blocks" else [model]:
            if not compat.is_compiled(module):
                module.compile(mode=compile.mode, fullgraph=compile.fullgraph, dynamic=compile.dynamic)
    if isinstance(strategy, ModelParallelStrategy) and not is_sharded(model):
        mesh = strategy.device_mesh
        if isinstance(strategy, FSDP2Strategy):
            shard(
                model,
                mesh["data_parallel"],
                strategy.reshard_after_forward,
                strategy.param_dtype,
                strategy.reduce_dtype,
            )
        elif "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
            raise InputError(
                "tensor parallelism is not supported for HF models here: use "
                "lightning_pretrain.parallel.FSDP2Strategy (configs/trainer/fsdp.yaml) or set "
                "tensor_parallel_size: 1 and data_parallel_size to the world size"
            )
        else:
            shard(model, mesh["data_parallel"])
    return model


class Parallelize(L.Callback):
    """Applies `parallelize` to the objective's `model` when the run sets up (after the strategy built its mesh,
    before `configure_model`)."""

    def __init__(self, checkpointing: ActivationCheckpointing | None = None, compile: Compile | None = None):
        self.checkpointing = checkpointing or ActivationCheckpointing()
        self.compile = compile or Compile()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            if self.checkpointing.enabled or self.compile.enabled:
                raise InputError(
                    f"--compile / --activation_checkpointing need a module with a `model`; "
                    f"{type(pl_module).__name__} has none"
                )
            return
        parallelize(model, self.checkpointing, self.compile, trainer.strategy)


# -- FSDP2 ------------------------------------------------------------------------------------------------------
def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(
    model: nn.Module,
    mesh,
    reshard_after_forward: bool = True,
    param_dtype: DType | None = None,
    reduce_dtype: DType | None = None,
) -> nn.Module:
    """FSDP2 in place: each transformer block is one all-gather unit, the root holds everything else (tied
    input/output embeddings included, which must share one unit). `param_dtype` casts the gathered parameters
    (the sharded master weights and the optimizer stay fp32); `reduce_dtype` is the gradient reduce-scatter dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    dtype = lambda name: getattr(torch, name) if name else None  # noqa: E731
    policy = MixedPrecisionPolicy(param_dtype=dtype(param_dtype), reduce_dtype=dtype(reduce_dtype or param_dtype))
    blocks = transformer_blocks(model)
    if not blocks:
        raise InputError(f"found no repeated transformer blocks in {type(model).__name__} to shard with FSDP")
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again right at the start of backward: keeping them gathered
        # saves one all-gather per step (torchtitan does the same)
        fully_shard(
            block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward and i < len(blocks) - 1
        )
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # FSDP2 gathers the root's own parameters (embeddings, final norm, heads) and arms its backward hooks only
    # inside a forward of the root: `through_root` is one, for whatever an objective's step does with the model
    model.through_root = types.MethodType(_call, model)
    register_fsdp_forward_method(model, "through_root")
    return model


def _call(self, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def through_root(model: nn.Module, fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, inside an FSDP forward of `model`'s root when it is sharded."""
    return model.through_root(fn, *args, **kwargs) if is_sharded(model) else fn(*args, **kwargs)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """A full, unsharded CPU copy of a sharded model's state dict, or None for an unsharded model.

    A collective under FSDP2: every rank must call it (only rank 0 needs the result).
    """
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` as plain FSDP2 (ZeRO-3): parameters, gradients and optimizer state are
    sharded over all devices of all nodes; each device trains on its own batches (no tensor parallelism)."""

    def __init__(
        self,
        reshard_after_forward: bool = True,
        param_dtype: DType | None = None,
        reduce_dtype: DType | None = None,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout_minutes: float = 30.0,
    ):
        """
        Args:
            reshard_after_forward: free each block's gathered parameters after its forward and gather them again for
                backward (ZeRO-3, least memory); false keeps them until backward (ZeRO-2-like, one all-gather fewer).
            param_dtype: dtype the gathered parameters are cast to for compute ('bfloat16' on GPU halves the
                all-gather); unset keeps them fp32 and leaves mixed precision to `trainer.precision` (autocast).
            reduce_dtype: dtype of the gradient reduce-scatter (default: `param_dtype`; 'float32' for exact sums).
            save_distributed_checkpoint: each rank writes its shard into a checkpoint folder (fast, any world size
                resumes it; export with `lightning-pretrain-export`); false gathers one `.ckpt` file.
            process_group_backend: 'nccl' on GPU and 'gloo' on CPU when unset.
            timeout_minutes: collective timeout.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timedelta(minutes=timeout_minutes),
        )
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype

    def setup_environment(self) -> None:
        # ModelParallelStrategy's 'auto' puts one node per data-parallel shard (its tensor-parallel layout); plain
        # FSDP puts every rank in the data-parallel dimension, which also gives each rank its own sampler shard
        compat.set_data_parallel_size(self, self.num_nodes * self.num_processes)
        super().setup_environment()
