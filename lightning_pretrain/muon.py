"""Muon for the hidden matrices, AdamW for the rest, as one `torch.optim` optimizer (`--model.optimizer`).

Muon (Jordan et al. 2024; `torch.optim.Muon`) orthogonalises each matrix's momentum, which suits the weights between
the embeddings and the output; embeddings, output heads, biases and norms stay with AdamW (Muon's own advice).
torch's Muon takes 2-D tensors only, so a model needs both: one optimizer keeps the LR schedule, gradient clipping,
checkpoints (`weights_only`) and resume exactly as for AdamW. Measured: benchmarks/RESULTS.md ("Muon").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, muon
from transformers.pytorch_utils import Conv1D

HIDDEN_MATRIX = "hidden_matrix"  # the attribute `mark_hidden_matrices` sets on a parameter


def mark_hidden_matrices(model: nn.Module) -> int:
    """Tag the weights of `model`'s linear layers as Muon's (`MuonAdamW`), and return how many were tagged.

    Left to AdamW: every embedding (also when an output layer ties to it), each output embedding
    (`get_output_embeddings`, tied or not) and any layer with a single output or input (a detection head)."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for m in model.modules():
        out = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
        if isinstance(out, nn.Module) and getattr(out, "weight", None) is not None:
            skip.add(id(out.weight))
    tagged = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, Conv1D)) and id(m.weight) not in skip and min(m.weight.shape) > 1:
            setattr(m.weight, HIDDEN_MATRIX, True)
            tagged += 1
    return tagged


class MuonAdamW(torch.optim.AdamW):
    """AdamW over the parameter groups it is given, except that the parameters `mark_hidden_matrices` tagged take
    Muon's update: orthogonalised (Newton-Schulz) Nesterov momentum, with the group's LR and decoupled weight decay.

    Args:
        lr, betas, eps, weight_decay: AdamW's, and Muon's LR and weight decay too: with `adjust_lr_fn:
            match_rms_adamw` (Moonlight, Liu et al. 2025) Muon's update has AdamW's RMS, so one LR serves both.
        momentum, nesterov, ns_steps, adjust_lr_fn: `torch.optim.Muon`'s ('original' is Keller Jordan's scaling,
            which wants a ~10x larger LR than AdamW's).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str = "match_rms_adamw",
    ):
        if adjust_lr_fn not in ("original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn must be 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        split = []  # each group in two: its hidden matrices (Muon) and the rest (AdamW), with the group's options
        for group in groups:
            ps = list(group["params"])
            for use_muon in (True, False):
                mine = [p for p in ps if getattr(p, HIDDEN_MATRIX, False) is use_muon]
                if mine:
                    split.append({**group, "params": mine, "muon": use_muon})
        if not any(g["muon"] for g in split):
            raise ValueError(
                "MuonAdamW: no parameter is a hidden matrix (lightning_pretrain.muon.mark_hidden_matrices)"
            )
        for g in split:
            if g["muon"] and any(p.ndim != 2 or hasattr(p, "device_mesh") for p in g["params"]):
                raise ValueError("MuonAdamW: Muon takes whole 2-D matrices; not sharded (FSDP) or other tensors")
        super().__init__(split, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        extra = {"momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn}
        self.defaults.update(extra)
        for g in self.param_groups:
            for key, value in extra.items():
                g.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        try:  # AdamW's own step over its groups: the same code path (foreach/fused) as plain AdamW
            self.param_groups = [g for g in groups if not g["muon"]]
            super().step()
        finally:
            self.param_groups = groups
        for g in groups:
            if g["muon"]:
                self._muon_step(g)
        return loss

    def _muon_step(self, group: dict) -> None:
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                state["step"] = torch.tensor(0.0)  # Adam's load_state_dict expects every state to count steps
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            bufs.append(state["momentum_buffer"])
        if params:  # torch.optim.Muon's functional update, the same as its step()
            muon(
                params,
                grads,
                bufs,
                lr=float(group["lr"]),
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                ns_coefficients=(DEFAULT_A, DEFAULT_B, DEFAULT_C),
                eps=EPS,
                ns_steps=group["ns_steps"],
                adjust_lr_fn=group["adjust_lr_fn"],
                has_complex=False,
            )
