"""StreamingCorpus: sharding across ranks x workers loses and duplicates nothing, also over files of very unequal
size; the packed stream equals packing the shard's documents; a stream resumes exactly from its state, through a
real multi-worker StatefulDataLoader too; bad set-ups fail clearly."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import minilm_dir
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_pretrain.data import encoding
from lightning_pretrain.data.pretrain import blocks
from lightning_pretrain.data.pretrain.block_stream import BlockStream, doc_hash, open_stream
from lightning_pretrain.data.pretrain.streaming import StreamingCorpus
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.errors import InputError

SEQ = 16


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


@pytest.fixture
def unequal_files(tmp_path) -> tuple[Path, list[str]]:
    """Four .jsonl files holding 1, 3, 17 and 60 documents (one blank row too), in sorted-path order."""
    folder = tmp_path / "shards"
    folder.mkdir()
    docs, n = [], 0
    for f, size in enumerate([1, 3, 17, 60]):
        rows = []
        for _ in range(size):
            rows.append({"text": f"document {n} has {'many ' * (n % 23)}words", "id": n})
            docs.append(rows[-1]["text"])
            n += 1
        if f == 2:
            rows.append({"text": "   ", "id": -1})  # blank: belongs to no shard's documents
        (folder / f"part-{f}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder, docs


def stream_of(folder: Path) -> datasets.IterableDataset:
    return open_stream(sources.resolve(str(folder), streaming=True), folder)


def shard_documents(stream: BlockStream, shard: int, n_shards: int) -> list[str]:
    return [d for _, _, docs in stream.windows(shard, n_shards) for d in docs]


@pytest.mark.parametrize("shard_by,window", [("rows", 1), ("rows", 5), ("files", 3)])
def test_one_pass_over_all_shards_loses_and_duplicates_nothing(unequal_files, tokenizer, shard_by, window):
    folder, docs = unequal_files
    stream = BlockStream(stream_of(folder), tokenizer, SEQ, shard_by=shard_by, shuffle_window=window)
    n_shards = 4  # e.g. 2 ranks x 2 loader workers
    per_shard = [shard_documents(stream, k, n_shards) for k in range(n_shards)]
    seen = Counter(d for shard in per_shard for d in shard)
    assert set(seen) == set(docs) and max(seen.values()) == 1
    sizes = [len(s) for s in per_shard]
    if shard_by == "rows":  # equal shares whatever the file sizes (the blank row costs its shard one document)
        assert max(sizes) - min(sizes) <= 2, sizes
    else:  # whole files: 1, 3, 17 and 60 documents
        assert sorted(sizes) == [1, 3, 17, 60]


def test_rows_sharding_is_balanced_where_file_sharding_is_not(unequal_files, tokenizer):
    """The reason 'rows' is the default: split by files, these shards would differ 60-fold."""
    folder, docs = unequal_files
    stream = BlockStream(stream_of(folder), tokenizer, SEQ, shuffle_window=4)
    sizes = [len(shard_documents(stream, k, 3)) for k in range(3)]
    assert sum(sizes) == len(docs) and max(sizes) - min(sizes) <= 2, sizes


def test_blocks_are_the_shards_documents_packed_and_cycle_endlessly(unequal_files, tokenizer):
    folder, _ = unequal_files
    stream = BlockStream(stream_of(folder), tokenizer, SEQ, rank=1, world_size=2, shuffle_window=4, seed=7)
    docs = shard_documents(stream, 1, 2)
    expected = blocks.pack(encoding.encode_batches(tokenizer, [docs]), tokenizer.sep_token_id, SEQ)
    got = list(itertools.islice(stream._blocks(), 3 * len(expected)))  # three passes and more
    np.testing.assert_array_equal(np.stack(got[: len(expected)]), expected)
    # the second pass is reshuffled, and the partial block at the end of a pass carries over into it
    second = np.concatenate(got[len(expected) : 2 * len(expected)])
    assert Counter(second.tolist()) != Counter(np.concatenate(got[: len(expected)]).tolist()) or len(docs) < 2


@pytest.mark.parametrize("cut", [1, 4, 29, 61, 150])
def test_stream_resumes_exactly_from_its_state(unequal_files, tokenizer, cut):
    """Cut anywhere (inside a document, at a window boundary, in a later pass): the continuation is identical."""
    folder, _ = unequal_files

    def make():
        return BlockStream(stream_of(folder), tokenizer, SEQ, shuffle_window=3, seed=5)

    full = list(itertools.islice(make()._blocks(), 200))
    first = make()
    blocks_iter = first._blocks()
    for _ in range(cut):
        next(blocks_iter)
    state = first.state_dict()
    assert state["n_shards"] == 1 and isinstance(state["offset"], int)
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(itertools.islice(resumed._blocks(), 200 - cut))
    np.testing.assert_array_equal(np.stack(rest), np.stack(full[cut:]))


def test_multiworker_loader_resumes_exactly_on_each_rank(unequal_files, tokenizer):
    """Two ranks x two workers through torchdata's StatefulDataLoader: state after 5 batches, the next 6 agree."""
    folder, docs = unequal_files
    for rank in range(2):

        def loader(rank=rank):
            ds = BlockStream(stream_of(folder), tokenizer, SEQ, rank=rank, world_size=2, shuffle_window=2)
            return StatefulDataLoader(ds, batch_size=2, num_workers=2)

        reference = loader()
        it = iter(reference)
        head = [next(it) for _ in range(5)]
        state = reference.state_dict()
        tail = [next(it) for _ in range(6)]
        resumed = loader()
        resumed.load_state_dict(state)
        got = list(itertools.islice(iter(resumed), 6))
        assert all(torch.equal(a, b) for a, b in zip(got, tail, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(got, head))  # it continued, it did not start over


def test_resume_with_another_shard_count_is_refused(unequal_files, tokenizer):
    folder, _ = unequal_files
    first = BlockStream(stream_of(folder), tokenizer, SEQ, rank=0, world_size=2)
    next(first._blocks())
    single = BlockStream(stream_of(folder), tokenizer, SEQ)
    single.load_state_dict(first.state_dict())
    with pytest.raises(InputError, match="written with 2 shards.*this run has 1"):
        next(single._blocks())


def test_too_few_files_for_file_sharding_and_empty_shards_fail_clearly(unequal_files, tokenizer, tmp_path):
    folder, _ = unequal_files
    with pytest.raises(InputError, match="shard_by='files' needs at least"):
        shard_documents(BlockStream(stream_of(folder), tokenizer, SEQ, shard_by="files"), 0, 5)
    one = tmp_path / "one.txt"
    one.write_text("a single document\n")
    stream = BlockStream(stream_of(one), tokenizer, SEQ, rank=1, world_size=2)
    with pytest.raises(InputError, match="holds no documents"):
        next(stream._blocks())


def test_corpus_holds_out_validation_documents_and_needs_max_steps(unequal_files, tmp_path):
    folder, docs = unequal_files
    dm = StreamingCorpus(
        source=str(folder),
        val_documents=5,
        tokenizer=str(minilm_dir()),
        seq_len=SEQ,
        batch_size=2,
        num_workers=0,
        shuffle_window=4,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    assert dm.parts[0].exclude == frozenset(map(doc_hash, docs[:5])) and dm.val_blocks.shape[1] == SEQ
    trained = set(shard_documents(dm.train_dataset(), 0, 1))
    assert trained == set(docs[5:])
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, max_steps=-1, accumulate_grad_batches=1)
    with pytest.raises(InputError, match="set trainer.max_steps"):
        dm.train_dataloader()
    dm.trainer.max_steps = 7
    assert len(dm.train_dataloader()) == 7  # one Lightning epoch = the run: no prefetch past a checkpoint


def test_a_huge_document_streams_in_bounded_pieces_and_resumes_inside_it(tmp_path, monkeypatch):
    from lightning_pretrain.data.tokenizers import load_pretrained

    tokenizer = load_pretrained(str(minilm_dir()))  # as StreamingCorpus loads it: unpadded, untruncated
    monkeypatch.setattr(encoding, "PIECE_CHARS", 300)  # the long document goes in ~100 pieces
    docs = [f"document {i} is short" for i in range(5)]
    docs.insert(2, " ".join(f"word{i % 97} and, more" for i in range(3000)))
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def make():
        return BlockStream(stream_of(source), tokenizer, SEQ, shuffle_window=1)

    whole = [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(docs, add_special_tokens=False)]
    expected = blocks.pack(whole, tokenizer.sep_token_id, SEQ)
    np.testing.assert_array_equal(np.stack(list(itertools.islice(make()._blocks(), len(expected)))), expected)
    first, cut = make(), len(expected) // 2
    for _ in itertools.islice(first._blocks(), cut):
        pass
    state = first.state_dict()
    assert (state["window"], state["doc"]) == (2, 0) and state["offset"] > 0  # inside the long document
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(itertools.islice(resumed._blocks(), len(expected) - cut))
    np.testing.assert_array_equal(np.stack(rest), expected[cut:])


def test_an_input_error_in_a_loader_worker_ends_the_console_script_in_one_line(tmp_path):
    """A shard problem raised inside a DataLoader worker: one `error:` line, exit 2, and the process ends (workers
    ignore SIGTERM, which multiprocessing's exit handler relies on: loaders.py ends them first)."""
    import os
    import subprocess
    import sys

    from conftest import ENGLISH, REPO

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"{ENGLISH[i % 6]} Paragraph {i}." for i in range(200)) + "\n")
    args = [
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_streaming_tiny.yaml"),
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
        "--model.init_args.warmup_steps",
        "0",
        "--data.source",
        str(corpus),
        "--data.vocab_size",
        "300",
        "--data.seq_len",
        "32",
        "--data.val_documents",
        "20",
        "--data.cache_dir",
        str(tmp_path / "cache"),
        "--data.num_workers",
        "2",
        "--data.shard_by",
        "files",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "lightning_pretrain", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "DataLoader worker" not in errors[0]
    assert "shard_by='files' needs at least as many files as ranks x workers (2); the source has 1" in errors[0]
    assert not list((tmp_path / "logs").rglob("version_*"))
