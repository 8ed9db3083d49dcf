"""This project vs the HF Trainer recipe of run_clm.py / run_mlm.py vs a plain PyTorch loop: training tokens/s.

All sides train the same model shape (GPT-2 or BERT, ~11M parameters with a 16k vocabulary; seq 128, batch 32) on
the same corpus with the same tokenizer and the same optimizer settings, alternating runs (each in a fresh process)
so that machine drift hits every side equally. The HF side is the run_clm/run_mlm recipe: `tokenizer(texts)` +
`group_texts` blocks, `default_data_collator` (CLM) or `DataCollatorForLanguageModeling(mlm_probability=0.15)` (MLM),
`Trainer` with its default fused AdamW and a cosine schedule. Our side is `PretrainCorpus` + `CausalLM` / `MaskedLM`
under `lightning.Trainer` with TensorBoard logging on, and the glibc allocator setting that
`lightning-pretrain` applies at start-up (lightning_pretrain/allocator.py); `hf+malloc` shows the HF recipe with that
same setting, so the table separates what the allocator buys from what the rest of the stack does; `ours-hf-loss`
(not run by default) is our CLM side with the HF model's own loss instead of the chunked linear cross-entropy.
`raw` is the limit our stack is measured against: our module's `training_step` (the same loss: CLM's chunked linear
cross-entropy, MLM's masked-positions-only head), the same cached batches from our loader, the same fused AdamW,
parameter groups and cosine schedule and the same allocator setting, in a plain `for` loop (`loss.backward();
opt.step(); sched.step(); opt.zero_grad(set_to_none=True)`): no Trainer, no logging. Tokenization is excluded from
every timing: only steady-state optimizer steps count (the first `--warmup` steps of each run are discarded).

Each repeat also measures the machine's fp32 matmul ceiling in a fresh process (best of 5 `--matmul-size`² matmuls,
the same thread count as the training runs); each side's achieved model FLOP/s (tokens/s x FLOPs per token, PaLM's
6N + 12·L·H·Q·T of lightning_pretrain/callbacks/throughput.py, identical for all sides; MLM counts the full output
layer, which our side and `raw` skip for unmasked positions) is reported as a fraction of it.

    python benchmarks/peer_hf_trainer.py                       # both objectives, builtin corpus, 3 repeats
    python benchmarks/peer_hf_trainer.py --objective clm --steps 30 --repeats 5 --sides hf,ours,raw
    python benchmarks/peer_hf_trainer.py --tiny                # a 1-minute smoke run (tiny model, few steps)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import datasets  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor  # noqa: E402
from transformers import BertConfig, GPT2Config  # noqa: E402

from lightning_pretrain import optim, parallel  # noqa: E402
from lightning_pretrain.allocator import keep_freed_memory  # noqa: E402
from lightning_pretrain.callbacks.guard import StopGuard  # noqa: E402
from lightning_pretrain.callbacks.mixture import MixtureLog  # noqa: E402
from lightning_pretrain.callbacks.resume import ResumeState  # noqa: E402
from lightning_pretrain.callbacks.throughput import (
    Throughput,  # noqa: E402
    batch_flops,  # noqa: E402
)
from lightning_pretrain.data import PretrainCorpus  # noqa: E402
from lightning_pretrain.objectives import CausalLM, MaskedLM  # noqa: E402

WARMUP_STEPS = 5  # of the LR schedule, on every side


def shapes(tiny: bool, large: bool = False, positions: int = 128):
    """The benchmark's model shapes: ~11M parameters; `large`: GPT-2 small / BERT-base widths (12 x 768)."""
    h, layers, heads, ffn = (64, 2, 2, 256) if tiny else (768, 12, 12, 3072) if large else (256, 8, 8, 1024)
    return {
        "clm": GPT2Config(
            n_embd=h,
            n_layer=layers,
            n_head=heads,
            n_inner=ffn,
            n_positions=positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        "mlm": BertConfig(
            hidden_size=h,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=positions,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
    }


def adamw(params):
    """Our side's optimizer (as configs/pretrain/*.yaml: fused AdamW); `raw` uses the very same."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, fused=True)


class StepClock:
    """Wall time between the end of step `warmup` and the end of the last step; and of the first step from the
    clock's creation (torch.compile's compilation included)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0
        self.created, self.first_step_s = time.perf_counter(), None

    def tick(self, step: int) -> None:
        if step == 1:
            self.first_step_s = time.perf_counter() - self.created
        if step == self.warmup:
            self.start = time.perf_counter()
        self.end, self.steps = time.perf_counter(), step

    def tokens_per_s(self, tokens_per_step: int) -> float:
        return (self.steps - self.warmup) * tokens_per_step / (self.end - self.start)


def hf_blocks(tokenizer, texts, seq_len: int, labels: bool = True) -> datasets.Dataset:
    """run_clm.py / run_mlm.py's data: `tokenizer(texts)`, then `group_texts` into `seq_len` blocks (the remainder of
    each map batch dropped); `labels` (CLM) copies the ids."""
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):  # run_clm.py's group_texts
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // seq_len) * seq_len
        result = {k: [t[i : i + seq_len] for i in range(0, total, seq_len)] for k, t in concatenated.items()}
        if labels:
            result["labels"] = result["input_ids"].copy()
        return result

    return tokenized.map(group_texts, batched=True)


