"""The long CLI fuzz run: N seeded draws over every console script (tests/cli_fuzz.py), findings printed grouped.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/fuzz_cli.py --draws 2000 --seed 1
    python benchmarks/fuzz_cli.py --draws 200 --only lightning-pretrain-eval lightning-pretrain-export
    python benchmarks/fuzz_cli.py --replay logs/fuzz/findings.json   # every earlier finding's draw again

Exit status 1 when anything broke the contract (exit 0 | exit 2 with one `error:` line | a stopped run's one line;
never a traceback, a changed earlier run or a refused run's leftovers). `--json FILE` writes every finding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--draws", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--only",
        nargs="*",
        help="family names (fit, validate, test, predict, sft_fit, sft_predict, "
        "lightning-pretrain-eval, -export, -glue, ...)",
    )
    p.add_argument("--timeout", type=int, default=180, help="seconds one draw may take before it counts as a hang")
    p.add_argument("--json", help="write the findings here")
    p.add_argument("--verbose", action="store_true", help="one line per draw")
    p.add_argument("--replay", help="a --json file of an earlier run: run each finding's draw again, nothing else")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="fuzz_cli_") as tmp:
        os.environ.setdefault("LIGHTNING_PRETRAIN_CACHE", str(Path(tmp) / "cache"))
        os.environ.setdefault("HF_DATASETS_CACHE", str(Path(tmp) / "hf_datasets"))
        import cli_fuzz

        world, scripts, families = cli_fuzz.setup(Path(tmp) / "world")
        print(f"families: {', '.join(f'{f.name} ({len(f.options)} options)' for f in families)}", flush=True)
        log = (lambda line: print(line, flush=True)) if args.verbose else None
        if args.replay:
            findings, stats = replay(cli_fuzz, world, scripts, families, Path(args.replay), args.timeout, log)
        else:
            findings, stats = cli_fuzz.fuzz(
                world,
                scripts,
                families,
                args.draws,
                args.seed,
                set(args.only) if args.only else None,
                args.timeout,
                log,
            )
    grouped = defaultdict(list)
    for f in findings:
        grouped[(f.family, f.what[:90])].append(f)
    print(
        f"\n{stats['draws']} draws in {stats['seconds']:.0f} s "
        + (f"(replay of {args.replay}): " if args.replay else f"(seed {args.seed}): ")
        + ", ".join(f"{k} {v}" for k, v in sorted(stats["by_family"].items()))
    )
    print(f"{len(findings)} findings in {len(grouped)} groups")
    for (family, what), items in sorted(grouped.items(), key=lambda kv: -len(kv[1])):
        print(f"- {len(items)}x {family}: {what}\n    e.g. {' '.join(items[0].changed)}")
    if args.json:
        Path(args.json).write_text(json.dumps([f.__dict__ for f in findings], indent=1) + "\n")
    return 1 if findings else 0


def replay(cli_fuzz, world, scripts, families, path: Path, timeout: int, log) -> tuple[list, dict]:
    """The draws of an earlier run's findings (their world's paths mapped onto this one), each run again."""
    import re
    import time

    by_name, found, stats, t0 = {f.name: f for f in families}, [], {"draws": 0, "by_family": {}}, time.perf_counter()
    for i, old in enumerate(json.loads(path.read_text())):
        fam = by_name[old["family"]]
        argv = [re.sub(r"/tmp/fuzz_cli_[^/]+/world", str(world.root), a) for a in old["argv"]]
        whole = old["changed"][:1] == ["no arguments"] or str(old["changed"][:1]).startswith("['without ")
        draw = cli_fuzz.Draw(fam.name, argv if whole else [*fam.base, *argv], old["changed"])  # (as fuzz() stores)
        what = cli_fuzz.run_draw(world, scripts, fam, draw, i, timeout)
        stats["draws"] += 1
        stats["by_family"][fam.name] = stats["by_family"].get(fam.name, 0) + 1
        if what:
            found.append(cli_fuzz.Finding(fam.name, argv, old["changed"], what))
        if log:
            log(f"[{i + 1}] {fam.name} {' '.join(old['changed'])}" + (f"  FINDING {what}" if what else "  (kept)"))
    stats["seconds"] = time.perf_counter() - t0
    return found, stats


if __name__ == "__main__":
    sys.exit(main())
