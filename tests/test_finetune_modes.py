"""Fine-tuning modes: exactly the intended parameters get gradients and change; frozen weights stay bit-identical and
cost no optimizer state; LLRD's per-group LRs; gradual unfreezing step by step, also across a mid-schedule resume;
LoRA's merged export equals the adapted model."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import minilm_dir
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel, pipeline

from lightning_pretrain.architecture import layer_depths
from lightning_pretrain.data import TextClassification
from lightning_pretrain.finetune import (
    Frozen,
    Full,
    GradualUnfreezing,
    LayerwiseLRDecay,
    LoRA,
    SequenceClassifier,
    TopK,
)

POSITIVE = [
    "a wonderful moving film",
    "great acting and a lovely story",
    "brilliant, funny and warm",
    "i loved every minute",
    "superb direction and a fine cast",
    "charming and delightful",
]
NEGATIVE = [
    "a dull and tedious mess",
    "awful acting, terrible plot",
    "boring from start to end",
    "i hated every minute",
    "a clumsy, lifeless script",
    "painfully bad and far too long",
]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 2-block BERT (hidden 32, no dropout) with MiniLM's real tokenizer, saved as an HF checkpoint directory."""
    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """64 labelled sentences (train and validation file at once)."""
    path = tmp_path_factory.mktemp("sentiment") / "train.csv"
    rows = [
        (f"{POSITIVE[i % 6]} number {i}", "positive") if i % 2 else (f"{NEGATIVE[i % 6]} number {i}", "negative")
        for i in range(64)
    ]
    path.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    return path


def classifier(backbone, data_file, trainability, tmp_path, lr=1e-3, schedule="constant", **data_kwargs):
    dm = TextClassification(
        train_file=str(data_file),
        val_file=str(data_file),
        tokenizer=str(backbone),
        batch_size=8,
        cache_dir=str(tmp_path / "cache"),
        **data_kwargs,
    )
    model = SequenceClassifier(
        str(backbone),
        data=dm.publish(),
        trainability=trainability,
        optimizer=lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
        warmup_steps=0,
        lr_schedule=schedule,
    )
    return model, dm


def trainer(tmp_path, steps, callbacks=(), **kwargs) -> L.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, "limit_val_batches": 0, **kwargs}
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
        **kwargs,
    )


class Recorder(L.Callback):
    """Per optimizer step: which parameters had a gradient, which changed, each group's LR, unfrozen groups."""

    def __init__(self):
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
        self.grads = {n for n, p in pl_module.model.named_parameters() if p.grad is not None}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        changed = {n for n, p in pl_module.model.named_parameters() if not torch.equal(p, self.before[n])}
        unfrozen = trainer.callback_metrics.get("train/unfrozen_groups")
        self.steps.append(
            {
                "step": trainer.global_step - 1,
                "grads": self.grads,
                "changed": changed,
                "examples": batch["example_id"].tolist(),
                "lrs": self.lrs,
                "unfrozen": None if unfrozen is None else int(unfrozen),
            }
        )


def fit(model, dm, tmp_path, steps, callbacks=(), ckpt_path=None, **kwargs):
    recorder = Recorder()
    t = trainer(tmp_path, steps, [recorder, *callbacks], **kwargs)
    t.fit(model, dm, ckpt_path=ckpt_path)
    return recorder, t


def by_depth(model) -> dict[str, int]:
    return layer_depths(model.model)[0]


def test_layer_depths_of_bert(tiny_backbone):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2)
    depths, n_layers = layer_depths(model)
    assert n_layers == 2
    assert depths["classifier.weight"] == 0 and depths["bert.pooler.dense.weight"] == 1
    assert depths["bert.encoder.layer.1.output.dense.weight"] == 1
    assert depths["bert.encoder.layer.0.attention.self.query.weight"] == 2
    assert depths["bert.embeddings.word_embeddings.weight"] == 3


def test_full_trains_everything(tiny_backbone, sentiment_csv, tmp_path):
    model, dm = classifier(tiny_backbone, sentiment_csv, Full(), tmp_path)
    rec, _ = fit(model, dm, tmp_path, steps=2)
    everything = {n for n, _ in model.model.named_parameters()}
    assert all(s["changed"] == everything == s["grads"] for s in rec.steps)


@pytest.mark.parametrize("policy,trained_depths", [(Frozen(), {0}), (TopK(k=1), {0, 1})])
def test_frozen_and_top_k_train_only_their_part(tiny_backbone, sentiment_csv, tmp_path, policy, trained_depths):
    model, dm = classifier(tiny_backbone, sentiment_csv, policy, tmp_path)
    rec, t = fit(model, dm, tmp_path, steps=3)
    frozen_snapshot = rec.steps[0]["changed"]
    depths = by_depth(model)
    intended = {n for n, d in depths.items() if d in trained_depths}
    assert intended and frozen_snapshot == intended
    assert all(s["changed"] == s["grads"] == intended for s in rec.steps)
    # frozen weights are bit-identical to the checkpoint's after training
    initial = dict(AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2).named_parameters())
    for name, p in model.model.named_parameters():
        if name not in intended:
            assert torch.equal(p, initial[name]), name
    # and cost no optimizer state: neither in the groups nor in the state
    opt = t.optimizers[0]
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for n, p in model.model.named_parameters() if n in intended}
    assert in_groups == trainable and {id(p) for p in opt.state} == trainable


