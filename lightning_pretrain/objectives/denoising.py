"""BART's denoising (encoder-decoder pretraining): corrupt a block, ask for the whole original back.

`denoise` is the corruption as a pure function of one raw block: sentence permutation (a sentence ends after a
token whose text ends in '.', '!' or '?', or after the EOS that separates packed documents; a share of the
sentences is shuffled), then text infilling (exactly `round(L * mask_ratio)` tokens in spans of Poisson(lambda)
lengths, each span -> ONE mask token, 0-length spans insert one), then optional token deletion. It returns the
record that inverts it. The encoder reads `<s> corrupted </s>` (padded per batch), the decoder `<s> original </s>`
(fixed length `seq_len + 2`). `predict` generates the reconstruction of a prompt holding `<mask>` tokens.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from tokenizers import processors
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedTokenizerBase

from lightning_pretrain import architecture
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.pretraining import PretrainingModule, seeded_generator

SENTENCE_END = (".", "!", "?")
WORD_MARKS = "▁Ġ"  # SentencePiece's and byte-level BPE's word-boundary symbols, not part of a token's text


class Corruption(NamedTuple):
    """What `denoise` did to one block: enough to put the original back from the corrupted row alone."""

    sentences: list[tuple[int, int]]  # (start, end) in the original block of each sentence, in the order used
    masks: list[int]  # position of each mask token in the corrupted row
    spans: list[list[int]]  # the tokens each mask token stands for, in row order (empty: an inserted mask)
    deleted: list[tuple[int, int]]  # (position in the permuted block, id) of each deleted token


def sentence_ends(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Per-vocabulary bools: True for EOS (the packed documents' separator) and for every non-special token whose
    text (without word-boundary marks) ends in '.', '!' or '?' ("." and "?!", but also a unigram piece "s.")."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ends = [
        i not in special and p is not None and p.strip(WORD_MARKS + " ").endswith(SENTENCE_END)
        for i, p in enumerate(pieces)
    ]
    ends[tokenizer.eos_token_id] = True
    return torch.tensor(ends, dtype=torch.bool)


def permute_sentences(ids: list[int], ends: list[bool], ratio: float, generator=None) -> list[tuple[int, int]]:
    """The sentences of `ids` as (start, end), in a new order: `ceil(n * ratio)` of the n sentences, chosen at
    random, trade places among themselves (fairseq's `permute_sentences`; ratio 1 shuffles them all)."""
    cuts = [i + 1 for i, end in enumerate(ends[:-1]) if end]
    bounds = [0, *cuts, len(ids)]
    sentences = list(zip(bounds[:-1], bounds[1:]))
    n = len(sentences)
    chosen_count = math.ceil(n * ratio)
    order = torch.arange(n)
    if chosen_count > 1:
        chosen = torch.randperm(n, generator=generator)[:chosen_count]
        order[chosen] = chosen[torch.randperm(chosen_count, generator=generator)]
    return [sentences[i] for i in order.tolist()]


def poisson_spans(budget: int, poisson_lambda: float, generator=None) -> list[int]:
    """Span lengths summing to exactly `budget`: Poisson(lambda) draws (0 included) until they reach it, the last
    one cut to fit (fairseq's rule). At most `budget` spans, so the corrupted row is never longer than the block."""
    if budget == 0:
        return []
    draws = torch.poisson(torch.full((budget,), float(poisson_lambda)), generator=generator).long()
    reached = (draws.cumsum(0) >= budget).nonzero()
    k = int(reached[0]) + 1 if len(reached) else budget
    lengths = draws[:k].tolist()
    lengths[-1] = budget - sum(lengths[:-1])  # >= 1: the draws before it fell short of the budget
    return lengths


def denoise(
    ids: torch.Tensor,
    mask_id: int,
    sentence_end: torch.Tensor | None = None,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
    permute_ratio: float = 1.0,
    delete_ratio: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Corruption]:
    """`(corrupted, record)` for one 1-D block (CPU). The spans are placed uniformly at random among the kept
    tokens, never overlapping: the row holds exactly one mask token per span. `sentence_end` (from
    `sentence_ends`) None: no permutation. `delete_ratio`: each token left unmasked is deleted with this chance."""
    x = ids.tolist()
    sentences = [(0, len(x))]
    if sentence_end is not None and permute_ratio > 0:
        sentences = permute_sentences(x, sentence_end[ids].tolist(), permute_ratio, generator)
        x = [t for s, e in sentences for t in x[s:e]]
    lengths = poisson_spans(min(round(len(x) * mask_ratio), len(x)), poisson_lambda, generator)
    units = len(x) - sum(lengths) + len(lengths)  # kept tokens and spans, in a random interleaving
    is_span = torch.zeros(units, dtype=torch.bool)
    is_span[torch.randperm(units, generator=generator)[: len(lengths)]] = True
    drop = (torch.rand(units, generator=generator) < delete_ratio).tolist() if delete_ratio > 0 else [False] * units
    out, masks, spans, deleted, pos, span = [], [], [], [], 0, iter(lengths)
    for unit_is_span, dropped in zip(is_span.tolist(), drop):
        if unit_is_span:
            n = next(span)
            masks.append(len(out))
            out.append(mask_id)
            spans.append(x[pos : pos + n])
            pos += n
        else:
            if dropped:
                deleted.append((pos, x[pos]))
            else:
                out.append(x[pos])
            pos += 1
    return torch.tensor(out, dtype=ids.dtype), Corruption(sentences, masks, spans, deleted)


def with_mask_and_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer itself when it has a mask token and encodes text as BART's does (`<s> text </s>`), else a
    copy that does: `<mask>` added as a special token (the corpus ids keep their meaning), the template set."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    want = [bos] * (bos is not None) + tokenizer("probe", add_special_tokens=False).input_ids + [eos]
    if tokenizer.mask_token_id is not None and tokenizer("probe").input_ids == want:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)  # the data module keeps its own
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": "<mask>"})
    specials = [(tokenizer.eos_token, eos)] + [(tokenizer.bos_token, bos)] * (bos is not None)
    start = f"{tokenizer.bos_token} " if bos is not None else ""
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start}$A {tokenizer.eos_token}",
        pair=f"{start}$A {tokenizer.eos_token} $B {tokenizer.eos_token}",
        special_tokens=specials,
    )
    return tokenizer


