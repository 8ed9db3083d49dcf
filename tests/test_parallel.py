"""Data parallel and FSDP2 on CPU processes (gloo), the sharded checkpoint's export, and the outside-the-model speed
switches (activation checkpointing, torch.compile) on tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import transformers
from conftest import ENGLISH, FAST, REPO, cli, only_run_dir

from lightning_pretrain import compat, parallel
from lightning_pretrain.callbacks import export
from lightning_pretrain.parallel import ActivationCheckpointing, Compile

TINY_GPT2 = [
    "--model.init_args.model.init_args.n_embd",
    "32",
    "--model.init_args.model.init_args.n_head",
    "2",
    "--data.init_args.vocab_size",
    "300",
    "--data.init_args.seq_len",
    "32",
    "--data.init_args.batch_size",
    "4",
]


def tiny(kind: str) -> torch.nn.Module:
    configs = {
        "gpt2": transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, n_positions=32),
        "bert": transformers.BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
        ),
        "t5": transformers.T5Config(
            vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=2, num_heads=2
        ),
        "llama": transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
    }
    auto = (
        transformers.AutoModelForSeq2SeqLM
        if kind == "t5"
        else (transformers.AutoModelForMaskedLM if kind == "bert" else transformers.AutoModelForCausalLM)
    )
    return auto.from_config(configs[kind])


@pytest.mark.parametrize(
    "kind,block,count",
    [("gpt2", "GPT2Block", 3), ("bert", "BertLayer", 3), ("t5", "T5Block", 5), ("llama", "LlamaDecoderLayer", 3)],
)
def test_transformer_blocks_are_the_repeated_layers_of_any_architecture(kind, block, count):
    blocks = parallel.transformer_blocks(tiny(kind))
    assert [type(b).__name__ for b in blocks] == [block] * count


def test_transformer_blocks_fall_back_to_homogeneous_module_lists():
    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
            self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 2), torch.nn.ReLU()])  # mixed: not blocks

    model = Stack()
    assert parallel.transformer_blocks(model) == list(model.layers)


# -- data parallel and FSDP2: the same MaskedLM run twice on 2 CPU processes ------------------------------------
class RecordBatches(L.Callback):
    """Writes, per rank, every training block it saw (as lists of ids) to `<out>/rank<r>.json`."""

    def __init__(self, out: str):
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.extend(row.tolist() for row in batch)

    def on_train_end(self, trainer, pl_module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"world_size": trainer.world_size, "blocks": self.seen})
        )


# MaskedLM calls parts of the HF model directly (base_model, then the head on masked positions only): the hardest
# case for FSDP2, whose root gathers its own weights only in its forward
RUN = [
    *FAST,  # 4 steps, validated and checkpointed at 2 and 4
    "--trainer.accelerator",
    "cpu",
    "--trainer.devices",
    "2",
    "--trainer.precision",
    "32-true",
    "--model.init_args.model.init_args.hidden_size",
    "32",
    "--model.init_args.model.init_args.num_attention_heads",
    "2",
    "--model.init_args.model.init_args.intermediate_size",
    "64",
    "--data.init_args.vocab_size",
    "300",
    "--data.init_args.seq_len",
    "32",
    "--data.init_args.batch_size",
    "4",
]


def recipe(preset: str) -> list[str]:
    return ["-c", str(REPO / "configs/pretrain/mlm_tiny.yaml"), "-c", str(REPO / "configs/trainer" / preset)]


def run_cli_processes(workdir: Path, *args: str) -> None:
    """The CLI as its own process: Lightning's launcher re-runs the command for rank 1, which pytest cannot host."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_pretrain", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> dict[str, Path]:
    """The same 4-step MaskedLM run under ddp_spawn (in this process) and under FSDP2 (a launched process pair)."""
    root = tmp_path_factory.mktemp("parallel")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"{ENGLISH[i % len(ENGLISH)]} Paragraph {i} of {i * 7 % 13}." for i in range(400)))
    data = ["--data.init_args.source", str(corpus)]
    record = {"class_path": f"{__name__}.RecordBatches", "init_args": {"out": str(root)}}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("OMP_NUM_THREADS", "1")  # two processes on a small machine
        cli(
            "fit",
            *recipe("ddp.yaml"),
            *RUN,
            *data,
            "--trainer.strategy",
            "ddp_spawn",
            "--trainer.callbacks",
            json.dumps([record]),
            "--trainer.logger.init_args.name",
            "ddp",
        )
    run_cli_processes(root, "fit", *recipe("fsdp.yaml"), *RUN, *data, "--trainer.logger.init_args.name", "fsdp")
    return {"root": root, "ddp": only_run_dir(root, "ddp"), "fsdp": only_run_dir(root, "fsdp")}


