"""The pretraining payoff for generation, on CPU: a small T5 pretrained (configs/pretrain/t5_laptop.yaml: BART's
denoising) on the English and German sides of Multi30k train, then fine-tuned English -> German, against the same
architecture and tokenizer fine-tuned from random initialisation (same steps, same data, same seed). Every run is a
`lightning-pretrain fit`.

    python benchmarks/generation_payoff.py --multi30k ../shared/data/multi30k --pretrain_steps 1500 --epochs 1 \
        --out logs/bench_generation

`--pretrain_config` picks the recipe (e.g. configs/pretrain/t5_tiny.yaml for span corruption), `--pretrain_args
"..."` adds options to it. `--pretrained DIR` reuses an existing export instead of pretraining. Prints a Markdown
table of sacreBLEU / chrF / teacher-forced loss on Multi30k `val` (1,014 sentences, never trained on) for both arms.
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
# the architecture fields that define a T5 (the scratch arm copies them from the pretrained export)
T5_FIELDS = (
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_decoder_layers",
    "num_heads",
    "feed_forward_proj",
    "dropout_rate",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
)  # tie_word_embeddings: not a T5Config parameter in transformers 5 (it ties by default, as the exports do)


def fit(args: list[str]) -> float:
    """`lightning-pretrain fit ARGS` in a fresh process; seconds taken (raises on failure)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lightning_pretrain", "fit", *args], env=os.environ, check=True)
    return time.perf_counter() - t0


def latest_run(root: Path) -> Path:
    return max(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multi30k", default=str(REPO.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--pretrained", help="an existing T5 export (skips pretraining)")
    parser.add_argument("--pretrain_steps", type=int, default=1500)
    parser.add_argument("--pretrain_config", default=str(REPO / "configs/pretrain/t5_laptop.yaml"))
    parser.add_argument("--pretrain_args", default="", help="more options of the pretraining run, one string")
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs of each arm")
    parser.add_argument("--lr", type=float, default=1e-3, help="fine-tuning LR of both arms")
    parser.add_argument("--max_train_examples", type=int, help="fine-tune on a subset of the 29,000 pairs")
    parser.add_argument("--seed", type=int, default=1234, help="seeds the scratch init, the data order and subset")
    parser.add_argument("--out", default="logs/bench_generation")
    args = parser.parse_args()
    data, out = Path(args.multi30k), Path(args.out)
    seconds = {}
    if args.pretrained:
        pretrained = Path(args.pretrained)
    else:
        seconds["pretrain"] = fit(
            [
                "-c",
                args.pretrain_config,
                f"--seed_everything={args.seed}",
                "--trainer.max_time=null",
                f"--data.source={data}/train.*",
                f"--data.val_source={data}/val.*",
                f"--data.vocab_size={args.vocab_size}",
                "--data.batch_size=32",
                f"--trainer.max_steps={args.pretrain_steps}",
                "--trainer.val_check_interval=500",
                f"--trainer.logger.init_args.save_dir={out}",
                "--trainer.logger.init_args.name=pretrain",
                *shlex.split(args.pretrain_args),
            ]
        )
        pretrained = latest_run(out / "pretrain") / "hf"
    config = json.loads((pretrained / "config.json").read_text())
    scratch = {"class_path": "transformers.T5Config", "init_args": {k: config[k] for k in T5_FIELDS if k in config}}
    common = [
        "-c",
        str(REPO / "configs/finetune/multi30k_t5.yaml"),
        f"--seed_everything={args.seed}",
        f"--data.seed={args.seed}",  # the order of the pairs and which --max_train_examples: a seed is a replicate
        f"--data.tokenizer={pretrained}",
        f"--trainer.max_epochs={args.epochs}",
        f"--model.optimizer.init_args.lr={args.lr}",
        f"--data.train_file={data}/train.en",
        f"--data.train_target_file={data}/train.de",
        f"--data.val_file={data}/val.en",
        f"--data.val_target_file={data}/val.de",
        f"--trainer.logger.init_args.save_dir={out}",
    ]
    if args.max_train_examples:
        common.append(f"--data.max_train_examples={args.max_train_examples}")
    results = {}
    for arm, model in (("pretrained", str(pretrained)), ("scratch", json.dumps(scratch))):
        seconds[arm] = fit([*common, f"--model.model={model}", f"--trainer.logger.init_args.name={arm}"])
        results[arm] = json.loads((latest_run(out / arm) / "metrics.json").read_text())
    print(f"\npretrained export: {pretrained}  ({json.dumps(scratch['init_args'])})")
    print("\n| arm | val sacreBLEU | val chrF | val loss | wall |")
    print("|---|---:|---:|---:|---:|")
    for arm, m in results.items():
        print(
            f"| {arm} | {m.get('val/sacrebleu', float('nan')):.2f} | {m.get('val/chrf', float('nan')):.2f} | "
            f"{m.get('val/loss', float('nan')):.3f} | {seconds[arm] / 60:.1f} min |"
        )
    gap = results["pretrained"].get("val/sacrebleu", 0) - results["scratch"].get("val/sacrebleu", 0)
    print(
        f"\nsacreBLEU gap (pretrained - scratch): {gap:+.2f}"
        + (f"; pretraining took {seconds['pretrain'] / 60:.1f} min" if "pretrain" in seconds else "")
    )


if __name__ == "__main__":
    main()
