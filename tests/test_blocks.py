"""Packing documents into blocks, and the hash-keyed token-block cache."""

import json
import os
import random

import numpy as np
import pytest

from lightning_pretrain.data import PretrainCorpus, blocks, cache
from lightning_pretrain.errors import InputError

SEP = 0


def random_docs(seed=0, n=300):
    rng = random.Random(seed)
    return [[rng.randrange(1, 50_000) for _ in range(rng.randrange(0, 400))] for _ in range(n)]


@pytest.mark.parametrize("seq_len", [1, 7, 128, 1000])
@pytest.mark.parametrize("chunk_docs", [1, 5, 4096])
def test_pack_loses_and_duplicates_nothing(seq_len, chunk_docs):
    docs = random_docs()
    stream = [t for d in docs for t in (*d, SEP)]
    out = np.concatenate(list(blocks.pack_stream(docs, SEP, seq_len, chunk_docs=chunk_docs)))
    assert out.shape == (len(stream) // seq_len, seq_len)  # exact block count: only the tail is dropped
    assert out.ravel().tolist() == stream[: out.size]  # order kept, nothing lost or duplicated
    assert len(stream) - out.size < seq_len


def test_pack_puts_separator_after_every_document():
    docs = [[5, 6, 7], [8], [], [9, 10]]
    assert blocks.pack(docs, SEP, 3).tolist() == [[5, 6, 7], [0, 8, 0], [0, 9, 10]]  # last SEP is in the tail


def test_pack_of_too_little_text_is_empty():
    assert blocks.pack([[1, 2]], SEP, 8).shape == (0, 8)


def test_written_blocks_read_back_memory_mapped(tmp_path):
    docs = random_docs(1)
    n = blocks.write_blocks(tmp_path / "x.bin", docs, SEP, 64, blocks.token_dtype(50_000))
    arr = blocks.open_blocks(tmp_path / "x.bin", n, 64, "<u2")
    assert isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, blocks.pack(docs, SEP, 64))
    ds = blocks.BlockDataset(arr)
    batch = ds.__getitems__([3, 1])
    assert batch[0].dtype.is_floating_point is False and batch[0].tolist() == arr[3].tolist()


def test_token_dtype_fits_vocabulary():
    assert blocks.token_dtype(65536) == np.uint16 and blocks.token_dtype(65537) == np.uint32


# -- the cache ------------------------------------------------------------------------------------------------------

def make(corpus, **kw):
    args = dict(source=str(corpus), tokenizer="bpe", vocab_size=400, seq_len=32, batch_size=4,
                cache_dir=str(corpus.parent / "cache"))  # a cache private to the test
    args.update(kw)
    dm = PretrainCorpus(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_blocks_match_a_direct_tokenization(tiny_corpus):
    dm = make(tiny_corpus)
    tok = dm.tokenizer
    texts = [t for batch in dm._texts("train") for t in batch]
    expected = blocks.pack([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.eos_token_id, 32)
    np.testing.assert_array_equal(dm.train_blocks, expected)
    assert len(dm.val_blocks) > 0


def test_second_run_reuses_cache(tiny_corpus):
    first = make(tiny_corpus)
    stamp = (first.cache_entry / "train.bin").stat().st_mtime_ns
    second = make(tiny_corpus)
    assert second.cache_entry == first.cache_entry
    assert (second.cache_entry / "train.bin").stat().st_mtime_ns == stamp  # not rebuilt


@pytest.mark.parametrize("change", [{"seq_len": 16}, {"tokenizer": "wordpiece"}, {"vocab_size": 500},
                                    {"val_fraction": 0.2}])
def test_changed_settings_never_reuse_a_stale_cache(tiny_corpus, change):
    base, other = make(tiny_corpus), make(tiny_corpus, **change)
    assert other.cache_entry != base.cache_entry
    assert other.train_blocks.shape[1] == other.seq_len


def test_changed_content_invalidates(tiny_corpus):
    base = make(tiny_corpus)
    tiny_corpus.write_text(tiny_corpus.read_text().replace("fox", "cat"))
    assert make(tiny_corpus).cache_entry != base.cache_entry


def test_interrupted_build_leaves_no_valid_entry(tiny_corpus, monkeypatch):
    dm = PretrainCorpus(source=str(tiny_corpus), vocab_size=400, seq_len=32, cache_dir=str(tiny_corpus.parent / "cache"))
    entry = dm.cache_entry

    def dies_midway(path, docs, sep, seq_len, dtype):  # write half a file, then the "machine dies"
        path.write_bytes(b"\x01\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(blocks, "write_blocks", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        dm.prepare_data()
    assert not entry.exists() and cache.read_meta(entry) is None
    assert not list(entry.parent.glob(f".{entry.name}.partial-*"))  # cleaned up
    monkeypatch.undo()
    dm = make(tiny_corpus)
    assert dm.cache_entry == entry and len(dm.train_blocks) > 0


def test_partial_dir_of_a_killed_process_is_ignored_and_swept(tiny_corpus):
    dm = PretrainCorpus(source=str(tiny_corpus), vocab_size=400, seq_len=32, cache_dir=str(tiny_corpus.parent / "cache"))
    entry = dm.cache_entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    dead = entry.parent / f".{entry.name}.partial-999999999-deadbeef"  # a pid that cannot exist
    dead.mkdir()
    (dead / "train.bin").write_bytes(b"junk")
    dm.prepare_data()
    assert not dead.exists() and cache.read_meta(entry) is not None


def test_truncated_entry_is_rebuilt_not_loaded(tiny_corpus):
    dm = make(tiny_corpus)
    good = np.array(dm.train_blocks)
    path = dm.cache_entry / "train.bin"
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    dm = make(tiny_corpus)
    np.testing.assert_array_equal(dm.train_blocks, good)
    assert json.loads((dm.cache_entry / "meta.json").read_text())["splits"]["train"]["n_blocks"] == len(good)


def test_held_out_validation_is_disjoint_documents(tiny_corpus):
    dm = make(tiny_corpus, val_fraction=0.1)
    train = set(t for b in dm._texts("train") for t in b)
    val = set(t for b in dm._texts("val") for t in b)
    assert val and not (train & val)


def test_corpus_too_small_for_a_block(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("one short line\n\nanother short line\n")
    with pytest.raises(InputError, match="fewer than seq_len"):
        make(f, val_source=str(f), seq_len=512)
