"""Caches heal: a truncated, overwritten or deleted file of any cache entry (token blocks, sentence pairs, fine-tuning
splits, trained tokenizers, the builtin corpus's parquet) is found at the next lookup, and the entry is rebuilt the
same; the file-digest memo lives under the data module's cache; a cache folder that cannot be one fails in one line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import ENGLISH, REPO, minilm_dir
from test_finetune_modes import NEGATIVE, POSITIVE, tiny_backbone  # noqa: F401 (fixture)

from lightning_pretrain.data import PretrainCorpus, SentencePairCorpus, TextClassification, cache
from lightning_pretrain.data.pretrain.streaming import open_stream
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.errors import InputError


def overwrite(path: Path, offset: int = 0) -> None:
    """Flip one byte (the size stays: a check of sizes alone misses it)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


# -- the cache itself -----------------------------------------------------------------------------------------------

DAMAGE = {
    "truncated": lambda e: truncate(e / "small.bin"),
    "overwritten in place": lambda e: overwrite(e / "small.bin", 50),
    "large file's head overwritten": lambda e: overwrite(e / "sub" / "big.bin", 3),
    "large file's tail overwritten": lambda e: overwrite(e / "sub" / "big.bin", 65535),
    "large file regrown after a truncation": lambda e: (e / "sub" / "big.bin").write_bytes(
        (e / "sub" / "big.bin").read_bytes()[:30000] + bytes(35536)
    ),
    "file deleted": lambda e: (e / "small.bin").unlink(),
    "folder deleted": lambda e: shutil.rmtree(e / "sub"),
    "meta.json garbage": lambda e: (e / "meta.json").write_text("{not json"),
    "meta.json of an older version": lambda e: (e / "meta.json").write_text(json.dumps({"rows": 1})),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_any_damage_to_an_entry_is_found_and_the_entry_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(cache, "WHOLE", 4096)  # big.bin (64 KiB) is then checked at sampled windows
    monkeypatch.setattr(cache, "WINDOW", 256)
    monkeypatch.setattr(cache, "SAMPLES", 8)
    rng = np.random.default_rng(0)
    small, big = rng.bytes(100), rng.bytes(65536)
    builds = []

    def build(tmp: Path) -> dict:
        builds.append(tmp)
        (tmp / "small.bin").write_bytes(small)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "big.bin").write_bytes(big)
        return {"rows": 1}

    entry = tmp_path / "kind" / "key"
    assert cache.get_or_build(entry, build) == (entry, False)
    assert cache.get_or_build(entry, build) == (entry, True) and len(builds) == 1
    assert set(cache.read_meta(entry)[cache.FILES]) == {"small.bin", "sub/big.bin"}
    DAMAGE[damage](entry)
    assert cache.lookup(entry) is None
    assert cache.get_or_build(entry, build) == (entry, False) and len(builds) == 2
    assert (entry / "small.bin").read_bytes() == small and (entry / "sub" / "big.bin").read_bytes() == big
    assert cache.get_or_build(entry, build) == (entry, True)


def test_an_entry_whose_own_check_fails_or_that_is_a_file_is_rebuilt(tmp_path):
    entry = tmp_path / "kind" / "key"
    entry.parent.mkdir()
    entry.write_text("a file where the entry belongs")
    assert cache.get_or_build(entry, lambda tmp: {"n": 1}) == (entry, False) and entry.is_dir()
    assert cache.get_or_build(entry, lambda tmp: {"n": 2}, lambda e, m: m["n"] == 2) == (entry, False)
    assert cache.read_meta(entry)["n"] == 2


# -- every kind of entry, through its data module -------------------------------------------------------------------


def test_token_blocks_and_tokenizer_entries_heal(tiny_corpus):
    args = dict(
        source=str(tiny_corpus), vocab_size=400, seq_len=32, batch_size=4, cache_dir=str(tiny_corpus.parent / "cache")
    )
    dm = PretrainCorpus(**args)
    dm.prepare_data()
    dm.setup("fit")
    train, val = np.array(dm.train_blocks), np.array(dm.val_blocks)
    (tok_entry,) = (tiny_corpus.parent / "cache" / "tokenizers").iterdir()
    truncate(tok_entry / "tokenizer.json")
    overwrite(dm.cache_entry / "val.bin", 10)  # same size: the size check of the blocks alone missed this
    dm = PretrainCorpus(**args)
    dm.prepare_data()
    dm.setup("fit")
    np.testing.assert_array_equal(dm.train_blocks, train)
    np.testing.assert_array_equal(dm.val_blocks, val)
    assert cache.lookup(tok_entry) is not None
    assert next(iter(dm.train_dataloader())).shape == (4, 32)


def test_sentence_pair_entries_heal(tiny_corpus):
    args = dict(
        source=str(tiny_corpus), vocab_size=300, seq_len=64, batch_size=4, cache_dir=str(tiny_corpus.parent / "cache")
    )
    dm = SentencePairCorpus(**args)
    dm.prepare_data()
    dm.setup("fit")
    pairs = np.array(dm.train_pairs.pairs)
    overwrite(dm.cache_entry / "train.pairs.npy", (dm.cache_entry / "train.pairs.npy").stat().st_size - 3)
    dm = SentencePairCorpus(**args)
    dm.setup("fit")  # setup alone (a rank whose prepare_data did not run) heals too
    np.testing.assert_array_equal(dm.train_pairs.pairs, pairs)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (4, 64)


