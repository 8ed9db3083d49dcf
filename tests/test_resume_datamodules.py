"""Exact resume of the sentence-pair and the classification data modules under `ddp_spawn` with two processes: a run
killed with SIGKILL mid-epoch (in its second epoch, where a sampler's order depends on the epoch) and resumed from its
last checkpoint logs exactly the per-step losses of an uninterrupted run (dropout on, one thread per process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ENGLISH, REPO, minilm_dir
from test_resume import EVERY, check_kill_and_resume, corpus  # noqa: F401 (fixture)
from transformers import AutoTokenizer, BertConfig, BertModel

# both runs of each test: two ranks, a checkpoint every EVERY steps, losses logged every step, no export
DDP = [
    "--trainer.strategy",
    "ddp_spawn",
    "--trainer.devices",
    "2",
    "--trainer.accelerator",
    "cpu",
    "--trainer.callbacks+=ModelCheckpoint",
    "--trainer.callbacks.save_last",
    "true",
    "--trainer.callbacks.every_n_train_steps",
    str(EVERY),
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.logger.init_args.name",
    "resume",
    "--export.enabled",
    "false",
]

BERT = "--model.init_args.model.init_args."
# MLM + NSP on a 1-layer BERT with dropout; ~170 training pairs, 64 per step: 2 steps per epoch, killed in the third
PAIRS = [
    "-c",
    str(REPO / "configs/pretrain/bert_nsp_tiny.yaml"),
    *DDP,
    f"{BERT}hidden_size",
    "32",
    f"{BERT}num_hidden_layers",
    "1",
    f"{BERT}num_attention_heads",
    "2",
    f"{BERT}intermediate_size",
    "64",
    f"{BERT}max_position_embeddings",
    "32",
    f"{BERT}hidden_dropout_prob",
    "0.1",
    f"{BERT}attention_probs_dropout_prob",
    "0.1",
    "--model.init_args.warmup_steps",
    "3",
    "--data.vocab_size",
    "300",
    "--data.seq_len",
    "32",
    "--data.batch_size",
    "32",
    "--data.dupe_factor",
    "1",
    "--data.val_fraction",
    "0.05",
    "--trainer.max_steps",
    "-1",
    "--trainer.max_epochs",
    "4",
    "--trainer.val_check_interval",
    "7",
]


@pytest.fixture(scope="module")
def dropout_backbone(tmp_path_factory) -> Path:
    """A 1-block BERT with dropout and MiniLM's real tokenizer, saved as an HF checkpoint directory."""
    out = tmp_path_factory.mktemp("dropout_bert")
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def sentiment_dir(tmp_path) -> Path:
    """SST-2's layout: train.tsv / dev.tsv, sentence<TAB>label; 64 training rows (4 steps of 2 x 8 per epoch)."""
    d = tmp_path / "sst2"
    d.mkdir()
    rows = [(f"{ENGLISH[i % len(ENGLISH)]} Take {i}.", i % 2) for i in range(64)]
    (d / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    (d / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows[:16]))
    return d


@pytest.mark.slow
def test_sentence_pairs_resume_exactly_under_ddp_spawn(tmp_path, corpus):  # noqa: F811
    ckpt = check_kill_and_resume(tmp_path, [*PAIRS, "--data.source", str(corpus)])
    assert len(ckpt["resume_state"]["ranks"]) == 2 and ckpt["epoch"] >= 1


@pytest.mark.slow
def test_classification_resumes_exactly_under_ddp_spawn(tmp_path, dropout_backbone, sentiment_dir):
    args = [
        "-c",
        str(REPO / "configs/finetune/sst2.yaml"),
        "-c",
        str(REPO / "configs/finetune/modes/full.yaml"),
        *DDP,
        "--model.backbone",
        str(dropout_backbone),
        "--model.init_args.optimizer.init_args.lr",
        "1e-3",
        "--data.source",
        str(sentiment_dir),
        "--data.batch_size",
        "8",
        "--data.max_length",
        "32",
        "--trainer.max_epochs",
        "2",
    ]
    ckpt = check_kill_and_resume(tmp_path, args)
    assert len(ckpt["resume_state"]["ranks"]) == 2 and ckpt["epoch"] >= 1