def test_llrd_group_learning_rates(tiny_backbone, sentiment_csv, tmp_path):
    model, dm = classifier(tiny_backbone, sentiment_csv, LayerwiseLRDecay(decay=0.5), tmp_path, lr=1e-3)
    rec, _ = fit(model, dm, tmp_path, steps=1)
    expected = {"head": 1e-3, "layer.1": 5e-4, "layer.0": 2.5e-4, "embeddings": 1.25e-4}
    lrs = rec.steps[0]["lrs"]
    for name, lr in expected.items():
        assert lrs[name] == pytest.approx(lr) and lrs[f"{name}.no_decay"] == pytest.approx(lr)
    assert len(lrs) == 8 and rec.steps[0]["changed"] == {n for n, _ in model.model.named_parameters()}


def gradual_expectations(model, step: int, every: int) -> set[str]:
    return {n for n, d in by_depth(model).items() if d <= step // every}


def test_gradual_unfreezing_follows_its_schedule_step_by_step(tiny_backbone, sentiment_csv, tmp_path):
    """Per-step linear schedule (BackboneFinetuning crashes on one): group d trains from step 2d on, with LR 0
    and no gradient before."""
    model, dm = classifier(
        tiny_backbone, sentiment_csv, GradualUnfreezing(every_n_steps=2), tmp_path, schedule="linear"
    )
    rec, t = fit(model, dm, tmp_path, steps=8)
    assert [s["unfrozen"] for s in rec.steps] == [1, 1, 2, 2, 3, 3, 4, 4]
    base = 1e-3
    for s in rec.steps:
        step, trains = s["step"], gradual_expectations(model, s["step"], 2)
        assert s["grads"] == s["changed"] == trains, step
        shape = (8 - step) / 8  # linear decay to 0 over 8 steps, no warmup
        for name, lr in s["lrs"].items():
            depth = {"head": 0, "layer.1": 1, "layer.0": 2, "embeddings": 3}[name.removesuffix(".no_decay")]
            assert lr == pytest.approx(base * shape if step >= 2 * depth else 0.0), (step, name)
    opt = t.optimizers[0]
    assert len(opt.param_groups) == 8  # every group from the start, none added later


def test_gradual_unfreezing_by_epochs(tiny_backbone, sentiment_csv, tmp_path):
    model, dm = classifier(tiny_backbone, sentiment_csv, GradualUnfreezing(every_n_epochs=1), tmp_path)
    rec, _ = fit(model, dm, tmp_path, steps=24, limit_train_batches=4)  # 4 steps per epoch
    assert [s["unfrozen"] for s in rec.steps][::4] == [1, 2, 3, 4, 4, 4]


def test_gradual_unfreezing_resumes_mid_schedule_exactly(tiny_backbone, sentiment_csv, tmp_path):
    """Resume from the step-3 checkpoint (mid-epoch, mid-schedule) in a fresh model and trainer: steps 3..7 see the
    same batches, gradients, LRs and unfrozen groups as the uninterrupted run, and end with the same weights.
    (Epoch-based runs, whose LR schedule loads the loader before the restore, rely on the CLI's ResumeState.)"""

    def make():
        return classifier(tiny_backbone, sentiment_csv, GradualUnfreezing(every_n_steps=2), tmp_path, schedule="linear")

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    model_a, dm_a = make()  # 64 examples / 8 = 8 steps, checkpoints at steps 3 and 6
    rec_a, _ = fit(model_a, dm_a, tmp_path / "a", steps=8, callbacks=[ckpt], enable_checkpointing=True)
    (path,) = (tmp_path / "ckpt").glob("*step=3*.ckpt")
    model_c, dm_c = make()
    rec_c, _ = fit(model_c, dm_c, tmp_path / "c", steps=8, ckpt_path=str(path))
    assert [s["step"] for s in rec_a.steps] == list(range(8)) and [s["step"] for s in rec_c.steps] == [3, 4, 5, 6, 7]
    for resumed, uninterrupted in zip(rec_c.steps, rec_a.steps[3:]):
        assert resumed["unfrozen"] == uninterrupted["unfrozen"] and resumed["examples"] == uninterrupted["examples"]
        assert resumed["grads"] == uninterrupted["grads"] and resumed["changed"] == uninterrupted["changed"]
        assert resumed["lrs"] == pytest.approx(uninterrupted["lrs"])
    for (name, p), q in zip(model_a.model.named_parameters(), model_c.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_lora_trains_adapters_and_head_and_merged_export_matches(tiny_backbone, sentiment_csv, tmp_path):
    model, dm = classifier(tiny_backbone, sentiment_csv, LoRA(r=4, alpha=8, dropout=0.0), tmp_path, lr=1e-2)
    rec, t = fit(model, dm, tmp_path, steps=4)
    names = {n for n, _ in model.model.named_parameters()}
    adapters = {n for n in names if "lora_" in n}
    head = {n for n in names if "modules_to_save" in n}
    assert adapters and head and all(s["changed"] == s["grads"] == adapters | head for s in rec.steps)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapters} == {"query", "value"}
    assert {id(p) for p in t.optimizers[0].state} == {
        id(p) for n, p in model.model.named_parameters() if n in adapters | head
    }

    out = model.export_hf(tmp_path / "hf")
    assert (out / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    batch = next(iter(dm.val_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    model.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, model.model(**inputs).logits, rtol=1e-4, atol=1e-5)
        base = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2).eval()
        assert not torch.allclose(base.bert(**inputs).pooler_output, merged.bert(**inputs).pooler_output)
    preds = pipeline("text-classification", model=str(out), device="cpu")(["a wonderful film"])
    assert preds[0]["label"] in {"negative", "positive"}
