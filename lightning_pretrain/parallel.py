"""FSDP2 for any Hugging Face architecture, applied from outside the model (torchtitan style).

Model code stays single-device. Under Lightning's `ModelParallelStrategy` the LightningModule gets a device mesh, and
`PretrainingModule.configure_model` hands the HF model to `shard`, which finds its repeated transformer blocks,
shards each with `fully_shard`, then shards the root (embeddings, final norm, head). `FSDP2Strategy` is that
strategy configured as plain FSDP: every rank is one data-parallel shard and reads its own batches.

Checkpoints: the strategy saves a sharded folder (one `.distcp` file per rank + `meta.pt`) that resumes on any world
size; `export_checkpoint` turns it (or a single-file `.ckpt`) into a Hugging Face directory:

    python -m lightning_pretrain.parallel logs/run/version_0/checkpoints/last.ckpt --out exported/
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import types
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lightning_pretrain.errors import InputError

DType = Literal["bfloat16", "float16", "float32"]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of an HF model (GPT2Block, BertLayer, T5Block, LlamaDecoderLayer, ...), outermost only.

    A block is an instance of transformers' `GradientCheckpointingLayer` (the unit HF itself recomputes); failing
    that, a module whose class is listed in `_no_split_modules` and occurs more than once (the list also names
    one-off modules such as BertEmbeddings); failing both, the items of every `nn.ModuleList` of one class.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    def outermost(is_block) -> list[nn.Module]:
        found, inside = [], set()
        for module in model.modules():  # pre-order: a block is seen before anything nested in it
            if id(module) not in inside and is_block(module):
                found.append(module)
                inside.update(id(m) for m in module.modules())
        return found

    blocks = outermost(lambda m: isinstance(m, GradientCheckpointingLayer))
    if not blocks:
        names = set(getattr(model, "_no_split_modules", None) or ())
        counts: dict[str, int] = {}
        for module in model.modules():
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        blocks = outermost(lambda m: type(m).__name__ in names and counts[type(m).__name__] > 1)
    if not blocks:
        blocks = [m for lst in model.modules() if isinstance(lst, nn.ModuleList) and len(lst) > 1
                  and len({type(m) for m in lst}) == 1 for m in lst]
    return blocks


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(model: nn.Module, mesh, reshard_after_forward: bool = True, param_dtype: DType | None = None,
          reduce_dtype: DType | None = None) -> nn.Module:
    """Apply FSDP2 in place: each transformer block is one all-gather unit, the root holds everything else (tied
    input/output embeddings included, which must share one unit).

    `mesh` is the 1-D data-parallel mesh. `param_dtype` casts the gathered parameters (e.g. 'bfloat16' halves the
    all-gather and runs the blocks in bf16 while the sharded master weights and the optimizer stay fp32);
    `reduce_dtype` is the gradient reduce-scatter dtype (default: `param_dtype`).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if is_sharded(model):  # configure_model runs again for validate/test after fit
        return model
    dtype = lambda name: getattr(torch, name) if name else None  # noqa: E731
    policy = MixedPrecisionPolicy(param_dtype=dtype(param_dtype), reduce_dtype=dtype(reduce_dtype or param_dtype))
    blocks = transformer_blocks(model)
    if not blocks:
        raise InputError(f"found no repeated transformer blocks in {type(model).__name__} to shard with FSDP")
    for i, block in enumerate(blocks):
        # the last block's parameters are needed again right at the start of backward: keeping them gathered
        # saves one all-gather per step (torchtitan does the same)
        fully_shard(block, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


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
                resumes it; export with `python -m lightning_pretrain.parallel`); false gathers one `.ckpt` file.
            process_group_backend: 'nccl' on GPU and 'gloo' on CPU when unset.
            timeout_minutes: collective timeout.
        """
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timedelta(minutes=timeout_minutes))
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype, self.reduce_dtype = param_dtype, reduce_dtype

    def setup_environment(self) -> None:
        # ModelParallelStrategy's 'auto' puts one node per data-parallel shard (its tensor-parallel layout); plain
        # FSDP puts every rank in the data-parallel dimension, which also gives each rank its own sampler shard
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard(self, model: nn.Module) -> nn.Module:
        return shard(model, self.device_mesh["data_parallel"], self.reshard_after_forward, self.param_dtype,
                     self.reduce_dtype)


def shard_module(module) -> None:
    """What `configure_model` calls under `ModelParallelStrategy`: shard `module.model` (the strategy's options for
    `FSDP2Strategy`, FSDP2 defaults otherwise) and run the module's steps through the sharded root."""
    strategy, mesh, model = module.trainer.strategy, module.device_mesh, module.model
    if is_sharded(model):  # configure_model runs again for validate/test after fit
        return
    if isinstance(strategy, FSDP2Strategy):
        strategy.shard(model)
    elif "tensor_parallel" in mesh.mesh_dim_names and mesh["tensor_parallel"].size() > 1:
        raise InputError("tensor parallelism is not supported for HF models here: use "
                         "lightning_pretrain.parallel.FSDP2Strategy (configs/trainer/fsdp.yaml) or set "
                         "tensor_parallel_size: 1 and data_parallel_size to the world size")
    else:
        shard(model, mesh["data_parallel"])
    steps_through_root(module, model)


