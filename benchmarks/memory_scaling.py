"""Peak memory of a CLM training step against sequence length, at a fixed token budget per batch (CPU, RSS).

GPT-2 of benchmarks/peer_hf_trainer.py's shape (8 layers, 256 wide) with `n_positions` = the sequence length and a
word-level tokenizer of exactly `--vocab-size` ids (GPT-2's 50257 by default: a large vocabulary is where the
(tokens x vocab) logits dominate), batches of `--tokens // seq` random blocks, fused AdamW. Sides: `ours` is
lightning.Trainer + CausalLM with the chunked linear cross-entropy; `hf` the same with the HF model's `labels=` loss
(`chunked_loss=False`); `raw` a plain loop over `model(input_ids, labels=input_ids).loss`, no Lightning;
`raw-chunked` (not run by default) the plain loop over our module's chunked `training_step`. Each (seq, side) runs
in a fresh process with the same glibc setting (`--malloc`): `step MB` is the peak RSS after `--steps` steps less
the RSS once model, data and optimizer are built (so it holds gradients, AdamW state and activations), `peak MB`
the process's absolute peak.

    python benchmarks/memory_scaling.py                                  # seq 128-2048, 8192 tokens, vocab 50257
    python benchmarks/memory_scaling.py --vocab-size 16384 --sides ours,hf,raw,raw-chunked --plot memory.png
    python benchmarks/memory_scaling.py --tiny                           # smoke run: tiny model, 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from lightning_pretrain import optim  # noqa: E402
from lightning_pretrain.allocator import keep_freed_memory  # noqa: E402
from lightning_pretrain.data.contract import DataContract  # noqa: E402
from lightning_pretrain.objectives import CausalLM  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_hf_trainer import adamw, shapes  # noqa: E402

SIDES = ("ours", "hf", "raw", "raw-chunked")
MB = 2**20


def tokenizer_of(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of exactly `vocab` ids: memory depends on the vocabulary's size, not its content."""
    specials = ["<|endoftext|>", "<unk>"]
    words = specials + [f"w{i}" for i in range(vocab - len(specials))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[0], unk_token=specials[1])


