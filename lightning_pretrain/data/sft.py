"""`SFTData`: prompt/completion pairs (columns, or a chat `messages` column rendered with the tokenizer's chat
template) -> causal-LM rows whose labels are the completion only, optionally packed several whole examples a row.

Splits come from `data/splits.py` as for classification; each is tokenized once into a hash-keyed cache entry.
Labels are unshifted (the model shifts) and -100 on prompt tokens, padding and every example's first token, so the
labelled tokens are exactly the predicted completion tokens; training batches carry `window_tokens`
(data/windows.py). Packing (first-fit in dataset order, once; rows shuffled per epoch) restarts position ids per
example. Evaluation batches add the prompts left-padded for `generate`.
"""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path

import datasets
import lightning as L
import torch
from transformers import PreTrainedTokenizerBase

from lightning_pretrain.data import cache, validate
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.completions import CompletionBatches, Packed, encode, first_fit, render_chat
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.loaders import check_loader_options, check_val_interval, rank_and_world, stateful_loader
from lightning_pretrain.data.splits import Splits
from lightning_pretrain.data.tables import Column, resolve_column
from lightning_pretrain.data.windows import training_windows
from lightning_pretrain.errors import InputError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class SFTData(L.LightningDataModule):
    def __init__(
        self,
        source: str | None = None,
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        prompt_column: Column = "prompt",
        completion_column: Column = "completion",
        messages_column: Column | None = None,
        prompt_template: str | None = None,
        chat_template: str | None = None,
        header: bool | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        val_fraction: float = 0.1,
        max_train_examples: int | None = None,
        tokenizer: str | None = None,
        max_length: int = 512,
        pack: bool = False,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 1234,
    ):
        """
        Args:
            source: a hub dataset 'id[:config][@split]' ('@split' names the training split), or a local directory
                with train.* / dev.* / test.* files (.csv/.tsv/.jsonl/.json/.parquet).
            train_file: local training file; replaces the source's training split.
            val_file: local validation file; replaces the source's validation split.
            test_file: local test file (with completions, the references of `test`).
            predict_file: prompts to complete: a .txt file (one prompt per line; a user message for chat data) or a
                table with the prompt (or messages) column; default: the test split.
            prompt_column: column of the prompt: a name, or a 0-based index (header-less CSV/TSV files).
            completion_column: column of the completion to learn (an EOS token is appended).
            messages_column: column of chat conversations (lists of {"role", "content"}; a JSON string in CSV/TSV)
                instead of prompt/completion columns: the prompt is every message before the final assistant one,
                rendered with the tokenizer's chat template and its generation prompt; the completion is that
                final message.
            prompt_template: format of a prompt column's text, with '{prompt}' (e.g. 'Review: {prompt}\nSentiment:').
            chat_template: a Jinja chat template for tokenizers without one (it is saved with the tokenizer).
            header: whether CSV/TSV files have a header line; default: header-less exactly when every column is
                given by index.
            train_split: hub split used for training (default 'train').
            val_split: hub split used for validation (default: the first of validation, dev, test).
            test_split: hub split used by `test` and `predict` (default: test).
            val_fraction: share of the training rows held out for validation when there is no validation data.
            max_train_examples: train on a seeded random subset of this many examples (quick CPU runs).
            tokenizer: the model's tokenizer directory or hub id (pad defaults to EOS).
            max_length: longest row in tokens. A completion is cut to fit after its prompt; an example whose prompt
                alone fills max_length is dropped (the count is logged).
            pack: concatenate whole examples into rows of max_length (first-fit in dataset order; no example is
                split; position ids restart per example) instead of one padded example per row. Training only.
            batch_size: training rows per batch on each device.
            eval_batch_size: validation / test / predict batch size (default: batch_size).
            num_workers: DataLoader worker processes.
            cache_dir: where tokenized splits live; default $LIGHTNING_PRETRAIN_CACHE or ~/.cache/lightning_pretrain.
            seed: seed of the held-out validation rows, of the training subset and of the shuffling order.
        """
        super().__init__()
        if max_length < 2:
            raise InputError(f"max_length must be at least 2, got {max_length}")
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_train_examples is not None and max_train_examples < 1:
            raise InputError(f"max_train_examples must be positive, got {max_train_examples}")
        if prompt_template is not None and not _formats_prompts(prompt_template, messages_column):
            raise InputError("--data.prompt_template formats a prompt column: '{prompt}' marks where the prompt goes "
                             "and other braces are doubled ('{{'); chat messages are rendered by the chat template")
        check_loader_options(num_workers, batch_size=batch_size, eval_batch_size=eval_batch_size)
        if not any((source, train_file, val_file, test_file, predict_file)):
            raise InputError("no data: pass --data.source (a hub id or a directory) or --data.train_file / "
                             "--data.val_file")
        self.save_hyperparameters(ignore=["tokenizer"])
        given = [c for c in (prompt_column, completion_column, messages_column) if c is not None]
        self.header = header if header is not None else not all(isinstance(c, int) for c in given)
        self.inputs = Splits(source, {"train": train_file, "val": val_file, "test": test_file, "predict": predict_file},
                             {"train": train_split, "val": val_split, "test": test_split}, header=self.header,
                             val_fraction=val_fraction, seed=seed, max_train_examples=max_train_examples)
        self.prompt_column, self.completion_column, self.messages_column = prompt_column, completion_column, \
            messages_column
        self.prompt_template, self.chat_template = prompt_template, chat_template
        self.val_fraction, self.max_train_examples = val_fraction, max_train_examples
        self.tokenizer_spec, self.max_length, self.pack = tokenizer, max_length, pack
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.cache_root, self.seed = num_workers, cache.resolve_root(cache_dir), seed
        self.splits: dict[str, datasets.Dataset] = {}  # the tokenized splits of the current stage
        self._packed_rows: list[list[int]] = []  # packed training rows: their example indices
        self._warned: set[str] = set()  # splits whose dropped examples were logged

    # -- tokenizer and contract ---------------------------------------------------------------------------------
    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's tokenizer: an EOS ends every completion; pad defaults to EOS; `chat_template` if given."""
        if not self.tokenizer_spec:
            raise InputError("SFTData needs --data.tokenizer (the model's tokenizer directory or hub id)")
        tok = toks.load_pretrained(self.tokenizer_spec)
        if tok.eos_token_id is None:
            raise InputError(f"tokenizer '{self.tokenizer_spec}' has no EOS token, which ends every completion")
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if self.chat_template:
            tok.chat_template = self.chat_template
        if self.messages_column is not None and not tok.chat_template:
            raise InputError(f"tokenizer '{self.tokenizer_spec}' has no chat template to render the messages "
                             f"column with: pass --data.chat_template (a Jinja template) or prompt/completion columns")
        self._tokenizer_fingerprint = toks.fingerprint(tok)
        return tok

    @property
    def contract(self) -> DataContract:
        """The tokenizer and the row length: max_length when packing, else the longest training or validation
        example (max_length without training data)."""
        longest = self.max_length
        if not self.pack and self.inputs.source_of("train") is not None:
            longest = max(self._entry(split)[1]["longest"] for split in ("train", "val"))
        return DataContract(self.tokenizer, max_length=longest, task="sft")

    # -- raw rows -----------------------------------------------------------------------------------------------
    def _rows(self, split: str) -> dict[str, list]:
        """{'prompt': rendered prompts, 'completion' (all but predict), 'where'} of one split."""
        if split == "val" and self.inputs.held_out():
            return self._subset(self._rows("train_all"), "val")
        src = self.inputs.source_of("train" if split == "train_all" else split)
        where, table, labelled = src.describe(), src.read(self.header), split != "predict"
        if src.is_lines:
            if labelled:
                raise InputError(f"{src.spec}: a .txt file holds prompts only; it can only be a --data.predict_file")
            rows = {"prompt": validate.texts(table.values("text"), "text", where, table.where, False)}
            if self.messages_column is not None:  # a chat model: each line is a user message
                rows["prompt"] = [render_chat(self.tokenizer, [{"role": "user", "content": t}], where, False)[0]
                                  for t in rows["prompt"]]
            elif self.prompt_template:  # prompts as the model was trained on them
                rows["prompt"] = [self.prompt_template.format(prompt=p) for p in rows["prompt"]]
        elif self.messages_column is not None:
            pairs = [render_chat(self.tokenizer, m, f"{where} {w}", labelled) for m, w in
                     zip(table.values(self._column(self.messages_column, table, where, "messages")), table.where)]
            rows = {"prompt": [p for p, _ in pairs], **({"completion": [c for _, c in pairs]} if labelled else {})}
        else:
            prompts = validate.texts(table.values(self._column(self.prompt_column, table, where, "prompt")),
                                     str(self.prompt_column), where, table.where, False)
            rows = {"prompt": [self.prompt_template.format(prompt=p) for p in prompts] if self.prompt_template
                    else prompts}
            if labelled:
                column = self._column(self.completion_column, table, where, "completion")
                rows["completion"] = validate.texts(table.values(column), column, where, table.where, False)
        rows["where"] = list(table.where)
        if split == "train" and self.inputs.held_out():
            rows = self._subset(rows, "train")
        if split == "train" and self.max_train_examples and self.max_train_examples < len(rows["prompt"]):
            rows = self._subset(rows, "sample")
        return rows

    def _column(self, ref: Column, table, where: str, what: str) -> str:
        found = resolve_column(ref, table.columns)
        if found is None:
            raise InputError(f"{what} column {ref!r} not found in {where}; available: {', '.join(table.columns)} "
                             f"(set --data.{what}_column by name or 0-based index)")
        return found

    def _subset(self, rows: dict[str, list], part: str) -> dict[str, list]:
        """The held-out validation rows ('val') or the rest ('train'), or the seeded training sample ('sample'),
        drawn as TextClassification draws them."""
        n = len(rows["prompt"])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        if part == "sample":
            return {k: [v[i] for i in sorted(order[:self.max_train_examples])] for k, v in rows.items()}
        n_val = max(1, round(n * self.val_fraction))
        if n_val >= n:
            raise InputError(f"{self.inputs.describe('train')} has {n} row(s): too few to hold out "
                             f"val_fraction={self.val_fraction} for validation; pass --data.val_file")
        keep = sorted(order[:n_val] if part == "val" else order[n_val:])
        return {k: [v[i] for i in keep] for k, v in rows.items()}

    # -- tokenized splits ---------------------------------------------------------------------------------------
    def _entry(self, split: str) -> tuple[Path, dict]:
        """The cache entry of a tokenized split (built on first use) and its metadata."""
        with cache.rooted(self.cache_root):  # file digests are remembered under this cache
            identity = self.inputs.identity(split)
        chat, tok = self.messages_column is not None, self.tokenizer  # (loading it takes its fingerprint)
        key = cache.cache_key("sft", FORMAT_VERSION, split == "predict", identity, self.header, self.prompt_column,
                              self.completion_column, self.messages_column, self.prompt_template,
                              tok.chat_template if chat else None, self.val_fraction,
                              self.max_train_examples if split == "train" else None, self.seed,
                              self._tokenizer_fingerprint, self.max_length)
        entry = self.cache_root / "sft" / key

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            rows, where = self._rows(split), self.inputs.describe(split)
            dataset, meta = encode(tok, rows, self.max_length, chat, where)
            quiet = datasets.utils.are_progress_bars_disabled()
            datasets.disable_progress_bars()  # a bar per tiny shard write is noise
            try:
                dataset.save_to_disk(str(tmp / "data"))
            finally:
                if not quiet:
                    datasets.enable_progress_bars()
            return {**meta, "seconds": round(time.perf_counter() - t0, 3)}

        entry, reused = cache.get_or_build(entry, build, lambda e, m: (e / "data").is_dir() and "rows" in m)
        meta = cache.read_meta(entry)
        if not reused:
            log.info("tokenized the %s split: %d examples (%d completions cut to max_length=%d) in %.1fs -> %s",
                     split, meta["rows"], meta["truncated"], self.max_length, meta["seconds"], entry)
        if meta["dropped"] and split not in self._warned:
            self._warned.add(split)
            log.warning("dropped %d examples of the %s split whose prompt alone fills max_length=%d (no completion "
                        "token fits); raise --data.max_length to keep them", meta["dropped"], split, self.max_length)
        return entry, meta

    # -- Lightning hooks and loaders ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Tokenize the splits this run needs once (rank 0); later runs with the same settings reuse the cache."""
        stage = getattr(getattr(self.trainer, "state", None), "fn", None) if self.trainer else None
        for split in STAGE_SPLITS.get(str(stage.value) if stage else "fit", ("train", "val")):
            self._entry(split)

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage or "fit", ("train", "val")):
            self.splits[split] = datasets.load_from_disk(str(self._entry(split)[0] / "data"))
        if self.pack and "train" in self.splits:
            self._packed_rows = first_fit(self.splits["train"]["length"], self.max_length)

    def train_dataloader(self):
        examples = self.splits["train"]
        counts = list(examples["label_tokens"])
        if self.pack:
            rows, counts = Packed(examples, self._packed_rows), [sum(counts[i] for i in r) for r in self._packed_rows]
        else:
            rows = examples.select_columns(["input_ids", "labels"])
        loader = self._loader(rows, counts)
        check_val_interval(self.trainer, loader, f"an epoch ({len(rows)} {'packed rows' if self.pack else 'examples'})")
        return loader

    def _loader(self, rows, token_counts: list[int] | None = None):
        """Training rows (shuffled, with window_tokens) given their `token_counts`, else an evaluation split."""
        (rank, world_size), train = rank_and_world(self.trainer), token_counts is not None
        return stateful_loader(rows, self.batch_size if train else self.eval_batch_size, shuffle=train,
                               num_workers=self.num_workers, seed=self.seed, rank=rank, world_size=world_size,
                               collate_fn=CompletionBatches(self.tokenizer.pad_token_id, generation=not train),
                               token_counts=token_counts, **(training_windows(self.trainer) if train else {}))

    def val_dataloader(self):
        return self._loader(self.splits["val"])

    def test_dataloader(self):
        return self._loader(self.splits["test"])

    def predict_dataloader(self):
        return self._loader(self.splits["predict"])


STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def _formats_prompts(template: str, messages_column: Column | None) -> bool:
    try:
        return messages_column is None and "{prompt}" in template and template.format(prompt="") is not None
    except (KeyError, IndexError, ValueError):
        return False
