"""Activation checkpointing applied from outside the model: keep only each transformer block's input during the
forward pass and recompute the block in backward. Trades ~1/3 more compute for activation memory that no longer
grows with depth; works under every strategy (single device, DDP, FSDP2)."""

from __future__ import annotations

import lightning as L

from lightning_pretrain.errors import InputError


class ActivationCheckpointing(L.Callback):
    def __init__(self, enabled: bool = False):
        """
        Args:
            enabled: recompute each transformer block in backward instead of storing its activations.
        """
        self.enabled = enabled

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.enabled:
            return
        model = getattr(pl_module, "model", None)
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise InputError(f"activation checkpointing needs an HF model that supports gradient checkpointing; "
                             f"{type(model).__name__} does not")
        # transformers' own switch, on the blocks it knows (it checkpoints `forward`, so FSDP2's hooks stay outside
        # the recompute); non-reentrant checkpointing composes with FSDP2, torch.compile and frozen inputs
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
