"""What keeping packed documents apart costs: training tokens/s with `cross_document_attention` false vs true.

Same model, same batches of the embedded corpus (its real document lengths), same training step (the objective's
loss, backward, AdamW); only the attention differs: on CPU the explicit [B,1,L,L] document mask against sdpa's
causal fast path (CLM) or no mask (MLM). Sides alternate, median of the repeats.
    python benchmarks/document_masking.py --objectives clm,mlm --seq-lens 128,512 --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from peer_hf_trainer import shapes  # noqa: E402

from lightning_pretrain.data import PretrainCorpus  # noqa: E402
from lightning_pretrain.data.pretrain.blocks import BlockCollate  # noqa: E402
from lightning_pretrain.data.tokenizers import document_separator  # noqa: E402
from lightning_pretrain.objectives import CausalLM, MaskedLM  # noqa: E402


def tokens_per_s(module, batches, tokens: int, steps: int, warmup: int) -> float:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=False)
    for i, batch in enumerate(batches[: warmup + steps]):
        if i == warmup:
            start = time.perf_counter()
        module.training_loss(batch, i).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * tokens / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", default="clm,mlm")
    p.add_argument("--seq-lens", default="128,512")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per batch (batch = this / seq_len)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="a 2-layer d=64 model (a smoke run)")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    for seq_len in map(int, args.seq_lens.split(",")):
        batch_size = max(1, args.batch_tokens // seq_len)
        for objective in args.objectives.split(","):
            config = shapes(args.tiny)[objective]
            setattr(config, "n_positions" if objective == "clm" else "max_position_embeddings", seq_len)
            with tempfile.TemporaryDirectory() as cache:
                data = PretrainCorpus(
                    tokenizer="bpe" if objective == "clm" else "wordpiece",
                    vocab_size=16384,
                    seq_len=seq_len,
                    batch_size=batch_size,
                    cache_dir=cache,
                    cross_document_attention=False,
                )
                data.prepare_data()
                data.setup("fit")
                blocks = [
                    torch.from_numpy(data.train_blocks[i].astype("int64"))
                    for i in range(batch_size * (args.steps + args.warmup))
                ]
                batches = [
                    BlockCollate(document_separator(data.tokenizer))(blocks[i : i + batch_size])
                    for i in range(0, len(blocks), batch_size)
                ]
                docs = sum(int((b["position_ids"] == 0).sum()) for b in batches) / len(batches) / batch_size
                cls = CausalLM if objective == "clm" else MaskedLM
                runs = {True: [], False: []}
                for r in range(args.repeats):
                    for apart in (r % 2 == 0, r % 2 == 1):  # alternate which side goes first
                        module = cls(model=config, data=data.publish())
                        feed = batches if apart else [b["input_ids"] for b in batches]  # plain blocks: a tensor
                        runs[apart].append(tokens_per_s(module, feed, batch_size * seq_len, args.steps, args.warmup))
                plain, apart = statistics.median(runs[False]), statistics.median(runs[True])
                rows.append((objective, seq_len, batch_size, docs, plain, apart))
                print(
                    f"{objective} seq {seq_len} batch {batch_size} ({docs:.1f} documents/block): packed "
                    f"{plain:,.0f} tok/s, documents apart {apart:,.0f} tok/s ({apart / plain:.3f}x); runs: packed "
                    f"{[round(x) for x in runs[False]]}, apart {[round(x) for x in runs[True]]}",
                    flush=True,
                )
    print("\n| objective | seq | batch | documents/block | packed tok/s | documents apart tok/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for objective, seq_len, batch_size, docs, plain, apart in rows:
        print(
            f"| {objective} | {seq_len} | {batch_size} | {docs:.1f} | {plain:,.0f} | {apart:,.0f} | "
            f"{apart / plain:.3f} |"
        )
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} timed steps after "
        f"{args.warmup}, median of {args.repeats}"
    )


if __name__ == "__main__":
    main()
