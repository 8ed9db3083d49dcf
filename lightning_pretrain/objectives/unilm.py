"""UniLM (Dong et al. 2019): one bidirectional Transformer pretrained under self-attention masks mixed in a batch:
bidirectional (every token sees every token), left-to-right (a token sees itself and what precedes it),
right-to-left (its mirror) and sequence-to-sequence (the source sees the source; the target sees the source and its
own tokens up to itself). Every kind predicts masked tokens (BERT's 80/10/10, `masked_lm.mask_tokens`); a seq2seq
example masks its target only, document separators included, so the model learns where a target ends. The masks
are pure functions of (kind, source length), in unilm_masks.py; the model gets them as 4D masks (sdpa: boolean,
eager: additive). Training draws a kind per example; validation scores every block under each kind
(`val/loss_<kind>`). `predict` writes a target for each prompt (the source): append [MASK], predict it under the
seq2seq mask, put it in, repeat (greedy) until the separator or `generation.max_new_tokens`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from transformers import AutoModelForMaskedLM, PretrainedConfig

from lightning_pretrain import architecture, compat
from lightning_pretrain.data.contract import IGNORE_INDEX
from lightning_pretrain.data.tokenizers import document_separator
from lightning_pretrain.document_attention import EXPLICIT_MASK
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.masked_lm import mask_tokens
from lightning_pretrain.objectives.pretraining import PretrainingModule, seeded_generator
from lightning_pretrain.objectives.unilm_masks import (
    KINDS,
    SEQ2SEQ,
    attention_masks,
    check_model_type,
    model_mask,
    segment_ids,
)

PAPER_MIX = {"bidirectional": 1 / 3, "seq2seq": 1 / 3, "left_to_right": 1 / 6, "right_to_left": 1 / 6}


def mix_probabilities(mix: dict[str, float]) -> torch.Tensor:
    """The probability of each of KINDS (in that order) from `{kind: weight}`, normalised; a kind left out: 0."""
    unknown = set(mix) - set(KINDS)
    if unknown or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise InputError(f"mix takes weights >= 0 (not all 0) of {', '.join(KINDS)}; got {dict(mix)}")
    weights = torch.tensor([float(mix.get(k, 0.0)) for k in KINDS])
    return weights / weights.sum()


def draw_kinds(n: int, probabilities: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[n] kind ids, each drawn independently with `probabilities` (per example, so one batch mixes the kinds)."""
    return torch.multinomial(probabilities, n, replacement=True, generator=generator)


def draw_source_lengths(
    input_ids: torch.Tensor, separator: int, at_documents: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B] where each row's seq2seq source ends (its length, 1..L-1, so both segments hold a token): a uniform
    point, or with `at_documents` just after one of the row's separators (uniformly among those before the last
    token; a row without one falls back to its uniform point)."""
    rows, length = input_ids.shape
    anywhere = torch.randint(1, length, (rows,), device=input_ids.device, generator=generator)
    ends = input_ids[:, :-1] == separator
    score = torch.rand(ends.shape, device=input_ids.device, generator=generator).masked_fill(~ends, -1.0)
    return torch.where(ends.any(1) & at_documents, score.argmax(1) + 1, anywhere)


def unilm_corrupt(
    input_ids: torch.Tensor,
    kinds: torch.Tensor,
    source_lengths: torch.Tensor,
    mask_token_id: int,
    special_ids: torch.Tensor,
    replacement_ids: torch.Tensor,
    separator: int,
    mlm_probability: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, labels)` as `masked_lm.mask_tokens` (labels IGNORE_INDEX where nothing is predicted): a bidirectional or
    unidirectional row selects among its non-special tokens, a seq2seq row among its target's tokens, separators
    included, and keeps its source intact: as UniLM's seq2seq fine-tuning does (masking the target's [EOS] teaches
    generation to stop); its pretraining masked both segments."""
    inputs, labels = mask_tokens(
        input_ids,
        mask_token_id,
        special_ids[special_ids != separator],
        replacement_ids,
        mlm_probability,
        mask_fraction,
        random_fraction,
        generator=generator,
    )
    target = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] >= source_lengths[:, None]
    seq2seq = kinds[:, None] == SEQ2SEQ
    keep = torch.where(seq2seq, target, input_ids != separator)
    return torch.where(keep, inputs, input_ids), torch.where(keep, labels, IGNORE_INDEX)


