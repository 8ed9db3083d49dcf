"""GPU throughput against the Hugging Face Trainer on the same GPU: GPT-2 124M, BERT-base MLM, T5-base span corruption.

    workload  our recipe (+ overrides)                         metric (target)             anchor
    gpt2      configs/pretrain/gpt2_124m.yaml, seq 1024, bf16  tokens/s, MFU (>= 45%)      llm.c 468k tok/s = 40% (H100)
    bert      configs/pretrain/bert_base.yaml, seq 128, bf16   sequences/s (>= 3,000)      HF recipe 866 seq/s (A100)
    t5        T5-base v1.1 shape, 512 input tokens, bf16       input tokens/s              nanoT5 117k tok/s (A100)

Our side runs the recipe through `PretrainCLI` exactly as `lightning-pretrain fit -c <recipe> -c
configs/trainer/gpu_bf16.yaml` would (fused AdamW, bf16 autocast, TensorBoard and the Throughput callback on), with the
speed switches `--compile.enabled` and `--activation_checkpointing.enabled`. The HF side is `transformers.Trainer`
on the same model config, the same token blocks and batch size, its fused AdamW, bf16, `torch_compile` and
`activation_checkpointing` for the same switches, and the run_clm / run_mlm collators (span corruption: ours, as
transformers ships no PyTorch T5 collator). Every (workload, side, checkpointing) run is its own process, so peak
memory and compile caches never leak between runs; the first `--warmup` steps (compilation, allocator warm-up) are
not timed. Data are synthetic: a word-level tokenizer with exactly the real vocabulary size (50257 / 30522 / 32000
+ 100 sentinels) over random words, because throughput depends only on shapes and the GPU machine has no hub access.

MFU uses the FLOPs convention of lightning_pretrain.callbacks.throughput (PaLM: 6N + 12·L·H·Q·T per token, N without
lookup embeddings) against the device's dense peak for bf16 (989 TFLOP/s on H100 SXM and H200, 312 on A100),
identically for both sides.

    python benchmarks/gpu_throughput.py                          # every workload, both sides, checkpointing off/on
    python benchmarks/gpu_throughput.py --workloads gpt2 --checkpointing off --steps 100
    python benchmarks/gpu_throughput.py --tiny                   # CPU smoke run: tiny models, a few steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

BASE_T5 = {
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}
# T5 v1.1 base, except that the CLI cannot untie the input and output embeddings (T5Config takes no
# tie_word_embeddings argument): 24M fewer parameters to update, the same FLOPs per token
TINY_T5 = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4}

WORKLOADS = {
    "gpt2": {
        "recipe": "gpt2_124m.yaml",
        "vocab": 50257,
        "seq_len": 1024,
        "batch": 32,
        "compile_scope": "model",
        "specials": {"eos_token": "<|endoftext|>", "unk_token": "<unk>"},
        "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 64},
    },
    "bert": {
        "recipe": "bert_base.yaml",
        "vocab": 30522,
        "seq_len": 128,
        "batch": 256,
        "compile_scope": "blocks",
        "specials": {
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        "tiny": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
            "max_position_embeddings": 64,
        },
    },
    # 568 raw tokens -> 512-token inputs and 114-token targets (span_corruption.block_length_for(512))
    "t5": {
        "recipe": "t5_tiny.yaml",
        "vocab": 32000,
        "seq_len": 568,
        "batch": 64,
        "compile_scope": "model",
        "specials": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
        "model": BASE_T5,
        "tiny": TINY_T5,
    },
}
TINY = {"seq_len": {"gpt2": 64, "bert": 64, "t5": 70}, "batch": 4, "vocab": 1000}  # t5: 70 raw -> 64 inputs


# -- synthetic data -----------------------------------------------------------------------------------------------
def write_data(root: Path, workload: str, vocab: int, tokens: int) -> tuple[Path, Path, Path]:
    """A word-level tokenizer of exactly `vocab` ids and train/val text of random words (reused when present)."""
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = WORKLOADS[workload]["specials"]
    root = root / f"{workload}-v{vocab}-t{tokens}"
    tok_dir, train, val = root / "tokenizer", root / "train.txt", root / "val.txt"
    if (tok_dir / "tokenizer.json").exists() and train.exists() and val.exists():
        return tok_dir, train, val
    root.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(specials.values()))
    words = [f"w{i}" for i in range(vocab - len(names))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names + words)}, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(tok_dir)
    rng = np.random.default_rng(0)
    for path, n in ((train, tokens), (val, max(tokens // 50, 20_000))):
        with open(path, "w") as fh:  # documents of 100-2000 words, separated by blank lines (paragraphs)
            while n > 0:
                k = int(min(n, rng.integers(100, 2000)))
                fh.write(" ".join(words[i] for i in rng.integers(0, len(words), k)) + "\n\n")
                n -= k
    return tok_dir, train, val


# -- one run (a child process) ------------------------------------------------------------------------------------
def cli_args(spec: dict) -> list[str]:
    w = WORKLOADS[spec["workload"]]
    preset = "cpu.yaml" if spec["tiny"] else "gpu_bf16.yaml"
    model_args = {**w.get("model", {}), **(w["tiny"] if spec["tiny"] else {})}
    logs = Path(spec["out"]) / "logs"
    args = [
        "-c",
        str(REPO / "configs/pretrain" / w["recipe"]),
        "-c",
        str(REPO / "configs/trainer" / preset),
        "--data.init_args.source",
        spec["train"],
        "--data.init_args.val_source",
        spec["val"],
        "--data.init_args.tokenizer",
        spec["tokenizer"],
        "--data.init_args.seq_len",
        str(spec["seq_len"]),
        "--data.init_args.batch_size",
        str(spec["batch"]),
        "--data.init_args.num_workers",
        str(spec["workers"]),
        "--data.init_args.cache_dir",
        str(Path(spec["out"]) / "cache"),
        "--trainer.max_steps",
        str(spec["warmup"] + spec["steps"]),
        "--trainer.limit_val_batches",
        "0",
        "--model.init_args.warmup_steps",
        "2",  # as the HF side (the recipe's warmup outlasts a benchmark)
        "--trainer.val_check_interval",
        "1.0",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--trainer.accumulate_grad_batches",
        "1",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(logs),
        "--trainer.logger.init_args.name",
        spec["workload"],
        "--export.enabled",
        "false",
        "--throughput.window",
        str(max(2, min(20, spec["steps"]))),
        "--compile.enabled",
        str(spec["compile"]).lower(),
        "--compile.scope",
        w["compile_scope"],
        "--activation_checkpointing.enabled",
        str(spec["checkpointing"]).lower(),
    ]
    for key, value in model_args.items():
        args += [f"--model.init_args.model.init_args.{key}", str(value)]
    return args


class Clock:
    """Synchronised wall time from the end of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def tick(self, step: int) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step == self.warmup:
            self.start = time.perf_counter()
        self.end, self.steps = time.perf_counter(), step

    @property
    def seconds(self) -> float:
        if self.start is None or self.steps <= self.warmup:
            raise RuntimeError(f"only {self.steps} steps ran; need more than --warmup {self.warmup}")
        return self.end - self.start