class Denoising(PretrainingModule):
    auto_class = AutoModelForSeq2SeqLM

    def __init__(
        self,
        mask_ratio: float = 0.3,
        poisson_lambda: float = 3.0,
        permute_ratio: float = 1.0,
        delete_ratio: float = 0.0,
        corruption_seed: int = 0,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        """
        Args:
            mask_ratio: share of each block's tokens hidden by text infilling (BART: 0.3); 0 turns infilling off.
            poisson_lambda: mean length of an infilled span; spans of length 0 insert a mask token (BART: 3).
            permute_ratio: share of each block's sentences shuffled among themselves (1: all, 0: no permutation).
            delete_ratio: chance that each token not masked is deleted as well (BART's token deletion; 0: off).
            corruption_seed: base seed of the corruption; each batch's is a function of (seed, epoch, batch,
                rank), so a resumed run corrupts exactly like an uninterrupted one and validation never changes.
            attn_implementation: None (the architecture's default), 'sdpa' or 'eager'.
        """
        if not 0 <= mask_ratio < 1 or poisson_lambda <= 0 or not 0 <= permute_ratio <= 1 or not 0 <= delete_ratio < 1:
            raise InputError(
                "need 0 <= mask_ratio < 1, poisson_lambda > 0, 0 <= permute_ratio <= 1 and 0 <= delete_ratio < 1"
            )
        super().__init__(attn_implementation=attn_implementation, **kwargs)
        self.mask_ratio, self.poisson_lambda = mask_ratio, poisson_lambda
        self.permute_ratio, self.delete_ratio = permute_ratio, delete_ratio
        self.corruption_seed = corruption_seed
        self.sentence_end = sentence_ends(self.tokenizer)  # CPU: the corruption runs there

    def model_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        if tokenizer.eos_token_id is None:
            raise InputError("BART denoising needs a tokenizer with an EOS token (train 'bpe' or 'unigram')")
        return with_mask_and_template(tokenizer)

    def adapt_config(self, config: PretrainedConfig, tokenizer) -> None:
        # BART's decoder starts with EOS and is forced to end with it: mapped onto this tokenizer's ids
        architecture.map_decoder_token_ids(config, tokenizer)

    def check_seq_len(self, seq_len: int) -> None:
        limit = architecture.max_positions(self.model.config)
        if limit is not None and seq_len + 2 > limit:
            raise InputError(
                f"seq_len={seq_len} gives {seq_len + 2}-token targets (<s> block </s>), more than the "
                f"model's {limit} positions; lower --data.seq_len to {limit - 2}"
            )

    def model_input_shape(self, batch: torch.Tensor) -> tuple[tuple[int, int], int]:
        """What the model sees, for the Throughput callback's FLOPs (inputs at most as long as the targets)."""
        if isinstance(batch, dict):
            return (
                len(batch["text"]),
                max(map(len, self.tokenizer(batch["text"]).input_ids)),
            ), self.generation.max_new_tokens
        return (batch.shape[0], batch.shape[1] + 2), batch.shape[1] + 2

    def corrupt(self, batch: torch.Tensor, *stream: int) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask` (corrupted rows, padded to the longest) and `labels` (the original
        blocks) for `batch`, drawn from a generator seeded by (corruption_seed, *stream, rank)."""
        tok, g = self.tokenizer, seeded_generator(torch.device("cpu"), self.corruption_seed, *stream, self.global_rank)
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        blocks = batch.cpu()
        rows = [
            [
                *bos,
                *denoise(
                    b,
                    tok.mask_token_id,
                    self.sentence_end,
                    self.mask_ratio,
                    self.poisson_lambda,
                    self.permute_ratio,
                    self.delete_ratio,
                    g,
                )[0].tolist(),
                tok.eos_token_id,
            ]
            for b in blocks
        ]
        inputs = self.pad_prompts(rows, pad)  # right-padded, on the model's device
        labels = torch.tensor([[*bos, *b, tok.eos_token_id] for b in blocks.tolist()], device=self.device)
        return {**inputs, "labels": labels}

    def training_loss(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model(**self.corrupt(batch, self.current_epoch, batch_idx)).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_update(self, batch: torch.Tensor, batch_idx: int) -> None:
        inputs = self.corrupt(batch, -1, batch_idx)  # epoch -1: never a training batch's seed
        self.val_nll.update(self.model(**inputs).loss, weight=inputs["labels"].numel())

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One row per prompt: `{"id", "text", "filled"}`, the model's reconstruction of the prompt, whose
        `<mask>` tokens stand for missing text of any length (sentences may also come in any order)."""
        ids = self.tokenizer(batch["text"]).input_ids  # the model's tokenizer: `<s> text </s>`, as in training
        self.check_prompts(ids, batch)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = self.generate(batch, self.pad_prompts(ids, pad), pad)
        texts = tok.batch_decode(out, skip_special_tokens=True)
        return {
            "rows": [
                {"id": i, "text": text, "filled": filled.strip()}
                for i, text, filled in zip(batch["example_id"].tolist(), batch["text"], texts)
            ]
        }
