"""Causal language modelling (GPT-2, Llama, ...): predict every next token of a packed block.

There is no corruption: the labels are the inputs shifted by one. Packed blocks contain several documents separated
by EOS and attention crosses those boundaries, as in GPT-2's own training.

The loss: for architectures whose logits are just `lm_head(last hidden state)`, the output layer and its
cross-entropy run in chunks of positions (`linear_cross_entropy`), never holding the (tokens x vocab) logits; the
loss and gradients are those of the HF model's `labels=` loss (tests/test_linear_cross_entropy.py). Any other architecture
(logit scaling or soft-capping, auxiliary router losses) computes its loss through HF.
"""

from __future__ import annotations

import torch
from torch import nn
from lightning.pytorch.cli import OptimizerCallable
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerBase

from lightning_pretrain import optim
from lightning_pretrain.objectives.linear_cross_entropy import linear_cross_entropy
from lightning_pretrain.objectives.pretraining import PretrainingModule

# model types whose logits are exactly `get_output_embeddings()(base_model(...).last_hidden_state)`
PLAIN_HEAD = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3"}


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
        chunked_loss: bool = True,
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
            chunked_loss: compute the output layer and cross-entropy in chunks of positions without materialising
                all the logits (GPT-2, Llama, Mistral, Qwen, GPT-Neo(X), GPT-J): same loss and gradients and the
                same speed, less memory. False: the HF model's own `labels=` loss.
        """
        super().__init__(model, tokenizer, optimizer, warmup_steps, lr_schedule, attn_implementation)
        self.chunked_loss = chunked_loss

    def lm_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over every position but the last."""
        head = self.model.get_output_embeddings()
        # a model compiled whole (`--compile.scope model`) fuses its own head and loss: call it as a whole
        whole = getattr(self.model, "_compiled_call_impl", None) is not None
        plain = self.model.config.model_type in PLAIN_HEAD and type(head) is nn.Linear
        if whole or not (self.chunked_loss and plain):
            return self.model(input_ids=batch, labels=batch).loss
        hidden = self.model.base_model(input_ids=batch).last_hidden_state[:, :-1]
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, batch[:, 1:].reshape(-1),
                                    head.bias)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss = self.lm_loss(batch)
        self.val_nll.update(loss, weight=batch[:, 1:].numel())  # every position but the first is predicted