def run_ours(cli, clock: Clock) -> None:
    import lightning as L

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, *_):
            clock.tick(trainer.global_step)

    cli.trainer.callbacks.append(Tick())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def run_hf(cli, spec: dict, clock: Clock) -> None:
    """transformers.Trainer on the same config, blocks and batch size (the run_clm / run_mlm recipe's pieces)."""
    import torch
    import transformers

    workload, module, dm = spec["workload"], cli.model, cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    blocks = dm.train_blocks

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            return {"input_ids": torch.from_numpy(blocks[i].astype("int64"))}

    tokenizer = module.tokenizer
    if workload == "gpt2":

        def collate(rows):
            ids = torch.stack([r["input_ids"] for r in rows])
            return {"input_ids": ids, "labels": ids}
    elif workload == "bert":
        collate = transformers.DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    else:
        from lightning_pretrain.objectives.span_corruption import random_spans_noise_mask, span_corrupt

        sentinels, eos = module.sentinel_ids.clone(), tokenizer.eos_token_id

        def collate(rows):
            ids = torch.stack([r["input_ids"] for r in rows])
            mask = random_spans_noise_mask(
                ids.shape[0], ids.shape[1], module.noise_density, module.mean_noise_span_length
            )
            inputs, targets = span_corrupt(ids, mask, sentinels, eos)
            return {"input_ids": inputs, "labels": targets}

    config = module.model.config
    model = type(module.model)(config)  # a fresh model of the same class and config, initialised by HF
    model.train()

    class Tick(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=spec["batch"],
            max_steps=spec["warmup"] + spec["steps"],
            learning_rate=1e-4,
            weight_decay=0.01,
            warmup_steps=2,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            bf16=not spec["tiny"],
            use_cpu=spec["tiny"],
            optim="adamw_torch_fused",
            torch_compile=spec["compile"],
            activation_checkpointing=spec["checkpointing"],
            activation_checkpointing_kwargs={"use_reentrant": False} if spec["checkpointing"] else None,
            dataloader_num_workers=spec["workers"],
            dataloader_pin_memory=True,
            dataloader_drop_last=True,
            report_to=[],
            save_strategy="no",
            logging_steps=10,
            disable_tqdm=True,
            seed=0,
        )
        transformers.Trainer(
            model=model, args=args, train_dataset=Blocks(), data_collator=collate, callbacks=[Tick()]
        ).train()


