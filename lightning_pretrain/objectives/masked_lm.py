"""Masked language modelling (BERT, RoBERTa, ...): corrupt ~15% of the tokens and predict the originals.

`mask_tokens` is BERT's corruption as a pure function: each non-special token is selected with probability
`mlm_probability`; of the selected, `mask_fraction` become [MASK], `random_fraction` a random non-special token,
the rest stay. The loss and perplexity count the selected positions only. Whole-word masking draws the same
decisions per word, with word boundaries read from the tokenizer family (word_boundaries.py: WordPiece `##`,
byte-level BPE `Ġ`, SentencePiece `▁`): docs/design/objectives.md. SpanBERT's span masking and boundary
objective: span_masking.py. `predict` lists the `top_k` likeliest tokens at each mask token of a prompt (encoded
with the tokenizer's own template, as `pipeline("fill-mask")` does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM

from lightning_pretrain import architecture
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.pretraining import PretrainingModule, seeded_generator
from lightning_pretrain.objectives.prompts import describe_prompt
from lightning_pretrain.objectives.span_masking import SpanBoundaryHead, span_mask_tokens
from lightning_pretrain.objectives.word_boundaries import word_boundaries, word_index


def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    special_ids: torch.Tensor,
    replacement_ids: torch.Tensor,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
    word_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(inputs, labels)`: corrupted ids, and the original ids at selected positions (IGNORE_INDEX elsewhere).

    `special_ids` are never selected; random replacements are drawn uniformly from `replacement_ids`.
    `word_ids` (same shape, from `word_index`): positions sharing an id form one word and share every decision.
    """
    shape, device = input_ids.shape, input_ids.device
    selectable = ~torch.isin(input_ids, special_ids)
    # one uniform draw per position (or per word: the draw at the word's index) selects, a second one splits the
    # selected into [MASK] / random / unchanged
    u_select = torch.rand(shape, device=device, generator=generator)
    u = torch.rand(shape, device=device, generator=generator)
    if word_ids is not None:
        u_select, u = u_select.gather(-1, word_ids), u.gather(-1, word_ids)
    selected = (u_select < mlm_probability) & selectable
    labels = torch.where(selected, input_ids, IGNORE_INDEX)
    to_mask = selected & (u < mask_fraction)
    to_random = selected & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
    random_tokens = replacement_ids[torch.randint(len(replacement_ids), shape, device=device, generator=generator)]
    inputs = torch.where(to_mask, mask_token_id, input_ids)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


