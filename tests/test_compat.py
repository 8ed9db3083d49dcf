"""Every private Lightning / torch / torchdata access of `lightning_pretrain.compat`, exercised on real objects:
an upgrade that moves one fails here, by name, instead of silently breaking exact resume or FLOPs accounting."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from lightning_pretrain import compat


def test_is_compiled():
    layer = torch.nn.Linear(2, 2)
    assert not compat.is_compiled(layer)
    layer.compile()
    assert compat.is_compiled(layer)


def test_loader_state_workers():
    data = TensorDataset(torch.arange(8))
    for workers in (0, 1):
        loader = StatefulDataLoader(data, batch_size=2, num_workers=workers)
        it = iter(loader)
        next(it)
        assert compat.loader_state_workers(loader.state_dict()) == workers
        del it


def test_set_sampler_epoch():
    sampler = DistributedSampler(TensorDataset(torch.arange(8)), num_replicas=1, rank=0)
    compat.set_sampler_epoch(DataLoader(sampler.dataset, sampler=sampler), 3)
    assert sampler.epoch == 3


def test_ddp_find_unused_parameters():
    assert compat.ddp_finds_unused_parameters(DDPStrategy(find_unused_parameters=True))
    assert not compat.ddp_finds_unused_parameters(DDPStrategy())


def test_model_parallel_data_parallel_size():
    strategy = ModelParallelStrategy()
    assert hasattr(strategy, "_data_parallel_size")  # the attribute compat sets must exist where it looks
    compat.set_data_parallel_size(strategy, 4)
    assert strategy._data_parallel_size == 4


def test_compute_dtype_and_throughput_trackers():
    assert compat.compute_dtype(Precision()) == torch.float32
    assert isinstance(compat.monitor_throughputs(ThroughputMonitor(batch_size_fn=len)), dict)


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0].float()[:, None]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_train_loaders_and_loading_their_state(tmp_path):
    seen = []

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            loaders = compat.train_loaders(trainer)
            assert len(loaders) == 1 and isinstance(loaders[0], StatefulDataLoader)
            it = iter(loaders[0])
            next(it), next(it)
            compat.load_train_loader_states(trainer, [loaders[0].state_dict()])  # resume after two batches

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0].tolist())

    loader = StatefulDataLoader(TensorDataset(torch.arange(8)), batch_size=2)
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[Probe()], default_root_dir=tmp_path).fit(_Tiny(), loader)
    assert seen == [[4, 5], [6, 7]]
