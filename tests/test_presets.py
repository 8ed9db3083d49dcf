"""Trainer presets compose with every pretraining recipe, change only what they are about, and build the Trainer
they describe (on CPU processes, where a GPU is asked for)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import yaml
from conftest import FAST, REPO, cli, only_run_dir

PRESETS = sorted(p.name for p in (REPO / "configs/trainer").glob("*.yaml"))
RECIPES = ["clm_tiny.yaml", "mlm_tiny.yaml", "gpt2_124m.yaml", "bert_base.yaml"]
GPU_PRESETS = {"gpu_bf16.yaml", "gpu_fp16.yaml", "ddp.yaml"}  # single-process-per-GPU presets with fused AdamW


def resolved(*configs: str, extra: tuple[str, ...] = ()) -> dict:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli("fit", *[a for c in configs for a in ("-c", str(REPO / "configs" / c))], *extra, "--print_config")
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


def test_the_issue_presets_exist():
    assert {"cpu.yaml", "gpu_bf16.yaml", "gpu_fp16.yaml", "ddp.yaml", "fsdp.yaml", "multinode.yaml"} <= set(PRESETS)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_with_recipe_and_keeps_its_model_and_optimizer(preset, recipe):
    base = resolved(f"pretrain/{recipe}")
    both = resolved(f"pretrain/{recipe}", f"trainer/{preset}")
    assert both["model"]["init_args"]["model"] == base["model"]["init_args"]["model"]
    opt, base_opt = both["model"]["init_args"]["optimizer"], base["model"]["init_args"]["optimizer"]
    assert opt["class_path"] == base_opt["class_path"]
    assert opt["init_args"]["lr"] == base_opt["init_args"]["lr"]
    if preset in GPU_PRESETS:
        assert opt["init_args"]["fused"] is True
    assert both["data"] == base["data"]
    assert both["trainer"]["max_steps"] == base["trainer"]["max_steps"]  # schedule length stays the recipe's


def test_preset_values():
    precision = {
        p: resolved("pretrain/clm_tiny.yaml", f"trainer/{p}")["trainer"]["precision"]
        for p in ("cpu.yaml", "gpu_bf16.yaml", "gpu_fp16.yaml", "ddp.yaml", "fsdp.yaml")
    }
    assert precision == {
        "cpu.yaml": "32-true",
        "gpu_bf16.yaml": "bf16-mixed",
        "gpu_fp16.yaml": "16-mixed",
        "ddp.yaml": "bf16-mixed",
        "fsdp.yaml": "bf16-mixed",
    }
    fsdp = resolved("pretrain/gpt2_124m.yaml", "trainer/fsdp.yaml")
    assert fsdp["trainer"]["strategy"]["class_path"] == "lightning_pretrain.parallel.FSDP2Strategy"
    assert fsdp["activation_checkpointing"]["enabled"] is True
    multi = resolved(
        "pretrain/gpt2_124m.yaml", "trainer/fsdp.yaml", "trainer/multinode.yaml", extra=("--trainer.num_nodes", "4")
    )
    assert (multi["trainer"]["num_nodes"], multi["trainer"]["devices"]) == (4, 8)
    assert multi["trainer"]["strategy"]["class_path"] == "lightning_pretrain.parallel.FSDP2Strategy"


@pytest.mark.parametrize(
    "preset,strategy,precision",
    [
        ("ddp.yaml", "DDPStrategy", "bf16-mixed"),
        ("fsdp.yaml", "FSDP2Strategy", "bf16-mixed"),
        ("gpu_fp16.yaml", "SingleDeviceStrategy", "16-mixed"),
    ],
)
def test_gpu_presets_build_their_trainer_on_cpu(preset, strategy, precision, workdir, tiny_corpus):
    from lightning_pretrain.cli import PretrainCLI
    from lightning_pretrain.parallel import Parallelize

    devices = "1" if strategy == "SingleDeviceStrategy" else "2"
    precision_arg = ["--trainer.precision", "bf16-mixed"] if precision == "16-mixed" else []  # fp16 needs CUDA
    built = PretrainCLI(
        args=[
            "-c",
            str(REPO / "configs/pretrain/clm_tiny.yaml"),
            "-c",
            str(REPO / "configs/trainer" / preset),
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            devices,
            *precision_arg,
            "--data.init_args.source",
            str(tiny_corpus),
            "--data.init_args.vocab_size",
            "300",
        ],
        run=False,
    )
    trainer = built.trainer
    assert type(trainer.strategy).__name__ == strategy
    assert trainer.num_devices == int(devices)
    checkpointing = next(cb for cb in trainer.callbacks if isinstance(cb, Parallelize)).checkpointing
    assert checkpointing.enabled is (preset == "fsdp.yaml")
    assert built.model.optimizer.keywords.get("fused") is True or preset == "fsdp.yaml"


def test_cpu_preset_trains(workdir, tiny_corpus):
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/mlm_tiny.yaml"),
        "-c",
        str(REPO / "configs/trainer/cpu.yaml"),
        *FAST,
        "--data.init_args.source",
        str(tiny_corpus),
        "--data.init_args.vocab_size",
        "300",
        "--data.init_args.seq_len",
        "32",
        "--data.init_args.batch_size",
        "4",
    )
    metrics = json.loads((only_run_dir(workdir, "mlm_tiny") / "metrics.json").read_text())
    assert metrics["global_step"] == 4
