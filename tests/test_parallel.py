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
from conftest import FAST, REPO, cli, only_run_dir

from lightning_pretrain import parallel
from lightning_pretrain.callbacks import ActivationCheckpointing, Compile

TINY_GPT2 = ["--model.init_args.model.init_args.n_embd", "32", "--model.init_args.model.init_args.n_head", "2",
             "--data.init_args.vocab_size", "300", "--data.init_args.seq_len", "32", "--data.init_args.batch_size", "4"]


def tiny(kind: str) -> torch.nn.Module:
    configs = {
        "gpt2": transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, n_positions=32),
        "bert": transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                        intermediate_size=32, max_position_embeddings=32),
        "t5": transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=2,
                                    num_heads=2),
        "llama": transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                          num_attention_heads=2, num_key_value_heads=1),
    }
    auto = transformers.AutoModelForSeq2SeqLM if kind == "t5" else (
        transformers.AutoModelForMaskedLM if kind == "bert" else transformers.AutoModelForCausalLM)
    return auto.from_config(configs[kind])


@pytest.mark.parametrize("kind,block,count", [("gpt2", "GPT2Block", 3), ("bert", "BertLayer", 3),
                                              ("t5", "T5Block", 5), ("llama", "LlamaDecoderLayer", 3)])
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


# -- data parallel ----------------------------------------------------------------------------------------------
class RecordBatches(L.Callback):
    """Writes, per rank, every training block it saw (as tuples of ids) to `<out>/rank<r>.json`."""

    def __init__(self, out: str):
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.extend(row.tolist() for row in batch)

    def on_train_end(self, trainer, pl_module):
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"world_size": trainer.world_size, "blocks": self.seen}))


def test_ddp_spawn_two_processes_train_on_disjoint_data(workdir, tiny_corpus, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on a small machine
    record = {"class_path": f"{__name__}.RecordBatches", "init_args": {"out": str(workdir)}}
    cli("fit", "-c", str(REPO / "configs/pretrain/clm_tiny.yaml"), "-c", str(REPO / "configs/trainer/ddp.yaml"),
        *FAST, *TINY_GPT2, "--data.init_args.source", str(tiny_corpus), "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn", "--trainer.precision", "32-true",
        "--trainer.max_steps", "3", "--trainer.callbacks", json.dumps([record]))
    ranks = [json.loads((workdir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [{tuple(block) for block in r["blocks"]} for r in ranks]
    assert len(ranks[0]["blocks"]) == len(ranks[1]["blocks"]) == 3 * 4  # 3 steps x batch 4 on each rank
    assert len(seen[0]) == len(seen[1]) == 12 and not seen[0] & seen[1]
    run = only_run_dir(workdir, "clm_tiny")
    assert (run / "hf" / "model.safetensors").is_file()  # rank 0 exported after both ranks finished


# -- FSDP2 ------------------------------------------------------------------------------------------------------
def run_cli_processes(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as its own process: Lightning's launcher re-runs the command for rank 1, which pytest cannot host."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lightning_pretrain", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_fsdp2_on_cpu_shards_blocks_and_the_sharded_checkpoint_exports_to_hf(workdir, tiny_corpus):
    run_cli_processes(
        workdir, "fit", "-c", str(REPO / "configs/pretrain/clm_tiny.yaml"), "-c", str(REPO / "configs/trainer/fsdp.yaml"),
        *FAST, *TINY_GPT2, "--data.init_args.source", str(tiny_corpus), "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.precision", "32-true")
    run = only_run_dir(workdir, "clm_tiny")
    (ckpt,) = (run / "checkpoints").iterdir()
    assert ckpt.is_dir() and sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    # every block weight is stored as two row shards, one written by each rank: it was sharded in training
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt)).read_metadata()
    key = "state_dict.model.transformer.h.1.attn.c_attn.weight"
    chunks = meta.state_dict_metadata[key].chunks
    assert sorted(tuple(c.offsets) for c in chunks) == [(0, 0), (16, 0)]
    assert {meta.storage_data[idx].relative_path for idx in meta.storage_data if idx.fqn == key} == \
        {"__0_0.distcp", "__1_0.distcp"}

    # the sharded checkpoint exports to a directory transformers loads, equal to the full export at the end of fit
    exported = parallel.export_checkpoint(ckpt, workdir / "exported")
    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    final = transformers.AutoModelForCausalLM.from_pretrained(run / "hf")
    assert model.config.architectures == ["GPT2LMHeadModel"] == final.config.architectures
    for (name, a), (_, b) in zip(model.state_dict().items(), final.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    ids = tokenizer("Paragraph number 7", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_export_command_fails_cleanly_on_a_non_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parallel.main([str(tmp_path), "--out", str(tmp_path / "out")])
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
    ActivationCheckpointing(enabled=checkpointing).setup(None, module, "fit")
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
    Compile(enabled=True, scope=scope).setup(None, module, "fit")
    compiled = parallel.transformer_blocks(module.model) if scope == "blocks" else [module.model]
    assert all(m._compiled_call_impl is not None for m in compiled)
    assert list(module.state_dict()) == names  # checkpoints and the HF export see the same keys


@pytest.mark.slow
def test_compiled_blocks_train_through_the_cli(workdir, tiny_corpus):
    """torch.compile on CPU (needs g++; the first step compiles for tens of seconds)."""
    cli("fit", "-c", str(REPO / "configs/pretrain/clm_tiny.yaml"), *FAST, *TINY_GPT2, "--data.init_args.source",
        str(tiny_corpus), "--compile.enabled", "true")
    run = only_run_dir(workdir, "clm_tiny")
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 4
