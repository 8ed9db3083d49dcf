"""Packing documents into blocks, and the hash-keyed token-block cache."""

import json
import os
import random

import numpy as np
import pytest

from lightning_pretrain.data import PretrainCorpus, cache, encoding
from lightning_pretrain.data.pretrain import blocks
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
    args = dict(
        source=str(corpus),
        tokenizer="bpe",
        vocab_size=400,
        seq_len=32,
        batch_size=4,
        cache_dir=str(corpus.parent / "cache"),
    )  # a cache private to the test
    args.update(kw)
    dm = PretrainCorpus(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_blocks_match_a_direct_tokenization(tiny_corpus):
    dm = make(tiny_corpus)
    tok = dm.tokenizer
    texts = [t for batch in dm.parts[0].texts("train") for t in batch]
    expected = blocks.pack([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.eos_token_id, 32)
    np.testing.assert_array_equal(dm.train_blocks, expected)
    assert len(dm.val_blocks) > 0


def test_second_run_reuses_cache(tiny_corpus):
    first = make(tiny_corpus)
    stamp = (first.cache_entry / "train.bin").stat().st_mtime_ns
    second = make(tiny_corpus)
    assert second.cache_entry == first.cache_entry
    assert (second.cache_entry / "train.bin").stat().st_mtime_ns == stamp  # not rebuilt


@pytest.mark.parametrize(
    "change", [{"seq_len": 16}, {"tokenizer": "wordpiece"}, {"vocab_size": 500}, {"val_fraction": 0.2}]
)
def test_changed_settings_never_reuse_a_stale_cache(tiny_corpus, change):
    base, other = make(tiny_corpus), make(tiny_corpus, **change)
    assert other.cache_entry != base.cache_entry
    assert other.train_blocks.shape[1] == other.seq_len


def test_changed_content_invalidates(tiny_corpus):
    base = make(tiny_corpus)
    tiny_corpus.write_text(tiny_corpus.read_text().replace("fox", "cat"))
    assert make(tiny_corpus).cache_entry != base.cache_entry


def test_interrupted_build_leaves_no_valid_entry(tiny_corpus, monkeypatch):
    dm = PretrainCorpus(
        source=str(tiny_corpus), vocab_size=400, seq_len=32, cache_dir=str(tiny_corpus.parent / "cache")
    )
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
    dm = PretrainCorpus(
        source=str(tiny_corpus), vocab_size=400, seq_len=32, cache_dir=str(tiny_corpus.parent / "cache")
    )
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
    train = set(t for b in dm.parts[0].texts("train") for t in b)
    val = set(t for b in dm.parts[0].texts("val") for t in b)
    assert val and not (train & val)


def test_corpus_too_small_for_a_block(tmp_path):
    f = tmp_path / "small.txt"
    f.write_text("one short line\n\nanother short line\n")
    with pytest.raises(InputError, match="fewer than seq_len"):
        make(f, val_source=str(f), seq_len=512)


# -- huge documents: bounded memory, the same ids -------------------------------------------------------------------


def long_text(words: int = 6000, seed: int = 0) -> str:
    """One line-less "document" of prose, odd whitespace and non-ASCII characters."""
    from conftest import ENGLISH

    rng = random.Random(seed)
    vocab = " ".join(ENGLISH).split() + ["naïve", "12,345", "“quoted”", "--", "e\u0301", "'s", "x\x1cy"]
    seps = [" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "\u00a0", "\u3000", ""]
    return "".join(rng.choice(vocab) + rng.choice(seps) for _ in range(words))


def trained_tokenizer(kind: str):
    from conftest import ENGLISH, minilm_dir

    from lightning_pretrain.data import tokenizers as toks

    if kind == "minilm":
        return toks.load_pretrained(str(minilm_dir()))
    return toks.TRAINERS[kind](iter(ENGLISH * 5 + [long_text(2000, seed=9)]), 400)


def test_pieces_are_bounded_and_cut_before_the_last_whitespace_of_a_run():
    text = "ab  cd\n\nef g" * 5 + "x" * 50 + " tail"
    pieces = encoding.pieces(text, 8)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 8
    for before, piece in zip(pieces, pieces[1:]):
        hard = before == "x" * 8 or piece.startswith("x")  # 50 characters without whitespace: cut anyway
        assert hard or (piece[0] in " \t\n\r" and not piece[1].isspace()), (before, piece)
    assert encoding.pieces("short text", 10) == ["short text"] and encoding.pieces("", 10) == [""]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "minilm"])
def test_long_documents_are_encoded_in_bounded_pieces_with_the_same_ids(kind, monkeypatch):
    monkeypatch.setattr(encoding, "PIECE_CHARS", 500)
    monkeypatch.setattr(encoding, "BATCH_CHARS", 2000)
    backend = trained_tokenizer(kind).backend_tokenizer
    texts = ["a short one", long_text(), "another short one", long_text(seed=1)[:480], "", long_text(800, seed=2)]
    calls = []

    class Spy:  # records what each tokenizer call is given
        def encode_batch_fast(self, batch, add_special_tokens):
            calls.append([len(t) for t in batch])
            return backend.encode_batch_fast(batch, add_special_tokens=add_special_tokens)

    got = [list(ids) for ids in encoding.encode_texts(Spy(), texts)]
    assert got == [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    assert max(max(c) for c in calls) <= 500 and max(sum(c) for c in calls) < 2000 + 500
    assert len(calls) > 10  # the long documents went in pieces, a few calls each


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_a_tokenizer_trained_on_pieces_counts_the_words_of_whole_documents(kind, monkeypatch):
    """Trainers count pre-tokenized words: the pieces give the same counts. BPE's trainer is deterministic, so its
    tokenizer is the same too (WordPiece's and Unigram's break ties differently from one run to the next)."""
    from collections import Counter

    from conftest import ENGLISH

    from lightning_pretrain.data import tokenizers as toks

    monkeypatch.setattr(encoding, "PIECE_CHARS", 300)
    texts = ENGLISH + [long_text(3000), long_text(500, seed=3)]
    backend = toks.TRAINERS[kind](iter(texts), 500).backend_tokenizer

    def words(text: str) -> Counter:
        normalized = backend.normalizer.normalize_str(text) if backend.normalizer else text
        return Counter(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))

    for text in texts:
        assert sum((words(p) for p in encoding.pieces(text)), Counter()) == words(text)
    if kind == "bpe":
        assert toks._learn(kind, lambda: texts, 500).backend_tokenizer.to_str() == backend.to_str()


def test_a_single_line_document_packs_like_its_whole_encoding_and_progress_is_logged(tmp_path, monkeypatch, caplog):
    from conftest import ENGLISH

    monkeypatch.setattr(encoding, "PIECE_CHARS", 1000)
    monkeypatch.setattr(encoding.Progress, "EVERY", 0.0)  # a progress line at every step
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join([*(f"{ENGLISH[i % 6]} Paragraph {i}." for i in range(60)), long_text().replace("\n", " ")]) + "\n"
    )
    with caplog.at_level("INFO", logger="lightning_pretrain"):
        dm = make(corpus, val_fraction=0.2)
    tok = dm.tokenizer
    for split in ("train", "val"):
        texts = [t for batch in dm.parts[0].texts(split) for t in batch]
        expected = blocks.pack([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.eos_token_id, 32)
        np.testing.assert_array_equal(getattr(dm, f"{split}_blocks"), expected)
    assert any(len(t) > 20000 for b in dm.parts[0].texts("train") for t in b) or any(
        len(t) > 20000 for b in dm.parts[0].texts("val") for t in b
    )
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("training a bpe tokenizer: ") and "characters so far" in line for line in lines)
    assert any(line.startswith("tokenizing the train split: ") and "tokens so far" in line for line in lines)
