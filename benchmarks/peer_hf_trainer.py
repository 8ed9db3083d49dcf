"""This project vs the Hugging Face Trainer recipe of run_clm.py / run_mlm.py: training tokens/s, side by side.

Both sides train the same model shape (GPT-2 or BERT, ~11M parameters with a 16k vocabulary; seq 128, batch 32) on
the same corpus with the same tokenizer and the same optimizer settings, alternating runs (each in a fresh process) so that
machine drift hits both equally. The HF side is the run_clm/run_mlm recipe: `tokenizer(texts)` + `group_texts`
blocks, `default_data_collator` (CLM) or `DataCollatorForLanguageModeling(mlm_probability=0.15)` (MLM),
`Trainer` with its default fused AdamW and a cosine schedule. Our side is `PretrainCorpus` + `CausalLM` / `MaskedLM`
under `lightning.Trainer` with TensorBoard logging on, and the glibc allocator setting that
`lightning-pretrain` applies at start-up (lightning_pretrain/allocator.py); `hf+malloc` shows the HF recipe with that
same setting, so the table separates what the allocator buys from what the rest of the stack does; `ours-hf-loss`
(not run by default) is our CLM side with the HF model's own loss instead of the chunked linear cross-entropy. Tokenization is excluded from both timings: only steady-state
optimizer steps count (the first `--warmup` steps of each run are discarded).

    python benchmarks/peer_hf_trainer.py                       # both objectives, builtin corpus
    python benchmarks/peer_hf_trainer.py --objective clm --steps 30 --repeats 2
    python benchmarks/peer_hf_trainer.py --tiny                # a 1-minute smoke run (tiny model, few steps)
"""

from __future__ import annotations

import argparse
import copy
import os
import json
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import datasets  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import BertConfig, GPT2Config  # noqa: E402

from lightning_pretrain.allocator import keep_freed_memory  # noqa: E402
from lightning_pretrain.data import PretrainCorpus  # noqa: E402
from lightning_pretrain.objectives import CausalLM, MaskedLM  # noqa: E402


