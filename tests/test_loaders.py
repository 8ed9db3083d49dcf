"""The one stateful loader: under DDP its own resumable DistributedSampler (which Lightning leaves alone), worker
seeds from a generator of their own, exact mid-epoch resume in a later epoch; every DataModule builds its loaders
with it."""

from types import SimpleNamespace

import pytest
import torch
from conftest import minilm_dir
from torch.utils.data import DistributedSampler, IterableDataset
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from lightning_pretrain.data import PretrainCorpus, SentencePairCorpus, TextClassification
from lightning_pretrain.data.loaders import stateful_loader


def batches(loader, n=None) -> list[list[int]]:
    out = []
    for b in loader:
        out.append(b.tolist())
        if n is not None and len(out) == n:
            break
    return out


def test_ranks_share_out_each_epoch_and_resume_mid_epoch_exactly():
    data = list(range(40))
    make = lambda rank: stateful_loader(data, 4, shuffle=True, drop_last=True, seed=7, rank=rank, world_size=2)  # noqa: E731
    ranks = [make(0), make(1)]
    assert all(isinstance(r.sampler, StatefulDistributedSampler) for r in ranks)
    for epoch in (0, 1):
        seen = []
        for r in ranks:
            r.sampler.set_epoch(epoch)
            seen += sum(batches(r), [])
        assert sorted(seen) == data  # disjoint halves that cover the data, reshuffled per epoch

    uninterrupted = make(0)
    uninterrupted.sampler.set_epoch(1)
    it = iter(uninterrupted)
    first = [next(it).tolist() for _ in range(2)]
    state = uninterrupted.state_dict()
    rest = [b.tolist() for b in it]
    resumed = make(0)
    resumed.sampler.set_epoch(1)
    resumed.load_state_dict(state)
    assert batches(resumed) == rest and len(first + rest) == 5


def test_worker_seeds_come_from_a_generator_of_their_own():
    loader = stateful_loader(list(range(8)), 2, shuffle=True, seed=3)
    assert loader.generator.initial_seed() == 4  # not the sampler's, not the global RNG
    assert loader.sampler.generator.initial_seed() == 3
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    list(loader)
    assert torch.equal(torch.random.get_rng_state(), before)  # a loader never draws from the global stream


def test_iterable_datasets_order_themselves():
    class Count(IterableDataset):
        def __iter__(self):
            return iter(range(6))

    loader = stateful_loader(Count(), 2, seed=0, rank=1, world_size=2)
    assert batches(loader) == [[0, 1], [2, 3], [4, 5]]  # no sampler: the dataset shards itself by rank
    with pytest.raises(ValueError, match="orders itself"):
        stateful_loader(Count(), 2, shuffle=True)


def test_every_datamodule_uses_it_under_ddp(tiny_corpus, tmp_path):
    """Lightning replaces a loader's sampler unless it is a DistributedSampler: each DataModule's train and
    validation loaders come with their own under DDP."""
    csv = tmp_path / "t.csv"
    csv.write_text("text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(16)))
    cache = str(tmp_path / "cache")
    modules = [
        PretrainCorpus(source=str(tiny_corpus), vocab_size=300, seq_len=32, batch_size=4, cache_dir=cache),
        SentencePairCorpus(source=str(tiny_corpus), vocab_size=300, seq_len=32, batch_size=4, cache_dir=cache),
        TextClassification(
            train_file=str(csv), val_file=str(csv), tokenizer=str(minilm_dir()), batch_size=4, cache_dir=cache
        ),
    ]
    for dm in modules:
        dm.prepare_data()
        dm.setup("fit")
        dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
        for loader, shuffle in ((dm.train_dataloader(), True), (dm.val_dataloader(), False)):
            assert isinstance(loader.sampler, DistributedSampler), type(dm).__name__
            assert (loader.sampler.rank, loader.sampler.num_replicas, loader.sampler.shuffle) == (1, 2, shuffle)
            assert loader.generator.initial_seed() == dm.seed + 1
