"""`--help` and `--print_config` show every option of an objective, the ones it inherits included, each with its
documentation written once (subclasses take only what they add and pass the rest on as **kwargs)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
from conftest import REPO, cli

OBJECTIVES = {
    "lightning_pretrain.objectives.CausalLM": ["chunked_loss"],
    "lightning_pretrain.objectives.MaskedLM": ["mlm_probability", "whole_word_mask", "mask_seed"],
    "lightning_pretrain.objectives.SentencePairMLM": ["mlm_probability", "whole_word_mask"],
    "lightning_pretrain.objectives.SpanCorruption": ["noise_density", "num_sentinels", "corruption_seed"],
    "lightning_pretrain.objectives.Distillation": ["teacher", "alpha", "init_from_teacher", "mlm_probability"],
    "lightning_pretrain.objectives.ELECTRA": ["generator_size", "disc_weight", "mlm_probability"],
    "lightning_pretrain.objectives.Denoising": ["mask_ratio", "poisson_lambda", "permute_ratio", "corruption_seed"],
}
INHERITED = {
    "model": "an HF config to build a fresh model from",
    "optimizer": "weight decay applies to matrices",
    "warmup_steps": "linear LR warmup",
    "lr_schedule": "decay after warmup",
    "attn_implementation": "'sdpa'",
}


def run(*args: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli(*args)
    assert exit_info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_objective_help_lists_inherited_and_own_options_with_their_docs(objective):
    text = " ".join(run("fit", "--model.help", objective).split())  # argparse wraps lines: compare words
    for option in OBJECTIVES[objective]:
        assert f"--model.{option}" in text
    for option, doc in INHERITED.items():
        assert f"--model.{option}" in text and doc in text, option


def test_print_config_shows_inherited_options():
    text = run("fit", "-c", str(REPO / "configs/pretrain/t5_tiny.yaml"), "--print_config")
    for option in ("noise_density:", "num_sentinels:", "warmup_steps:", "lr_schedule:", "attn_implementation:"):
        assert option in text


DATA_MODULES = {
    "lightning_pretrain.data.TextClassification": {
        "text_column": "column of the (first) text",
        "max_length": "longest tokenized input",
    },
    "lightning_pretrain.data.TextToText": {
        "train_target_file": "makes train_file parallel text",
        "val_fraction": "default: 0.05",
    },
    "lightning_pretrain.data.SFTData": {
        "prompt_template": "format of a prompt column's text",
        "batch_size": "training rows per batch",
    },
}
DATA_INHERITED = {
    "train_file": "local training file",
    "val_split": "hub split used for validation",
    "tokenizer": "the model's tokenizer",
    "eval_batch_size": "validation / test / predict batch size",
    "cache_dir": "where tokenized splits live",
}


@pytest.mark.parametrize("data", sorted(DATA_MODULES))
def test_data_help_lists_inherited_and_own_options_with_their_docs(data):
    text = " ".join(run("fit", "--data.help", data).split())
    for option, doc in {**DATA_MODULES[data], **DATA_INHERITED}.items():
        assert f"--data.{option}" in text and doc in text, option