class UniLM(PretrainingModule):
    auto_class = AutoModelForMaskedLM

    def __init__(
        self,
        mix: dict[str, float] | None = None,
        seq2seq_split: Literal["random", "document"] = "random",
        mlm_probability: float = 0.15,
        mask_fraction: float = 0.8,
        random_fraction: float = 0.1,
        mask_seed: int = 0,
        **kwargs,
    ):
        """
        Args:
            mix: weight of each attention mask kind per example, normalised: `bidirectional`, `left_to_right`,
                `right_to_left`, `seq2seq` (a kind left out is never drawn). Default the paper's: 1/3
                bidirectional, 1/3 seq2seq, 1/6 left-to-right, 1/6 right-to-left. Validation scores each block under
                every kind of positive weight (`val/loss_<kind>`; `val/loss` weighs their tokens by the mix).
            seq2seq_split: where a seq2seq example's block splits into source and target: 'random' (a uniform
                point) or 'document' (just after a document separator drawn among the block's; a uniform point in
                a block without one). The target gets token type 1 where the model has two segment embeddings.
            mlm_probability: probability that a token is selected for prediction (the whole block in the
                bidirectional and unidirectional kinds, the target in seq2seq).
            mask_fraction: share of selected tokens replaced by the mask token (BERT, UniLM: 0.8).
            random_fraction: share of selected tokens replaced by a random token (0.1); the rest stay.
            mask_seed: base seed of the kinds, splits and masks: each batch's draws are a function of (mask_seed,
                epoch, batch, rank), so a resumed run draws what an uninterrupted one would, and validation draws
                the same every time.
        """
        if not (
            0 < mlm_probability < 1
            and mask_fraction >= 0
            and random_fraction >= 0
            and mask_fraction + random_fraction <= 1
        ):
            raise InputError("need 0 < mlm_probability < 1 and mask_fraction + random_fraction <= 1 (both >= 0)")
        probabilities = mix_probabilities(PAPER_MIX if mix is None else mix)
        if isinstance(kwargs.get("model"), PretrainedConfig):  # refused before AutoModelForMaskedLM refuses a GPT-2
            check_model_type(kwargs["model"])
        super().__init__(**kwargs)
        config = self.model.config
        check_model_type(config)
        if compat.attn_implementation(config) not in EXPLICIT_MASK:
            raise InputError(
                f"UniLM's attention masks need attn_implementation 'sdpa' or 'eager', not "
                f"{compat.attn_implementation(config)!r}"
            )
        tokenizer = self.tokenizer
        if tokenizer.mask_token_id is None:
            raise InputError(
                "UniLM needs a tokenizer with a mask token (train one with 'wordpiece', 'bpe' or 'unigram')"
            )
        self.seq2seq_split, self.mask_seed = seq2seq_split, mask_seed
        self.mlm_probability, self.mask_fraction, self.random_fraction = mlm_probability, mask_fraction, random_fraction
        self.separator = document_separator(tokenizer)
        specials = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.register_buffer("mix", probabilities, persistent=False)
        self.register_buffer("special_ids", specials, persistent=False)
        self.register_buffer("replacement_ids", vocab[~torch.isin(vocab, specials)], persistent=False)
        self.kind_nll = torch.nn.ModuleDict({k: MeanMetric() for k in KINDS})  # validation/test, per kind

    @property
    def mlm_head(self) -> torch.nn.Module:
        return architecture.mlm_head(self.model)

    def encode(self, input_ids: torch.Tensor, kinds: torch.Tensor, source_lengths: torch.Tensor) -> torch.Tensor:
        """The encoder's last hidden states [B,L,H] with each row attending under its kind's mask."""
        length, config = input_ids.shape[1], self.model.config
        inputs = {
            "attention_mask": model_mask(
                attention_masks(kinds, source_lengths, length), compat.attn_implementation(config), self.model.dtype
            )
        }
        if getattr(config, "type_vocab_size", 0) >= 2:  # RoBERTa has one segment embedding: no segment ids
            inputs["token_type_ids"] = segment_ids(kinds, source_lengths, length)
        return self.model.base_model(input_ids=input_ids, **inputs).last_hidden_state

    def masked_nll(
        self, batch: torch.Tensor, *stream: int, kind: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(nll, kind)` of every predicted token of a block batch, its draws seeded by (mask_seed, *stream, rank);
        `kind`: every row under that kind (the other draws unchanged, so each kind masks the same positions)."""
        g = seeded_generator(batch.device, self.mask_seed, *stream, self.global_rank)
        kinds = draw_kinds(len(batch), self.mix, g)
        if kind is not None:
            kinds = torch.full_like(kinds, kind)
        sources = draw_source_lengths(batch, self.separator, self.seq2seq_split == "document", g)
        inputs, labels = unilm_corrupt(
            batch,
            kinds,
            sources,
            self.tokenizer.mask_token_id,
            self.special_ids,
            self.replacement_ids,
            self.separator,
            self.mlm_probability,
            self.mask_fraction,
            self.random_fraction,
            generator=g,
        )
        selected = labels != IGNORE_INDEX
        # the vocabulary head at the predicted positions only, as MaskedLM does
        logits = self.mlm_head(self.encode(inputs, kinds, sources)[selected])
        nll = F.cross_entropy(logits.float(), labels[selected], reduction="none")
        return nll, kinds[:, None].expand_as(labels)[selected]

    def training_loss(self, batch, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, dict):  # only documents kept apart come as a dict, and `setup` refuses them
            batch = batch["input_ids"]
        loss = self.masked_nll(batch, self.current_epoch, batch_idx)[0].mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_update(self, batch, batch_idx: int) -> None:
        """Every block under each kind of the mix: `val/loss_<kind>` on the same blocks (and, bar seq2seq's source,
        the same masked positions); `val/loss` their token mean weighted by the mix (the training loss's mean)."""
        if isinstance(batch, dict):
            batch = batch["input_ids"]
        for k, name in enumerate(KINDS):
            if self.mix[k] > 0:
                nll = self.masked_nll(batch, -1, batch_idx, kind=k)[0]  # epoch -1: never a training batch's seed
                mean = nll.sum() / max(len(nll), 1)
                self.kind_nll[name].update(mean, weight=len(nll))
                self.val_nll.update(mean, weight=len(nll) * self.mix[k])

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_kinds("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_kinds("test")

    def _log_kinds(self, prefix: str) -> None:
        """`{prefix}/loss_<kind>`: each kind's token-weighted NLL (the kinds of the mix)."""
        for name, metric in self.kind_nll.items():
            if metric.update_count:
                self.log(f"{prefix}/loss_{name}", metric.compute())  # synchronised across ranks by torchmetrics
                metric.reset()

    # -- predict ------------------------------------------------------------------------------------------------
    def on_predict_start(self) -> None:
        super().on_predict_start()
        if self.generation.do_sample or self.generation.num_beams != 1:
            raise InputError(
                "UniLM's predict decodes greedily, one [MASK] at a time: drop generation.do_sample "
                "and generation.num_beams"
            )

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One row per prompt: `{"id", "prompt", "generation"}`, the generation holding the new tokens only."""
        tok, limit = self.tokenizer, self.generation.max_new_tokens
        # in the packed blocks a document follows the separator: a prompt starts one the same way
        sources = [[self.separator, *s] for s in tok(batch["text"], add_special_tokens=False).input_ids]
        self.check_prompts(sources, batch, limit)
        # a label is never a special token other than the separator: the model never learnt to predict them
        banned = self.special_ids[self.special_ids != self.separator]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.mask_token_id
        targets: list[list[int]] = [[] for _ in sources]
        live = list(range(len(sources)))  # prompts still generating
        while live:
            rows = [sources[r] + targets[r] + [tok.mask_token_id] for r in live]
            ids = self.pad_prompts(rows, pad)["input_ids"]  # right padding: the seq2seq mask hides it from the rows
            kinds = torch.full((len(live),), SEQ2SEQ, device=self.device)
            hidden = self.encode(ids, kinds, torch.tensor([len(sources[r]) for r in live], device=self.device))
            last = torch.tensor([len(row) - 1 for row in rows], device=self.device)
            logits = self.mlm_head(hidden[torch.arange(len(live), device=self.device), last]).float()
            logits[:, banned] = float("-inf")
            for r, token in zip(list(live), logits.argmax(-1).tolist()):
                if token == self.separator:
                    live.remove(r)
                    continue
                targets[r].append(token)
                if len(targets[r]) == limit:
                    live.remove(r)
        texts = tok.batch_decode(targets, skip_special_tokens=True)
        return {
            "rows": [
                {"id": i, "prompt": prompt, "generation": text}
                for i, prompt, text in zip(batch["example_id"].tolist(), batch["text"], texts)
            ]
        }