def test_fine_tuning_entries_heal(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "text,label\n" + "".join(f'"{POSITIVE[i % 6] if i % 2 else NEGATIVE[i % 6]} {i}",{i % 2}\n' for i in range(40))
    )
    args = dict(
        train_file=str(path),
        val_file=str(path),
        tokenizer=str(minilm_dir()),
        batch_size=4,
        cache_dir=str(tmp_path / "c"),
    )
    dm = TextClassification(**args)
    dm.setup("fit")
    ids = [list(x) for x in dm.splits["train"]["input_ids"]]
    entry, _ = dm._entry("train")
    del dm  # its split is memory-mapped from the file truncated next
    (arrow,) = (entry / "data").glob("*.arrow")
    truncate(arrow)  # the repro: every later run failed with a traceback
    dm = TextClassification(**args)
    dm.setup("fit")
    assert [list(x) for x in dm.splits["train"]["input_ids"]] == ids
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 4


def test_the_builtin_corpus_parquet_entry_heals(tmp_path, monkeypatch):
    docs = [f"{ENGLISH[i % 6]} Document {i}." for i in range(50)]
    monkeypatch.setattr(sources.BuiltinSource, "load", lambda self: datasets.Dataset.from_dict({"text": docs}))
    stream = open_stream(sources.BuiltinSource(), tmp_path)
    (entry,) = (tmp_path / "builtin").iterdir()
    truncate(entry / "docs.parquet")
    stream = open_stream(sources.BuiltinSource(), tmp_path)
    assert [t for rows in stream.iter(batch_size=10) for t in rows["text"]] == docs


def test_a_damaged_fine_tuning_cache_is_rebuilt_and_the_run_trains(workdir, tiny_backbone):  # noqa: F811
    from lightning_pretrain.cli import main

    path = workdir / "t.csv"
    path.write_text(
        "text,label\n"
        + "".join(
            f'"{POSITIVE[i % 6] if i % 2 else NEGATIVE[i % 6]} {i}",{"positive" if i % 2 else "negative"}\n'
            for i in range(32)
        )
    )
    args = [
        "fit",
        "-c",
        str(REPO / "configs/finetune/sst2.yaml"),
        "-c",
        str(REPO / "configs/finetune/modes/full.yaml"),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--model.backbone",
        str(tiny_backbone),
        "--data.source",
        "null",
        "--data.train_file",
        str(path),
        "--data.val_file",
        str(path),
        "--data.text_column",
        "text",
        "--data.label_column",
        "label",
        "--data.batch_size",
        "4",
        "--data.cache_dir",
        str(workdir / "cache"),
    ]
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        main(args)
    for arrow in (workdir / "cache" / "downstream").glob("*/data/*.arrow"):
        truncate(arrow)
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        main(args)  # no SystemExit: it trained
    assert "Traceback" not in err.getvalue() and "error:" not in err.getvalue()
    runs = sorted((workdir / "logs").rglob("metrics.json"))
    assert len(runs) == 2 and json.loads(runs[-1].read_text())["global_step"] == 2


# -- where the cache is -------------------------------------------------------------------------------------------


def test_the_file_digest_memo_lives_under_the_data_modules_cache(tmp_path, tiny_corpus):
    old = time.time() - 60
    table = tmp_path / "t.csv"
    table.write_text("text,label\nfine,1\nbad,0\n")
    for f in (tiny_corpus, table):
        os.utime(f, (old, old))  # old enough to be remembered
    default = cache.default_root() / "digests"
    before = sorted(default.iterdir()) if default.exists() else []
    _ = PretrainCorpus(source=str(tiny_corpus), cache_dir=str(tmp_path / "c1")).parts[0].identity
    TextClassification(
        train_file=str(table), val_file=str(table), tokenizer=str(minilm_dir()), cache_dir=str(tmp_path / "c2")
    )._entry("train")
    for root, f in (("c1", tiny_corpus), ("c2", table)):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        assert [m.read_text() for m in (tmp_path / root / "digests").iterdir()] == [digest]
    assert (sorted(default.iterdir()) if default.exists() else []) == before


def test_a_cache_dir_below_a_file_fails_in_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for cache_dir in (blocker, blocker / "sub" / "dir"):
        with pytest.raises(InputError, match=f"is not a directory: {blocker} is a file"):
            PretrainCorpus(cache_dir=str(cache_dir))


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="running as root: chmod does not stop root's writes (the folder-below-"
    "a-file case covers the one-line error)",
)
def test_a_read_only_cache_fails_in_one_line_and_a_warm_one_still_serves(tiny_corpus, capsys):
    from lightning_pretrain.cli import main

    ro = tiny_corpus.parent / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "fit",
                    "-c",
                    str(REPO / "configs/pretrain/clm_tiny.yaml"),
                    "--data.source",
                    str(tiny_corpus),
                    "--data.vocab_size",
                    "300",
                    "--data.cache_dir",
                    str(ro),
                ]
            )
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert exit_info.value.code == 2 and len(errors) == 1 and "permission denied" in errors[0]
    finally:
        ro.chmod(0o755)
