"""`CausalSFT`: supervised fine-tuning of a decoder-only model (GPT-2, Llama, any `AutoModelForCausalLM`) on
prompt/completion pairs, with the loss on completion tokens only and generation from the prompt for val/test/predict.

Packed rows hold several examples; none attends to another (`document_attention`: `position_ids` restart at 0 per
example, attention is block-diagonal causal). tests/test_causal_sft.py proves it: a packed row's per-example losses
equal each example run alone.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lightning_pretrain import architecture, compat
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.document_attention import document_inputs, one_row
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.generative import GenerativeFineTune


def packed_inputs(batch: dict, attn_implementation: str | None, dtype: torch.dtype = torch.float32) -> dict:
    """The model's keyword arguments for a (possibly packed) training or teacher-forced batch: its examples kept
    apart by `document_attention` (unpacked rows too: their position ids then count the real tokens)."""
    position_ids = batch.get("position_ids")
    if position_ids is None:  # unpacked, right- or left-padded rows: positions count the real tokens
        position_ids = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    ids = batch["input_ids"].reshape(1, -1) if one_row(attn_implementation) else batch["input_ids"]
    return {
        "input_ids": ids,
        "use_cache": False,
        **document_inputs(
            position_ids, attn_implementation, causal=True, dtype=dtype, attention_mask=batch["attention_mask"]
        ),
    }


def completion_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token NLL, number of predicted tokens) over the labels that are not -100, with the causal-LM
    shift (the logits at t predict the label at t + 1)."""
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, (targets != IGNORE_INDEX).sum()


class CausalSFT(GenerativeFineTune):
    """Takes the options of `GenerativeFineTune`; `metrics` default to exact_match (of the generated completion)."""

    auto_class = AutoModelForCausalLM
    task = "sft"
    default_metrics = ("exact_match",)

    def check_config(self, config: PretrainedConfig, name: str) -> None:
        if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise InputError(
                f"'{name}' is a {config.model_type} model without a causal language-model head: CausalSFT "
                f"fine-tunes decoder-only models (GPT-2, Llama, ...); fine-tune an encoder-decoder "
                f"(T5, BART) with Seq2SeqFineTune"
            )

    def check_model(self, model) -> None:
        # An encoder with a causal-LM class (BERT, RoBERTa without `is_decoder`) attends to later tokens: it would
        # learn each completion token from the token itself. Asked of the model, not of a list of architectures:
        # changing the last token must leave the earlier positions' logits unchanged.
        ids = torch.arange(1, 5).remainder(model.get_input_embeddings().num_embeddings).unsqueeze(0)
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % model.get_input_embeddings().num_embeddings
        training = model.training
        model.eval()  # dropout off
        try:
            with torch.no_grad():
                a, b = model(input_ids=ids).logits[0, :-1], model(input_ids=changed).logits[0, :-1]
        finally:
            model.train(training)
        if not torch.allclose(a.float(), b.float(), atol=1e-4, rtol=1e-4):
            raise InputError(
                f"{type(model).__name__} attends to later tokens (an encoder loaded as a causal LM?): "
                f"CausalSFT needs a decoder-only model (or set is_decoder: true in its config)"
            )

    def setup(self, stage: str) -> None:
        """Refuse the longest prompt this stage continues (with the tokens to generate) when it does not fit the
        model's positions: before the first step, not at the first validation after training began."""
        evaluated = {"fit": "val", "validate": "val", "test": "test", "predict": "predict"}.get(stage)
        if stage == "fit" and not self.trainer.limit_val_batches:
            evaluated = None  # validation is off: no prompt is continued
        longest = (self.data.longest_prompts or {}).get(evaluated)
        limit, new = architecture.max_positions(self.model.config), self.generation.max_new_tokens
        if limit is not None and longest is not None and longest + new > limit:
            raise InputError(
                f"the longest {evaluated} prompt is {longest} tokens, plus {new} new ones: more than the model's "
                f"{limit} positions; shorten the prompts or lower --model.init_args.generation.max_new_tokens"
            )

    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = packed_inputs(batch, compat.attn_implementation(self.model.config), self.model.dtype)
        # (rows laid end to end for varlen kernels: each example's first label is -100, so none crosses a row)
        return completion_nll(self.model(**inputs).logits, batch["labels"].reshape(inputs["input_ids"].shape))

    def generate_batch(self, batch: dict) -> list[str]:
        """Continue the left-padded prompts; only the new tokens are decoded (the completion)."""
        prompts = batch["prompt_input_ids"]
        self.check_prompts(batch)
        out = self.model.generate(
            input_ids=prompts, attention_mask=batch["prompt_attention_mask"], **self.generation.kwargs(self.tokenizer)
        )
        return self.tokenizer.batch_decode(out[:, prompts.shape[1] :], skip_special_tokens=True)

    def check_prompts(self, batch: dict) -> None:
        """Refuse a prompt that, with the tokens to generate, does not fit the model's positions (a predict file's
        prompts are not cut to --data.max_length)."""
        limit, new = architecture.max_positions(self.model.config), self.generation.max_new_tokens
        if limit is None or batch["prompt_input_ids"].shape[1] + new <= limit:
            return
        lengths = batch["prompt_attention_mask"].sum(-1).tolist()
        for n, i, text in zip(lengths, batch["example_id"].tolist(), batch["prompt"]):
            if n + new > limit:
                shown = text if len(text) <= 40 else text[:40] + "…"
                raise InputError(
                    f"prompt {i} ({shown!r}) is {n} tokens, plus {new} new ones: more than the model's "
                    f"{limit} positions; shorten it or lower --model.init_args.generation.max_new_tokens"
                )

    def sources(self, batch: dict) -> list[str]:
        return batch["prompt"]

    def references(self, batch: dict) -> list[str]:
        return batch["completion"]

    def prediction_rows(self, batch: dict, generations: list[str]) -> list[dict]:
        return [
            {"id": i, "prompt": p, "generation": g}
            for i, p, g in zip(batch["example_id"].tolist(), batch["prompt"], generations, strict=True)
        ]
