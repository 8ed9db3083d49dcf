"""Weighted data mixtures (`--data.sources`): realised proportions, determinism per seed, exact resume of the
loaders (cached and streaming), exhaustion ('repeat' counts epochs, 'stop' ends), bad input, and one CLI run whose
TensorBoard log holds the realised mixture."""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pytest
import torch
from conftest import ENGLISH, REPO, cli
from test_resume import TINY, check_kill_and_resume, events_files

from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.pretrain import mixture as mx
from lightning_pretrain.data.pretrain import mixture_stream as ms
from lightning_pretrain.data.pretrain.block_stream import BlockStream
from lightning_pretrain.data.pretrain.blocks import BlockCollate
from lightning_pretrain.errors import InputError

SIZES = [50, 30, 20]


def blocks_of(sizes=SIZES) -> mx.MixtureBlocks:
    # row j of source i holds the value 1000 i + j: a batch shows where each row came from
    return mx.MixtureBlocks([np.repeat(1000 * i + np.arange(n)[:, None], 4, axis=1) for i, n in enumerate(sizes)])


def sampled(weights, n=4000, seed=1, **kw) -> np.ndarray:
    ds = blocks_of()
    it = iter(mx.MixtureSampler(ds, np.asarray(weights) / np.sum(weights), 8, seed=seed, **kw))
    return np.array([next(it) for _ in range(n)])


def source_of(idx: np.ndarray) -> np.ndarray:
    return np.searchsorted(blocks_of().offsets, idx, side="right") - 1


# -- proportions and order ----------------------------------------------------------------------------------------
def test_realised_proportions_are_the_weights_within_sampling_error():
    w, n = np.array([0.6, 0.3, 0.1]), 4000
    share = np.bincount(source_of(sampled(w, n)), minlength=3) / n
    sigma = np.sqrt(w * (1 - w) / n)
    assert (np.abs(share - w) < 4 * sigma).all(), share
    # negative control: other weights give a measurably other mixture
    other = np.bincount(source_of(sampled([0.2, 0.4, 0.4], n)), minlength=3) / n
    assert abs(other[0] - w[0]) > 10 * sigma[0]


def test_order_is_a_function_of_the_seed_and_each_source_epoch_a_permutation():
    a, b, c = sampled([1, 1, 1], 600, seed=1), sampled([1, 1, 1], 600, seed=1), sampled([1, 1, 1], 600, seed=2)
    assert (a == b).all() and (a != c).any()
    for s, size in enumerate(SIZES):  # 'repeat': each pass over a source uses every row once, in a new order
        rows = a[source_of(a) == s]
        assert sorted(rows[:size]) == list(range(blocks_of().offsets[s], blocks_of().offsets[s] + size))
        assert (rows[:size] != rows[size : 2 * size]).any()


def test_ranks_share_the_one_global_sequence():
    ds, w = blocks_of(), np.array([0.5, 0.3, 0.2])
    one = iter(mx.MixtureSampler(ds, w, 4, seed=3))
    ranks = [iter(mx.MixtureSampler(ds, w, 4, seed=3, rank=r, world_size=2)) for r in range(2)]
    merged = [next(ranks[k % 2]) for k in range(400)]  # positions r, r + 2, ... of each round of 8
    assert merged == [next(one) for _ in range(400)]


# -- exact resume of the loaders -----------------------------------------------------------------------------------
def cached_loader(workers: int):
    from torchdata.stateful_dataloader import StatefulDataLoader

    ds = blocks_of()
    sampler = mx.MixtureSampler(ds, np.array([0.5, 0.3, 0.2]), 4, seed=7)
    return StatefulDataLoader(
        ds, batch_size=4, sampler=sampler, drop_last=True, collate_fn=BlockCollate(), num_workers=workers
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b) -> bool:
    return all(
        torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["mixture_source"], y["mixture_source"])
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_cached_mixture_resumes_exactly(workers):
    uninterrupted = take(iter(cached_loader(workers)), 40)  # past the end of the smaller sources' first epoch
    first = cached_loader(workers)
    it = iter(first)
    take(it, 13)
    state = first.state_dict()
    del it
    resumed = cached_loader(workers)
    resumed.load_state_dict(state)
    assert same(take(iter(resumed), 27), uninterrupted[13:])
    first_batch = uninterrupted[0]
    assert first_batch["mixture_source"].dtype == torch.long and set(first_batch) == {"input_ids", "mixture_source"}
    # negative control: a fresh loader starts over
    assert not same(take(iter(cached_loader(workers)), 27), uninterrupted[13:])


