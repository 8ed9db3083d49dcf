"""T5's span corruption (encoder-decoder pretraining): drop ~15% of a block in short spans, ask for them back.

A raw block of `L` tokens gets exactly `round(L * noise_density)` noise tokens in `round(noise / mean_span)` spans
placed uniformly at random (T5's `random_spans_noise_mask`); each noise span becomes one sentinel in the input and
the target lists the sentinels, each followed by the tokens it replaced. Sentinels descend from the last id, as in
T5's vocabulary. Lengths depend on `L` alone (`span_lengths`: no padding); `data.seq_len` is `L`, and
`block_length_for` inverts the arithmetic (512-token inputs need `seq_len: 568`). Details: docs/design/objectives.md.
`prefix_lm_fraction` mixes in UL2's S-denoiser in the same format (a block's start, `<extra_id_0>`, and the rest as
the target), so the decoder also learns to write and end long text. `predict` fills the sentinels of a prompt.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import AutoModelForSeq2SeqLM, PretrainedConfig, PreTrainedTokenizerBase

from lightning_pretrain import architecture
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.pretraining import PretrainingModule, seeded_generator
from lightning_pretrain.objectives.prompts import describe_prompt
from lightning_pretrain.objectives.sentinels import sentinel_tokens, target_spans, with_sentinels

log = logging.getLogger(__name__)


class SpanLengths(NamedTuple):
    noise: int  # noise tokens per block
    spans: int  # noise spans per block (= sentinels used)
    inputs: int  # encoder length after corruption, EOS included
    targets: int  # decoder length, EOS included


def span_lengths(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> SpanLengths:
    """The fixed sizes of one corrupted block of `length` raw tokens (T5's `random_spans_noise_mask` arithmetic)."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max(int(round(noise / mean_noise_span_length)), 1)
    if spans > length - noise:  # every noise span needs a kept token before it
        raise InputError(
            f"a block of {length} tokens cannot hold {spans} noise spans around {length - noise} kept "
            f"tokens: lower noise_density or raise mean_noise_span_length"
        )
    return SpanLengths(noise, spans, length - noise + spans + 1, noise + spans + 1)


def block_length_for(inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> int:
    """The longest raw block whose corrupted input fits `inputs_length` tokens (HF's `compute_input_and_target_lengths`)."""
    length = 2
    while span_lengths(length + 1, noise_density, mean_noise_span_length).inputs <= inputs_length:
        length += 1
    return length


def random_segmentation(batch: int, items: int, segments: int, generator=None, device=None) -> torch.Tensor:
    """`(batch, segments)` positive lengths summing to `items`, every composition equally likely (T5's
    `_random_segmentation`: choose `segments - 1` of the `items - 1` gaps as cut points)."""
    if segments == 1:
        return torch.full((batch, 1), items, dtype=torch.long, device=device)
    order = torch.rand(batch, items - 1, generator=generator, device=device).argsort(-1)
    cut_after = order < segments - 1  # exactly segments-1 cut points per row, at uniformly random gaps
    segment = F.pad(cut_after, (1, 0)).long().cumsum(-1)
    return torch.zeros(batch, segments, dtype=torch.long, device=device).scatter_add_(
        1, segment, torch.ones_like(segment)
    )


def random_spans_noise_mask(
    batch: int,
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    generator=None,
    device=None,
) -> torch.Tensor:
    """`(batch, length)` bools: True on noise. Kept and noise spans alternate, starting with a kept one."""
    n = span_lengths(length, noise_density, mean_noise_span_length)
    noise = random_segmentation(batch, n.noise, n.spans, generator, device)
    kept = random_segmentation(batch, length - n.noise, n.spans, generator, device)
    starts = (
        torch.stack([kept, noise], -1).reshape(batch, -1).cumsum(-1)[:, :-1]
    )  # where each span after the first begins
    span_number = torch.zeros(batch, length, dtype=torch.long, device=device).scatter_(1, starts, 1).cumsum(-1)
    return span_number % 2 == 1


def replace_spans(ids: torch.Tensor, spans: torch.Tensor, sentinel_ids: torch.Tensor) -> torch.Tensor:
    """Each maximal run of True in `spans` becomes one token, `sentinel_ids[k]` for the k-th run of its row.

    Every row must hold the same number of runs and of True positions (the noise mask guarantees it), so the
    result is again a rectangle.
    """
    starts = spans & ~F.pad(spans[:, :-1], (1, 0))
    run = (starts.long().cumsum(-1) - 1).clamp(min=0)
    out = torch.where(starts, sentinel_ids[run], ids)
    return out[~spans | starts].view(ids.shape[0], -1)


def span_corrupt(
    blocks: torch.Tensor, noise_mask: torch.Tensor, sentinel_ids: torch.Tensor, eos_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(inputs, targets)`: noise spans -> sentinels in the input; kept spans -> sentinels in the target; EOS on both."""
    eos = torch.full((blocks.shape[0], 1), eos_id, dtype=blocks.dtype, device=blocks.device)
    inputs = torch.cat([replace_spans(blocks, noise_mask, sentinel_ids), eos], 1)
    targets = torch.cat([replace_spans(blocks, ~noise_mask, sentinel_ids), eos], 1)
    return inputs, targets


def prefix_lm(blocks: torch.Tensor, split: int, sentinel_id: int, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UL2's S-denoiser written as span corruption with one noise span, the whole suffix: `(inputs, targets)` =
    (the first `split` tokens, `<extra_id_0>`, EOS) and (`<extra_id_0>`, the remaining tokens, EOS)."""
    rows = blocks.shape[0]

    def column(v: int) -> torch.Tensor:
        return torch.full((rows, 1), v, dtype=blocks.dtype, device=blocks.device)

    return (
        torch.cat([blocks[:, :split], column(sentinel_id), column(eos_id)], 1),
        torch.cat([column(sentinel_id), blocks[:, split:], column(eos_id)], 1),
    )


class SpanCorruption(PretrainingModule):
    auto_class = AutoModelForSeq2SeqLM

    def __init__(
        self,
        noise_density: float = 0.15,
        mean_noise_span_length: float = 3.0,
        num_sentinels: int = 100,
        corruption_seed: int = 0,
        prefix_lm_fraction: float = 0.0,
        attn_implementation: str | None = None,
        **kwargs,
    ):
        """
        Args:
            noise_density: fraction of each raw block that is dropped and must be predicted (T5: 0.15).
            mean_noise_span_length: average length of a dropped span (T5: 3.0).
            num_sentinels: sentinel tokens `<extra_id_0..N-1>` available; a block needs one per noise span. The
                data's tokenizer needs an EOS token; sentinels it lacks are added to the model's copy (a pretrained
                model's embeddings grow to match) and saved with the export.
            corruption_seed: base seed of the noise masks; each batch's mask is a function of (seed, epoch, batch,
                rank), so a resumed run corrupts exactly like an uninterrupted one and validation never changes.
            prefix_lm_fraction: share of each batch's blocks trained as a prefix LM instead (UL2's S-denoiser: the
                first 25-75% of the block in, the rest out, one split per batch). Span corruption alone teaches the
                decoder only short sentinel-delimited fragments; continuations teach it to write on and to stop.
            attn_implementation: None (the architecture's default), 'sdpa' or 'eager'.
        """
        if not 0 < noise_density < 1 or mean_noise_span_length < 1:
            raise InputError("need 0 < noise_density < 1 and mean_noise_span_length >= 1")
        if not 0.0 <= prefix_lm_fraction <= 1.0:
            raise InputError(f"prefix_lm_fraction must be in [0, 1], got {prefix_lm_fraction}")
        self.num_sentinels = num_sentinels  # read by model_tokenizer, during the parent's __init__
        super().__init__(attn_implementation=attn_implementation, **kwargs)
        self.noise_density, self.mean_noise_span_length = noise_density, mean_noise_span_length
        self.corruption_seed, self.prefix_lm_fraction = corruption_seed, prefix_lm_fraction
        ids = self.tokenizer.convert_tokens_to_ids(sentinel_tokens(num_sentinels))
        self.register_buffer("sentinel_ids", torch.tensor(ids, dtype=torch.long), persistent=False)

    def model_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        # the sentinels are the model's vocabulary, not the data's: they never occur in the tokenized corpus
        if tokenizer.eos_token_id is None:
            raise InputError("span corruption needs a tokenizer with an EOS token (train 'unigram' or 'bpe')")
        return with_sentinels(tokenizer, self.num_sentinels)[0]

    def adapt_config(self, config: PretrainedConfig, tokenizer) -> None:
        # the decoder's start token (and BART's forced BOS/EOS) keeps its role, mapped onto this tokenizer's ids
        architecture.map_decoder_token_ids(config, tokenizer)

    def lengths(self, length: int) -> SpanLengths:
        n = span_lengths(length, self.noise_density, self.mean_noise_span_length)
        if n.spans > len(self.sentinel_ids):
            raise InputError(
                f"blocks of {length} tokens make {n.spans} noise spans but only {len(self.sentinel_ids)} "
                f"sentinels exist: raise num_sentinels or mean_noise_span_length, or lower seq_len"
            )
        return n

    def check_seq_len(self, seq_len: int) -> None:
        n = self.lengths(seq_len)
        limit = architecture.max_positions(self.model.config)
        if limit is not None and max(n.inputs, n.targets) > limit:
            raise InputError(
                f"seq_len={seq_len} gives {n.inputs}-token inputs, more than the model's {limit} "
                f"positions; lower --data.seq_len"
            )
        log.info(
            "span corruption: raw blocks of %d tokens -> inputs of %d, targets of %d (%d noise tokens in %d spans)",
            seq_len,
            n.inputs,
            n.targets,
            n.noise,
            n.spans,
        )

    def model_input_shape(self, batch: torch.Tensor) -> tuple[tuple[int, int], int]:
        """What the model sees of a raw batch, for the Throughput callback's FLOPs: (sequences, input length), target length."""
        if isinstance(batch, dict):  # predict's prompts: their encoded length, at most max_new_tokens generated
            return (
                len(batch["text"]),
                max(map(len, self.tokenizer(batch["text"]).input_ids)),
            ), self.generation.max_new_tokens
        n = self.lengths(batch.shape[1])
        return (batch.shape[0], n.inputs), n.targets

    def corrupt(self, batch: torch.Tensor, *stream: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`[(inputs, targets), ...]`: span corruption of the batch's first rows, the prefix LM of the last
        `prefix_lm_fraction` of them, from a generator seeded by (corruption_seed, *stream, rank): reproducible,
        resumable."""
        self.lengths(batch.shape[1])
        g = seeded_generator(batch.device, self.corruption_seed, *stream, self.global_rank)
        rows, length = batch.shape
        prefix_rows = round(rows * self.prefix_lm_fraction)
        parts = []
        if rows - prefix_rows:
            mask = random_spans_noise_mask(
                rows - prefix_rows,
                length,
                self.noise_density,
                self.mean_noise_span_length,
                generator=g,
                device=batch.device,
            )
            parts.append(
                span_corrupt(batch[: rows - prefix_rows], mask, self.sentinel_ids, self.tokenizer.eos_token_id)
            )
        if prefix_rows:
            split = int(torch.randint(length // 4, 3 * length // 4 + 1, (1,), generator=g, device=batch.device))
            parts.append(
                prefix_lm(batch[rows - prefix_rows :], split, int(self.sentinel_ids[0]), self.tokenizer.eos_token_id)
            )
        return parts

    def nll(self, batch: torch.Tensor, *stream: int) -> tuple[torch.Tensor, int]:
        """(mean NLL per target token over every part of the batch, number of target tokens)."""
        total, count = 0.0, 0
        for inputs, targets in self.corrupt(batch, *stream):
            total = total + self.model(input_ids=inputs, labels=targets).loss * targets.numel()
            count += targets.numel()
        return total / count, count

    def training_loss(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.nll(batch, self.current_epoch, batch_idx)[0]
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_update(self, batch: torch.Tensor, batch_idx: int) -> None:
        loss, count = self.nll(batch, -1, batch_idx)  # epoch -1: never a training batch's seed
        self.val_nll.update(loss, weight=count)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """One row per prompt: `{"id", "text", "spans", "filled"}`: the text generated for each sentinel of the
        prompt (empty when the model skipped it), and the prompt with the sentinels replaced by their spans."""
        tok = self.tokenizer
        ids = tok(batch["text"]).input_ids  # the model's tokenizer: it knows the sentinels and appends EOS
        names = dict(zip(self.sentinel_ids.tolist(), sentinel_tokens(len(self.sentinel_ids))))
        asked = [[names[t] for t in seq if t in names] for seq in ids]
        for sentinels, i, text in zip(asked, batch["example_id"].tolist(), batch["text"]):
            if not sentinels:
                raise InputError(
                    f"{describe_prompt(i, text)} holds no sentinel to fill; write <extra_id_0>, "
                    f"<extra_id_1>, ... where the model should put back the missing text"
                )
        self.check_prompts(ids, batch)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = self.generate(batch, self.pad_prompts(ids, pad), pad)
        rows = []
        for seq, sentinels, i, text in zip(out.tolist(), asked, batch["example_id"].tolist(), batch["text"]):
            found = target_spans(seq[1:], names, {tok.eos_token_id, pad})  # after the decoder's start token
            spans = {name: tok.decode(found.get(name, []), skip_special_tokens=True).strip() for name in sentinels}
            filled = text
            for name, span in spans.items():
                filled = filled.replace(name, span)
            rows.append({"id": i, "text": text, "spans": spans, "filled": filled})
        return {"rows": rows}