def shapes(tiny: bool):
    h, layers, heads, ffn = (64, 2, 2, 256) if tiny else (256, 8, 8, 1024)
    return {
        "clm": GPT2Config(n_embd=h, n_layer=layers, n_head=heads, n_inner=ffn, n_positions=128,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
        "mlm": BertConfig(hidden_size=h, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                          max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    }


class StepClock:
    """Wall time between the end of step `warmup` and the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def tick(self, step: int) -> None:
        if step == self.warmup:
            self.start = time.perf_counter()
        self.end, self.steps = time.perf_counter(), step

    def tokens_per_s(self, tokens_per_step: int) -> float:
        return (self.steps - self.warmup) * tokens_per_step / (self.end - self.start)


def run_hf(objective, config, tokenizer, texts, args) -> float:
    """The run_clm.py / run_mlm.py recipe, trimmed to what affects training speed."""
    raw = datasets.Dataset.from_dict({"text": texts})
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):  # run_clm.py's group_texts
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // args.seq_len) * args.seq_len
        result = {k: [t[i: i + args.seq_len] for i in range(0, total, args.seq_len)] for k, t in concatenated.items()}
        if objective == "clm":
            result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True)
    config = copy.deepcopy(config)  # sized to the same tokenizer as our side (run_clm.py resizes embeddings so)
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id, config.eos_token_id = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                                                     tokenizer.eos_token_id)
    if objective == "clm":
        model = transformers.AutoModelForCausalLM.from_config(config)
        collator = transformers.default_data_collator
    else:
        model = transformers.AutoModelForMaskedLM.from_config(config)
        collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    clock = StepClock(args.warmup)

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            clock.tick(state.global_step)

    with tempfile.TemporaryDirectory() as out:
        targs = transformers.TrainingArguments(
            output_dir=out, use_cpu=True, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
            learning_rate=1e-3, weight_decay=0.01, warmup_steps=5, lr_scheduler_type="cosine", report_to=[],
            save_strategy="no", eval_strategy="no", logging_steps=50, disable_tqdm=True, seed=0,
            dataloader_drop_last=True)
        trainer = transformers.Trainer(model=model, args=targs, train_dataset=lm, data_collator=collator,
                                       callbacks=[Clock()])
        trainer.train()
    return clock.tokens_per_s(args.batch_size * args.seq_len)


def run_ours(objective, config, dm, args, logdir, chunked_loss: bool = True) -> float:
    clock = StepClock(args.warmup)

    class Clock(L.Callback):
        def on_train_batch_end(self, trainer, *a):
            clock.tick(trainer.global_step)

    extra = {"chunked_loss": chunked_loss} if objective == "clm" else {}
    cls = CausalLM if objective == "clm" else MaskedLM
    module = cls(model=config, data=dm.contract, warmup_steps=5,
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01, fused=True), **extra)
    trainer = L.Trainer(accelerator="cpu", max_steps=args.steps, limit_val_batches=0, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=50,
                        logger=L.pytorch.loggers.TensorBoardLogger(logdir, name=objective), callbacks=[Clock()])
    trainer.fit(module, datamodule=dm)
    return clock.tokens_per_s(args.batch_size * args.seq_len)


def measure(side: str, objective: str, args) -> dict:
    """One timed run in this process (the driver starts a fresh process per run)."""
    if side in ("ours", "ours-hf-loss", "hf+malloc"):
        keep_freed_memory()  # what `lightning-pretrain` does at start-up; the HF recipe does not
    L.seed_everything(args.seed, verbose=False)
    config = shapes(args.tiny)[objective]
    dm = PretrainCorpus(source=args.source, tokenizer="bpe" if objective == "clm" else "wordpiece",
                        vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size)
    dm.prepare_data()  # a cache hit: the driver built it
    if side in ("ours", "ours-hf-loss"):
        with tempfile.TemporaryDirectory() as logdir:
            return {"tok_s": run_ours(objective, config, dm, args, logdir, chunked_loss=side == "ours")}
    texts = [t for batch in dm._texts("train") for t in batch]  # the same documents our side trains on
    return {"tok_s": run_hf(objective, config, dm.tokenizer, texts, args)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=["clm", "mlm", "both"], default="both")
    p.add_argument("--source", default="builtin", help="corpus for both sides (PretrainCorpus --data.source forms)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the median is reported")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--sides", default="hf,ours,hf+malloc",
                   help="hf: the HF recipe as is; ours: lightning_pretrain; hf+malloc: HF with our allocator setting; "
                        "ours-hf-loss: ours with the HF model's loss instead of the chunked one (CLM)")
    p.add_argument("--tiny", action="store_true", help="a tiny model and few steps: checks the script runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.steps, args.warmup, args.repeats, args.vocab_size = 6, 2, 1, 1000
    if args.worker:
        print("RESULT " + json.dumps(measure(*args.worker, args)))
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, transformers {transformers.__version__}, "
          f"lightning {L.__version__}, cores {os.cpu_count()}")
    objectives = ["clm", "mlm"] if args.objective == "both" else [args.objective]
    sides = args.sides.split(",")
    passthrough = [a for a in sys.argv[1:] if a not in ("--objective",) and a not in objectives + ["both"]]
    results = {}
    for objective in objectives:
        config = shapes(args.tiny)[objective]
        dm = PretrainCorpus(source=args.source, tokenizer="bpe" if objective == "clm" else "wordpiece",
                            vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size)
        dm.prepare_data()  # tokenizer + blocks cached once, outside every timing
        cls = CausalLM if objective == "clm" else MaskedLM
        n_params = sum(p.numel() for p in cls(config, dm.tokenizer).parameters())
        print(f"{objective}: {n_params / 1e6:.1f}M parameters")
        runs = {side: [] for side in sides}
        for r in range(args.repeats):
            for side in sides:  # alternate, so drift of the machine hits every side alike
                proc = subprocess.run([sys.executable, __file__, *passthrough, "--worker", side, objective],
                                      capture_output=True, text=True)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{side} {objective} run failed:\n{proc.stderr[-3000:]}")
                runs[side].append(json.loads(line[7:])["tok_s"])
                print(f"[{objective} repeat {r}] {side:<10} {runs[side][-1]:>10,.0f} tok/s", flush=True)
        results[objective] = (n_params, {side: statistics.median(v) for side, v in runs.items()})
    print(f"\nshape: seq {args.seq_len}, batch {args.batch_size}, vocab {args.vocab_size}, {args.steps} steps "
          f"({args.warmup} warm-up discarded), median of {args.repeats} alternating runs, one process per run")
    print(f"{'objective':<10}{'params':>9}" + "".join(f"{s + ' tok/s':>18}" for s in sides) + f"{'ours/hf':>9}")
    for objective, (n, med) in results.items():
        ratio = f"{med['ours'] / med['hf']:>8.2f}x" if "ours" in med and "hf" in med else ""
        print(f"{objective:<10}{n / 1e6:>8.1f}M" + "".join(f"{med[s]:>18,.0f}" for s in sides) + ratio)


if __name__ == "__main__":
    main()