def test_stop_ends_at_the_first_spent_source_and_repeat_goes_on():
    ds, w = blocks_of(), np.array([0.2, 0.2, 0.6])  # source 2 (20 rows, 60 %) runs out first
    stop = mx.MixtureSampler(ds, w, 4, seed=1, exhaustion="stop")
    rows = list(stop)
    assert len(rows) == len(stop) and len(rows) % 4 == 0 and stop.ran_out == 2
    counts = np.bincount(source_of(np.array(rows)), minlength=3)
    assert (counts <= SIZES).all() and counts[2] > SIZES[2] - 4  # it ends within a round (4) of running out
    assert list(stop) == []  # spent: a new epoch is empty (the callback stops the run before one starts)
    more = sampled(w, len(rows) + 40)  # 'repeat' draws past that point, into source 2's second epoch
    assert np.bincount(source_of(more), minlength=3)[2] > SIZES[2]


def test_bad_sources_are_refused_in_one_line():
    with pytest.raises(InputError, match="empty"):
        mx.check_sources([])
    with pytest.raises(InputError, match="weight"):
        mx.check_sources([{"source": "builtin", "weight": 0}])
    with pytest.raises(InputError, match="duplicate"):
        mx.check_sources([{"source": "a.txt", "name": "x"}, {"source": "b.txt", "name": "x"}])
    _, names, weights = mx.check_sources(
        [{"source": "/d/train.txt", "weight": 3}, {"source": "/e/train.txt"}, {"source": "org/set:cfg@train"}]
    )
    assert names == ["train", "train_2", "set_cfg"] and np.allclose(weights, [0.6, 0.2, 0.2])


# -- streaming -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return toks.train_bpe((e for _ in range(20) for e in ENGLISH), 300)


def doc_stream(tag: str, n: int) -> datasets.IterableDataset:
    texts = [f"{ENGLISH[i % len(ENGLISH)]} {tag} document {i}." for i in range(n)]
    return datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()


def stream_mixture(tokenizer, exhaustion="repeat") -> ms.MixtureStream:
    streams = [BlockStream(doc_stream(t, n), tokenizer, 16, shuffle_window=8, seed=5) for t, n in (("a", 60), ("b", 3))]
    return ms.MixtureStream(streams, np.array([0.5, 0.5]), ["a", "b"], seed=5, exhaustion=exhaustion)


def stream_loader(tokenizer, **kw):
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(stream_mixture(tokenizer, **kw), batch_size=4, collate_fn=BlockCollate())


def test_streaming_mixture_resumes_exactly_and_counts_passes(tokenizer):
    uninterrupted = take(iter(stream_loader(tokenizer)), 30)
    first = stream_loader(tokenizer)
    it = iter(first)
    take(it, 11)
    state = first.state_dict()
    resumed = stream_loader(tokenizer)
    resumed.load_state_dict(state)
    assert same(take(iter(resumed), 19), uninterrupted[11:])
    share = torch.cat([b["mixture_source"] for b in uninterrupted]).float().mean()
    assert 0.3 < share < 0.7  # two equal weights
    passes = ms.stream_passes(first, 2)
    assert passes[1] >= 1 and passes[1] > passes[0]  # the small source 'b' is read again ('repeat')


def test_streaming_stop_ends_at_the_end_of_a_pass(tokenizer):
    loader = stream_loader(tokenizer, exhaustion="stop")
    batches = list(loader)  # ends by itself
    assert batches and ms.first_exhausted(loader) == 1
    alone = BlockStream(doc_stream("b", 3), tokenizer, 16, shuffle_window=8, seed=5)
    it, one_pass = iter(alone), 0
    while alone.state_dict().get("pass", 0) == 0:  # the blocks that begin in its first pass
        next(it)
        one_pass += 1
    assert int(sum((b["mixture_source"] == 1).sum() for b in batches)) == one_pass
    assert len(take(iter(stream_loader(tokenizer)), len(batches) + 5)) == len(batches) + 5  # 'repeat' goes on


