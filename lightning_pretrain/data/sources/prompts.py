"""Prompt files for `predict` of the pretraining objectives: plain UTF-8 text, one prompt per line, blank lines
skipped. Batches hold the raw text, `{"text": [str, ...], "example_id": LongTensor}` (ids count the prompts from 0),
because only the objective knows how to encode a prompt: span corruption's sentinels exist in its tokenizer alone."""

from __future__ import annotations

from pathlib import Path

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_pretrain.data.loaders import rank_and_world, stateful_loader
from lightning_pretrain.data.sources import formats
from lightning_pretrain.data.sources.records import check_encoding
from lightning_pretrain.errors import InputError


def read_prompts(path: str | None) -> list[str]:
    """The non-blank lines of `path`, without their line ends (leading and trailing spaces are kept: they are
    tokens to a byte-level BPE)."""
    if path is None:
        raise InputError("predict needs prompts: pass --data.predict_file (a text file, one prompt per line)")
    if not Path(path).is_file():
        raise InputError(f"predict_file {path}: {'is a directory' if Path(path).is_dir() else 'file not found'}")
    if formats.is_table(path):
        raise InputError(f"predict_file {path}: prompts are plain text, one per line (not a {Path(path).suffix} table)")
    check_encoding(path)
    with open(path, encoding="utf-8-sig") as fh:
        prompts = [line.rstrip("\r\n") for line in fh if line.strip()]
    if not prompts:
        raise InputError(f"predict_file {path} holds no prompt (every line is blank)")
    return prompts


def collate(rows: list[tuple[int, str]]) -> dict:
    return {"text": [text for _, text in rows], "example_id": torch.tensor([i for i, _ in rows], dtype=torch.long)}


def prompt_loader(path: str | None, batch_size: int, trainer=None) -> StatefulDataLoader:
    """Batches of the prompts of `path` in file order (this rank's share of them under DDP)."""
    rank, world_size = rank_and_world(trainer)
    return stateful_loader(
        list(enumerate(read_prompts(path))), batch_size, rank=rank, world_size=world_size, collate_fn=collate
    )
