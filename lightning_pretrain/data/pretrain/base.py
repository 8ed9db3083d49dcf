"""`PretrainData`: what the pretraining DataModules (`PretrainCorpus`, `StreamingCorpus`, `SentencePairCorpus`)
share: the options naming the text (one `source`, or a weighted mixture of several: `sources`), the tokenizer, the
block length, batches, workers and seeds; the tokenizer trained on the training text, the contract the model is
told (`publish`), the batch collation, the `predict` prompts and what a mixture publishes for its log
(`mixture_state`). A subclass takes only the options it adds and reads the sources (cached or streamed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import ClassVar, Literal

import lightning as L
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options
from lightning_pretrain.data.pretrain import blocks
from lightning_pretrain.data.pretrain.mixture import MixtureSource, MixtureState, check_sources
from lightning_pretrain.data.sources.prompts import prompt_loader
from lightning_pretrain.data.sources.text import TextSource, resolve
from lightning_pretrain.errors import InputError


class PretrainData(L.LightningDataModule):
    streaming: ClassVar[bool] = False  # read the sources lazily (`datasets` streaming) instead of loading them

    def __init__(
        self,
        source: str = "builtin",
        val_source: str | None = None,
        text_column: str = "text",
        tokenizer: str = "bpe",
        vocab_size: int = 8192,
        seq_len: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
        predict_file: str | None = None,
        cross_document_attention: bool = True,
        document_delimiter: str | None = None,
        sources: list[MixtureSource] | None = None,
        exhaustion: Literal["repeat", "stop"] = "repeat",
    ):
        """
        Args:
            source: 'builtin' (CPython's documentation, ~1.8 MB, offline), a local .txt/.jsonl/.json/.csv/.tsv/.parquet
                file, directory or glob, or a hub dataset 'id[:config][@split]' (streamed by StreamingCorpus, which
                also reads local files lazily).
            val_source: validation text in the same forms; when unset, part of `source` is held out (`val_fraction`
                of its documents, or for StreamingCorpus its first `val_documents`).
            text_column: column holding the text in jsonl/csv/parquet/hub sources.
            tokenizer: 'bpe' (byte-level BPE), 'wordpiece' or 'unigram' to train one on the training text (streaming:
                its first `tokenizer_documents`; cached), or a local tokenizer directory / hub id of a pretrained
                fast tokenizer.
            vocab_size: vocabulary size of a tokenizer trained here (ignored for pretrained tokenizers).
            seq_len: tokens per example (the model's sequence length): a packed block, or a sentence pair with
                its [CLS] and [SEP] tokens (padded).
            batch_size: examples (blocks or pairs) per batch on each device.
            num_workers: DataLoader worker processes (cached blocks are memory-mapped slices, so 0-2 suffice on CPU).
            cache_dir: where tokenized corpora and trained tokenizers live; default $LIGHTNING_PRETRAIN_CACHE or
                ~/.cache/lightning_pretrain.
            seed: seed of the held-out validation documents and of the shuffling order.
            predict_file: prompts for `predict`: a UTF-8 text file, one prompt per line (blank lines are skipped);
                the objective says what a prompt is (a text to continue, or one with mask tokens / sentinels).
            cross_document_attention: True: a packed block is one sequence (GPT-2's and RoBERTa's training). False:
                each document in a block attends only to itself (block-diagonal attention, block-causal for causal
                LMs), its position ids restart at 0, and no label is predicted across a boundary; batches carry
                `position_ids` (objectives that support it: CausalLM, MaskedLM). Boundaries are the separator tokens.
            document_delimiter: plain-text files: a line holding only this string ends a document (e.g.
                '<|endoftext|>'); unset: documents are separated by blank lines. Such files are read whole.
            sources: a weighted data mixture, replacing `source`: a list of {source, weight, name} (any source
                form; weights > 0, normalised; name: its key in the logs, default derived from the source). Each is
                read on its own, with its own validation hold-out (or the shared `val_source`); training draws each
                sample's source by seeded draws with the weights (cached: a pure function of (seed, sample index);
                streaming: per worker), and a trained tokenizer learns from every source (streaming: each one's
                weighted share of `tokenizer_documents`). Needs trainer.max_steps unless exhaustion='stop'.
            exhaustion: what a mixture source does once all its blocks are used (streaming: at the end of its first
                pass): 'repeat' (cached: in a new seeded order; its epochs logged as train/epochs/<name>) or 'stop'
                (the run ends there; streaming: one device only).
        """
        super().__init__()
        if seq_len < 2:
            raise InputError(f"seq_len must be at least 2, got {seq_len}")
        check_loader_options(num_workers, seed, batch_size=batch_size)
        toks.check_vocab_size(tokenizer, vocab_size)
        self.save_hyperparameters()

        def read(spec: str) -> TextSource:
            return resolve(spec, text_column, streaming=self.streaming, delimiter=document_delimiter)

        self.mixed = sources is not None  # a mixture: batches say which source each row came from
        entries, self.names, self.weights = check_sources(sources) if self.mixed else ([MixtureSource(source)], [], [])
        self.specs = [e.source for e in entries]  # each source as given, and as read
        self.inputs = [read(spec) for spec in self.specs]
        self.val_spec, self.val_source = val_source, read(val_source) if val_source else None
        self.tokenizer_spec, self.vocab_size, self.seq_len = tokenizer, vocab_size, seq_len
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.cache_root = cache.resolve_root(cache_dir)
        self.predict_file, self.exhaustion = predict_file, exhaustion
        self.cross_document_attention = cross_document_attention
        self.published: DataContract | None = None

    # -- tokenizer and contract ---------------------------------------------------------------------------------
    def training_texts(self) -> Iterable[str]:
        """The texts a tokenizer trained here learns from, in order."""
        raise NotImplementedError

    def training_identity(self) -> list[str]:
        """Changes whenever `training_texts()` could (a cache key part of the trained tokenizer)."""
        raise NotImplementedError

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Pretrained, or trained on `training_texts()` on first use and cached (a later run loads it)."""
        if self.tokenizer_spec not in toks.TRAINERS:
            return toks.load_pretrained(self.tokenizer_spec)
        return toks.trained(
            self.tokenizer_spec, self.vocab_size, self.training_texts, self.training_identity(), self.cache_root
        )

    def describe(self, tokenizer: PreTrainedTokenizerBase) -> DataContract:
        """The contract of this data, given its tokenizer (a pure function: no work)."""
        return DataContract(tokenizer, seq_len=self.seq_len, cross_document_attention=self.cross_document_attention)

    def publish(self) -> DataContract:
        """The one step that makes the contract known: loads, or trains (cached), the tokenizer. The CLI link runs it
        once, before the model is built (data/contract.py); `contract` is then its value."""
        self.published = self.describe(self.tokenizer)
        return self.published

    @property
    def contract(self) -> DataContract:
        """What the model is told (tokenizer, block length, ...), as `publish()` made it known."""
        if self.published is None:
            raise RuntimeError(
                f"{type(self).__name__}.contract is made known by publish(), which trains or loads the "
                f"tokenizer: call it first (the CLI does)"
            )
        return self.published

    @property
    def collate(self) -> blocks.BlockCollate:
        """Stacks blocks; with documents kept apart, adds the position ids that restart at each of them."""
        return blocks.BlockCollate(None if self.cross_document_attention else toks.document_separator(self.tokenizer))

    # -- a mixture's log ----------------------------------------------------------------------------------------
    def mixture_state(self, counts: Sequence[float] | None, loader) -> MixtureState | None:
        """What a data mixture fed the model so far, for callbacks/mixture.py (None: not a mixture): the sources'
        names, their epochs after `counts` samples of each (this run's, all ranks; None: none yet) read from the
        training `loader`, and the source that ran out (exhaustion='stop')."""
        if not self.mixed:
            return None
        spent = self.exhausted_source(loader)
        return MixtureState(
            tuple(self.names), tuple(self.source_epochs(counts, loader)), None if spent is None else self.names[spent]
        )

    def source_epochs(self, counts: Sequence[float] | None, loader) -> list[float]:
        """Each mixture source's epochs after `counts` samples of each."""
        raise NotImplementedError

    def exhausted_source(self, loader) -> int | None:
        """The mixture source that ran out (exhaustion='stop'), None while none has."""
        raise NotImplementedError

    # -- Lightning hooks ----------------------------------------------------------------------------------------
    @property
    def predicting(self) -> bool:
        return self.trainer is not None and self.trainer.predicting

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return prompt_loader(self.predict_file, self.batch_size, self.trainer)
