"""Causal language modelling (GPT-2, Llama, ...): predict every next token of a packed block.

There is no corruption: the labels are the inputs shifted by one. Packed blocks hold several documents separated by
EOS and attention crosses those boundaries, as in GPT-2's own training, unless the data keeps them apart
(`cross_document_attention: false`: restarting position ids, `document_attention`). For architectures whose logits
are just `lm_head(last hidden state)` the output layer and its cross-entropy run in chunks of positions
(`linear_cross_entropy`), never holding the (tokens x vocab) logits, with the loss and gradients of HF's `labels=`
loss (tests/test_linear_cross_entropy.py); any other architecture computes its loss through HF. `predict`
continues each prompt (`generation` options), which starts a document as in the packed blocks: after the separator.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from lightning_pretrain import architecture, compat
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.data.tokenizers import document_separator
from lightning_pretrain.objectives.linear_cross_entropy import linear_cross_entropy
from lightning_pretrain.objectives.pretraining import PretrainingModule


class CausalLM(PretrainingModule):
    auto_class = AutoModelForCausalLM
    document_masking = True
    causal = True

    def __init__(self, chunked_loss: bool = True, **kwargs):
        """
        Args:
            chunked_loss: compute the output layer and cross-entropy in chunks of positions without materialising
                all the logits (GPT-2, Llama, Mistral, Qwen, GPT-Neo(X), GPT-J): same loss and gradients and the
                same speed, less memory. False: the HF model's own `labels=` loss.
        """
        super().__init__(**kwargs)
        self.chunked_loss = chunked_loss

    @staticmethod
    def lm_labels(batch) -> torch.Tensor:
        """The ids, where documents are kept apart with IGNORE_INDEX at each document's first token: a document's first
        token is never predicted (from the previous document)."""
        if not isinstance(batch, dict):
            return batch
        return batch["input_ids"].masked_fill(batch["position_ids"] == 0, IGNORE_INDEX)

    def lm_loss(self, batch) -> torch.Tensor:
        """Mean next-token cross-entropy over every predicted position (all but the last)."""
        ids, inputs = self.document_batch(batch)
        labels = ids.masked_fill(inputs["position_ids"] == 0, IGNORE_INDEX) if inputs else ids  # as `lm_labels`
        head = architecture.plain_head(self.model)
        # a model compiled whole (`--compile.scope model`) fuses its own head and loss: call it as a whole
        if compat.is_compiled(self.model) or not (self.chunked_loss and head is not None):
            return self.model(input_ids=ids, labels=labels, **inputs).loss
        hidden = self.model.base_model(input_ids=ids, **inputs).last_hidden_state[:, :-1]
        return linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), head.weight, labels[:, 1:].reshape(-1), head.bias
        )

    def training_loss(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.lm_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_update(self, batch, batch_idx: int) -> None:
        predicted = self.lm_labels(batch)[:, 1:].ne(IGNORE_INDEX).sum()
        self.val_nll.update(self.lm_loss(batch), weight=predicted)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One row per prompt: `{"id", "prompt", "generation"}`, the generation holding the new tokens only."""
        sep = document_separator(self.tokenizer)
        # in the packed corpus every document but the first follows the separator: a prompt starts one the same
        # way; a model trained on documents kept apart saw each start at position 0
        start = [sep] if self.data.cross_document_attention else []
        ids = [[*start, *seq] for seq in self.tokenizer(batch["text"], add_special_tokens=False).input_ids]
        self.check_prompts(ids, batch, self.generation.max_new_tokens)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else sep
        inputs = self.pad_prompts(ids, pad, left=True)
        new = self.generate(batch, inputs, pad)[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return {
            "rows": [
                {"id": i, "prompt": prompt, "generation": text}
                for i, prompt, text in zip(batch["example_id"].tolist(), batch["text"], texts)
            ]
        }
