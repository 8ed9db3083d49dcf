"""Time to quality of the decoder: bits per byte on held-out TinyStories over a wall-time budget, ours
(`lightning-pretrain fit -c configs/pretrain/clm_laptop.yaml`) vs the Hugging Face Trainer's run_clm recipe.

Both arms get the same training documents (the corpus less its last `--heldout` fraction, which neither ever
trains on), the same BPE tokenizer (trained by our data module on those documents, each followed by EOS as both
pipelines pack them) and the same model config (the YAML's LlamaConfig). The HF arm is run_clm.py's recipe from
benchmarks/peer_hf_trainer.py (`tokenizer(texts)` + `group_texts` blocks, `default_data_collator`, `Trainer` with
its defaults: AdamW lr 5e-5, betas (0.9, 0.999), no weight decay, no warmup, batch 8, clipping at 1.0) with a cosine
schedule that we fit to the budget as our time budget does (its throughput over steps 2-22 fixes the total; the
Trainer itself cannot). Each arm snapshots its weights at fixed training times (the clock starts at its first
step and stops while it saves); after both have run, every snapshot is scored on the held-out slice (evaluation
is outside both clocks). Fairness on a shared machine: both arms run at the same time, each a process with
OMP_NUM_THREADS=1, so load hits both alike.

    python benchmarks/clm_time_to_quality.py --minutes 10 --json logs/ttq.json
    python benchmarks/clm_time_to_quality.py --tiny            # a 1-minute smoke run (tiny model)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from peer_hf_trainer import hf_blocks, hf_model  # noqa: E402

from lightning_pretrain import cli, optim  # noqa: E402
from lightning_pretrain.callbacks.budget_plan import plan_steps  # noqa: E402
from lightning_pretrain.data import PretrainCorpus  # noqa: E402
from lightning_pretrain.data.sources.text import resolve  # noqa: E402
from lightning_pretrain.data.tokenizers import document_separator  # noqa: E402
from lightning_pretrain.errors import InputError  # noqa: E402
from lightning_pretrain.evaluate.rolling import causal_token_nll, windows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared/data/tinystories/tinystories_train_first2MiB.txt"
CONFIG = REPO / "configs/pretrain/clm_laptop.yaml"
DELIMITER = "<|endoftext|>"
# --tiny: a model and vocabulary small enough for a 1-minute smoke run (the test's sizes)
TINY_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_DATA = {"vocab_size": 300, "seq_len": 64, "batch_size": 8}


# -- data -------------------------------------------------------------------------------------------------------------
def split_corpus(corpus: Path, out: Path, heldout: float) -> tuple[Path, Path]:
    """`train.txt` and `heldout.txt` under `out`: the corpus cut at the first document delimiter line after
    (1 - heldout) of its bytes (the held-out slice is the file's end, whole documents)."""
    text = corpus.read_text(encoding="utf-8")
    marker = f"\n{DELIMITER}\n"
    cut = text.find(marker, int(len(text) * (1.0 - heldout)))
    if cut < 0 or not text[cut + len(marker) :].strip():
        raise InputError(
            f"{corpus}: no '{DELIMITER}' line after {1 - heldout:.0%} of the file to cut a held-out "
            f"slice at (the corpus separates documents by lines holding only {DELIMITER})"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(text[: cut + 1], encoding="utf-8")
    (out / "heldout.txt").write_text(text[cut + len(marker) :], encoding="utf-8")
    return out / "train.txt", out / "heldout.txt"


def documents(path: Path) -> list[str]:
    """The non-blank documents of a delimited text file, as our data module reads them."""
    return [t for t in resolve(str(path), delimiter=DELIMITER).load()["text"] if t and t.strip()]


def recipe(config: Path, train: Path, tiny: bool) -> dict:
    """The YAML recipe with the benchmark's training file (and --tiny's sizes)."""
    spec = yaml.safe_load(config.read_text())
    data = spec["data"]["init_args"]
    data.update(source=str(train), document_delimiter=DELIMITER, **(TINY_DATA if tiny else {}))
    if tiny:
        spec["model"]["init_args"]["model"]["init_args"].update(TINY_MODEL)
    return spec


def corpus(spec: dict) -> PretrainCorpus:
    """Our data module as the CLI builds it from `spec` (the tokenizer and blocks come from the same cache)."""
    return PretrainCorpus(**spec["data"]["init_args"])


def model_config(spec: dict) -> transformers.PretrainedConfig:
    model = spec["model"]["init_args"]["model"]
    return getattr(transformers, model["class_path"].rsplit(".", 1)[1])(**model.get("init_args", {}))


# -- snapshots ----------------------------------------------------------------------------------------------------
class SnapshotClock:
    """Training time since the first step, less the time spent saving snapshots; says when one is due."""

    def __init__(self, out: Path, times: list[float]):
        self.out, self.times, self.rows = Path(out), sorted(times), []
        self.start, self.paused = None, 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def maybe_save(self, step: int, save, final: bool = False, force: bool = False) -> None:
        elapsed = self.elapsed()
        if not (final or force) and not (self.times and elapsed >= self.times[0]):
            return
        while self.times and elapsed >= self.times[0]:
            self.times.pop(0)
        t = time.perf_counter()
        if self.rows and self.rows[-1]["step"] == step:  # the last step was saved already
            self.rows[-1]["final"] = final
        else:
            path = self.out / f"{len(self.rows):02d}_step{step:06d}"
            save(path)
            self.rows.append({"elapsed_s": round(elapsed, 2), "step": step, "path": str(path), "final": final})
        (self.out / "snapshots.json").write_text(json.dumps(self.rows, indent=1))
        self.paused += time.perf_counter() - t


class Snapshots(L.Callback):
    """Ours: the HF export of the model at each due time and at the end of training."""

    def __init__(self, out_dir: str, times: list[float]):
        self.clock = SnapshotClock(Path(out_dir), times)

    def on_train_start(self, trainer, pl_module):
        self.clock.start = time.perf_counter()
        self.clock.maybe_save(trainer.global_step, pl_module.export_hf, final=False, force=True)

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.clock.maybe_save(trainer.global_step, pl_module.export_hf)

    def on_train_end(self, trainer, pl_module):
        self.clock.maybe_save(trainer.global_step, pl_module.export_hf, final=True)


class HFBudget(transformers.TrainerCallback):
    """The HF arm: snapshots as `Snapshots`; the cosine schedule fitted to the budget after steps 2-22 (as our
    TimeBudget does, same reserve), and a stop at the fitted total or at the budget."""

    def __init__(self, out: Path, times: list[float], budget_s: float, window: tuple[int, int] = (2, 22)):
        self.clock, self.budget_s, self.window = SnapshotClock(out, times), budget_s, window
        self.total, self.marks = None, {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.clock.start = time.perf_counter()
        self.clock.maybe_save(state.global_step, model.save_pretrained, force=True)

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kw):
        step, elapsed = state.global_step, self.clock.elapsed()
        self.clock.maybe_save(step, model.save_pretrained)
        if step in self.window:
            self.marks[step] = self.clock.elapsed()
        if step == self.window[1] and self.total is None:
            s_per_step = (self.marks[step] - self.marks[self.window[0]]) / (self.window[1] - self.window[0])
            self.total = plan_steps(self.budget_s, elapsed, step, s_per_step)
            groups = [0] * len(lr_scheduler.lr_lambdas)  # (decayed and undecayed parameters)
            lr_scheduler.lr_lambdas = optim.schedule_lambdas(
                groups, args.lr_scheduler_type, args.warmup_steps, self.total
            )
        if (self.total is not None and step >= self.total) or elapsed >= self.budget_s:
            control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kw):
        self.clock.maybe_save(state.global_step, model.save_pretrained, final=True)


def snapshot_times(budget_s: float, every: float) -> list[float]:
    """Every `every` seconds, and at 1/8, 1/4 and 1/2 of the first interval (the early curve moves fastest)."""
    return [every / 8, every / 4, every / 2] + [every * k for k in range(1, int(budget_s // every) + 1)]


# -- the arms -----------------------------------------------------------------------------------------------------
def run_ours(spec: dict, out: Path, budget_s: float, every: float, extra: list[str] = ()) -> None:
    """`lightning-pretrain fit` with the recipe (as `-c configs/pretrain/clm_laptop.yaml --data.source train.txt
    --data.document_delimiter '<|endoftext|>' --trainer.max_time ...`) plus the snapshot callback."""
    spec = json.loads(json.dumps(spec))
    trainer = spec.setdefault("trainer", {})
    trainer["max_time"] = f"00:00:{int(budget_s // 60):02d}:{int(budget_s % 60):02d}"
    trainer["logger"]["init_args"]["save_dir"] = str(out / "logs")
    trainer["callbacks"] = [
        {
            "class_path": f"{Snapshots.__module__}.Snapshots",
            "init_args": {"out_dir": str(out / "snapshots"), "times": snapshot_times(budget_s, every)},
        }
    ]
    config = out / "clm.yaml"
    out.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    cli.main(["fit", "-c", str(config), "--trainer.enable_progress_bar", "false", *extra])


def run_hf(spec: dict, out: Path, budget_s: float, every: float, lr: float = 5e-5, batch_size: int = 8) -> None:
    """run_clm.py's recipe at the Trainer's defaults, the same documents (each followed by EOS) and block length."""
    dm = corpus(spec)
    tok, seq_len = dm.tokenizer, spec["data"]["init_args"]["seq_len"]
    texts = [t + tok.eos_token for t in dm.training_texts()]  # our training split's documents
    lm = hf_blocks(tok, texts, seq_len)
    model, collator = hf_model("clm", model_config(spec), tok)
    budget = HFBudget(out / "snapshots", snapshot_times(budget_s, every), budget_s)
    targs = transformers.TrainingArguments(
        output_dir=str(out / "trainer"),
        use_cpu=True,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        max_steps=10**9,
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
    )
    transformers.Trainer(model=model, args=targs, train_dataset=lm, data_collator=collator, callbacks=[budget]).train()


# -- evaluation ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def bits_per_byte(model, tokenizer, docs: list[str], max_length: int, stride: int, batch_size: int = 16) -> float:
    """Held-out bits per byte: the documents packed as in training (each after EOS), every document token scored
    by rolling windows (evaluate/rolling.py) with its context; NLL over the documents' UTF-8 bytes (the EOS
    separators are context, neither scored nor counted)."""
    sep = document_separator(tokenizer)
    stream, scored = [sep], []
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
        scored += [True] * len(ids) + [False]
        stream += [*ids, sep]
    model.eval()
    nll = causal_token_nll(model, stream, windows(len(stream), max_length, stride, 1, 1), batch_size)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return float(nll[torch.tensor(scored)].sum()) / (math.log(2) * n_bytes)


def evaluate(arm_dir: Path, tokenizer, docs: list[str], max_length: int, stride: int) -> list[dict]:
    rows = json.loads((arm_dir / "snapshots" / "snapshots.json").read_text())
    for row in rows:
        model = transformers.AutoModelForCausalLM.from_pretrained(row["path"])
        row["bpb"] = round(bits_per_byte(model, tokenizer, docs, max_length, stride), 4)
        print(f"[{arm_dir.name}] {row['elapsed_s']:>7.1f} s  step {row['step']:>5}  bpb {row['bpb']:.4f}", flush=True)
    return rows


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """The training time at which the curve first reaches bpb <= target, interpolated linearly between the two
    snapshots around the crossing (None: never)."""
    prev = None
    for row in curve:
        if row["bpb"] <= target:
            if prev is None or prev["bpb"] == row["bpb"]:
                return row["elapsed_s"]
            frac = (prev["bpb"] - target) / (prev["bpb"] - row["bpb"])
            return prev["elapsed_s"] + frac * (row["elapsed_s"] - prev["elapsed_s"])
        prev = row
    return None


# -- driver -------------------------------------------------------------------------------------------------------
def spawn(arm: str, args, threads: int) -> subprocess.Popen:
    """One arm (or its evaluation) in a fresh process with `threads` intra-op threads; output to <out>/<arm>.log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log = open(Path(args.out) / f"{arm}.log", "w")
    passthrough = [a for a in sys.argv[1:]]
    return subprocess.Popen(
        [sys.executable, __file__, *passthrough, "--worker", arm], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait(procs: dict[str, subprocess.Popen], out: Path) -> None:
    for arm, proc in procs.items():
        if proc.wait() != 0:
            tail = (out / f"{arm}.log").read_text()[-3000:]
            sys.exit(f"{arm} failed (exit {proc.returncode}); the end of {out / arm}.log:\n{tail}")


def run_worker(arm: str, args, spec: dict) -> None:
    out = Path(args.out)
    budget_s = args.minutes * 60
    if arm == "ours":
        run_ours(spec, out / "ours", budget_s, args.every, shlex.split(args.ours_args))
    elif arm == "hf":
        run_hf(spec, out / "hf", budget_s, args.every, args.hf_lr, args.hf_batch_size)
    else:  # eval-<arm>
        name = arm.removeprefix("eval-")
        seq_len = spec["data"]["init_args"]["seq_len"]
        docs = documents(out / "data" / "heldout.txt")
        curve = evaluate(out / name, corpus(spec).tokenizer, docs, seq_len, args.stride or seq_len // 2)
        (out / name / "curve.json").write_text(json.dumps(curve, indent=1))


def summary(curves: dict[str, list[dict]]) -> dict:
    hf_final = next(r for r in reversed(curves["hf"]) if r["final"])
    reach = time_to_reach(curves["ours"], hf_final["bpb"])
    return {
        "hf_final_bpb": hf_final["bpb"],
        "hf_final_s": hf_final["elapsed_s"],
        "ours_final_bpb": next(r for r in reversed(curves["ours"]) if r["final"])["bpb"],
        "ours_reaches_hf_final_s": None if reach is None else round(reach, 1),
        "speedup": None if not reach else round(hf_final["elapsed_s"] / reach, 2),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time of each arm")
    p.add_argument("--corpus", type=Path, default=CORPUS, help=f"text file, documents separated by {DELIMITER} lines")
    p.add_argument("--config", type=Path, default=CONFIG, help="our recipe")
    p.add_argument("--heldout", type=float, default=0.05, help="the file's last fraction, scored and never trained on")
    p.add_argument("--every", type=float, default=60.0, help="seconds of training between snapshots")
    p.add_argument("--stride", type=int, default=None, help="evaluation window stride (default: half a block)")
    p.add_argument("--hf-lr", type=float, default=5e-5, help="the HF arm's learning rate (the Trainer's default)")
    p.add_argument("--hf-batch-size", type=int, default=8, help="the HF arm's batch (the Trainer's default)")
    p.add_argument("--ours-args", default="", help="extra `lightning-pretrain fit` arguments for our arm")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each arm's process")
    p.add_argument("--sequential", action="store_true", help="run the arms one after the other, not together")
    p.add_argument("--out", default="logs/ttq", help="working directory (data split, runs, snapshots)")
    p.add_argument("--json", help="write the curves and the summary here")
    p.add_argument("--tiny", action="store_true", help="a 1-minute smoke run: a tiny model, 20 s per arm")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.tiny:
        args.minutes, args.every = min(args.minutes, 1 / 3), min(args.every, 10.0)
    out = Path(args.out)
    if not args.corpus.exists():
        sys.exit(f"error: corpus {args.corpus} not found (pass --corpus FILE)")
    if args.worker:
        run_worker(args.worker, args, json.loads((out / "spec.json").read_text()))
        return
    train, _ = split_corpus(args.corpus, out / "data", args.heldout)
    spec = recipe(args.config, train, args.tiny)
    (out / "spec.json").write_text(json.dumps(spec))
    dm = corpus(spec)
    dm.prepare_data()  # the tokenizer and our blocks, cached once, outside both clocks
    load = os.getloadavg()
    print(
        f"corpus {args.corpus}: {len(documents(train))} training documents, held-out "
        f"{len(documents(out / 'data' / 'heldout.txt'))}; vocabulary {len(dm.tokenizer)}; load before "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; each arm {args.minutes:g} min, {args.threads} thread(s), "
        + ("one after the other" if args.sequential else "both at the same time"),
        flush=True,
    )
    for arm in ("ours", "hf"):
        (out / arm).mkdir(parents=True, exist_ok=True)
    if args.sequential:
        for arm in ("ours", "hf"):
            wait({arm: spawn(arm, args, args.threads)}, out)
    else:
        wait({arm: spawn(arm, args, args.threads) for arm in ("ours", "hf")}, out)
    load_after = os.getloadavg()
    wait({f"eval-{arm}": spawn(f"eval-{arm}", args, 1) for arm in ("ours", "hf")}, out)
    curves = {arm: json.loads((out / arm / "curve.json").read_text()) for arm in ("ours", "hf")}
    result = summary(curves)
    print("\n| arm | " + " | ".join(["elapsed s", "step", "bits per byte"]) + " |\n|---|---:|---:|---:|")
    for arm, curve in curves.items():
        for r in curve:
            print(f"| {arm} | {r['elapsed_s']:.1f} | {r['step']} | {r['bpb']:.4f} |")
    reach = result["ours_reaches_hf_final_s"]
    print(
        f"\nHF's final bits per byte {result['hf_final_bpb']:.4f} (at {result['hf_final_s']:.0f} s); ours ends at "
        f"{result['ours_final_bpb']:.4f}; ours reaches HF's final at "
        + (f"{reach:.1f} s: speed-up {result['speedup']:.2f}x" if reach is not None else "never: no speed-up")
        + f"; load after training {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "curves": curves,
                    "load_before": load,
                    "load_after": load_after,
                    **result,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
