"""The tiny pretraining configs end to end: train a few steps, log to TensorBoard, export, load in transformers."""

import json

import pytest
import torch
from conftest import FAST, cli, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline


def run(config, name, workdir, tiny_corpus, *extra):
    from conftest import REPO

    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain" / config),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        *extra,
    )
    return only_run_dir(workdir, name)


def scalars(run_dir):
    acc = EventAccumulator(str(run_dir)).Reload()
    return set(acc.Tags()["scalars"])


def test_clm_tiny_trains_logs_and_exports(workdir, tiny_corpus):
    run_dir = run("clm_tiny.yaml", "clm_tiny", workdir, tiny_corpus)
    tags = scalars(run_dir)
    assert {"train/loss", "val/loss", "val/ppl"} <= tags and any(t.startswith("lr") for t in tags), tags
    assert (run_dir / "config.yaml").exists() and (run_dir / "tokenizer" / "tokenizer.json").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["val/ppl"] == pytest.approx(
        torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-4
    )

    hf = run_dir / "hf"
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    out = pipeline("text-generation", model=str(hf), device="cpu")("The quick brown", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The quick brown")


def test_mlm_tiny_trains_logs_and_exports(workdir, tiny_corpus):
    run_dir = run("mlm_tiny.yaml", "mlm_tiny", workdir, tiny_corpus)
    assert {"train/loss", "val/loss", "val/ppl"} <= scalars(run_dir)
    hf = run_dir / "hf"
    model = AutoModelForMaskedLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert model.config.vocab_size == len(tok) and tok.mask_token == "[MASK]"
    preds = pipeline("fill-mask", model=str(hf), device="cpu")("the quick brown [MASK] jumps.")
    assert len(preds) == 5 and all("token_str" in p for p in preds)


def test_validate_from_checkpoint_loads_weights_only(workdir, tiny_corpus):
    """`validate --ckpt_path` reloads a Lightning checkpoint under torch.load(weights_only=True)."""
    from conftest import REPO

    run_dir = run("clm_tiny.yaml", "clm_tiny", workdir, tiny_corpus)
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    torch.load(ckpt, weights_only=True)  # nothing but tensors and primitives inside
    cli(
        "validate",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *FAST[6:],
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        "--ckpt_path",
        str(ckpt),
    )
