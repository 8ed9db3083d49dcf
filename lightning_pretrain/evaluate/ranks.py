"""lm-eval's data-parallel hooks (`rank`, `world_size`, `all_gather`, `gather_object`, `barrier`) over the
torch.distributed process group a Lightning run already has, so `simple_evaluate` splits the documents over the
ranks, pads every rank to the same number of requests (and so of forward passes: a sharded FSDP model needs every
rank in every forward), and gathers the per-document scores on rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class RankAware:
    """Mix in before an lm-eval `LM` class; `spread_over_ranks(True)` turns data-parallel evaluation on."""

    _spread = False

    def spread_over_ranks(self, on: bool) -> None:
        self._spread = on and distributed()

    @property
    def rank(self) -> int:
        return dist.get_rank() if self._spread else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if self._spread else 1

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self._spread:
            return tensor
        flat = tensor.reshape(-1)  # lm-eval gathers 0-d counts and expects one vector back
        out = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(out, flat)
        return torch.cat(out)

    def gather_object(self, obj, dst: int = 0):
        if not self._spread:
            return [obj]
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)  # works on gloo and nccl alike; only `dst` keeps the list
        return out if dist.get_rank() == dst else None

    def barrier(self) -> None:
        if self._spread:
            dist.barrier()


def broadcast_from_zero(obj):
    """Rank 0's `obj` on every rank (identity outside a process group)."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sharded(model: torch.nn.Module) -> bool:
    """An FSDP2-sharded model (`fully_shard`): every forward is a collective over all ranks."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
