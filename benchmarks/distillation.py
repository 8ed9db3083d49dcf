"""A 3-layer student of all-MiniLM-L6-v2, distilled vs trained from scratch with MLM, on CPU, same steps and data.

    OMP_NUM_THREADS=1 python benchmarks/distillation.py --teacher $MINILM --steps 150 --out logs/bench_distil

Every arm is `lightning-pretrain fit -c configs/pretrain/distil_minilm.yaml` with the same student (MiniLM's sizes,
3 layers), masks, batches and seeds: `scratch` (random init, MLM only: beta), `init` (every other teacher layer
copied in, MLM only), `distilled` (that init plus the cosine loss to the teacher's last hidden states, gamma 1;
all-MiniLM-L6-v2 has no trained MLM head, so there is no KL term). Training text: WikiText-2 valid; validation:
WikiText-2 test. Prints a Markdown table of the final MLM validation loss (val/loss) and wall time per arm.
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
ARMS = {
    "scratch": ["--model.init_args.init_from_teacher", "false", "--model.init_args.gamma", "0"],
    "init": ["--model.init_args.gamma", "0"],
    "distilled": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="the all-MiniLM-L6-v2 directory ($MINILM)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "wikitext2"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--val_batches", type=int, default=10)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="logs/bench_distil")
    args = parser.parse_args()
    rows = []
    for arm in args.arms:
        save_dir = Path(args.out)
        cmd = [
            "fit",
            "-c",
            str(REPO / "configs/pretrain/distil_minilm.yaml"),
            "--model.init_args.teacher",
            args.teacher,
            "--data.tokenizer",
            args.teacher,
            "--data.source",
            f"{args.data}/wiki.valid.raw",
            "--data.val_source",
            f"{args.data}/wiki.test.raw",
            "--data.batch_size",
            str(args.batch_size),
            "--trainer.max_steps",
            str(args.steps),
            "--trainer.val_check_interval",
            str(args.steps),
            "--trainer.limit_val_batches",
            str(args.val_batches),
            "--trainer.enable_progress_bar",
            "false",
            "--model.init_args.warmup_steps",
            str(max(1, args.steps // 10)),
            "--model.init_args.optimizer.init_args.lr",
            str(args.lr),
            "--trainer.logger.init_args.save_dir",
            str(save_dir),
            "--trainer.logger.init_args.name",
            arm,
            *ARMS[arm],
        ]
        print("lightning-pretrain " + shlex.join(cmd), flush=True)
        t0 = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "lightning_pretrain", *cmd], env=os.environ).returncode
        wall = time.perf_counter() - t0
        runs = sorted((save_dir / arm).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        metrics = json.loads((runs[-1] / "metrics.json").read_text()) if status == 0 and runs else {}
        rows.append((arm, metrics.get("val/loss"), metrics.get("val/ppl"), wall, status))
    print("\n| arm | steps | val/loss (MLM) | val/ppl | wall s |\n|---|---|---|---|---|")
    for arm, loss, ppl, wall, status in rows:
        shown = f"{loss:.3f} | {ppl:.1f}" if loss is not None else f"failed (exit {status}) | -"
        print(f"| {arm} | {args.steps} | {shown} | {wall:.0f} |")


if __name__ == "__main__":
    main()
