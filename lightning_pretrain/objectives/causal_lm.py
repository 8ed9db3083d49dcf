"""Causal language modelling (GPT-2, Llama, ...): predict every next token of a packed block.

There is no corruption: the labels are the inputs shifted by one. Packed blocks hold several documents separated by
EOS and attention crosses those boundaries, as in GPT-2's own training. For architectures whose logits are just
`lm_head(last hidden state)` the output layer and its cross-entropy run in chunks of positions
(`linear_cross_entropy`), never holding the (tokens x vocab) logits, with the loss and gradients of HF's `labels=`
loss (tests/test_linear_cross_entropy.py); any other architecture computes its loss through HF.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from lightning_pretrain import architecture, compat
from lightning_pretrain.objectives.linear_cross_entropy import linear_cross_entropy
from lightning_pretrain.objectives.pretraining import PretrainingModule


class CausalLM(PretrainingModule):
    auto_class = AutoModelForCausalLM

    def __init__(self, chunked_loss: bool = True, **kwargs):
        """
        Args:
            chunked_loss: compute the output layer and cross-entropy in chunks of positions without materialising
                all the logits (GPT-2, Llama, Mistral, Qwen, GPT-Neo(X), GPT-J): same loss and gradients and the
                same speed, less memory. False: the HF model's own `labels=` loss.
        """
        super().__init__(**kwargs)
        self.chunked_loss = chunked_loss

    def lm_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over every position but the last."""
        head = architecture.plain_head(self.model)
        # a model compiled whole (`--compile.scope model`) fuses its own head and loss: call it as a whole
        if compat.is_compiled(self.model) or not (self.chunked_loss and head is not None):
            return self.model(input_ids=batch, labels=batch).loss
        hidden = self.model.base_model(input_ids=batch).last_hidden_state[:, :-1]
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, batch[:, 1:].reshape(-1),
                                    head.bias)

    def training_loss(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_update(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self.lm_loss(batch)
        self.val_nll.update(loss, weight=batch[:, 1:].numel())  # every position but the first is predicted
