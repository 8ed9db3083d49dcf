"""Gradual unfreezing under DDP (`ddp_spawn`, 2 CPU processes, gloo): both ranks follow the schedule step by step
and end with identical weights; without `find_unused_parameters` the run is refused with a clear message."""

import json
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from test_finetune_modes import sentiment_csv, tiny_backbone  # noqa: F401 (fixtures)
from transformers import AutoModelForSequenceClassification

from lightning_pretrain.architecture import layer_depths
from lightning_pretrain.data import TextClassification
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import GradualUnfreezing, SequenceClassifier


class RankRecorder(L.Callback):
    """Each rank writes, per step, its unfrozen-group count and the parameters that changed, plus final checksums."""

    def __init__(self, out_dir):
        self.out_dir, self.steps = str(out_dir), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        changed = sorted(n for n, p in pl_module.model.named_parameters() if not torch.equal(p, self.before[n]))
        self.steps.append(
            {
                "step": trainer.global_step - 1,
                "changed": changed,
                "unfrozen": int(trainer.callback_metrics["train/unfrozen_groups"]),
            }
        )

    def on_train_end(self, trainer, pl_module):
        sums = {n: p.double().sum().item() for n, p in pl_module.model.named_parameters()}
        with open(f"{self.out_dir}/rank{trainer.global_rank}.json", "w") as fh:
            json.dump({"steps": self.steps, "sums": sums, "world_size": trainer.world_size}, fh)


@pytest.mark.slow
def test_gradual_unfreezing_under_ddp_spawn(tiny_backbone, sentiment_csv, tmp_path):  # noqa: F811
    dm = TextClassification(
        train_file=str(sentiment_csv),
        val_file=str(sentiment_csv),
        tokenizer=str(tiny_backbone),
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
    )
    model = SequenceClassifier(
        str(tiny_backbone),
        data=dm.publish(),
        trainability=GradualUnfreezing(every_n_steps=2),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        warmup_steps=0,
        lr_schedule="linear",
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(start_method="spawn", find_unused_parameters=True),
        max_steps=8,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RankRecorder(tmp_path)],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    depths, _ = layer_depths(AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2))
    for rank in ranks:
        assert rank["world_size"] == 2
        assert [s["unfrozen"] for s in rank["steps"]] == [1, 1, 2, 2, 3, 3, 4, 4]
        for s in rank["steps"]:  # group d trains from step 2d on
            assert set(s["changed"]) == {n for n, d in depths.items() if 2 * d <= s["step"]}, s["step"]
    assert ranks[0]["sums"] == ranks[1]["sums"]  # gradients were all-reduced for every group, frozen or not


def test_gradual_unfreezing_under_ddp_needs_find_unused_parameters():
    policy = GradualUnfreezing(every_n_steps=1)
    with pytest.raises(InputError, match="ddp_find_unused_parameters_true"):
        policy.setup(SimpleNamespace(strategy=DDPStrategy()), None, "fit")
    policy.setup(SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True)), None, "fit")