def one_run(spec: dict) -> dict:
    import torch

    from lightning_pretrain.callbacks.throughput import batch_flops, dense_peak_flops
    from lightning_pretrain.cli import PretrainCLI

    if spec["tiny"]:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    cli = PretrainCLI(args=cli_args(spec), run=False)
    module = cli.model
    n, raw = spec["batch"], spec["seq_len"]
    if spec["workload"] == "t5":
        lengths = module.lengths(raw)
        shape, target, tokens_per_sample = (n, lengths.inputs), lengths.targets, lengths.inputs
    else:
        shape, target, tokens_per_sample = (n, raw), None, raw
    flops_per_step = batch_flops(module.model, shape, target, training=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not spec["tiny"] else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    clock = Clock(spec["warmup"])
    if spec["side"] == "ours":
        run_ours(cli, clock)
    else:
        run_hf(cli, spec, clock)
    steps = clock.steps - clock.warmup
    samples_per_s = steps * n / clock.seconds
    peak = spec["peak_flops"] or dense_peak_flops(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    return {
        **{k: spec[k] for k in ("workload", "side", "checkpointing", "compile", "batch")},
        "input_len": tokens_per_sample,
        "steps_timed": steps,
        "seconds": clock.seconds,
        "samples_per_s": samples_per_s,
        "tokens_per_s": samples_per_s * tokens_per_sample,
        "mfu": flops_per_step * steps / clock.seconds / peak if peak else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "params_m": sum(p.numel() for p in module.model.parameters()) / 1e6,
    }


# -- orchestration ------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="gpt2,bert,t5", help="comma-separated: gpt2, bert, t5")
    p.add_argument("--sides", default="ours,hf", help="comma-separated: ours, hf")
    p.add_argument(
        "--checkpointing",
        choices=["off", "on", "both"],
        default="both",
        help="activation checkpointing (peak memory is reported for each)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile on both sides (default: on for GPU runs, off for --tiny)",
    )
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, allocator)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the workload's)")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers on both sides")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "gpu"), help="data, caches and logs")
    p.add_argument("--tiny", action="store_true", help="CPU, tiny models, 4 steps: proves the script runs")
    p.add_argument("--run", help=argparse.SUPPRESS)  # internal: one run's spec as JSON
    args = p.parse_args()
    if args.run:
        print("RESULT " + json.dumps(one_run(json.loads(args.run))), flush=True)
        return

    if args.tiny:
        args.steps, args.warmup, args.workers = min(args.steps, 4), min(args.warmup, 2), 0
    compile_ = (not args.tiny) if args.compile is None else args.compile
    workloads = [w for w in args.workloads.split(",") if w]
    if "t5" in workloads:
        try:
            from lightning_pretrain.objectives.span_corruption import SpanCorruption  # noqa: F401
        except ImportError:
            print("t5: skipped (lightning_pretrain.objectives.span_corruption is not available)")
            workloads.remove("t5")
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "CPU"
    print(
        f"device {device}, torch {torch.__version__}, compile {compile_}, {args.steps} timed steps after "
        f"{args.warmup} warm-up"
    )
    results = []
    for workload in workloads:
        w = WORKLOADS[workload]
        seq_len = TINY["seq_len"][workload] if args.tiny else w["seq_len"]
        batch = args.batch_size or (TINY["batch"] if args.tiny else w["batch"])
        vocab = TINY["vocab"] if args.tiny else w["vocab"]
        tokens = int(batch * seq_len * (args.steps + args.warmup) * 1.1) + 50 * seq_len
        tok_dir, train, val = write_data(Path(args.out) / "data", workload, vocab, tokens)
        for ckpt in checkpointing:
            for side in args.sides.split(","):
                spec = {
                    "workload": workload,
                    "side": side,
                    "checkpointing": ckpt,
                    "compile": compile_,
                    "tiny": args.tiny,
                    "steps": args.steps,
                    "warmup": args.warmup,
                    "batch": batch,
                    "seq_len": seq_len,
                    "workers": args.workers,
                    "out": args.out,
                    "tokenizer": str(tok_dir),
                    "train": str(train),
                    "val": str(val),
                    "peak_flops": args.peak_tflops * 1e12 if args.peak_tflops else None,
                }
                proc = subprocess.run(
                    [sys.executable, __file__, "--run", json.dumps(spec)], capture_output=True, text=True, cwd=REPO
                )
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(f"{workload} {side} checkpointing={ckpt}: FAILED\n{proc.stderr[-3000:]}")
                    continue
                results.append(json.loads(line[7:]))
                print(row(results[-1]), flush=True)
    print("\n" + HEADER)
    for r in results:
        print(row(r))


HEADER = (
    f"{'workload':<9}{'side':<6}{'ckpt':<6}{'params':>8}{'batch':>7}{'seq':>6}{'tokens/s':>12}{'seq/s':>10}"
    f"{'MFU':>8}{'peak GiB':>10}"
)
TARGETS = {"gpt2": "target MFU >= 45%", "bert": "target >= 3,000 seq/s", "t5": "tokens = encoder inputs"}


def row(r: dict) -> str:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
    return (
        f"{r['workload']:<9}{r['side']:<6}{'on' if r['checkpointing'] else 'off':<6}{r['params_m']:>7.1f}M"
        f"{r['batch']:>7}{r['input_len']:>6}{r['tokens_per_s']:>12,.0f}{r['samples_per_s']:>10,.1f}{mfu:>8}"
        f"{mem:>10}   {TARGETS[r['workload']]}"
    )


if __name__ == "__main__":
    main()