def rss_bytes() -> int:
    """The process's resident set now (/proc/self/statm), in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(side: str, seq: int, args) -> dict:
    """Peak RSS of `args.steps` training steps of one side, in this (fresh) process."""
    if args.malloc == "ours":
        keep_freed_memory()
    L.seed_everything(args.seed, verbose=False)
    config = shapes(args.tiny)["clm"]
    config.n_positions = seq
    tokenizer = tokenizer_of(args.vocab_size)
    module = CausalLM(
        model=config,
        data=DataContract(tokenizer=tokenizer, seq_len=seq),
        warmup_steps=0,
        optimizer=adamw,
        chunked_loss=side in ("ours", "raw-chunked"),
    )
    batch_size = args.tokens // seq
    rows = list(torch.randint(0, args.vocab_size, (args.steps * batch_size, seq)))
    if side in ("ours", "hf"):
        loader = torch.utils.data.DataLoader(rows, batch_size=batch_size)
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=args.steps,
            limit_val_batches=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        baseline = rss_bytes()
        trainer.fit(module, train_dataloaders=loader)
    else:
        module.train()
        opt = optim.build_optimizer(adamw, optim.decay_groups(module.named_parameters()))
        batches = [torch.stack(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
        baseline = rss_bytes()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")  # training_loss logs; no Trainer: a warning
            for i, batch in enumerate(batches):
                if side == "raw":
                    loss = module.model(input_ids=batch, labels=batch).loss
                else:
                    loss = module.training_step(batch, i)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"step": peak - baseline, "peak": peak, "batch": batch_size}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", default="128,512,1024,2048", help="sequence lengths, comma-separated")
    p.add_argument("--tokens", type=int, default=8192, help="tokens per batch (batch = tokens // seq)")
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--steps", type=int, default=3, help="training steps per run (the first allocates AdamW's state)")
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per (seq, side); the median is reported")
    p.add_argument("--sides", default="ours,hf,raw", help=f"comma-separated, of {', '.join(SIDES)}")
    p.add_argument(
        "--malloc",
        choices=["ours", "default"],
        default="ours",
        help="glibc setting of every side: lightning-pretrain's (allocator.py) or glibc's default",
    )
    p.add_argument("--plot", metavar="PNG", help="also plot step MB against seq (needs matplotlib)")
    p.add_argument("--tiny", action="store_true", help="a tiny model, short sequences, 2 steps: checks the script runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "SEQ"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.seqs, args.tokens, args.vocab_size, args.steps = "32,64", 256, 2000, 2
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker[0], int(args.worker[1]), args)))
        return
    seqs, sides = [int(s) for s in args.seqs.split(",")], args.sides.split(",")
    unknown = [s for s in sides if s not in SIDES]
    if unknown or any(args.tokens % s for s in seqs):
        sys.exit(
            f"error: unknown sides {unknown}"
            if unknown
            else f"error: --tokens {args.tokens} must be a multiple of every sequence length {seqs}"
        )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cores {os.cpu_count()}; {args.tokens} tokens "
        f"per batch, vocab {args.vocab_size}, {args.steps} steps, malloc {args.malloc}, median of {args.repeats}"
    )
    passthrough = [a for a in sys.argv[1:] if a != "--plot" and a != args.plot]
    results = {}
    for seq in seqs:
        for side in sides:
            runs = []
            for _ in range(args.repeats):
                proc = subprocess.run(
                    [sys.executable, __file__, *passthrough, "--worker", side, str(seq)], capture_output=True, text=True
                )
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    sys.exit(f"{side} seq {seq} failed:\n{proc.stderr[-3000:]}")
                runs.append(json.loads(line[7:]))
            results[seq, side] = {k: statistics.median(r[k] for r in runs) for k in ("step", "peak")}
            print(
                f"seq {seq:>5} {side:<12} step {results[seq, side]['step'] / MB:>8,.0f} MB   "
                f"peak {results[seq, side]['peak'] / MB:>8,.0f} MB",
                flush=True,
            )
    logits = args.tokens * args.vocab_size * 4 / MB  # one fp32 (tokens x vocab) tensor, what the chunked loss avoids
    print(
        f"\none fp32 (tokens x vocab) logits tensor: {logits:,.0f} MB; step MB = peak RSS - RSS before the first "
        f"step (gradients, AdamW state, activations, loss)\n"
    )
    compare = [
        (a, b)
        for a, b in (("hf", "ours"), ("raw", "ours"), ("raw", "raw-chunked"), ("ours", "raw-chunked"))
        if a in sides and b in sides
    ]
    print(
        "| seq | batch | "
        + " | ".join(f"{s} step MB (peak)" for s in sides)
        + "".join(f" | {a}/{b} step" for a, b in compare)
        + " |"
    )
    print("|---:|---:|" + "---:|" * (len(sides) + len(compare)))
    for seq in seqs:
        r = {s: results[seq, s] for s in sides}
        print(
            f"| {seq} | {args.tokens // seq} | "
            + " | ".join(f"{r[s]['step'] / MB:,.0f} ({r[s]['peak'] / MB:,.0f})" for s in sides)
            + "".join(f" | {r[a]['step'] / r[b]['step']:.2f}" for a, b in compare)
            + " |"
        )
    if args.plot:
        try:
            import matplotlib
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for side in sides:
            ax.plot(seqs, [results[seq, side]["step"] / MB for seq in seqs], marker="o", label=side)
        ax.set(
            xscale="log",
            xlabel="sequence length",
            ylabel="step RSS above the built model (MB)",
            title=f"CLM step memory, {args.tokens} tokens per batch, vocab {args.vocab_size}",
        )
        ax.set_xticks(seqs, [str(s) for s in seqs])
        ax.legend()
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
