"""Every YAML under configs/ parses with the CLI (composed with what it is a fragment of)."""

import io
from contextlib import redirect_stdout

import pytest
import yaml
from conftest import REPO, cli

CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
# fragments are parsed on top of the config they are meant to be composed with
BASES = {"configs/trainer/": "configs/pretrain/clm_tiny.yaml", "configs/finetune/modes/": "configs/finetune/sst2.yaml"}


def print_config(*configs: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli("fit", *[a for c in configs for a in ("-c", str(REPO / c))], "--print_config")
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses(config):
    base = next((b for prefix, b in BASES.items() if config.startswith(prefix)), None)
    if base and not (REPO / base).exists():
        pytest.skip(f"{config} composes with {base}, which does not exist")
    resolved = print_config(*([base] if base else []), config)
    assert resolved["model"]["class_path"].startswith(("lightning_pretrain.", "transformers."))
    assert resolved["data"]["class_path"].startswith("lightning_pretrain.")


def test_configs_exist():
    assert {
        "configs/pretrain/clm_tiny.yaml",
        "configs/pretrain/mlm_tiny.yaml",
        "configs/pretrain/gpt2_124m.yaml",
        "configs/pretrain/bert_base.yaml",
    } <= set(CONFIGS)


@pytest.mark.parametrize(
    "config,low,high",
    [("configs/pretrain/gpt2_124m.yaml", 123e6, 125e6), ("configs/pretrain/bert_base.yaml", 109e6, 111e6)],
)
def test_realistic_recipes_have_their_published_size(config, low, high):
    """The recipe's model config, at its real tokenizer's vocabulary, has the published parameter count."""
    import torch
    from transformers import AutoModel

    spec = yaml.safe_load((REPO / config).read_text())["model"]["init_args"]["model"]
    cfg_cls = getattr(__import__("transformers"), spec["class_path"].split(".")[-1])
    cfg = cfg_cls(**spec["init_args"], vocab_size=50257 if "gpt2" in config else 30522)
    with torch.device("meta"):
        model = AutoModel.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert low < n < high, n
