"""`Seq2SeqFineTune`: text-to-text fine-tuning of an encoder-decoder (T5, BART, any `AutoModelForSeq2SeqLM`, or an
`EncoderDecoderModel` warm-started from two pretrained checkpoints) on `TextToText` data; validation generates and
scores (sacreBLEU, chrF, ROUGE, exact match), `predict` writes a generation per input (see `GenerativeFineTune`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel, PretrainedConfig, PreTrainedModel

from lightning_pretrain import architecture
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune.generative import GenerativeFineTune


class Seq2SeqFineTune(GenerativeFineTune):
    auto_class = AutoModelForSeq2SeqLM
    task = "text_to_text"

    def __init__(self, encoder: str | None = None, decoder: str | None = None, **kwargs):
        """
        Args:
            encoder: warm-start an `EncoderDecoderModel` (instead of `model`): a local directory / hub id whose
                encoder (e.g. BERT, or a run's `hf/` export) reads the source.
            decoder: with `encoder`: the checkpoint that becomes the decoder (cross-attention is added, freshly
                initialised, and it runs causally); the data's tokenizer must fit both.
        """
        if (encoder is None) != (decoder is None):
            raise InputError("warm-starting an encoder-decoder needs both --model.encoder and --model.decoder")
        self._warm_start = (encoder, decoder)  # read by build_model, which the base constructor calls
        super().__init__(**kwargs)

    # -- the model --------------------------------------------------------------------------------------------------
    def build_model(self, spec: PretrainedConfig | str | None, attn_implementation: str | None) -> PreTrainedModel:
        encoder, decoder = self._warm_start
        if encoder is None:
            return super().build_model(spec, attn_implementation)
        if spec is not None:
            raise InputError("give either --model.model or --model.encoder/--model.decoder, not both")
        try:
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(encoder, decoder, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise InputError(
                f"could not warm-start from encoder '{encoder}' and decoder '{decoder}': {str(e).splitlines()[0]}"
            ) from e
        tok = self.tokenizer
        # BERT-style tokenizers have no bos/eos: [CLS] starts the target and [SEP] ends it (HF's bert2bert recipe)
        start = next((i for i in (tok.bos_token_id, tok.cls_token_id, tok.pad_token_id) if i is not None), None)
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if start is None or eos is None or tok.pad_token_id is None:
            raise InputError("warm-starting an encoder-decoder needs a tokenizer with a pad token and an eos (or sep)")
        for config in (model.config, model.generation_config):
            config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = start, tok.pad_token_id, eos
        return model

    def check_config(self, config: PretrainedConfig, name: str) -> None:
        if not getattr(config, "is_encoder_decoder", False):
            raise InputError(
                f"'{name}' is a {config.model_type} model without an encoder-decoder: Seq2SeqFineTune "
                f"trains T5 / BART-style models (or warm-starts one with --model.encoder and "
                f"--model.decoder); fine-tune a decoder-only model with CausalSFT"
            )

    def adapt_config(self, config: PretrainedConfig) -> None:
        architecture.map_decoder_token_ids(config, self.tokenizer)

    # -- steps ------------------------------------------------------------------------------------------------------
    def forward_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        labels = batch["labels"]
        # the decoder's inputs are the labels shifted right behind the start token (what `labels=` would do,
        # without HF also computing its own mean loss)
        decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder_input_ids
        ).logits
        nll = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return nll, (labels != IGNORE_INDEX).sum()

    def generate_batch(self, batch: dict) -> list[str]:
        out = self.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            **self.generation.kwargs(self.tokenizer),
        )
        return self.tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=True)
