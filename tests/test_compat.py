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
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Probe()],
        default_root_dir=tmp_path,
    ).fit(_Tiny(), loader)
    assert seen == [[4, 5], [6, 7]]


def test_train_batches_run_is_lightnings_count():
    counts = {limit: compat.train_batches_run(8, limit) for limit in (None, 5, 20, 0.5, 1.0)}
    assert counts == {None: 8, 5: 5, 20: 8, 0.5: 4, 1.0: 8}
    assert compat.train_batches_run(8, 0.01) == 8  # a fraction Lightning refuses before any epoch: left whole


def test_dataset_fingerprint():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    changed = ds.map(lambda row: {"text": row["text"] + "!"})
    assert compat.dataset_fingerprint(ds) and compat.dataset_fingerprint(changed) != compat.dataset_fingerprint(ds)
    assert compat.dataset_fingerprint(ds.to_iterable_dataset()) is None  # a stream has none


def test_grad_scaler_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert compat.grad_scaler_scale(scaler) is None  # no scale tensor before the first use
    scaler.scale(torch.ones(()))
    assert float(compat.grad_scaler_scale(scaler)) == 8.0


def test_attn_implementation_and_no_split_modules():
    from transformers import AutoModel, BertConfig

    model = AutoModel.from_config(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=50),
        attn_implementation="eager",
    )
    assert compat.attn_implementation(model.config) == "eager"
    assert "BertLayer" in compat.no_split_modules(model)
    assert compat.no_split_modules(torch.nn.Linear(2, 2)) == set()


def test_trainer_links_time_interval_summary_kwargs_and_tqdm_bar():
    from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
    from lightning.pytorch.demos.boring_classes import BoringModel

    model = BoringModel()
    assert compat.trainer_of(model) is None
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        val_check_interval={"seconds": 30},
        check_val_every_n_epoch=None,
        enable_progress_bar=True,
        callbacks=[TQDMProgressBar()],
    )
    assert compat.val_check_time_interval(trainer) == 30
    assert compat.val_check_time_interval(L.Trainer(logger=False, enable_checkpointing=False)) is None
    bar = trainer.progress_bar_callback
    assert compat.tqdm_train_bar_exists(bar) is False
    trainer.fit(model)
    assert compat.trainer_of(model) is trainer
    assert compat.tqdm_train_bar_exists(bar) is True
    summary = ModelSummary()
    assert isinstance(compat.summary_kwargs(summary), dict)
