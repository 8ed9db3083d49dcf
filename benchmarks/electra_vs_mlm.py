"""ELECTRA against MaskedLM at toy scale, on CPU: the same discriminator/encoder (configs' BERT size: 2 layers, hidden
128), pretrained on the same in-domain text for roughly equal compute (ELECTRA's step count is scaled down by the
estimated FLOPs per token of its generator and heads), then fine-tuned alike on a small SST-2 subset.

    OMP_NUM_THREADS=1 python benchmarks/electra_vs_mlm.py --mlm_steps 600 --train_examples 1000 --out logs/bench_electra

Data: SST-2's training sentences as unlabelled text (labels never read), a seeded labelled subset of that file for
fine-tuning, SST-2 dev (872 sentences) for accuracy. Prints a Markdown table (arm, steps, estimated pretraining
FLOPs, own validation loss, ELECTRA's generator loss / discriminator accuracy, SST-2 dev accuracy, wall seconds)
and every command it ran. `--parallel` runs the two pretrainings side by side (one core each).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def flops_per_token(arm: str, h=128, i=512, layers=2, seq=128, vocab=4096, emb=128, p=0.15, gen=0.25) -> float:
    """Training FLOPs per token (6 x matmul weights + attention), for the YAMLs' sizes: the encoder, plus MaskedLM's
    head on the masked share `p`, or ELECTRA's discriminator head on every token and its generator."""

    def encoder(width, ff):
        return layers * (4 * width * width + 2 * width * ff + 2 * seq * width)

    if arm == "mlm":
        return 6 * (encoder(h, i) + p * (h * h + h * vocab))
    hg = int(h * gen)
    return 6 * (encoder(h, i) + h * h + h + encoder(hg, int(i * gen)) + emb * hg + p * (hg * emb + emb * vocab))


def fit(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_pretrain", "fit", *args],
        env=os.environ,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def latest_run(root: Path) -> Path | None:
    runs = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return runs[-1] if runs else None


def wait(procs: dict[str, tuple[subprocess.Popen, float]]) -> dict[str, float]:
    seconds = {}
    for name, (proc, t0) in procs.items():
        if proc.wait() != 0:
            sys.exit(f"{name} failed (exit status {proc.returncode}); see its log")
        seconds[name] = time.perf_counter() - t0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", default=str(REPO.parent / "shared" / "data" / "sst2"))
    parser.add_argument("--mlm_steps", type=int, default=600, help="MaskedLM's pretraining steps (ELECTRA: fewer)")
    parser.add_argument("--train_examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (both arms)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", action="store_true", help="run the two pretrainings at once")
    parser.add_argument("--out", default="logs/bench_electra")
    args = parser.parse_args()
    out, sst2 = Path(args.out), Path(args.sst2)
    ratio = flops_per_token("mlm") / flops_per_token("electra")
    steps = {"mlm": args.mlm_steps, "electra": round(args.mlm_steps * ratio)}
    commands, procs, seconds = {}, {}, {}
    for arm, config in (("mlm", "mlm_tiny.yaml"), ("electra", "electra_tiny.yaml")):
        cmd = [
            "-c",
            str(REPO / "configs/pretrain" / config),
            "--data.source",
            str(sst2 / "train.tsv"),
            "--data.text_column",
            "sentence",
            "--trainer.max_steps",
            str(steps[arm]),
            "--trainer.max_epochs",
            "1000",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(out),
            "--trainer.logger.init_args.name",
            f"pretrain_{arm}",
        ]
        commands[f"pretrain_{arm}"] = shlex.join(["lightning-pretrain", "fit", *cmd])
        procs[f"pretrain_{arm}"] = (fit(cmd, out / f"pretrain_{arm}.log"), time.perf_counter())
        if not args.parallel:
            seconds.update(wait(procs))
            procs = {}
    seconds.update(wait(procs))
    rows = {}
    for arm in steps:
        run = latest_run(out / f"pretrain_{arm}")
        name = f"sst2_{arm}"
        cmd = [
            "-c",
            str(REPO / "configs/finetune/sst2.yaml"),
            "-c",
            str(REPO / "configs/finetune/modes/full.yaml"),
            "--model.backbone",
            str(run / "hf"),
            "--data.source",
            str(sst2),
            "--data.max_train_examples",
            str(args.train_examples),
            "--data.seed",
            str(args.seed),
            "--seed_everything",
            str(args.seed),
            "--trainer.max_epochs",
            str(args.epochs),
            "--model.init_args.optimizer.init_args.lr",
            str(args.lr),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(out),
            "--trainer.logger.init_args.name",
            name,
        ]
        commands[name] = shlex.join(["lightning-pretrain", "fit", *cmd])
        t0 = time.perf_counter()
        seconds.update(wait({name: (fit(cmd, out / f"{name}.log"), t0)}))
        pre = json.loads((run / "metrics.json").read_text())
        tuned = json.loads((latest_run(out / name) / "metrics.json").read_text())
        rows[arm] = (pre, tuned)

    print(
        f"\nSST-2 dev accuracy after fine-tuning on {args.train_examples} labelled examples x {args.epochs} epochs "
        f"(lr {args.lr}, seed {args.seed}); pretraining on SST-2 train sentences\n"
    )
    print(
        "| arm | steps | est. pretrain FLOPs | val/loss (own task) | gen MLM loss | disc acc | SST-2 dev acc | "
        "pretrain s |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    tokens = 16 * 128
    for arm, (pre, tuned) in rows.items():
        flops = steps[arm] * tokens * flops_per_token(arm)
        fmt = lambda k, pre=pre: f"{pre[k]:.3f}" if k in pre else "–"  # noqa: E731
        print(
            f"| {arm} | {steps[arm]} | {flops:.2e} | {fmt('val/loss')} | {fmt('val/gen_loss')} | "
            f"{fmt('val/disc_acc')} | {100 * tuned['val/acc']:.2f} | {seconds[f'pretrain_{arm}']:.0f} |"
        )
    print("\nwall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print("\ncommands:\n" + "\n".join(f"{k}: {c}" for k, c in commands.items()))


if __name__ == "__main__":
    main()
