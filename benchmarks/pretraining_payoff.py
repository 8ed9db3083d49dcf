"""The pretraining payoff on real data, on CPU: a small BERT pretrained with MaskedLM on unlabelled in-domain text,
then fine-tuned on a small labelled subset, against the same architecture and tokenizer fine-tuned from random
initialisation (same steps, same data, same seeds; paired per seed). Every run is a `lightning-pretrain fit`.

    python benchmarks/pretraining_payoff.py --sst2 ../shared/data/sst2 --pretrain_steps 3000 \
        --train_examples 2000 --seeds 1 2 3 --out logs/bench_payoff

Data: SST-2 (GLUE). The unlabelled in-domain text is the sentence column of SST-2's training file (movie-review
sentences and phrases, labels never read); the labelled subset is `--train_examples` rows of that file (a seeded
subset per seed); accuracy is on SST-2's dev set (872 sentences, never pretrained on). Prints a Markdown table: dev
accuracy per seed and arm, the means, and the paired gap with its standard error and 95% t-interval.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def fit(args: list[str]) -> tuple[int, float]:
    """`lightning-pretrain fit ARGS` in a fresh process; (exit status, seconds)."""
    t0 = time.perf_counter()
    status = subprocess.run([sys.executable, "-m", "lightning_pretrain", "fit", *args], env=os.environ).returncode
    return status, time.perf_counter() - t0


def latest_run(root: Path) -> Path | None:
    runs = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return runs[-1] if runs else None


def random_init_copy(pretrained_hf: Path, out: Path, seed: int = 0) -> Path:
    """The pretrained export's architecture and tokenizer with freshly initialised weights."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(pretrained_hf))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(pretrained_hf).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", default=str(REPO.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--pretrain_steps", type=int, default=3000)
    parser.add_argument("--train_examples", type=int, default=2000, help="labelled examples to fine-tune on")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (both arms)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", default="logs/bench_payoff")
    parser.add_argument("--reuse", action="store_true", help="reuse an existing pretraining run under --out")
    parser.add_argument("--pretrain_args", default="", help="more `lightning-pretrain fit` options for pretraining, "
                        "e.g. '--data.vocab_size 1024 --model.init_args.mlm_probability 0.3 --data.batch_size 32'")
    parser.add_argument("--finetune_args", default="", help="more options for every fine-tuning run")
    args = parser.parse_args()
    out, sst2 = Path(args.out), Path(args.sst2)
    commands = {}

    pretrain = ["-c", str(REPO / "configs/pretrain/mlm_tiny.yaml"), "--data.source", str(sst2 / "train.tsv"),
                "--data.text_column", "sentence", "--trainer.max_steps", str(args.pretrain_steps),
                "--trainer.max_epochs", "1000",  # max_steps governs (the text is ~440 steps per epoch)
                "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(out),
                "--trainer.logger.init_args.name", "pretrain", *shlex.split(args.pretrain_args)]
    commands["pretrain"] = shlex.join(["lightning-pretrain", "fit", *pretrain])
    run = latest_run(out / "pretrain")
    seconds = {}
    if not (args.reuse and run is not None and (run / "hf").is_dir()):
        status, seconds["pretrain"] = fit(pretrain)
        run = latest_run(out / "pretrain")
        if status != 0 or run is None or not (run / "hf").is_dir():
            sys.exit(f"pretraining failed (exit status {status})")
    pretrained = run / "hf"
    scratch = random_init_copy(pretrained, out / "random_init")
    pretrain_metrics = json.loads((run / "metrics.json").read_text())

    acc: dict[str, dict[int, float]] = {"pretrained": {}, "random init": {}}
    for seed in args.seeds:
        for arm, backbone in (("pretrained", pretrained), ("random init", scratch)):
            name = f"{arm.replace(' ', '_')}_seed{seed}"
            finetune = ["-c", str(REPO / "configs/finetune/sst2.yaml"),
                        "-c", str(REPO / "configs/finetune/modes/full.yaml"),
                        "--model.backbone", str(backbone), "--data.source", str(sst2),
                        "--data.max_train_examples", str(args.train_examples), "--data.seed", str(seed),
                        "--seed_everything", str(seed), "--trainer.max_epochs", str(args.epochs),
                        "--model.init_args.optimizer.init_args.lr", str(args.lr),
                        "--trainer.enable_progress_bar", "false",
                        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", name,
                        *shlex.split(args.finetune_args)]
            commands[name] = shlex.join(["lightning-pretrain", "fit", *finetune])
            status, seconds[name] = fit(finetune)
            metrics_file = (latest_run(out / name) or Path("/nonexistent")) / "metrics.json"
            if status == 0 and metrics_file.is_file():
                acc[arm][seed] = json.loads(metrics_file.read_text())["val/acc"]

    print(f"\nSST-2 dev accuracy (872 sentences) after fine-tuning on {args.train_examples} labelled examples x "
          f"{args.epochs} epochs (lr {args.lr}); pretraining: {args.pretrain_steps} MLM steps on SST-2 train "
          f"sentences, final val/loss {pretrain_metrics.get('val/loss', float('nan')):.3f}\n")
    print("| seed | pretrained | random init | gap |\n|---|---:|---:|---:|")
    gaps = []
    for seed in args.seeds:
        p, r = acc["pretrained"].get(seed), acc["random init"].get(seed)
        gap = p - r if p is not None and r is not None else None
        if gap is not None:
            gaps.append(gap)
        fmt = lambda v: "failed" if v is None else f"{100 * v:.2f}"  # noqa: E731
        print(f"| {seed} | {fmt(p)} | {fmt(r)} | {fmt(gap)} |")
    for arm, values in acc.items():
        v = list(values.values())
        if v:
            sd = statistics.stdev(v) if len(v) > 1 else float("nan")
            print(f"\n{arm}: mean {100 * statistics.mean(v):.2f}, sd {100 * sd:.2f} (n={len(v)})", end="")
    if len(gaps) > 1:
        se = statistics.stdev(gaps) / math.sqrt(len(gaps))
        half = T95.get(len(gaps) - 1, 1.96) * se
        print(f"\npaired gap (pretrained - random init): {100 * statistics.mean(gaps):.2f} points, standard error "
              f"{100 * se:.2f}, 95% t-interval [{100 * (statistics.mean(gaps) - half):.2f}, "
              f"{100 * (statistics.mean(gaps) + half):.2f}]")
    print("\nwall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print("\ncommands:\n" + "\n".join(f"{k}: {c}" for k, c in commands.items()))


if __name__ == "__main__":
    main()
