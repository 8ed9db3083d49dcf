"""Causal language modelling (GPT-2, Llama, ...): predict every next token of a packed block.

There is no corruption: the labels are the inputs, and the HF model shifts them by one internally. Packed blocks
contain several documents separated by EOS and attention crosses those boundaries, as in GPT-2's own training.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from lightning_pretrain import optim
from lightning_pretrain.objectives.pretraining import PretrainingModule


class CausalLM(PretrainingModule):
    auto_class = AutoModelForCausalLM

    def __init__(
        self,
        model: PretrainedConfig | str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        warmup_steps: int = 100,
        lr_schedule: optim.Schedule = "cosine",
        attn_implementation: str | None = "sdpa",
    ):
        """
        Args:
            model: an HF config to build a fresh model from (`class_path: transformers.GPT2Config` / `LlamaConfig`
                with `init_args`), or a local directory / hub id of a pretrained causal LM to continue training.
            tokenizer: linked from the data module by the CLI; sets the vocabulary size and special token ids.
            optimizer: optimizer class and its arguments (weight decay applies to matrices only).
            warmup_steps: optimizer steps of linear LR warmup from 0.
            lr_schedule: decay after warmup, per step: 'cosine' or 'linear' to 0, or 'constant'.
            attn_implementation: 'sdpa' (fused kernels), 'eager', or 'flash_attention_2' where installed.
        """
        super().__init__(model, tokenizer, optimizer, warmup_steps, lr_schedule, attn_implementation)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.val_nll.update(loss, weight=batch[:, 1:].numel())  # every position but the first is predicted