def test_ddp_spawn_two_processes_train_on_disjoint_data(two_process_runs):
    ranks = [json.loads((two_process_runs["root"] / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [{tuple(block) for block in r["blocks"]} for r in ranks]
    assert len(ranks[0]["blocks"]) == len(ranks[1]["blocks"]) == 4 * 4  # 4 steps x batch 4 on each rank
    assert len(seen[0]) == len(seen[1]) == 16 and not seen[0] & seen[1]
    assert (two_process_runs["ddp"] / "hf" / "model.safetensors").is_file()  # rank 0 exported, nobody hung


def test_fsdp2_checkpoint_holds_each_block_as_one_shard_per_rank(two_process_runs):
    from torch.distributed.checkpoint import FileSystemReader

    (ckpt,) = (two_process_runs["fsdp"] / "checkpoints").iterdir()
    assert ckpt.is_dir() and sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = FileSystemReader(str(ckpt)).read_metadata()
    key = "state_dict.model.bert.encoder.layer.1.attention.self.query.weight"  # 32 x 32
    assert sorted(tuple(c.offsets) for c in meta.state_dict_metadata[key].chunks) == [(0, 0), (16, 0)]
    assert {meta.storage_data[i].relative_path for i in meta.storage_data if i.fqn == key} == {
        "__0_0.distcp",
        "__1_0.distcp",
    }


def test_fsdp2_trains_the_same_weights_as_ddp(two_process_runs):
    fsdp = transformers.AutoModelForMaskedLM.from_pretrained(two_process_runs["fsdp"] / "hf").state_dict()
    ddp = transformers.AutoModelForMaskedLM.from_pretrained(two_process_runs["ddp"] / "hf").state_dict()
    start = transformers.AutoModelForMaskedLM.from_config(
        transformers.AutoConfig.from_pretrained(two_process_runs["ddp"] / "hf")
    ).state_dict()
    assert fsdp.keys() == ddp.keys()
    for name in fsdp:
        torch.testing.assert_close(fsdp[name], ddp[name], atol=2e-5, rtol=1e-4, msg=name)
    assert not torch.equal(
        fsdp["bert.embeddings.word_embeddings.weight"], start["bert.embeddings.word_embeddings.weight"]
    )


def test_sharded_checkpoint_exports_to_a_loadable_hf_directory(two_process_runs):
    run = two_process_runs["fsdp"]
    (ckpt,) = (run / "checkpoints").iterdir()
    exported = export.export_checkpoint(ckpt, two_process_runs["root"] / "exported")
    model = transformers.AutoModelForMaskedLM.from_pretrained(exported)
    final = transformers.AutoModelForMaskedLM.from_pretrained(run / "hf")  # gathered at the end of fit
    assert model.config.architectures == ["BertForMaskedLM"] == final.config.architectures
    for (name, a), (_, b) in zip(model.state_dict().items(), final.state_dict().items()):
        assert torch.equal(a, b), name
    tied = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert tied[0].data_ptr() == tied[1].data_ptr()
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ids = tokenizer(f"Paragraph {tokenizer.mask_token} of", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_export_command_fails_cleanly_on_a_non_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main([str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "neither a checkpoint file nor a sharded checkpoint folder" in capsys.readouterr().err


# -- speed switches ---------------------------------------------------------------------------------------------
class Holder(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model


def gpt2_grads(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    module = Holder(tiny("gpt2"))
    module.model.train()
    parallel.parallelize(module.model, ActivationCheckpointing(enabled=checkpointing))
    calls = []
    # (a pre-hook: the recompute stops early, once the last activation backward needs is rebuilt)
    module.model.transformer.h[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 64, (2, 16))
    module.model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad for n, p in module.model.named_parameters()}, len(calls)


def test_activation_checkpointing_recomputes_blocks_and_leaves_gradients_unchanged():
    plain, plain_calls = gpt2_grads(False)
    ckpt, ckpt_calls = gpt2_grads(True)
    assert (plain_calls, ckpt_calls) == (1, 2)  # the block's forward runs again during backward
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], msg=name)


@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compile_is_applied_in_place_and_keeps_parameter_names(scope):
    module = Holder(tiny("gpt2"))
    names = list(module.state_dict())
    parallel.parallelize(module.model, compile=Compile(enabled=True, scope=scope))
    compiled = parallel.transformer_blocks(module.model) if scope == "blocks" else [module.model]
    assert all(compat.is_compiled(m) for m in compiled)
    assert list(module.state_dict()) == names  # checkpoints and the HF export see the same keys


@pytest.mark.slow
def test_compiled_blocks_train_through_the_cli(workdir, tiny_corpus):
    """torch.compile on CPU (needs g++; the first step compiles for tens of seconds)."""
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *FAST,
        *TINY_GPT2,
        "--data.init_args.source",
        str(tiny_corpus),
        "--compile.enabled",
        "true",
    )
    run = only_run_dir(workdir, "clm_tiny")
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 4
