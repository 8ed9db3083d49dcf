"""Accumulation-exact token windows (data/windows.py through `stateful_loader`): every training batch carries the
label tokens of all batches of its accumulation window on its rank, windows aligned to the epoch's first batch (the
last one shorter, also where limit_train_batches ends the epoch), under DDP sharding, with worker processes, and
across an exact mid-epoch resume."""

import datasets
import pytest
import torch

from lightning_pretrain.data.loaders import stateful_loader
from lightning_pretrain.data.windows import TokenWindows, training_windows, window_totals

N = 22
COUNTS = [(7 * i) % 5 + 1 + i for i in range(N)]  # distinct enough that a wrong grouping changes a sum
ROWS = [{"id": i} for i in range(N)]


def run(loader, n=None) -> list[tuple[list[int], int]]:
    out = []
    for b in loader:
        out.append((b["id"].tolist(), int(b["window_tokens"])))
        if n is not None and len(out) == n:
            break
    return out


def expected(batches: list[list[int]], k: int, stop: int | None = None) -> list[int]:
    """The window total of each batch, by hand: windows of k batches from the first, cut after `stop` batches."""
    stop = len(batches) if stop is None else stop
    sums = [sum(COUNTS[i] for i in ids) for ids in batches]
    out = []
    for b in range(len(batches)):
        start = b // k * k if b < stop else stop + (b - stop) // k * k
        end = min(start + k, stop) if b < stop else min(start + k, len(batches))
        out.append(sum(sums[start:end]))
    return out


@pytest.mark.parametrize("k", [1, 4])
def test_each_batch_carries_its_windows_tokens_and_the_last_window_is_shorter(k):
    loader = stateful_loader(ROWS, 3, shuffle=True, seed=5, token_counts=COUNTS, accumulate=k)
    got = run(loader)
    ids = [b for b, _ in got]
    assert len(ids) == 8 and len(ids[-1]) == 1 and sorted(sum(ids, [])) == list(range(N))  # shuffled, all there
    assert [w for _, w in got] == expected(ids, k)
    if k == 4:  # two windows of 4 batches: the second is the short one (3 full batches and a single example)
        assert got[0][1] == sum(COUNTS[i] for b in ids[:4] for i in b) and got[4][1] == got[7][1]
    else:
        assert [w for _, w in got] == [sum(COUNTS[i] for i in b) for b in ids]


def test_limit_batches_and_drop_last_end_the_last_window_where_the_epoch_ends():
    for limit, stop in ((5, 5), (0.9, 6), (1.0, 7), (None, 7)):
        loader = stateful_loader(
            ROWS, 3, shuffle=True, seed=1, drop_last=True, token_counts=COUNTS, accumulate=4, limit_batches=limit
        )
        got = run(loader)
        assert len(got) == 7 and all(len(b) == 3 for b, _ in got)  # drop_last: the short batch is gone
        assert [w for _, w in got] == expected([b for b, _ in got], 4, stop), limit
    assert window_totals([1, 2, 3, 4, 5], 2, run=3).tolist() == [3, 3, 3, 9, 9]
    assert training_windows(None) == {"accumulate": 1, "limit_batches": None}


def test_each_rank_sums_its_own_share():
    ranks = [
        stateful_loader(ROWS, 2, shuffle=True, seed=3, rank=r, world_size=2, token_counts=COUNTS, accumulate=3)
        for r in (0, 1)
    ]
    assert all(isinstance(r.sampler, TokenWindows) for r in ranks)
    seen = []
    for r in ranks:
        r.sampler.set_epoch(2)
        got = run(r)
        seen += sum((b for b, _ in got), [])
        assert [w for _, w in got] == expected([b for b, _ in got], 3)
    assert sorted(seen) == list(range(N))  # disjoint shares covering the data