# -- end to end ----------------------------------------------------------------------------------------------------
def two_corpora(tmp_path):
    a, b = tmp_path / "alpha.txt", tmp_path / "beta.txt"
    a.write_text("\n\n".join(f"{ENGLISH[i % 6]} Alpha paragraph {i}." for i in range(300)) + "\n")
    b.write_text("\n\n".join(f"{ENGLISH[(i + 3) % 6]} Beta note {i} of {i * 7 % 13}." for i in range(40)) + "\n")
    return a, b


def test_a_mixture_reads_its_sources_itself_and_publishes_its_state(tmp_path):
    """No child data modules: the corpus holds one source reader per entry, builds the streams for its own rank,
    and publishes names, epochs and the spent source as one value (what callbacks/mixture.py reads)."""
    from types import SimpleNamespace

    import lightning as L
    from conftest import minilm_dir

    from lightning_pretrain.data import PretrainCorpus, StreamingCorpus

    a, b = two_corpora(tmp_path)
    mix = [{"source": str(a), "weight": 0.7}, {"source": str(b), "weight": 0.3, "name": "beta"}]
    common = {
        "sources": mix,
        "tokenizer": str(minilm_dir()),
        "seq_len": 16,
        "batch_size": 4,
        "cache_dir": str(tmp_path / "cache"),
    }
    dm = PretrainCorpus(**common)
    assert len(dm.parts) == 2 and not any(isinstance(p, L.LightningDataModule) for p in dm.parts)
    with pytest.raises(RuntimeError, match="publish"):
        dm.contract  # noqa: B018 (the contract is a value made known by publish, never computed on reading)
    assert dm.publish() is dm.contract and dm.contract.seq_len == 16
    dm.setup("fit")
    state = dm.mixture_state([7, 3], None)
    assert state == mx.MixtureState(
        ("alpha", "beta"), (7 / len(dm.parts[0].train_blocks), 3 / len(dm.parts[1].train_blocks)), None
    )
    assert PretrainCorpus(**{**common, "sources": None, "source": str(a)}).mixture_state([5], None) is None
    streaming = StreamingCorpus(**common, num_workers=0, val_documents=5)
    streaming.trainer = SimpleNamespace(global_rank=1, world_size=2, max_steps=10, accumulate_grad_batches=1)
    dataset = streaming.train_dataset()
    assert isinstance(dataset, ms.MixtureStream) and len(dataset) == 40
    assert [(s.rank, s.world_size) for s in dataset.streams] == [(1, 2), (1, 2)]  # built for this rank


def scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events_files(run)[-1]), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_cli_logs_the_realised_mixture(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    a, b = two_corpora(tmp_path)
    mix = f"[{{source: {a}, weight: 0.7}}, {{source: {b}, weight: 0.3, name: beta}}]"
    args = [
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *TINY,
        "--data.sources",
        mix,
        "--data.batch_size",
        "8",
        "--trainer.max_steps",
        "30",
    ]
    cli(*args)
    got = scalars(tmp_path / "logs" / "resume" / "version_0")
    alpha, beta = got["train/mixture/alpha"][-1].value, got["train/mixture/beta"][-1].value
    sigma = np.sqrt(0.21 / (30 * 8))
    assert abs(beta - 0.3) < 4 * sigma and abs(alpha + beta - 1) < 1e-6
    assert got["train/epochs/beta"][-1].value > 0
    # exhaustion='stop': the run ends cleanly when beta is spent, long before max_steps
    with caplog.at_level(logging.INFO):
        cli(*args[:-1], "1000", "--data.exhaustion", "stop")
    assert "source 'beta' ran out" in caplog.text
    steps = [e.step for e in scalars(tmp_path / "logs" / "resume" / "version_1")["train/mixture/beta"]]
    assert steps and max(steps) < 999


@pytest.mark.slow
def test_mixture_run_killed_and_resumed_logs_the_same_losses(tmp_path):
    a, b = two_corpora(tmp_path)
    mix = f"[{{source: {a}, weight: 0.7}}, {{source: {b}, weight: 0.3}}]"
    check_kill_and_resume(
        tmp_path,
        [
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            *TINY,
            "--data.sources",
            mix,
            "--data.batch_size",
            "8",
            "--data.num_workers",
            "1",
            "--trainer.max_steps",
            "24",
            "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.save_last",
            "true",
            "--trainer.callbacks.every_n_train_steps",
            "5",
        ],
    )
