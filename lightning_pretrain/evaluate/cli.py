"""`lightning-pretrain-eval`: zero-/few-shot tasks and bits per byte for any checkpoint, through lm-evaluation-harness.

    lightning-pretrain-eval --model logs/clm_tiny/version_0/hf --data_dir ../shared/data/zeroshot \
        --tasks piqa arc_easy copa openbook_qa winogrande lambada --limit 200 --output_dir eval_out
    lightning-pretrain-eval --model $MINILM --tasks my_task.jsonl --bpb_file wiki.test.raw --bpb_max_bytes 20000

Writes `<output_dir>/eval_results.json` and `eval_results.md` and prints the table. Bad input: one `error: ...`
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import torch

from lightning_pretrain import entry
from lightning_pretrain.errors import InputError, refused_values


def parser() -> argparse.ArgumentParser:
    p = entry.Parser(
        prog="lightning-pretrain-eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="a Hugging Face directory (a run's hf/ export), a Lightning .ckpt "
        "of a run (exported to hf first, tokenizer from <run dir>/tokenizer), or a hub id",
    )
    p.add_argument(
        "--model_kind",
        default="auto",
        choices=["auto", "causal", "seq2seq", "masked"],
        help="how to score it; auto reads the config (masked LMs are scored by pseudo-log-likelihood)",
    )
    p.add_argument("--tokenizer", help="tokenizer directory or hub id (default: the model's)")
    p.add_argument(
        "--tasks",
        nargs="*",
        default=[],
        help="shipped gauntlet names (piqa, arc_easy, copa, openbook_qa, "
        "winogrande, lambada, ...: see evaluate/tasks/gauntlet.yaml), paths to gauntlet-layout JSONL "
        "files (task name = file name), or lm-eval task names (need the hub)",
    )
    p.add_argument(
        "--task_file",
        nargs="*",
        action="extend",
        default=[],
        metavar="NAME=PATH",
        help="the JSONL file of a task name, e.g. piqa=data/piqa.jsonl (runs even if not in --tasks)",
    )
    p.add_argument("--data_dir", help="folder holding task files under their gauntlet names (piqa.jsonl, ...)")
    p.add_argument("--include_path", nargs="*", default=[], help="folders of your own lm-eval task YAMLs")
    p.add_argument(
        "--mmlu_dir",
        help="MMLU as CSV files: a folder with dev/<subject>_dev.csv and "
        "test/<subject>_test.csv (scored as lm-eval's mmlu tasks; runs even if 'mmlu' is not in --tasks)",
    )
    p.add_argument("--mmlu_subjects", nargs="*", help="MMLU subjects to score (default: every test file)")
    p.add_argument(
        "--num_fewshot",
        type=int,
        help="examples in context (default 0, drawn from the same file; MMLU: 5, the first of its dev file)",
    )
    p.add_argument("--limit", type=int, help="score only the first N examples of each task")
    p.add_argument(
        "--batch_size", type=int, default=16, help="sequences per forward (masked LMs: masked copies per forward)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--bpb_file", help="plain UTF-8 text to score: bits per byte, token and word perplexity")
    p.add_argument(
        "--max_length",
        type=int,
        help="rolling window length in tokens (default: the model's positions; "
        "masked LMs: at most 128, as PLL costs one window-long forward per token)",
    )
    p.add_argument("--stride", type=int, help="window step (default: max_length/2 for causal, max_length for masked)")
    p.add_argument("--bpb_max_bytes", type=int, help="score only the first lines of --bpb_file, up to N bytes")
    p.add_argument("--output_dir", default="eval_out")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--verbose", action="store_true", help="show lm-eval's own log messages")
    return p


def _check_numbers(args) -> None:
    if not 0 <= args.seed < 2**32:  # numpy's and lm-eval's seed range
        raise InputError(f"--seed must be in [0, 2**32 - 1], got {args.seed}")
    for name, low in (
        ("limit", 1),
        ("num_fewshot", 0),
        ("batch_size", 1),
        ("max_length", 2),
        ("stride", 1),
        ("bpb_max_bytes", 1),
    ):
        value = getattr(args, name)
        if value is not None and value < low:
            raise InputError(f"--{name} must be >= {low}, got {value}")


def read_text(path: str, max_bytes: int | None = None) -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--bpb_file {path} does not exist" if not p.exists() else f"--bpb_file {path} is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"--bpb_file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    if max_bytes:
        kept, size = [], 0
        for line in text.splitlines(keepends=True):
            size += len(line.encode("utf-8"))
            if size > max_bytes and kept:
                break
            kept.append(line)
        text = "".join(kept)
    if not text.strip():
        raise InputError(f"--bpb_file {path} holds no text")
    return text


def run(args) -> None:
    from lightning_pretrain.evaluate import harness, mmlu, registry, report
    from lightning_pretrain.evaluate.models import build_lm, inspect, load_model
    from lightning_pretrain.evaluate.rolling import score_text
    from lightning_pretrain.export import refuse_non_finite

    _check_numbers(args)
    if not (args.tasks or args.task_file or args.bpb_file or args.mmlu_dir):
        raise InputError("nothing to evaluate: give --tasks, --task_file, --mmlu_dir and/or --bpb_file")
    specs = mmlu.resolve_tasks(
        args.tasks,
        registry.parse_task_files(args.task_file),
        args.data_dir,
        args.mmlu_dir,
        args.mmlu_subjects,
        args.num_fewshot,
    )
    text = read_text(args.bpb_file, args.bpb_max_bytes) if args.bpb_file else None
    made = [d for d in (Path(args.output_dir), *Path(args.output_dir).parents) if not d.exists()]
    entry.on_refusal(lambda: [d.rmdir() for d in made if d.is_dir() and not any(d.iterdir())])
    try:  # before any scoring: an unusable output folder must not cost the evaluation
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot write the results into {args.output_dir}: {e.strerror or e}") from e
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    harness.quiet_lm_eval(logging.INFO if args.verbose else logging.ERROR)
    if not args.verbose:
        import datasets

        datasets.disable_progress_bars()  # one progress bar per task file otherwise
    with tempfile.TemporaryDirectory(prefix="lp_eval_") as tmp:
        with refused_values(f"could not read model {args.model}"):
            ref = inspect(args.model, args.model_kind, workdir=tmp, tokenizer=args.tokenizer)
        if text is not None and ref.kind not in ("causal", "masked"):
            raise InputError(f"--bpb_file needs a causal or masked LM; {args.model} is a {ref.kind} model")
        loaded_tasks = None
        if specs:  # tasks are resolved and loaded before the weights: a bad task fails fast
            folder = registry.write_task_folder(specs, Path(tmp) / "tasks")
            loaded_tasks = registry.load_tasks(registry.task_manager(specs, folder, args.include_path), specs)
            generating = [n for n, t in loaded_tasks["tasks"].items() if t.OUTPUT_TYPE == "generate_until"]
            if generating and ref.kind == "masked":
                raise InputError(
                    f"task(s) {', '.join(generating)} generate text, which a masked LM cannot do: use a "
                    f"causal or seq2seq model, or tasks scored by log-likelihood"
                )
        with refused_values(f"could not load model {args.model}"):  # nonsense config.json, cut weights file
            loaded = load_model(ref, args.tokenizer, device)
        refuse_non_finite(loaded.model.named_parameters(), f"model {args.model}")
        rows = []
        if loaded_tasks is not None:
            lm = build_lm(loaded.model, loaded.tokenizer, loaded.kind, args.batch_size, progress=True)
            rows = mmlu.with_summary(
                harness.run_tasks(lm, specs, loaded_tasks, args.limit, args.num_fewshot, seed=args.seed), specs
            )
            if lm.truncated:
                loaded.notes.append(
                    f"{lm.truncated} answer(s) longer than the model's window were scored on their last tokens only"
                )
        score = (
            score_text(loaded.model, loaded.tokenizer, text, loaded.kind, args.max_length, args.stride, args.batch_size)
            if text is not None
            else None
        )
    scoring = (
        "pseudo-log-likelihood (masked LM, one forward per scored token)"
        if loaded.kind == "masked"
        else "exact log-likelihood (lm-evaluation-harness HFLM)"
    )
    shots = sorted({r.num_fewshot for r in rows}) if args.num_fewshot is None else [args.num_fewshot]
    header = {
        "model": args.model,
        "source": loaded.source,
        "kind": loaded.kind,
        "scoring": scoring,
        "num_fewshot": shots[0] if len(shots) == 1 else shots if shots else 0,
        "limit": args.limit,
        "notes": loaded.notes,
        "summary": f"{loaded.kind} LM ({loaded.source}); {scoring}; {'/'.join(map(str, shots)) or 0}-shot"
        + (f", first {args.limit} examples per task" if args.limit else ""),
        "command": ["lightning-pretrain-eval", *args.argv],
    }
    try:
        json_path, md_path = report.write(args.output_dir, header, rows, (args.bpb_file, score) if score else None)
    except OSError as e:
        raise InputError(f"cannot write the results into {args.output_dir}: {e.strerror or e}") from e
    print(report.table(rows, (args.bpb_file, score) if score else None), end="")
    print(f"results: {json_path} and {md_path}")


def check_device(device: str) -> str:
    """A device torch knows and this machine has (`gpu`, Lightning's accelerator name, is not a torch device)."""
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise InputError(f"--device {device} is not a torch device: use cpu, cuda or cuda:N") from e
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here (use --device cpu)")
    if kind == "cuda" and (torch.device(device).index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind not in ("cpu", "cuda"):
        raise InputError(f"--device {device}: evaluation runs on cpu or cuda[:N]")
    return device


@entry.console
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    from lightning_pretrain.quiet import quiet_known_noise

    quiet_known_noise()
    args = parser().parse_args(argv)
    args.argv = argv
    run(args)


if __name__ == "__main__":
    main()
