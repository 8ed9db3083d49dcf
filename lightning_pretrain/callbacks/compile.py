"""`torch.compile` applied from outside the model: each transformer block, or the whole HF model.

Compiling in place (`nn.Module.compile`) keeps parameter names, so checkpoints and the HF export are unchanged.
"""

from __future__ import annotations

from typing import Literal

import lightning as L

from lightning_pretrain import parallel
from lightning_pretrain.errors import InputError


class Compile(L.Callback):
    def __init__(self, enabled: bool = False, scope: Literal["blocks", "model"] = "blocks", mode: str | None = None,
                 fullgraph: bool = False, dynamic: bool | None = False):
        """
        Args:
            enabled: compile the objective's HF model (`--compile.enabled true`). On CPU it needs a C++ compiler and
                the first step takes tens of seconds; it pays off on GPUs.
            scope: 'blocks' compiles each transformer block (one graph reused by every layer: quick to compile,
                works with FSDP2 and with objectives that call parts of the model, like MaskedLM's sparse head);
                'model' compiles the HF model's whole forward (embeddings, head and loss fused too; helps objectives
                that call `model(...)`, like CausalLM).
            mode: torch.compile mode: 'default', 'reduce-overhead' (CUDA graphs) or 'max-autotune'.
            fullgraph: fail on graph breaks instead of falling back to eager for that part.
            dynamic: false specialises on the (fixed) block shapes; None lets torch decide after a shape change.
        """
        self.enabled, self.scope, self.mode, self.fullgraph, self.dynamic = enabled, scope, mode, fullgraph, dynamic

    def setup(self, trainer, pl_module, stage: str) -> None:
        # runs before `configure_model`, so under FSDP2 the blocks are compiled first and sharded after (torchtitan)
        if not self.enabled:
            return
        model = getattr(pl_module, "model", None)
        if model is None:
            raise InputError(f"--compile needs a module with a `model` attribute; {type(pl_module).__name__} has none")
        targets = parallel.transformer_blocks(model) if self.scope == "blocks" else [model]
        for module in targets:
            if getattr(module, "_compiled_call_impl", None) is None:  # setup runs again for validate/test
                module.compile(mode=self.mode, fullgraph=self.fullgraph, dynamic=self.dynamic)