def hf_model(objective, config, tokenizer):
    """(model, data collator) of the recipe: a fresh model from `config` sized to the tokenizer (run_clm.py resizes
    the embeddings so) with its special token ids."""
    config = copy.deepcopy(config)
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    if objective == "clm":
        return transformers.AutoModelForCausalLM.from_config(config), transformers.default_data_collator
    return (
        transformers.AutoModelForMaskedLM.from_config(config),
        transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
    )


def run_hf(objective, config, tokenizer, texts, args) -> float:
    """The run_clm.py / run_mlm.py recipe, trimmed to what affects training speed."""
    lm = hf_blocks(tokenizer, texts, args.seq_len, labels=objective == "clm")
    model, collator = hf_model(objective, config, tokenizer)  # sized to the same tokenizer as our side
    clock = StepClock(args.warmup)

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            clock.tick(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        targs = transformers.TrainingArguments(
            output_dir=out,
            use_cpu=True,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-3,
            weight_decay=0.01,
            warmup_steps=WARMUP_STEPS,
            lr_scheduler_type="cosine",
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
            seed=0,
            dataloader_drop_last=True,
        )
        trainer = transformers.Trainer(
            model=model, args=targs, train_dataset=lm, data_collator=collator, callbacks=[Clock()]
        )
        trainer.train()
    return clock.tokens_per_s(args.batch_size * args.seq_len)


def our_module(objective, config, dm, chunked_loss: bool = True):
    extra = {"chunked_loss": chunked_loss} if objective == "clm" else {}
    cls = CausalLM if objective == "clm" else MaskedLM
    return cls(model=config, data=dm.publish(), warmup_steps=WARMUP_STEPS, optimizer=adamw, **extra)


def run_ours(
    objective, config, dm, args, logdir, chunked_loss: bool = True, compile_scope: str | None = None
) -> StepClock:
    """`lightning-pretrain fit` as the CLI builds it: TensorBoard and the default callbacks (LR monitor, throughput,
    exact-resume state, the stop/skip guard with its per-step gradient norm, the mixture log)."""

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            clock.tick(trainer.global_step)

    module = our_module(objective, config, dm, chunked_loss)
    defaults = [
        LearningRateMonitor(logging_interval="step"),
        Throughput(),
        ResumeState(),
        StopGuard(),
        MixtureLog(),
        parallel.Parallelize(
            compile=parallel.Compile(enabled=compile_scope is not None, scope=compile_scope or "blocks")
        ),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=50,
        logger=L.pytorch.loggers.TensorBoardLogger(logdir, name=objective),
        callbacks=[*defaults, Clock()],
    )
    clock = StepClock(args.warmup)
    trainer.fit(module, datamodule=dm)
    return clock


def run_raw(objective, config, dm, args, compile_scope: str | None = None) -> StepClock:
    """`ours` without Lightning: the module's own `training_step`, loader, optimizer groups and schedule."""
    module = our_module(objective, config, dm)
    module.train()
    if compile_scope is not None:
        parallel.parallelize(module.model, compile=parallel.Compile(enabled=True, scope=compile_scope))
    # what `configure_optimizers` builds (it needs a Trainer only for the run's step count)
    opt = optim.build_optimizer(adamw, optim.decay_groups(module.named_parameters()))
    sched = optim.scheduler_config(opt, "cosine", WARMUP_STEPS, args.steps)["scheduler"]
    dm.setup("fit")
    clock, step = StepClock(args.warmup), 0
    with warnings.catch_warnings():
        # training_loss calls self.log, which without a Trainer only warns and returns
        warnings.filterwarnings("ignore", message=".*self.log.*")
        while step < args.steps:  # epochs, as Lightning goes on to the next one
            for i, batch in enumerate(dm.train_dataloader()):
                loss = module.training_step(batch, i)
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                clock.tick(step)
                if step == args.steps:
                    break
    return clock


def matmul_gflops(n: int, repeats: int = 5) -> float:
    """The fp32 GEMM ceiling: GFLOP/s of the best of `repeats` (n x n) @ (n x n) products, after one warm-up."""
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=c)  # thread pool start-up, page faults
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def measure(side: str, objective: str, args) -> dict:
    """One timed run in this process (the driver starts a fresh process per run)."""
    if side == "matmul":
        return {"gflops": matmul_gflops(args.matmul_size)}
    base, _, compiled = side.partition("+compile")
    scope = (compiled.removeprefix("-") or "blocks") if "+compile" in side else None
    if base in ("ours", "ours-hf-loss", "hf+malloc", "raw"):
        keep_freed_memory()  # what `lightning-pretrain` does at start-up; the HF recipe does not
    L.seed_everything(args.seed, verbose=False)
    config = shapes(args.tiny, args.large, max(128, args.seq_len))[objective]
    dm = PretrainCorpus(
        source=args.source,
        tokenizer="bpe" if objective == "clm" else "wordpiece",
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    dm.prepare_data()  # a cache hit: the driver built it
    tokens = args.batch_size * args.seq_len
    if base in ("ours", "ours-hf-loss"):
        with tempfile.TemporaryDirectory() as logdir:
            clock = run_ours(objective, config, dm, args, logdir, chunked_loss=base == "ours", compile_scope=scope)
        return {"tok_s": clock.tokens_per_s(tokens), "first_step_s": clock.first_step_s}
    if base == "raw":
        clock = run_raw(objective, config, dm, args, compile_scope=scope)
        return {"tok_s": clock.tokens_per_s(tokens), "first_step_s": clock.first_step_s}
    texts = [t for batch in dm.parts[0].texts("train") for t in batch]  # the same documents our side trains on
    return {"tok_s": run_hf(objective, config, dm.tokenizer, texts, args)}


def worker(side: str, objective: str, passthrough: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *passthrough, "--worker", side, objective], capture_output=True, text=True
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{side} {objective} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def ratio(med: dict, a: str, b: str) -> str:
    return f"{med[a] / med[b]:.2f}" if a in med and b in med else "-"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=["clm", "mlm", "both"], default="both")
    p.add_argument("--source", default="builtin", help="corpus for all sides (PretrainCorpus --data.source forms)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per side; the median is reported")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--matmul-size", type=int, default=4096, help="side of the square fp32 matmul of the ceiling")
    p.add_argument(
        "--sides",
        default="hf,ours,raw,hf+malloc",
        help="hf: the HF recipe as is; ours: lightning_pretrain; raw: our module, batches, loss and "
        "optimizer in a plain loop; hf+malloc: HF with our allocator setting; "
        "ours-hf-loss: ours with the HF model's loss instead of the chunked one (CLM); "
        "ours+compile / raw+compile (blocks) and ours+compile-model / raw+compile-model: torch.compile",
    )
    p.add_argument("--tiny", action="store_true", help="a tiny model and few steps: checks the script runs")
    p.add_argument(
        "--large",
        action="store_true",
        help="GPT-2 small / BERT-base widths (12 layers x 768): the framework's share of a bigger step",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.repeats, args.vocab_size, args.matmul_size = 6, 2, 1, 1000, 256
    if args.worker:
        print("RESULT " + json.dumps(measure(*args.worker, args)))
        return
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, transformers {transformers.__version__}, "
        f"lightning {L.__version__}, cores {os.cpu_count()}"
    )
    objectives = ["clm", "mlm"] if args.objective == "both" else [args.objective]
    sides = args.sides.split(",")
    passthrough = [a for a in sys.argv[1:] if a not in ("--objective",) and a not in objectives + ["both"]]
    results, ceilings = {}, []
    for objective in objectives:
        config = shapes(args.tiny, args.large, max(128, args.seq_len))[objective]
        dm = PretrainCorpus(
            source=args.source,
            tokenizer="bpe" if objective == "clm" else "wordpiece",
            vocab_size=args.vocab_size,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
        )
        dm.prepare_data()  # tokenizer + blocks cached once, outside every timing
        model = our_module(objective, config, dm).model
        n_params = sum(p.numel() for p in model.parameters())
        flops_per_token = batch_flops(model, (args.batch_size, args.seq_len)) / (args.batch_size * args.seq_len)
        print(f"{objective}: {n_params / 1e6:.1f}M parameters, {flops_per_token / 1e6:.1f} MFLOP per token")
        runs, first = {side: [] for side in sides}, {side: [] for side in sides}
        for r in range(args.repeats):
            ceilings.append(worker("matmul", objective, passthrough)["gflops"])
            print(f"[{objective} repeat {r}] {'matmul':<12} {ceilings[-1]:>10,.1f} GFLOP/s", flush=True)
            for side in sides:  # alternate, so drift of the machine hits every side alike
                result = worker(side, objective, passthrough)
                runs[side].append(result["tok_s"])
                first[side].append(result.get("first_step_s"))
                print(
                    f"[{objective} repeat {r}] {side:<12} {runs[side][-1]:>10,.0f} tok/s"
                    + (f"  (first step {first[side][-1]:.1f} s)" if first[side][-1] is not None else ""),
                    flush=True,
                )
        results[objective] = (
            n_params,
            flops_per_token,
            {side: statistics.median(v) for side, v in runs.items()},
            {side: (min(v), max(v)) for side, v in runs.items()},
        )
        firsts = {s: statistics.median(v) for s, v in first.items() if v and None not in v}
        print(
            f"{objective}: first step (s, median; compilation included): "
            + ", ".join(f"{s} {v:.1f}" for s, v in firsts.items())
        )
    ceiling = statistics.median(ceilings)
    print(
        f"\nshape: seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab_size}, {args.steps} steps "
        f"({args.warmup} warm-up discarded), median of {args.repeats} alternating runs, one process per run; "
        f"fp32 matmul ceiling {ceiling:,.1f} GFLOP/s ({args.matmul_size}² matmul, median of {len(ceilings)} "
        f"processes, range {min(ceilings):,.1f}-{max(ceilings):,.1f}), {torch.get_num_threads()} threads\n"
    )
    print(
        "| objective | params | MFLOP/token | "
        + " | ".join(f"{s} tok/s" for s in sides)
        + " | ours/raw | ours/hf | hf/raw |"
    )
    print("|---|---:|---:|" + "---:|" * len(sides) + "---:|---:|---:|")
    for objective, (n, fpt, med, _) in results.items():
        print(
            f"| {objective} | {n / 1e6:.1f}M | {fpt / 1e6:.1f} | "
            + " | ".join(f"{med[s]:,.0f}" for s in sides)
            + f" | {ratio(med, 'ours', 'raw')} | {ratio(med, 'ours', 'hf')} | {ratio(med, 'hf', 'raw')} |"
        )
    print("\nachieved model GFLOP/s (share of the fp32 matmul ceiling); tok/s range over the repeats\n")
    print("| objective | " + " | ".join(sides) + " |")
    print("|---|" + "---:|" * len(sides))
    for objective, (_, fpt, med, spread) in results.items():
        cells = [
            f"{med[s] * fpt / 1e9:,.1f} ({med[s] * fpt / 1e9 / ceiling:.0%}); {spread[s][0]:,.0f}-{spread[s][1]:,.0f}"
            for s in sides
        ]
        print(f"| {objective} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