def test_hf_datasets_and_no_token_counts_behave_as_before():
    ds = datasets.Dataset.from_dict({"id": list(range(N))})
    got = run(stateful_loader(ds, 4, shuffle=False, token_counts=COUNTS, accumulate=2))
    assert [b for b, _ in got][0] == [0, 1, 2, 3] and [w for _, w in got] == expected([b for b, _ in got], 2)
    plain = next(iter(stateful_loader(ds, 4, shuffle=False)))
    assert "window_tokens" not in plain and plain["id"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="token_counts has 3 entries"):
        stateful_loader(ds, 4, token_counts=[1, 2, 3])


@pytest.mark.parametrize("workers,world_size", [(0, 1), (2, 1), (0, 2)])
def test_a_state_dict_taken_mid_epoch_resumes_the_exact_batches_and_windows(workers, world_size):
    def make():
        loader = stateful_loader(
            ROWS,
            2,
            shuffle=True,
            seed=11,
            rank=world_size - 1,
            world_size=world_size,
            num_workers=workers,
            token_counts=COUNTS,
            accumulate=4,
        )
        loader.sampler.set_epoch(1)  # a later epoch: its order depends on the epoch
        return loader

    uninterrupted = make()
    it = iter(uninterrupted)
    first = [next(it) for _ in range(3)]
    state = uninterrupted.state_dict()
    rest = [(b["id"].tolist(), int(b["window_tokens"])) for b in it]
    resumed = make()
    resumed.load_state_dict(state)
    assert run(resumed) == rest and len(first) + len(rest) == len(uninterrupted)
    assert int(first[2]["window_tokens"]) == rest[0][1]  # batch 3 still sums the window begun before the resume
    whole = [(b["id"].tolist(), int(b["window_tokens"])) for b in first] + rest
    assert [w for _, w in whole] == expected([b for b, _ in whole], 4)
    assert torch.equal(first[0]["window_tokens"], torch.tensor(whole[0][1]))


def test_windows_are_the_batches_lightning_accumulates_between_optimizer_steps(tmp_path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w, self.seen, self.steps = torch.nn.Parameter(torch.zeros(1)), [], []

        def training_step(self, batch, batch_idx):
            self.seen.append((sum(COUNTS[i] for i in batch["id"].tolist()), int(batch["window_tokens"])))
            return self.w.sum() * 0.0

        def on_before_optimizer_step(self, optimizer):
            self.steps.append(len(self.seen))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return stateful_loader(ROWS, 3, shuffle=True, seed=0, token_counts=COUNTS, **training_windows(self.trainer))

    model = Recorder()
    L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        accumulate_grad_batches=3,
        limit_train_batches=7,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    ).fit(model, Data())
    bounds = [0, *model.steps]
    assert [b - a for a, b in zip(bounds, bounds[1:])] == [3, 3, 1] * 2  # 8 batches an epoch, limited to 7
    for a, b in zip(bounds, bounds[1:]):  # each batch of a step's window carries the tokens of all of them
        assert {w for _, w in model.seen[a:b]} == {sum(t for t, _ in model.seen[a:b])}


def test_plain_indices_from_a_sampler_lightning_put_in_place_fetch_rows_without_a_window_total():
    """`--trainer.overfit_batches` makes Lightning rebuild the loader with a plain sampler: its int indices fetch
    the rows, and the batch carries no `window_tokens` (the loss then normalises over each batch), not a TypeError."""
    from lightning_pretrain.data.windows import WindowCollate, Windowed

    rows = [{"x": torch.tensor([i])} for i in range(4)]
    windowed = Windowed(rows)
    assert windowed.__getitems__([(1, 7), (2, 7)]) == ([rows[1], rows[2]], 7)
    assert windowed.__getitems__([1, 2]) == ([rows[1], rows[2]], None) and windowed[3] == rows[3]
    collate = WindowCollate()
    assert collate(windowed.__getitems__([(0, 5), (1, 5)]))["window_tokens"].item() == 5
    assert "window_tokens" not in collate(windowed.__getitems__([0, 1]))
