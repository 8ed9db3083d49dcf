"""The state of an encoder's representations, per layer: token-vector norm, anisotropy (mean cosine of random token
pairs from different sentences, Ethayarajh 2019), the top principal component's variance share, [CLS] and mean-pooled
sentence-vector cosines, and linear-probe accuracy (logistic regression on frozen features); plus which weights a
ForSequenceClassification load would newly initialise, and the MLM head's masked-token loss if the model has one.

    python benchmarks/encoder_diagnostics.py --models DIR [DIR ...] --random_init \
        --text ../shared/data/sst2/dev.tsv --text_column sentence \
        --probe_train ../shared/data/sst2/train.tsv --probe_n 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

REPO = Path(__file__).resolve().parents[1]
SST2 = REPO.parent / "shared" / "data" / "sst2"
sys.path.insert(0, str(REPO))


# -- data ------------------------------------------------------------------------------------------------------------
def read_table(path: str | Path, text_column: str, label_column: str | None) -> tuple[list[str], list[int] | None]:
    """Texts (and integer labels, if the column exists) of a .tsv/.csv with a header, .jsonl, or .txt (a line each)."""
    path = Path(path)
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()], None
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        with open(path, newline="") as f:
            rows = list(
                csv.DictReader(
                    f,
                    delimiter="\t" if path.suffix == ".tsv" else ",",
                    quoting=csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL,
                )
            )
    texts = [str(r[text_column]).strip() for r in rows]
    labels = [int(r[label_column]) for r in rows] if label_column and rows and label_column in rows[0] else None
    return texts, labels


def subsample(texts: list[str], labels: list[int] | None, n: int | None, seed: int):
    if n is None or n >= len(texts):
        return texts, labels
    idx = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [texts[i] for i in idx], (None if labels is None else [labels[i] for i in idx])


# -- features --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> dict:
    """Per layer (embeddings, then each block's output): the [CLS] (first-token) vectors, attention-mask mean-pooled
    vectors, and the content tokens' vectors (no specials, no padding) with the sentence each came from."""
    cls, mean, tokens, owner = [], [], [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        special = batch.pop("special_tokens_mask").bool()
        hidden = model(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].bool()
        content = mask & ~special
        weights = mask.unsqueeze(-1).float()
        cls.append(torch.stack([h[:, 0] for h in hidden]))
        mean.append(torch.stack([(h * weights).sum(1) / weights.sum(1) for h in hidden]))
        tokens.append(torch.stack([h[content] for h in hidden]))
        owner.append(content.nonzero()[:, 0] + start)
    return {
        "cls": torch.cat(cls, 1),
        "mean": torch.cat(mean, 1),
        "tokens": torch.cat(tokens, 1),
        "owner": torch.cat(owner),
    }


def mean_offdiag_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows."""
    u = F.normalize(x.double(), dim=-1)
    n, s = len(u), u.sum(0)
    return ((s @ s - n) / (n * (n - 1))).item()


def token_pair_cosine(tokens: torch.Tensor, owner: torch.Tensor, pairs: int, seed: int) -> float:
    """Anisotropy: mean cosine of random token pairs taken from different sentences."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(len(owner), (2, pairs * 2), generator=g)
    keep = owner[a] != owner[b]
    a, b = a[keep][:pairs], b[keep][:pairs]
    return F.cosine_similarity(tokens[a].double(), tokens[b].double(), dim=-1).mean().item()


def top_pc_share(x: torch.Tensor) -> float:
    """Share of the variance along the first principal component (1/d for isotropic noise, 1 for a line)."""
    s = torch.linalg.svdvals(x.double() - x.double().mean(0))
    return (s[0] ** 2 / (s**2).sum()).item()


# -- linear probe ----------------------------------------------------------------------------------------------------
def fit_logreg(x: torch.Tensor, y: torch.Tensor, l2: float, n_classes: int) -> torch.Tensor:
    """Multinomial logistic regression (weights with a bias column), full-batch L-BFGS, L2 on the weights."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.zeros(x.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=200, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w, y) + l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def accuracy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return ((x @ w).argmax(-1) == y).double().mean().item()


def probe(train_x, train_y, test_x, test_y, l2s=(1e-4, 1e-3, 1e-2, 1e-1), seed=0) -> float:
    """Test accuracy of a probe on standardised features, its L2 chosen on a 20% hold-out of the training rows."""
    train_x, test_x = train_x.double(), test_x.double()
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mu) / sd, (test_x - mu) / sd
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))
    hold, fit = perm[: len(perm) // 5], perm[len(perm) // 5 :]
    best = max(
        l2s,
        key=lambda l2: (
            accuracy(fit_logreg(train_x[fit], train_y[fit], l2, n_classes), train_x[hold], train_y[hold]),
            l2,
        ),
    )
    return accuracy(fit_logreg(train_x, train_y, best, n_classes), test_x, test_y)


# -- models ----------------------------------------------------------------------------------------------------------
def load(path: str, random_init: bool, seed: int):
    """(encoder, tokenizer, what a ForSequenceClassification load newly initialises, MLM model or None)."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForMaskedLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from lightning_pretrain.finetune.backbone_load import group_names, load_pretrained

    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    has_mlm = any("ForMaskedLM" in a or "ForPreTraining" in a for a in config.architectures or [])
    if random_init:  # an MLM architecture keeps its (fresh) head: the MLM measures' baseline
        torch.manual_seed(seed)
        if has_mlm:
            mlm = AutoModelForMaskedLM.from_config(config).eval()
            return mlm.base_model, tokenizer, "all (fresh weights)", mlm
        return AutoModel.from_config(config).eval(), tokenizer, "all (fresh weights)", None
    model = AutoModel.from_pretrained(path).eval()
    _, report = load_pretrained(AutoModelForSequenceClassification, path, num_labels=2, ignore_mismatched_sizes=True)
    new = ", ".join(group_names(report.newly_initialised, 6)) or "none"
    mlm = None
    if has_mlm:
        mlm, info = load_pretrained(AutoModelForMaskedLM, path)
        mlm = mlm.eval() if not info.newly_initialised else None
    return model, tokenizer, new, mlm


@torch.no_grad()
def mlm_loss(
    mlm, tokenizer, texts: list[str], max_length: int, batch_size: int, seed: int, unigram_texts: list[str]
) -> dict:
    """The MLM head on 15% of the content tokens, all replaced by the mask token: NLL and top-1 accuracy, against the
    NLL of the same tokens under unigram frequencies of `unigram_texts` (add-one smoothed); how much its predictions
    differ between positions (mean pairwise total-variation distance, 0: one prediction everywhere; distinct top-1
    tokens); and its top-1 accuracy at the same positions left visible (copying the input token)."""
    ids = tokenizer(unigram_texts, add_special_tokens=False)["input_ids"]
    counts = torch.bincount(torch.tensor([i for row in ids for i in row]), minlength=len(tokenizer)).double() + 1
    log_unigram = (counts / counts.sum()).log()
    g = torch.Generator().manual_seed(seed)
    nll, hits, copies, n, targets, top1, probs = 0.0, 0, 0, 0, [], [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
        )
        content = batch.pop("special_tokens_mask").eq(0) & batch["attention_mask"].bool()
        masked = content & (torch.rand(content.shape, generator=g) < 0.15)
        labels = batch["input_ids"][masked]
        copies += (mlm(**batch).logits[masked].argmax(-1) == labels).sum().item()
        batch["input_ids"] = batch["input_ids"].masked_fill(masked, tokenizer.mask_token_id)
        logits = mlm(**batch).logits[masked].float()
        nll += F.cross_entropy(logits, labels, reduction="sum").item()
        hits += (logits.argmax(-1) == labels).sum().item()
        n += len(labels)
        targets.append(labels)
        top1.append(logits.argmax(-1))
        probs.append(logits[:8].softmax(-1))  # a few positions per batch: from many different sentences
    p = torch.cat(probs)[:256].double()
    spread = (0.5 * (p[:, None] - p[None]).abs().sum(-1)).sum().item() / (len(p) * (len(p) - 1))
    return {
        "loss": nll / n,
        "acc": hits / n,
        "unigram": -log_unigram[torch.cat(targets)].mean().item(),
        "n": n,
        "spread": spread,
        "distinct_top1": torch.cat(top1).unique().numel(),
        "copy_acc": copies / n,
    }


def diagnose(name: str, path: str, random_init: bool, args, texts, probe_data) -> dict:
    t0 = time.perf_counter()
    model, tokenizer, new, mlm = load(path, random_init, args.seed)
    enc = encode(model, tokenizer, texts, args.max_length, args.batch_size)
    if probe_data is not None:
        (tr_texts, tr_y), (te_texts, te_y) = probe_data
        tr = encode(model, tokenizer, tr_texts, args.max_length, args.batch_size)
        te = enc if te_texts is texts else encode(model, tokenizer, te_texts, args.max_length, args.batch_size)
        tr_y, te_y = torch.tensor(tr_y), torch.tensor(te_y)
    rows = []
    for layer in range(enc["cls"].shape[0]):
        row = {
            "layer": "embeddings" if layer == 0 else f"layer {layer}",
            "norm": enc["tokens"][layer].norm(dim=-1).mean().item(),
            "aniso": token_pair_cosine(enc["tokens"][layer], enc["owner"], args.pairs, args.seed),
            "pc1": top_pc_share(enc["tokens"][layer]),
            "cls_cos": mean_offdiag_cosine(enc["cls"][layer]),
            "mean_cos": mean_offdiag_cosine(enc["mean"][layer]),
        }
        if probe_data is not None:
            row["probe_mean"] = probe(tr["mean"][layer], tr_y, te["mean"][layer], te_y, seed=args.seed)
            row["probe_cls"] = probe(tr["cls"][layer], tr_y, te["cls"][layer], te_y, seed=args.seed)
        rows.append(row)
    result = {
        "name": name,
        "path": path,
        "random_init": random_init,
        "rows": rows,
        "new": new,
        "params": sum(p.numel() for n, p in model.named_parameters() if "pooler" not in n),
        "hidden": model.config.hidden_size,
        "vocab": len(tokenizer),
        "seconds": time.perf_counter() - t0,
    }
    if mlm is not None:
        result["mlm"] = mlm_loss(mlm, tokenizer, texts, args.max_length, args.batch_size, args.seed, args.unigram_texts)
    return result


# -- report ----------------------------------------------------------------------------------------------------------
def table(result: dict, majority: float | None) -> str:
    probe = "probe_mean" in result["rows"][0]
    head = ["layer", "token norm", "anisotropy", "PC1 share", "[CLS] cos", "mean-pool cos"]
    head += ["probe mean-pool", "probe [CLS]"] if probe else []
    lines = [
        f"#### {result['name']}" + (" (random init)" if result["random_init"] else ""),
        "",
        f"{result['path']}: {result['params'] / 1e6:.2f}M encoder parameters (no pooler), hidden "
        f"{result['hidden']}, vocabulary {result['vocab']}; newly initialised as ForSequenceClassification: "
        f"{result['new']}.",
    ]
    if "mlm" in result:
        m = result["mlm"]
        lines[-1] += (
            f" MLM head on the text ({m['n']} tokens masked): loss {m['loss']:.3f} (unigram: "
            f"{m['unigram']:.3f}), top-1 {100 * m['acc']:.1f}%; prediction spread between positions "
            f"{m['spread']:.3f} TV, {m['distinct_top1']} distinct top-1 tokens; the same tokens left "
            f"visible: top-1 {100 * m['copy_acc']:.1f}% (copying)."
        )
    lines += ["", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in result["rows"]:
        cells = [
            r["layer"],
            f"{r['norm']:.2f}",
            f"{r['aniso']:.3f}",
            f"{r['pc1']:.3f}",
            f"{r['cls_cos']:.3f}",
            f"{r['mean_cos']:.3f}",
        ]
        cells += [f"{100 * r['probe_mean']:.1f}", f"{100 * r['probe_cls']:.1f}"] if probe else []
        lines.append("| " + " | ".join(cells) + " |")
    if probe and majority is not None:
        lines.append(f"\n(probe: accuracy %, majority class {100 * majority:.1f}%)")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    lines = [
        "| model | last-layer anisotropy | last [CLS] cos | last mean-pool cos | probe mean-pool (last / best) "
        "| probe [CLS] (last / best) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        last, rows = res["rows"][-1], res["rows"]
        name = res["name"] + (" (random init)" if res["random_init"] else "")
        probe = [
            f"{100 * last[k]:.1f} / {100 * max(r[k] for r in rows):.1f}" if k in last else "-"
            for k in ("probe_mean", "probe_cls")
        ]
        lines.append(
            f"| {name} | {last['aniso']:.3f} | {last['cls_cos']:.3f} | {last['mean_cos']:.3f} | "
            f"{probe[0]} | {probe[1]} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="HF model directories (or hub ids in the cache)")
    p.add_argument("--names", nargs="+", help="a short name per model (default: the directory's path)")
    p.add_argument("--random_init", action="store_true", help="also each architecture with fresh weights")
    p.add_argument("--text", default=str(SST2 / "dev.tsv"), help=".tsv/.csv (header), .jsonl or .txt")
    p.add_argument("--text_column", default="sentence")
    p.add_argument("--label_column", default="label", help="labels of --text / --probe_train, for the probe")
    p.add_argument("--n_text", type=int, default=1000, help="sentences of --text used (a seeded subset)")
    p.add_argument(
        "--probe_train",
        default=str(SST2 / "train.tsv"),
        help="'none': no probe; its texts also give the unigram baseline of the MLM loss (default: --text's)",
    )
    p.add_argument("--probe_n", type=int, default=2000, help="probe training sentences (a seeded subset)")
    p.add_argument("--probe_test", help="labelled table the probe is scored on (default: --text)")
    p.add_argument("--pairs", type=int, default=20000, help="random token pairs for the anisotropy")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    transformers.logging.set_verbosity_error()  # the loads are summarised in the tables
    texts, labels = subsample(*read_table(args.text, args.text_column, args.label_column), args.n_text, args.seed)
    probe_data, majority, args.unigram_texts = None, None, texts
    if args.probe_train != "none":
        full_train = read_table(args.probe_train, args.text_column, args.label_column)
        args.unigram_texts = full_train[0]
        train = subsample(*full_train, args.probe_n, args.seed)
        test = read_table(args.probe_test, args.text_column, args.label_column) if args.probe_test else (texts, labels)
        if train[1] is None or test[1] is None:
            print(f"no '{args.label_column}' column in the probe's files: no linear probe", file=sys.stderr)
        else:
            probe_data = (train, test)
            majority = max(test[1].count(c) for c in set(test[1])) / len(test[1])
    names = args.names or args.models
    results = []
    for name, path in zip(names, args.models, strict=True):
        for random_init in (False, True) if args.random_init else (False,):
            results.append(diagnose(name, path, random_init, args, texts, probe_data))
            print(f"[{name}{' random init' if random_init else ''}: {results[-1]['seconds']:.0f}s]", file=sys.stderr)
    print(
        f"Text: {args.text} ({len(texts)} sentences, column '{args.text_column}'); anisotropy over {args.pairs} "
        f"random token pairs from different sentences; content tokens only (no [CLS]/[SEP]/padding); mean-pool: "
        f"attention-mask mean of all tokens; cosines: mean over all pairs of distinct sentences."
    )
    if probe_data is not None:
        print(
            f"Probe: logistic regression (L-BFGS, L2 chosen on a 20% hold-out) on standardised frozen features of "
            f"{len(probe_data[0][0])} sentences of {args.probe_train}, scored on "
            f"{args.probe_test or args.text} ({len(probe_data[1][0])} sentences)."
        )
    for res in results:
        print("\n" + table(res, majority))
    print("\n#### Summary\n\n" + summary(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