def steps_through_root(module, model: nn.Module) -> None:
    """Run the LightningModule's steps inside an FSDP forward of the sharded root.

    FSDP2 gathers the root's own parameters (embeddings, final norm, heads) and arms its backward hooks only when
    the root's `forward` runs, but objectives also call parts of the model directly (MaskedLM's sparse head:
    `model.base_model(...)` then `model.cls(...)`). Registering a pass-through method as an FSDP forward method
    and routing each step through it gives every call pattern gathered weights, with no change to the objectives.
    """
    from torch.distributed.fsdp import register_fsdp_forward_method

    def run_step(self, step, *args, **kwargs):
        return step(*args, **kwargs)

    model.run_step = types.MethodType(run_step, model)
    register_fsdp_forward_method(model, "run_step")
    for name in ("training_step", "validation_step", "test_step", "predict_step"):
        # an instance attribute shadows the class's method; Lightning calls `module.<name>(...)`
        setattr(module, name, functools.partial(model.run_step, getattr(module, name)))


# -- checkpoint -> Hugging Face ----------------------------------------------------------------------------------
def load_training_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as one dict on CPU: a single `.ckpt` file, or a sharded folder (FSDP2) merged."""
    path = Path(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if not (path / ".metadata").is_file():
        raise InputError(f"{path} is neither a checkpoint file nor a sharded checkpoint folder (no .metadata)")
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:  # torch's public merge writes a file; read it straight back
        dcp_to_torch_save(path, Path(tmp) / "full.pt")
        state = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)
    meta = path / "meta.pt"  # Lightning's non-tensor part: epoch, loops, hyperparameters, our hf_config
    return {**(torch.load(meta, map_location="cpu", weights_only=True) if meta.is_file() else {}), **state}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Write a Hugging Face directory from a training checkpoint of a `PretrainingModule` objective.

    The checkpoint carries the model's config and class (`hf_config`, saved by `PretrainingModule`); the tokenizer
    defaults to `<run dir>/tokenizer`, which `HFExport` saves when fit starts.
    """
    import transformers

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = load_training_checkpoint(checkpoint)
    if "hf_config" not in state:
        raise InputError(f"{checkpoint} holds no 'hf_config': it was not written by a lightning_pretrain objective")
    config_dict = dict(state["hf_config"])
    architecture = config_dict["architectures"][0]
    config = transformers.AutoConfig.for_model(**config_dict)
    model = getattr(transformers, architecture)(config)
    prefix = "model."  # the HF model is the objective's `model` attribute
    weights = {k[len(prefix):]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if unexpected or set(missing) - tied:
        raise InputError(f"checkpoint does not match {architecture}: missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    model.save_pretrained(out_dir, safe_serialization=True)
    tok_dir = Path(tokenizer) if tokenizer else checkpoint.resolve().parent.parent / "tokenizer"
    if tok_dir.is_dir():
        for f in tok_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, out_dir / f.name)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_pretrain.parallel",
                                     description="Export a training checkpoint (sharded folder or .ckpt file) to a "
                                                 "Hugging Face directory.")
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint folder")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: <run dir>/tokenizer)")
    args = parser.parse_args(argv)
    try:
        print(f"Hugging Face export: {export_checkpoint(args.checkpoint, args.out, args.tokenizer)}")
    except InputError as e:  # the CLI's convention: one line, exit status 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
