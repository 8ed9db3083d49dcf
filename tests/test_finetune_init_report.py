"""Every fine-tune says which weights the checkpoint did not provide (newly initialised) and which it left unused:
an MLM export gives the classifier no pooler and no head; a classification checkpoint gives it everything."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import REPO, cli, minilm_dir, only_run_dir
from test_finetune_classifier import QUIET, sst2_like  # noqa: F401 (fixture)
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.finetune import CausalSFT, SequenceClassifier
from lightning_pretrain.finetune.backbone_load import group_names

POOLER_AND_HEAD = ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias", "classifier.weight"]
MLM_HEAD = [
    "cls.predictions.bias",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.dense.weight",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def save(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bert_config(tokenizer, **kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **kwargs,
    )


def contract(tokenizer, task="classification", labels=("negative", "positive")) -> DataContract:
    return DataContract(tokenizer=tokenizer, task=task, label_names=labels if task == "classification" else None)


def report_blocks(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "lightning_pretrain" and r.getMessage().startswith("loaded ")
    ]


def test_mlm_checkpoint_leaves_pooler_and_head_newly_initialised(tokenizer, tmp_path, caplog):
    torch.manual_seed(0)
    backbone = save(BertForMaskedLM(bert_config(tokenizer)), tokenizer, tmp_path / "mlm")
    with caplog.at_level(logging.INFO, logger="lightning_pretrain"):
        model = SequenceClassifier(str(backbone), data=contract(tokenizer))
    assert model.newly_initialised == POOLER_AND_HEAD
    assert model.unused_weights == MLM_HEAD
    [block] = report_blocks(caplog)
    assert "newly initialised" in block and "classifier.weight" in block and "bert.pooler.dense.weight" in block
    assert "unused checkpoint weights (dropped): 5" in block and "cls.predictions.bias" in block


def test_classification_checkpoint_leaves_nothing_new(tokenizer, tmp_path, caplog):
    torch.manual_seed(0)
    backbone = save(BertForSequenceClassification(bert_config(tokenizer, num_labels=2)), tokenizer, tmp_path / "cls")
    with caplog.at_level(logging.INFO, logger="lightning_pretrain"):
        model = SequenceClassifier(str(backbone), data=contract(tokenizer))
    assert model.newly_initialised == [] and model.unused_weights == []
    [block] = report_blocks(caplog)
    assert "newly initialised (not in the checkpoint, trained from scratch): none" in block
    # another number of classes: the head is re-initialised (a size mismatch), the pooler kept
    model = SequenceClassifier(str(backbone), data=contract(tokenizer, labels=("a", "b", "c")))
    assert model.newly_initialised == ["classifier.bias", "classifier.weight"] and model.unused_weights == []


def test_generative_fine_tune_reports_its_load(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    lm = save(GPT2LMHeadModel(config), tokenizer, tmp_path / "gpt2")
    model = CausalSFT(model=str(lm), data=contract(tokenizer, task="sft"))
    assert model.newly_initialised == [] and model.unused_weights == []
    scratch = CausalSFT(model=config, data=contract(tokenizer, task="sft"))
    assert scratch.newly_initialised == sorted(n for n, _ in scratch.model.named_parameters())


def test_group_names_keeps_short_lists_and_groups_long_ones():
    assert group_names(POOLER_AND_HEAD) == POOLER_AND_HEAD
    layers = [
        f"bert.encoder.layer.{i}.{m}.{w}"
        for i in range(6)
        for m in ("attention.self.query", "output.dense")
        for w in ("weight", "bias")
    ]
    assert group_names(layers + ["classifier.weight"]) == [
        *(f"bert.encoder.layer.{i}.* (4)" for i in range(6)),
        "classifier.weight",
    ]


def test_cli_fine_tune_prints_the_block_once(workdir, tokenizer, sst2_like, caplog):  # noqa: F811
    torch.manual_seed(0)
    backbone = save(BertForMaskedLM(bert_config(tokenizer)), tokenizer, workdir / "mlm")
    with caplog.at_level(logging.INFO, logger="lightning_pretrain"):
        cli(
            "fit",
            "-c",
            str(REPO / "configs/finetune/sst2.yaml"),
            *QUIET,
            "--model.backbone",
            str(backbone),
            "--data.source",
            str(sst2_like),
            "--trainer.max_steps",
            "1",
            "--trainer.limit_val_batches",
            "1",
        )
    [block] = report_blocks(caplog)
    assert "classifier.weight" in block and "cls.predictions.bias" in block
    assert json.loads((only_run_dir(workdir, "sst2") / "metrics.json").read_text())["global_step"] == 1


def test_encoder_diagnostics_script_runs(tokenizer, tmp_path, monkeypatch, capsys):
    """benchmarks/encoder_diagnostics.py on a tiny MLM checkpoint and its random init: one table each, a summary."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("encoder_diagnostics", REPO / "benchmarks/encoder_diagnostics.py")
    diagnostics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnostics)
    torch.manual_seed(0)
    backbone = save(BertForMaskedLM(bert_config(tokenizer)), tokenizer, tmp_path / "mlm")
    table = tmp_path / "data.tsv"
    table.write_text(
        "sentence\tlabel\n"
        + "".join(f"{'a wonderful film' if i % 2 else 'a dull mess'} number {i}\t{i % 2}\n" for i in range(40))
    )
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "encoder_diagnostics.py",
            "--models",
            str(backbone),
            "--names",
            "tiny",
            "--random_init",
            "--text",
            str(table),
            "--probe_train",
            str(table),
            "--probe_n",
            "40",
            "--pairs",
            "200",
            "--json",
            str(tmp_path / "out.json"),
        ],
    )
    diagnostics.main()
    out = capsys.readouterr().out
    assert "#### tiny\n" in out and "#### tiny (random init)" in out and "#### Summary" in out
    results = json.loads((tmp_path / "out.json").read_text())
    assert [len(r["rows"]) for r in results] == [3, 3]  # embeddings and 2 layers
    assert "bert.pooler.dense.weight" in results[0]["new"] and "mlm" in results[0]
    assert all(0.0 <= row["probe_mean"] <= 1.0 and -1.0 <= row["aniso"] <= 1.0 for r in results for row in r["rows"])