class MaskedLM(PretrainingModule):
    auto_class = AutoModelForMaskedLM
    document_masking = True
    predict_options = (*PretrainingModule.predict_options, "top_k")

    def __init__(
        self,
        mlm_probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        mask_seed: int = 0,
        whole_word_mask: bool = False,
        span_mask: bool = False,
        span_p: float = 0.2,
        max_span_words: int = 10,
        sbo: bool = False,
        top_k: int = 5,
        **kwargs,
    ):
        """
        Args:
            mlm_probability: probability that a non-special token is selected for prediction.
            mask_fraction: share of selected tokens replaced by the mask token (BERT: 0.8).
            random_fraction: share of selected tokens replaced by a random token (BERT: 0.1); the rest stay.
            mask_seed: base seed of the masking; each batch's mask is a function of (mask_seed, epoch, batch,
                rank), so a resumed run draws the same masks as an uninterrupted one and validation masks are
                identical every epoch.
            whole_word_mask: select words instead of tokens (at `mlm_probability`), predict all pieces of a selected
                word, and draw the mask/random/keep choice once per word. Works with WordPiece, byte-level BPE and
                SentencePiece tokenizers.
            span_mask: SpanBERT's masking: contiguous spans of whole words (whatever `whole_word_mask` says)
                until `mlm_probability` of the tokens are masked, the mask/random/keep choice drawn once per span.
            span_p: span lengths in words follow a geometric distribution with this p (SpanBERT: 0.2) ...
            max_span_words: ... restricted to 1..max_span_words (SpanBERT: 10; mean 3.8 words).
            sbo: add SpanBERT's span-boundary objective (needs `span_mask`): predict each masked token also from
                its span's two boundary tokens and its offset in the span; loss = MLM + SBO. The SBO head shares
                the MLM output layer, trains and is checkpointed with the model, and is not exported to `hf/`.
            top_k: candidates `predict` lists for each mask token, with their probabilities.
        """
        if (
            not 0 < mlm_probability < 1
            or mask_fraction < 0
            or random_fraction < 0
            or mask_fraction + random_fraction > 1
        ):
            raise InputError("need 0 < mlm_probability < 1 and mask_fraction + random_fraction <= 1 (both >= 0)")
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        super().__init__(**kwargs)
        tokenizer = self.tokenizer
        if tokenizer.mask_token_id is None:
            raise InputError(
                "masked LM needs a tokenizer with a mask token (train one with 'wordpiece', 'bpe' or 'unigram')"
            )
        self.mlm_probability, self.mask_fraction, self.random_fraction = mlm_probability, mask_fraction, random_fraction
        self.mask_seed, self.top_k = mask_seed, top_k
        specials = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.register_buffer("special_ids", specials, persistent=False)
        self.register_buffer("replacement_ids", vocab[~torch.isin(vocab, specials)], persistent=False)
        if span_mask and not (0 < span_p <= 1 and max_span_words >= 1):
            raise InputError(
                f"span masking needs 0 < span_p <= 1 and max_span_words >= 1, got span_p={span_p}, "
                f"max_span_words={max_span_words}"
            )
        if sbo and not span_mask:
            raise InputError("sbo (span-boundary objective) predicts spans: set span_mask true as well")
        if sbo and (type(self).training_loss is not MaskedLM.training_loss or self.mlm_head is None):
            raise InputError(
                f"sbo is implemented for MaskedLM on BERT-like models (a `cls` / `lm_head`), not "
                f"{type(self).__name__} with {type(self.model).__name__}"
            )
        self.whole_word_mask, self.span_mask, self.span_p, self.max_span_words = (
            whole_word_mask,
            span_mask,
            span_p,
            max_span_words,
        )
        # outside `self.model`: trained and checkpointed, never in the HF export
        self.sbo_head = (
            SpanBoundaryHead(
                self.model.config.hidden_size,
                architecture.max_positions(self.model.config) or 512,
                getattr(self.model.config, "layer_norm_eps", 1e-12),
            )
            if sbo
            else None
        )
        if whole_word_mask or span_mask:
            begins, joinable = word_boundaries(tokenizer)
            self.register_buffer("word_begins", begins, persistent=False)
            self.register_buffer("word_joinable", joinable, persistent=False)

    @property
    def mlm_head(self) -> torch.nn.Module | None:
        # applying the vocabulary head to the masked positions only skips ~85% of the output projection, often
        # the largest matmul of a small model
        return architecture.mlm_head(self.model)

    def corrupt(self, batch: torch.Tensor, *stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask `batch` with a generator seeded by (mask_seed, *stream, rank): reproducible, and resumable exactly."""
        g = seeded_generator(batch.device, self.mask_seed, *stream, self.global_rank)
        by_word = self.whole_word_mask or self.span_mask
        words = word_index(batch, self.word_begins, self.word_joinable) if by_word else None
        if self.span_mask:
            return span_mask_tokens(
                batch,
                self.tokenizer.mask_token_id,
                self.special_ids,
                self.replacement_ids,
                words,
                self.mlm_probability,
                self.mask_fraction,
                self.random_fraction,
                self.span_p,
                self.max_span_words,
                generator=g,
            )
        return mask_tokens(
            batch,
            self.tokenizer.mask_token_id,
            self.special_ids,
            self.replacement_ids,
            self.mlm_probability,
            self.mask_fraction,
            self.random_fraction,
            generator=g,
            word_ids=words,
        )

    def mlm_loss(self, inputs: torch.Tensor, labels: torch.Tensor, model_inputs: dict | None = None) -> torch.Tensor:
        """Mean cross-entropy over the selected positions (equal to the HF model's `labels=` loss)."""
        return self.mlm_and_sbo_loss(inputs, labels, with_sbo=False, model_inputs=model_inputs)[0]

    def mlm_and_sbo_loss(
        self, inputs: torch.Tensor, labels: torch.Tensor, with_sbo: bool = True, model_inputs: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(MLM loss, SBO loss or None)` from one encoder pass, both means over the selected positions;
        `model_inputs`: the position ids and mask of documents kept apart (`document_batch`)."""
        model_inputs = model_inputs or {}
        if self.mlm_head is None:  # an architecture whose head we do not know: let HF compute every logit
            return self.model(input_ids=inputs, labels=labels, **model_inputs).loss, None
        hidden = self.model.base_model(input_ids=inputs, **model_inputs).last_hidden_state
        selected = labels != IGNORE_INDEX
        logits = self.mlm_head(hidden[selected])
        mlm = F.cross_entropy(logits.float(), labels[selected])
        if self.sbo_head is None or not with_sbo:
            return mlm, None
        sbo_logits = self.model.get_output_embeddings()(self.sbo_head(hidden, labels))  # the shared decoder
        return mlm, F.cross_entropy(sbo_logits.float(), labels[selected])

    def training_loss(self, batch, batch_idx: int) -> torch.Tensor:
        ids, model_inputs = self.document_batch(batch)
        inputs, labels = self.corrupt(ids, self.current_epoch, batch_idx)
        loss, sbo = self.mlm_and_sbo_loss(inputs, labels, model_inputs=model_inputs)
        if sbo is not None:
            self.log_dict({"train/mlm_loss": loss, "train/sbo_loss": sbo})
            loss = loss + sbo
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_update(self, batch, batch_idx: int) -> None:
        ids, model_inputs = self.document_batch(batch)
        inputs, labels = self.corrupt(ids, -1, batch_idx)  # epoch -1: never a training batch's seed
        self.val_nll.update(self.mlm_loss(inputs, labels, model_inputs), weight=(labels != IGNORE_INDEX).sum())

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One row per prompt: `{"id", "text", "masks", "filled"}`: for each mask token in order, the `top_k` tokens
        with their probabilities (softmax over the vocabulary), and the text with the likeliest ones put in."""
        tok = self.tokenizer
        ids = tok(batch["text"]).input_ids
        for seq, i, text in zip(ids, batch["example_id"].tolist(), batch["text"]):
            if tok.mask_token_id not in seq:
                raise InputError(
                    f"{describe_prompt(i, text)} holds no {tok.mask_token} to fill; write "
                    f"{tok.mask_token} where the model should guess a token"
                )
        self.check_prompts(ids, batch)
        inputs = self.pad_prompts(ids, tok.pad_token_id if tok.pad_token_id is not None else tok.mask_token_id)
        out = self.model(**inputs)
        # BertForPreTraining (SentencePairMLM) names its vocabulary logits differently
        logits = out.logits if getattr(out, "logits", None) is not None else out.prediction_logits
        is_mask = inputs["input_ids"] == tok.mask_token_id
        top = logits[is_mask].float().softmax(-1).topk(min(self.top_k, logits.shape[-1]))
        filled = torch.where(is_mask, logits.argmax(-1), inputs["input_ids"])
        rows, start = [], 0
        for r, (i, text) in enumerate(zip(batch["example_id"].tolist(), batch["text"])):
            n = int(is_mask[r].sum())
            masks = [
                [{"token": tok.decode([t]), "score": round(p, 6)} for t, p in zip(ids_, ps)]
                for ids_, ps in zip(top.indices[start : start + n].tolist(), top.values[start : start + n].tolist())
            ]
            start += n
            rows.append(
                {
                    "id": i,
                    "text": text,
                    "masks": masks,
                    "filled": tok.decode(filled[r][inputs["attention_mask"][r].bool()], skip_special_tokens=True),
                }
            )
        return {"rows": rows}
