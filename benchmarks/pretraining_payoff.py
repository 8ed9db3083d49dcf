"""The pretraining payoff on any labelled data: pretrain (MaskedLM or ELECTRA) on an unlabelled corpus for a fixed
budget, fine-tune the export on N labelled rows, and compare against the same architecture and tokenizer fine-tuned
from random initialisation; paired per seed, each arm with its own learning rate chosen on held-out labelled rows.
Every training run is a `lightning-pretrain fit`, every score a `lightning-pretrain test`; each command is printed.

SST-2 (movie reviews; unlabelled text: the sentence column of its training file; scored on dev.tsv):

    python benchmarks/pretraining_payoff.py --objective mlm --corpus ../shared/data/sst2/train.tsv \\
        --train_file ../shared/data/sst2/train.tsv --test_file ../shared/data/sst2/dev.tsv \\
        --text_column sentence --label_column label --label_names negative positive \\
        --labels 1000 --budget 20m --seeds 1 2 3 --json logs/bench_payoff/sst2.json --out logs/bench_payoff/sst2

AG News (header-less files: the 10k training subset is `text<TAB>class name`; test.csv is `class 1-4,title,
description`; the corpus is the training subset's text column, never the test file):

    python benchmarks/pretraining_payoff.py --objective mlm --corpus ../shared/data/ag_news/alps_train_subset_10k.tsv \\
        --train_file ../shared/data/ag_news/alps_train_subset_10k.tsv --text_column 0 --label_column 1 \\
        --test_file ../shared/data/ag_news/test.csv --test_text_column 2 --test_label_column 0 --test_label_offset 1 \\
        --label_names World Sports Business Sci/Tech \\
        --labels 1000 --budget 20m --seeds 1 2 3 --json logs/bench_payoff/ag_news.json --out logs/bench_payoff/ag_news

How it works, per seed S:
1. Pretraining: `-c <pretrain_config> --data.source <corpus> --data.text_column <C> --seed_everything S`, limited by
   `--budget` (`--trainer.max_time DD:HH:MM:SS --trainer.max_steps -1`) or `--pretrain_steps`. With
   `--pretrain_once`, one pretraining (seed = the first seed) serves every seed. A header-less table corpus (its
   text column given by index) is first copied to `<out>/data/corpus.jsonl`, the corpus reader wanting a header.
2. Data: a seeded random subset of `--labels` labelled rows of `--train_file`; `--val_fraction` of them (seeded) are
   the validation rows that choose the learning rate, the rest train. Written to `<out>/data/seed<S>/` as JSON
   Lines (text, label name), the test file to `<out>/data/test.jsonl`. The test file never chooses anything.
3. Arms: "pretrained" (the export `<run>/hf`; for ELECTRA the discriminator) and "scratch" (the export's config and
   tokenizer with weights freshly initialised under seed S, `<out>/scratch_seed<S>/`). Each arm is fine-tuned with
   `-c configs/finetune/sst2.yaml -c configs/finetune/modes/full.yaml` at every `--lrs` value, for the same steps
   (`--finetune_steps`, else `--finetune_epochs` over the same rows); the LR with the best validation accuracy
   of the final model (ties: the lower validation loss) is scored once on the test file.
Output: a Markdown table (printed and written to `<out>/payoff.md`) and `--json`: each arm's per-seed LR sweep,
chosen LR, validation and test accuracy, the paired test-accuracy gap pretrained - scratch in points with its
standard error and 95% t-interval, the pretraining wall times and final validation losses, and every command.
`--reuse` reuses any finished run of an earlier invocation whose command was the same (runs are kept under
`<out>/`, one `version_N` per attempt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = ("pretrained", "scratch")
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
# two-sided 95% critical values of Student's t by degrees of freedom (beyond the table: the next lower df's, which
# is conservative; 1.96 past 120)
T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}
RECORD = "payoff_run.json"  # written into every finished run directory: its command, for --reuse


# -- pure helpers (tested) -------------------------------------------------------------------------------------------
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_budget(text: str) -> str:
    """A time budget as Lightning's `max_time` 'DD:HH:MM:SS': '30m' -> '00:00:30:00', '90s' -> '00:00:01:30',
    '1h30m', '2d', or 'DD:HH:MM:SS' itself. Raises ValueError on anything else, or on a zero budget."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+:\d+:\d+:\d+", s):
        dd, hh, mm, ss = (int(p) for p in s.split(":"))
        if hh >= 24 or mm >= 60 or ss >= 60:
            raise ValueError(f"budget {text!r}: hours < 24, minutes and seconds < 60 in DD:HH:MM:SS")
        seconds = ((dd * 24 + hh) * 60 + mm) * 60 + ss
    else:
        m = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", s)
        if not s or m is None:
            raise ValueError(f"budget {text!r} is not a duration: use e.g. 90s, 20m, 1h, 1h30m or DD:HH:MM:SS")
        seconds = sum(int(v) * _UNITS[u] for v, u in zip(m.groups(), "dhms") if v)
    if seconds <= 0:
        raise ValueError(f"budget {text!r} is zero: give a positive duration")
    days, rest = divmod(seconds, 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def t_critical(df: int) -> float:
    """Two-sided 95% Student t critical value for `df` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if df > 120:
        return 1.96
    return T95[max(k for k in T95 if k <= df)]


def paired_stats(gaps: list[float]) -> dict:
    """Mean of paired differences, their sample sd, the standard error of the mean and the 95% t-interval
    (None where fewer than two pairs leave no spread)."""
    n = len(gaps)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "se": None, "df": None, "t": None, "ci95": None}
    mean = statistics.fmean(gaps)
    if n < 2:
        return {"n": 1, "mean": mean, "sd": None, "se": None, "df": None, "t": None, "ci95": None}
    sd = statistics.stdev(gaps)
    se = sd / math.sqrt(n)
    t = t_critical(n - 1)
    return {"n": n, "mean": mean, "sd": sd, "se": se, "df": n - 1, "t": t, "ci95": [mean - t * se, mean + t * se]}


def column(text: str) -> int | str:
    """A column reference: a 0-based index (header-less CSV/TSV) or a name."""
    return int(text) if str(text).isdigit() else str(text)


def split_labelled(n_rows: int, n_labels: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded: `n_labels` of `n_rows` row indices, the `val_fraction` of them that validate and the rest that train;
    each sorted (the file's order)."""
    if n_labels > n_rows:
        raise ValueError(f"--labels {n_labels} but the training file has only {n_rows} labelled rows")
    picked = random.Random(seed).sample(range(n_rows), n_labels)
    n_val = max(1, round(n_labels * val_fraction))
    if n_val >= n_labels:
        raise ValueError(f"--labels {n_labels} x --val_fraction {val_fraction} leaves no training rows")
    return sorted(picked[n_val:]), sorted(picked[:n_val])


def choose_lr(acc: dict[float, float | None], loss: dict[float, float | None] | None = None) -> float | None:
    """The LR of the best validation accuracy; ties go to the lower validation loss, then to the smaller LR. None
    when every run failed."""
    loss = loss or {}
    done = [(a, loss.get(lr) if loss.get(lr) is not None else math.inf, lr) for lr, a in acc.items() if a is not None]
    return min(done, key=lambda p: (-p[0], p[1], p[2]))[2] if done else None


def default_pretrain_config(objective: str) -> Path:
    stem = {"mlm": "mlm", "electra": "electra"}[objective]
    laptop = REPO / "configs" / "pretrain" / f"{stem}_laptop.yaml"
    return laptop if laptop.is_file() else REPO / "configs" / "pretrain" / f"{stem}_tiny.yaml"


def shown(path: str | Path) -> str:
    """A path as commands show it: relative to the working directory when it lies below it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


# -- arguments -------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pretraining_payoff.py",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n\n" + "\n\n".join(__doc__.split("\n\n")[1:5]),
    )
    p.add_argument("--objective", choices=["mlm", "electra"], default="mlm")
    p.add_argument(
        "--corpus",
        required=True,
        help="unlabelled pretraining text: .txt/.tsv/.csv/.jsonl/.json/.parquet "
        "file, directory or glob (any --data.source of PretrainCorpus)",
    )
    p.add_argument("--corpus_text_column", type=column, help="the corpus's text column (default: --text_column)")
    p.add_argument("--train_file", required=True, help="labelled table the --labels rows are drawn from")
    p.add_argument("--test_file", required=True, help="labelled table the chosen runs are scored on")
    p.add_argument("--text_column", type=column, default="text", help="name, or 0-based index (header-less files)")
    p.add_argument("--label_column", type=column, default="label")
    p.add_argument("--text_pair_column", type=column, help="second text of pairs (NLI), if any")
    p.add_argument("--test_text_column", type=column, help="default: --text_column")
    p.add_argument("--test_label_column", type=column, help="default: --label_column")
    p.add_argument("--test_text_pair_column", type=column, help="default: --text_pair_column")
    p.add_argument(
        "--label_names",
        nargs="+",
        help="class names in id order (integer labels are ids into it); "
        "default: the sorted distinct labels of --train_file",
    )
    p.add_argument("--label_offset", type=int, default=0, help="subtracted from integer labels of --train_file")
    p.add_argument("--test_label_offset", type=int, help="default: --label_offset (AG News test.csv: 1)")
    p.add_argument("--labels", type=int, default=1000, help="labelled training rows per seed (train + validation)")
    p.add_argument("--val_fraction", type=float, default=0.2, help="share of the --labels rows that choose the LR")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", help="pretraining wall time: 90s, 20m, 1h, 1h30m or DD:HH:MM:SS")
    budget.add_argument("--pretrain_steps", type=int, help="pretraining optimizer steps (instead of --budget)")
    p.add_argument("--pretrain_once", action="store_true", help="one pretraining (the first seed) for every seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3], help="fine-tuning LR sweep, per arm")
    p.add_argument("--finetune_steps", type=int, help="optimizer steps of every fine-tuning run")
    p.add_argument(
        "--finetune_epochs", type=int, help="epochs of every fine-tuning run (default 3; not with --finetune_steps)"
    )
    p.add_argument(
        "--pretrain_config",
        help="default: configs/pretrain/<objective>_laptop.yaml if present, else <objective>_tiny.yaml",
    )
    p.add_argument(
        "--finetune_config",
        default=str(REPO / "configs/finetune/sst2.yaml"),
        help="task config of every fine-tuning run (data columns, labels and files are overridden)",
    )
    p.add_argument("--finetune_mode", default=str(REPO / "configs/finetune/modes/full.yaml"))
    p.add_argument(
        "--pretrain_args",
        default="",
        help="more `lightning-pretrain fit` options for pretraining, e.g. "
        "'--data.vocab_size 1024 --data.batch_size 32 --trainer.accelerator gpu'",
    )
    p.add_argument(
        "--finetune_args",
        default="",
        help="more options for every fine-tuning and test run, e.g. '--data.batch_size 16 --data.max_length 64'",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--out", default="logs/bench_payoff", help="runs, data files and scratch models go here")
    p.add_argument("--reuse", action="store_true", help="reuse finished runs of the same commands under --out")
    p.add_argument(
        "--in_process",
        action="store_true",
        help="run every command in this process (faster start; a crash ends the benchmark)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    problems = []
    if args.budget is not None:
        try:
            args.max_time = parse_budget(args.budget)
        except ValueError as e:
            problems.append(f"--budget: {e}")
    else:
        args.max_time = None
        if args.pretrain_steps < 1:
            problems.append(f"--pretrain_steps must be positive, got {args.pretrain_steps}")
    if args.labels < 2:
        problems.append(f"--labels must be at least 2 (training and validation rows), got {args.labels}")
    if not 0.0 < args.val_fraction < 1.0:
        problems.append(f"--val_fraction must be in (0, 1), got {args.val_fraction}")
    elif args.labels >= 2 and max(1, round(args.labels * args.val_fraction)) >= args.labels:
        problems.append(f"--labels {args.labels} x --val_fraction {args.val_fraction} leaves no training rows")
    if len(set(args.seeds)) != len(args.seeds):
        problems.append(f"--seeds must be distinct, got {args.seeds}")
    if any(lr <= 0 or not math.isfinite(lr) for lr in args.lrs):
        problems.append(f"--lrs must be positive, got {args.lrs}")
    if len(set(args.lrs)) != len(args.lrs):
        problems.append(f"--lrs must be distinct, got {args.lrs}")
    if args.finetune_steps is not None and args.finetune_epochs is not None:
        problems.append("give --finetune_steps or --finetune_epochs, not both")
    if args.finetune_steps is not None and args.finetune_steps < 1:
        problems.append(f"--finetune_steps must be positive, got {args.finetune_steps}")
    if args.finetune_epochs is not None and args.finetune_epochs < 1:
        problems.append(f"--finetune_epochs must be positive, got {args.finetune_epochs}")
    if args.finetune_steps is None and args.finetune_epochs is None:
        args.finetune_epochs = 3
    names = args.label_names
    if names is not None and (len(names) < 2 or len(set(names)) < len(names)):
        problems.append(f"--label_names needs two or more distinct names, got {args.label_names}")
    for name in ("train_file", "test_file"):
        path = Path(getattr(args, name)).expanduser()
        if not path.is_file():
            problems.append(f"--{name}: file not found: {getattr(args, name)}")
        elif path.suffix.lower() not in TABLE_SUFFIXES:
            problems.append(f"--{name} {path} is not a table ({', '.join(TABLE_SUFFIXES)})")
    if os.path.abspath(args.train_file) == os.path.abspath(args.test_file):
        problems.append("--test_file is --train_file: the test rows must be rows no run trains or chooses on")
    for name, flags in (
        ("finetune_args", ("optimizer.init_args.lr", "optimizer.lr", "seed_everything", "logger")),
        ("pretrain_args", ("seed_everything", "logger")),
    ):
        for flag in flags:
            if flag in getattr(args, name):
                problems.append(f"--{name} sets {flag}, which the benchmark controls (--lrs, --seeds, --out)")
    args.pretrain_config = args.pretrain_config or str(default_pretrain_config(args.objective))
    for name in ("pretrain_config", "finetune_config", "finetune_mode"):
        if not Path(getattr(args, name)).is_file():
            problems.append(f"--{name}: file not found: {getattr(args, name)}")
    for name in ("test_text_column", "test_label_column", "test_text_pair_column"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(args, name[len("test_") :]))
    if args.test_label_offset is None:
        args.test_label_offset = args.label_offset
    if args.corpus_text_column is None:
        args.corpus_text_column = args.text_column
    for name in ("pretrain_args", "finetune_args"):
        try:
            shlex.split(getattr(args, name))
        except ValueError as e:
            problems.append(f"--{name}: {e}")
    if problems:
        parser.error("; ".join(problems))
    return args


# -- data --------------------------------------------------------------------------------------------------------------
def read_labelled(
    path: str, text_col, label_col, pair_col, names: list[str] | None, offset: int, infer_names: bool
) -> tuple[list[dict], list[str], int]:
    """The labelled rows of a table as {'text', ('text_pair'), 'label': class name}, the class names, and how many
    rows had no label (left out). Reads and checks the file as fine-tuning does (`lightning_pretrain.data`)."""
    from lightning_pretrain.data.finetune import labels as L
    from lightning_pretrain.data.sources import tables, validate

    header = not all(isinstance(c, int) for c in (text_col, label_col, pair_col) if c is not None)
    df, where = tables._read_table(os.path.abspath(os.path.expanduser(path)), header)
    found = {
        k: tables.resolve_column(ref, list(df.columns))
        for k, ref in (("text", text_col), ("label", label_col), ("text_pair", pair_col))
        if ref is not None
    }
    for k, c in found.items():
        if c is None:
            ref = {"text": text_col, "label": label_col, "text_pair": pair_col}[k]
            raise SystemExit(
                f"error: {path}: no column {ref!r} (columns: {', '.join(df.columns)}; give names, or "
                f"0-based indices for header-less files)"
            )
    raw = df[found["label"]].tolist()
    if names is None and infer_names:
        names = L.label_vocabulary(raw, path, where)
    ids = L.encode_labels(raw, names, "classification", offset, path, where)
    keep = [i for i, t in enumerate(ids) if t != -1]
    texts = validate.texts(df[found["text"]].tolist(), found["text"], path, where, False)
    pairs = (
        validate.texts(df[found["text_pair"]].tolist(), found["text_pair"], path, where, False)
        if "text_pair" in found
        else None
    )
    rows = []
    for i in keep:
        row = {"text": texts[i], **({"text_pair": pairs[i]} if pairs else {}), "label": names[ids[i]]}
        rows.append(row)
    return rows, list(names), len(ids) - len(keep)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged content keeps its cache entries
        path.write_text(text, encoding="utf-8")
    return path


def corpus_options(args, data_dir: Path) -> tuple[list[str], str]:
    """`--data.source ...` of the pretraining corpus, and a description. A table whose text column is an index
    (header-less) is copied to JSON Lines first: the corpus reader takes a header's column names."""
    corpus, col = args.corpus, args.corpus_text_column
    suffix = Path(corpus).suffix.lower()
    if suffix in TABLE_SUFFIXES and Path(corpus).is_file():
        if isinstance(col, int):
            from lightning_pretrain.data.sources import tables

            df, _ = tables._read_table(os.path.abspath(corpus), header=False)
            name = tables.resolve_column(col, list(df.columns))
            if name is None:
                raise SystemExit(f"error: --corpus {corpus}: no column {col} (it has {len(df.columns)})")
            out = write_jsonl(
                data_dir / "corpus.jsonl", [{"text": t} for t in df[name].tolist() if isinstance(t, str) and t.strip()]
            )
            return ["--data.source", shown(out), "--data.text_column", "text"], f"{corpus} (column {col}) -> {out}"
        return ["--data.source", corpus, "--data.text_column", str(col)], f"{corpus} (column {col})"
    if suffix in (".txt", ".text", ".raw", ".tokens", ".md", ".rst") or (
        Path(corpus).is_file() and suffix not in TABLE_SUFFIXES
    ):
        return ["--data.source", corpus], corpus
    if isinstance(col, int):
        raise SystemExit(f"error: --corpus {corpus}: a directory or glob needs --corpus_text_column by name")
    return ["--data.source", corpus, "--data.text_column", str(col)], f"{corpus} (column {col})"


def random_init_copy(pretrained_hf: Path, out: Path, seed: int) -> Path:
    """The export's architecture (its own class: BertForMaskedLM, ElectraForPreTraining, ...) and tokenizer with
    weights freshly initialised under `seed`."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(pretrained_hf)
    cls = getattr(transformers, (config.architectures or ["AutoModel"])[0], None)
    torch.manual_seed(seed)
    model = (
        cls(config)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
        else AutoModel.from_config(config)
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(pretrained_hf).save_pretrained(out)
    return out


# -- running -----------------------------------------------------------------------------------------------------------
def versions(root: Path) -> list[Path]:
    runs = [d for d in root.glob("version_*") if d.name[8:].isdigit()]
    return sorted(runs, key=lambda d: int(d.name[8:]))


class Runner:
    """Runs `lightning-pretrain` commands (a fresh process each, or in this one), printing and recording each."""

    def __init__(self, out: Path, reuse: bool, in_process: bool):
        self.out, self.reuse, self.in_process = out, reuse, in_process
        self.commands: list[dict] = []

    def _execute(self, argv: list[str]) -> int:
        if not self.in_process:
            return subprocess.run([sys.executable, "-m", "lightning_pretrain", *argv], env=os.environ).returncode
        from lightning_pretrain.cli import main as cli_main

        saved_argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both it and args hold arguments
        try:
            cli_main(list(argv))
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # a bug: the traceback, and the benchmark goes on to report what it has
            traceback.print_exc()
            return 1
        finally:
            sys.argv = saved_argv
        return 0

    def run(self, what: str, subcommand: str, argv: list[str], name: str, done, key: list[str] | None = None) -> dict:
        """Run `lightning-pretrain SUBCOMMAND ARGV` logging to `<out>/<name>/version_N`, or with --reuse take the
        newest finished (`done(run_dir)`) run of the same command. Returns {'run', 'status', 'wall_s', 'reused'}."""
        root = self.out / name
        key = key or argv
        configs = config_digests(argv)  # the same command with an edited config file is another run
        if self.reuse:
            for run in reversed(versions(root)):
                record = run / RECORD
                info = json.loads(record.read_text()) if record.is_file() else {}
                # a file the record has no digest of was recorded before such digests were kept: not compared
                recorded = info.get("configs", {})
                same = info.get("argv") == key and all(configs.get(f) == d for f, d in recorded.items())
                if same and done(run):
                    unchecked = sorted(set(configs) - set(recorded))
                    legacy = f"; recorded before digests of {', '.join(unchecked)} were kept" if unchecked else ""
                    print(
                        f"\n[{what}] reusing {run} (finished {info.get('wall_s', 0):.0f} s run of the same command{legacy})"
                    )
                    self.commands.append(
                        {
                            "what": what,
                            "command": info["command"],
                            "run": str(run),
                            "reused": True,
                            "status": 0,
                            "wall_s": info.get("wall_s"),
                        }
                    )
                    return {"run": run, "status": 0, "wall_s": info.get("wall_s"), "reused": True}
        before = {d.name for d in versions(root)}
        full = [*argv, "--trainer.logger.init_args.save_dir", shown(self.out), "--trainer.logger.init_args.name", name]
        command = shlex.join(["lightning-pretrain", subcommand, *full])
        print(f"\n[{what}] $ {command}", flush=True)
        t0 = time.perf_counter()
        status = self._execute([subcommand, *full])
        wall = time.perf_counter() - t0
        new = [d for d in versions(root) if d.name not in before]
        run = new[-1] if new else None
        ok = status == 0 and run is not None and done(run)
        if ok:
            record = {"argv": key, "command": command, "wall_s": wall, "configs": configs}
            (run / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        else:
            print(f"[{what}] FAILED (exit status {status}{'' if run else ', no run directory'})", flush=True)
        self.commands.append(
            {
                "what": what,
                "command": command,
                "run": str(run) if run else None,
                "reused": False,
                "status": status,
                "wall_s": round(wall, 1),
            }
        )
        return {"run": run if ok else None, "status": status, "wall_s": wall, "reused": False}


def config_digests(argv: list[str]) -> dict[str, str]:
    """{path: sha256} of the config files a command reads (`-c FILE`, and the `--model.backbone` directory's
    config.json: a scratch arm's random init is rewritten from whatever the latest pretraining exported)."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
    files += [f"{argv[i + 1]}/config.json" for i, a in enumerate(argv[:-1]) if a == "--model.backbone"]
    return {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files if Path(f).is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# -- the benchmark -----------------------------------------------------------------------------------------------------
def pretrain_options(args, corpus: list[str], seed: int) -> list[str]:
    length = (
        ["--trainer.max_time", args.max_time, "--trainer.max_steps", "-1"]
        if args.max_time
        else ["--trainer.max_steps", str(args.pretrain_steps)]
    )
    return [
        "-c",
        shown(args.pretrain_config),
        *corpus,
        "--seed_everything",
        str(seed),
        *length,
        "--trainer.enable_progress_bar",
        "false",
        *shlex.split(args.pretrain_args),
    ]


def data_options(files: dict[str, Path], names: list[str]) -> list[str]:
    opts = ["--data.source", "null"]
    for split, path in files.items():
        opts += [f"--data.{split}_file", shown(path)]
    return [*opts, "--data.text_column", "text", "--data.label_column", "label", "--data.labels", json.dumps(names)]


def finetune_options(
    args, backbone: Path, files: dict[str, Path], names: list[str], seed: int, lr: float, pairs: bool
) -> list[str]:
    length = (
        ["--trainer.max_steps", str(args.finetune_steps), "--trainer.max_epochs", "-1"]
        if args.finetune_steps
        else ["--trainer.max_epochs", str(args.finetune_epochs)]
    )
    return [
        "-c",
        shown(args.finetune_config),
        "-c",
        shown(args.finetune_mode),
        "--model.backbone",
        shown(backbone),
        *data_options(files, names),
        *(["--data.text_pair_column", "text_pair"] if pairs else []),
        "--data.seed",
        str(seed),
        "--seed_everything",
        str(seed),
        *length,
        "--model.init_args.optimizer.init_args.lr",
        f"{lr:g}",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        *shlex.split(args.finetune_args),
    ]


def test_options(args, model: Path, test_file: Path, names: list[str], pairs: bool) -> list[str]:
    return [
        "-c",
        shown(args.finetune_config),
        "-c",
        shown(args.finetune_mode),
        "--model.backbone",
        shown(model),
        *data_options({"test": test_file}, names),
        *(["--data.text_pair_column", "text_pair"] if pairs else []),
        "--trainer.enable_progress_bar",
        "false",
        *shlex.split(args.finetune_args),
    ]


def torch_threads() -> int:
    """The intra-op threads a `lightning-pretrain` run started from here gets (same environment)."""
    import torch

    return torch.get_num_threads()


def pct(v: float | None, signed: bool = False) -> str:
    return "—" if v is None else (f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}")


def sweep_edges(results: dict) -> list[str]:
    """A note per arm whose chosen LR sits at an end of the sweep for most seeds: its best may lie beyond it."""
    lrs, notes = sorted(results["setup"]["lrs"]), []
    for arm in ARMS if len(lrs) > 1 else ():
        chosen = [results["arms"][arm].get(str(s), {}).get("lr") for s in results["setup"]["seeds"]]
        chosen = [lr for lr in chosen if lr]
        for edge, end in ((lrs[-1], "largest"), (lrs[0], "smallest")):
            k = sum(lr == edge for lr in chosen)
            if 2 * k > len(chosen):
                notes.append(
                    f"{arm}: the sweep's {end} LR ({edge:g}) was chosen for {k} of {len(chosen)} seeds; "
                    f"its best may lie beyond it (widen --lrs)."
                )
    return notes


def report(results: dict) -> str:
    s, lines = results["setup"], []
    length = f"{s['finetune_steps']} steps" if s["finetune_steps"] else f"{s['finetune_epochs']} epochs"
    budget = f"budget {s['budget']} (max_time {s['max_time']})" if s["budget"] else f"{s['pretrain_steps']} steps"
    budget += f" on {s['threads']} CPU threads" if s.get("threads") else ""
    lines += [
        f"## Pretraining payoff: {s['objective']} on {s['corpus']}",
        "",
        f"Labelled: {s['labels']} rows of {s['train_file']} per seed ({s['train_rows']} train / {s['val_rows']} "
        f"validation, seeded), {len(s['label_names'])} classes; test: {s['test_file']} ({s['test_rows']} rows). "
        f"Fine-tuning: {length} per run, LR chosen per arm and seed on validation accuracy from "
        f"{', '.join(f'{lr:g}' for lr in s['lrs'])}. Pretraining: {s['pretrain_config']}, {budget}"
        + (", one shared run (seed " + str(s["seeds"][0]) + ")" if s["pretrain_once"] else ", one run per seed")
        + ".",
        "",
    ]
    lines += ["| pretraining | wall s | steps | final val/loss |", "|---|---:|---:|---:|"]
    for key, p in results["pretraining"].items():
        loss = p["val_metrics"].get("val/loss")
        lines.append(f"| {key} | {p['wall_s']:.0f} | {p['global_step']} | {'—' if loss is None else f'{loss:.4f}'} |")
    lines += [
        "",
        "| seed | pretrained LR | pretrained val | pretrained test | scratch LR | scratch val | scratch test "
        "| gap (test) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for seed in s["seeds"]:
        cells = []
        for arm in ARMS:
            r = results["arms"][arm].get(str(seed), {})
            cells += [f"{r['lr']:g}" if r.get("lr") else "failed", pct(r.get("val_acc")), pct(r.get("test_acc"))]
        lines.append(f"| {seed} | {' | '.join(cells)} | {pct(results['gap']['per_seed'].get(str(seed)), True)} |")
    means = results["means"]
    lines.append(
        f"| mean | | {pct(means['pretrained']['val_acc'])} | {pct(means['pretrained']['test_acc'])} | | "
        f"{pct(means['scratch']['val_acc'])} | {pct(means['scratch']['test_acc'])} | "
        f"{pct(results['gap']['mean'], True)} |"
    )
    lines += [
        "",
        "Validation accuracy of every LR (the LR sweep; each arm's best is scored on the test file):",
        "",
        "| arm | seed | " + " | ".join(f"lr {lr:g}" for lr in s["lrs"]) + " |",
        "|---|---|" + "---:|" * len(s["lrs"]),
    ]
    for arm in ARMS:
        for seed in s["seeds"]:
            sweep = results["arms"][arm].get(str(seed), {}).get("sweep", {})
            cells = [pct(sweep.get(f"{lr:g}", {}).get("val_acc")) if f"{lr:g}" in sweep else "—" for lr in s["lrs"]]
            lines.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    g = results["gap"]
    lines.append("")
    if g["n"] >= 2:
        lines.append(
            f"Paired gap pretrained − scratch (test accuracy): **{100 * g['mean']:+.2f} points**, standard "
            f"error {100 * g['se']:.2f}, 95% t-interval [{100 * g['ci95'][0]:+.2f}, "
            f"{100 * g['ci95'][1]:+.2f}] "
            f"(n = {g['n']} seeds, t = {g['t']:.3f})."
        )
    elif g["n"] == 1:
        lines.append(
            f"Gap pretrained − scratch (test accuracy): {100 * g['mean']:+.2f} points (one seed: no interval)."
        )
    else:
        lines.append("No seed has both arms scored: no gap.")
    lines += [f"Note: {n}" for n in sweep_edges(results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    data_dir = out / "data"
    runner = Runner(out, args.reuse, args.in_process)

    # the labelled data: read and checked once, before any training
    from lightning_pretrain.errors import InputError

    try:
        train_rows, names, unlabelled = read_labelled(
            args.train_file,
            args.text_column,
            args.label_column,
            args.text_pair_column,
            args.label_names,
            args.label_offset,
            True,
        )
        test_rows, _, test_unlabelled = read_labelled(
            args.test_file,
            args.test_text_column,
            args.test_label_column,
            args.test_text_pair_column,
            names,
            args.test_label_offset,
            False,
        )
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    if test_unlabelled:
        raise SystemExit(
            f"error: {args.test_file}: {test_unlabelled} rows have no label; the test file must be labelled throughout"
        )
    if unlabelled:
        print(f"note: {unlabelled} rows of {args.train_file} have no label and are never drawn")
    pairs = args.text_pair_column is not None
    if os.path.exists(args.corpus) and os.path.abspath(args.corpus) == os.path.abspath(args.test_file):
        print(
            f"warning: the pretraining corpus is the test file {args.test_file}: the encoder sees the test texts "
            f"(not their labels) before it is scored on them"
        )
    test_file = write_jsonl(data_dir / "test.jsonl", test_rows)
    splits = {}
    for seed in args.seeds:
        try:
            train_idx, val_idx = split_labelled(len(train_rows), args.labels, args.val_fraction, seed)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        folder = data_dir / f"seed{seed}"
        splits[seed] = {
            "train": write_jsonl(folder / "train.jsonl", [train_rows[i] for i in train_idx]),
            "val": write_jsonl(folder / "val.jsonl", [train_rows[i] for i in val_idx]),
        }
    n_val = max(1, round(args.labels * args.val_fraction))
    corpus, corpus_desc = corpus_options(args, data_dir)

    results: dict = {
        "setup": {
            "objective": args.objective,
            "corpus": corpus_desc,
            "train_file": args.train_file,
            "test_file": args.test_file,
            "text_column": args.text_column,
            "label_column": args.label_column,
            "test_text_column": args.test_text_column,
            "test_label_column": args.test_label_column,
            "label_names": names,
            "labels": args.labels,
            "train_rows": args.labels - n_val,
            "val_rows": n_val,
            "labelled_pool": len(train_rows),
            "test_rows": len(test_rows),
            "seeds": args.seeds,
            "lrs": args.lrs,
            "budget": args.budget,
            "max_time": args.max_time,
            # a budget is wall time: its steps scale with the threads each run gets (OMP_NUM_THREADS, else torch's
            # default of one per physical core); runs side by side each get fewer cores
            "threads": torch_threads(),
            "pretrain_steps": args.pretrain_steps,
            "pretrain_once": args.pretrain_once,
            "pretrain_config": shown(args.pretrain_config),
            "finetune_config": shown(args.finetune_config),
            "finetune_mode": shown(args.finetune_mode),
            "finetune_steps": args.finetune_steps,
            "finetune_epochs": args.finetune_epochs,
            "pretrain_args": args.pretrain_args,
            "finetune_args": args.finetune_args,
            "argv": sys.argv[1:] if argv is None else list(argv),
        },
        "pretraining": {},
        "arms": {arm: {} for arm in ARMS},
    }

    # 1. pretraining: one per seed (or one shared)
    exports: dict[int, Path] = {}
    for seed in [args.seeds[0]] if args.pretrain_once else args.seeds:
        key = "shared" if args.pretrain_once else f"seed{seed}"
        done = lambda run: (run / "hf" / "config.json").is_file() and (run / "metrics.json").is_file()  # noqa: E731
        r = runner.run(f"pretrain {key}", "fit", pretrain_options(args, corpus, seed), f"pretrain_{key}", done)
        if r["run"] is None:
            raise SystemExit(f"error: pretraining ({key}) failed (exit status {r['status']}); its command is above")
        metrics = read_json(r["run"] / "metrics.json")
        results["pretraining"][key] = {
            "seed": seed,
            "run": str(r["run"]),
            "wall_s": round(r["wall_s"] or 0, 1),
            "reused": r["reused"],
            "global_step": metrics.get("global_step"),
            "val_metrics": {k: v for k, v in metrics.items() if k.startswith("val/")},
        }
        print(
            f"[pretrain {key}] {r['wall_s'] or 0:.0f} s, step {metrics.get('global_step')}, final val/loss "
            f"{metrics.get('val/loss')}"
        )
        exports[seed] = r["run"] / "hf"

    # 2. per seed: both arms, an LR sweep each on the validation rows, the chosen run scored on the test file
    for seed in args.seeds:
        pretrained = exports[args.seeds[0] if args.pretrain_once else seed]
        backbones = {
            "pretrained": pretrained,
            "scratch": random_init_copy(pretrained, out / f"scratch_seed{seed}", seed),
        }
        for arm in ARMS:
            sweep, losses, runs = {}, {}, {}
            for lr in args.lrs:
                name = f"finetune/{arm}_seed{seed}_lr{lr:g}"

                def done(run: Path) -> bool:
                    return (run / "hf" / "config.json").is_file() and "val/acc" in read_json(run / "metrics.json")

                r = runner.run(
                    f"{arm} seed {seed} lr {lr:g}",
                    "fit",
                    finetune_options(args, backbones[arm], splits[seed], names, seed, lr, pairs),
                    name,
                    done,
                )
                runs[lr] = r["run"]
                metrics = read_json(r["run"] / "metrics.json") if r["run"] else {}
                sweep[lr], losses[lr] = metrics.get("val/acc"), metrics.get("val/loss")
            lr = choose_lr(sweep, losses)
            entry = {
                "lr": lr,
                "val_acc": sweep.get(lr),
                "val_loss": losses.get(lr),
                "test_acc": None,
                "sweep": {
                    f"{k:g}": {"val_acc": v, "val_loss": losses[k], "run": str(runs[k]) if runs[k] else None}
                    for k, v in sweep.items()
                },
            }
            if lr is not None:
                model = runs[lr] / "hf"
                argv_test = test_options(args, model, test_file, names, pairs)
                r = runner.run(
                    f"{arm} seed {seed} test (lr {lr:g})",
                    "test",
                    argv_test,
                    f"finetune/{arm}_seed{seed}_test",
                    lambda run: (run / "test_metrics.json").is_file(),
                )
                if r["run"] is not None:
                    entry["test_acc"] = read_json(r["run"] / "test_metrics.json").get("test/acc")
                    entry["test_run"] = str(r["run"])
            results["arms"][arm][str(seed)] = entry
            print(
                f"[{arm} seed {seed}] sweep val acc { ({f'{k:g}': v for k, v in sweep.items()}) }, chosen lr "
                f"{lr if lr is None else f'{lr:g}'}, test acc {entry['test_acc']}",
                flush=True,
            )

    # 3. statistics and the report
    gaps = {}
    for seed in args.seeds:
        p, s = (results["arms"][arm][str(seed)].get("test_acc") for arm in ARMS)
        if p is not None and s is not None:
            gaps[str(seed)] = p - s
    stats = paired_stats(list(gaps.values()))
    results["gap"] = {
        "metric": "test accuracy, pretrained - scratch (fractions; `points`: x100)",
        "per_seed": gaps,
        **stats,
        "points": {
            "per_seed": {k: 100 * v for k, v in gaps.items()},
            **{k: (None if stats[k] is None else 100 * stats[k]) for k in ("mean", "sd", "se")},
            "ci95": None if stats["ci95"] is None else [100 * v for v in stats["ci95"]],
        },
    }
    results["means"] = {}
    for arm in ARMS:
        per = results["arms"][arm].values()
        results["means"][arm] = {
            m: (statistics.fmean(v) if (v := [e[m] for e in per if e.get(m) is not None]) else None)
            for m in ("val_acc", "test_acc")
        }
    results["commands"] = runner.commands
    text = report(results)
    print("\n" + text)
    print(
        "commands:\n"
        + "\n".join(f"  [{c['what']}] {c['command']}" + (" (reused)" if c["reused"] else "") for c in runner.commands)
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "payoff.md").write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {args.json}")
    return results


if __name__ == "__main__":
    results = main()
    sys.exit(0 if results["gap"]["n"] == len(results["setup"]["seeds"]) else 1)
