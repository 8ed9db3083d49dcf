"""The FLOPs/MFU arithmetic against hand-computed numbers, and the throughput scalars in TensorBoard."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import FAST, REPO, cli, only_run_dir

from lightning_pretrain.callbacks.throughput import batch_flops, flops_per_token, matmul_parameters, tokens_in


def tiny_gpt2() -> transformers.GPT2LMHeadModel:
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2, n_positions=32)
    )


# GPT-2 with vocab 64, width 16, 3 layers, 32 positions, by hand:
#   wte 64*16 = 1024 (tied: it is also the LM head)   wpe 32*16 = 512 (a lookup: no FLOPs)
#   one block: ln_1 32 + c_attn 16*48+48 = 816 + attn c_proj 16*16+16 = 272 + ln_2 32
#              + c_fc 16*64+64 = 1088 + mlp c_proj 64*16+16 = 1040                       = 3280
#   ln_f 32
# matmul parameters N = 1024 + 3*3280 + 32 = 10896
N_HAND = 1024 + 3 * 3280 + 32


def test_matmul_parameters_skip_lookups_and_count_a_tied_embedding_once():
    model = tiny_gpt2()
    assert sum(p.numel() for p in model.parameters()) == N_HAND + 512
    assert matmul_parameters(model) == (N_HAND, 0)
    model.transformer.wte.weight.requires_grad_(False)  # frozen parameters are counted apart
    assert matmul_parameters(model) == (N_HAND - 1024, 1024)


def test_training_flops_follow_palm_with_frozen_parameters_at_four():
    model = tiny_gpt2()
    # 2 sequences of 16 tokens: 6N + 12 * layers * width * context per token
    assert batch_flops(model, (2, 16)) == 2 * 16 * (6 * N_HAND + 12 * 3 * 16 * 16) == 2_386_944
    # forward only (validation): 2N + 4 * layers * width * context
    assert batch_flops(model, (2, 16), training=False) == 2 * 16 * (2 * N_HAND + 4 * 3 * 16 * 16)
    model.transformer.wte.weight.requires_grad_(False)
    assert batch_flops(model, (2, 16)) == 2 * 16 * (6 * (N_HAND - 1024) + 4 * 1024 + 12 * 3 * 16 * 16)


def test_gpt2_124m_matches_the_published_flops_per_token():
    """nanoGPT's estimate_mfu for GPT-2 124M at 1024 tokens: N = 124.44M - 0.79M position embeddings."""
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    n, _ = matmul_parameters(model)
    assert n == 124_439_808 - 1024 * 768
    per_token = flops_per_token(n, 0, 12, 768, 1024)
    assert per_token == pytest.approx(6 * 123.65e6 + 12 * 12 * 768 * 1024, rel=1e-4)
    # llm.c's anchor: 468k tokens/s on an H100 (989 TFLOP/s dense bf16) is ~40% MFU under this convention
    assert 468e3 * per_token / 989.4e12 == pytest.approx(0.40, abs=0.02)


def test_encoder_decoder_counts_encoder_per_input_and_decoder_per_target_token():
    config = transformers.T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=1,
        num_heads=4,
        feed_forward_proj="relu",
    )
    model = transformers.T5ForConditionalGeneration(config)
    n_all, _ = matmul_parameters(model)
    n_enc, _ = matmul_parameters(model, within=model.get_encoder())
    # encoder block: q,k,v,o 4*16*32 + layer norm 16 + wi 16*32 + wo 32*16 + layer norm 16; + final norm 16
    assert n_enc == 2 * (4 * 16 * 32 + 16 + 2 * 16 * 32 + 16) + 16
    width = 4 * 8  # num_heads * d_kv
    by_hand = 3 * (10 * (6 * n_enc + 12 * 2 * width * 10) + 4 * (6 * (n_all - n_enc) + 12 * 1 * width * (4 + 10)))
    assert batch_flops(model, (3, 10), target_len=4) == by_hand


def test_tokens_exclude_padding_when_the_batch_has_an_attention_mask():
    assert tokens_in(torch.zeros(4, 8, dtype=torch.long)) == 32
    batch = {
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]),
    }
    assert tokens_in(batch) == 7


def test_throughput_and_mfu_scalars_reach_tensorboard(workdir, tiny_corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    peak = 1e12
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *FAST,
        "--trainer.max_steps",
        "8",
        "--trainer.val_check_interval",
        "4",
        "--data.init_args.source",
        str(tiny_corpus),
        "--data.init_args.vocab_size",
        "300",
        "--data.init_args.seq_len",
        "32",
        "--data.init_args.batch_size",
        "4",
        "--throughput.window",
        "3",
        "--throughput.peak_flops",
        str(peak),
    )
    events = EventAccumulator(str(only_run_dir(workdir, "clm_tiny")))
    events.Reload()
    last = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    for key in (
        "train/device/items_per_sec",
        "train/device/samples_per_sec",
        "train/device/flops_per_sec",
        "train/device/mfu",
        "train/data_wait_fraction",
    ):
        assert key in last, sorted(last)
    assert last["train/device/items_per_sec"] == pytest.approx(32 * last["train/device/samples_per_sec"], rel=1e-4)
    assert last["train/device/mfu"] == pytest.approx(last["train/device/flops_per_sec"] / peak, rel=1e-4)
    # the FLOPs rate is the token rate times the hand-checkable per-token count of the run's model
    model = transformers.AutoModelForCausalLM.from_pretrained(only_run_dir(workdir, "clm_tiny") / "hf")
    n, _ = matmul_parameters(model)
    per_token = flops_per_token(n, 0, 2, 128, 32)  # clm_tiny: 2 layers of width 128, here 32-token blocks
    assert last["train/device/flops_per_sec"] == pytest.approx(per_token * last["train/device/items_per_sec"], rel=1e-3)
    assert 0 <= last["train/data_wait_fraction"] < 1


@pytest.mark.slow
def test_gpu_benchmark_script_runs_tiny_on_cpu(tmp_path):
    """benchmarks/gpu_throughput.py --tiny: both sides train and the table reports tokens/s and MFU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/gpu_throughput.py"),
            "--tiny",
            "--workloads",
            "gpt2",
            "--checkpointing",
            "off",
            "--peak-tflops",
            "0.05",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()[-2:]]
    assert [r[:3] for r in rows] == [["gpt2", "ours", "off"], ["gpt2", "hf", "off"]], proc.stdout
    assert all(float(r[6].replace(",", "")) > 0 and r[8].endswith("%") for r in rows)
