"""The bad-input catalogue: hostile files, labels, options, checkpoints and folders, each run through the CLI's
entry point. Every case must exit with its status (2 for the user's input), print exactly one `error:` line and
no traceback, and leave the cache and the logs as they were: no new run directory, no partial file, no file
that existed before changed."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ENGLISH, REPO
from test_finetune_modes import NEGATIVE, POSITIVE, tiny_backbone  # noqa: F401 (fixture)

QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.max_steps",
    "2",
    "--trainer.val_check_interval",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--model.init_args.warmup_steps",
    "0",
]
TINY = [
    "--model.init_args.model.init_args.n_embd",
    "32",
    "--model.init_args.model.init_args.n_layer",
    "1",
    "--model.init_args.model.init_args.n_head",
    "2",
    "--data.vocab_size",
    "300",
    "--data.seq_len",
    "32",
    "--data.batch_size",
    "4",
]


def config(name: str) -> list[str]:
    return ["-c", str(REPO / "configs" / name)]


def clm(w: Path, *extra: str) -> list[str]:
    return ["fit", *config("pretrain/clm_tiny.yaml"), *QUIET, *TINY, "--data.source", str(w / "corpus.txt"), *extra]


def mlm(w: Path, *extra: str) -> list[str]:
    return [
        "fit",
        *config("pretrain/mlm_tiny.yaml"),
        *QUIET,
        "--model.init_args.model.init_args.hidden_size",
        "32",
        "--model.init_args.model.init_args.num_attention_heads",
        "2",
        "--data.vocab_size",
        "300",
        "--data.seq_len",
        "32",
        "--data.batch_size",
        "4",
        "--data.source",
        str(w / "corpus.txt"),
        *extra,
    ]


def sst2(w: Path, train: str, *extra: str, val: str | None = None) -> list[str]:
    return [
        "fit",
        *config("finetune/sst2.yaml"),
        *config("finetune/modes/full.yaml"),
        *QUIET[:-2],
        "--model.backbone",
        str(w / "backbone"),
        "--data.source",
        "null",
        "--data.train_file",
        str(w / train),
        "--data.val_file",
        str(w / (val or train)),
        "--data.text_column",
        "text",
        "--data.label_column",
        "label",
        "--data.batch_size",
        "4",
        *extra,
    ]


def write(w: Path, name: str, content: str | bytes) -> str:
    path = w / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return name


def labelled(rows: int = 16) -> str:
    return "".join(
        f'"{(POSITIVE if i % 2 else NEGATIVE)[i % 6]} {i}",{"positive" if i % 2 else "negative"}\n' for i in range(rows)
    )


def table(rows: int = 300, sep: str = ",", bad: dict[int, str] | None = None, header: str = "text,label") -> str:
    """A corpus table (header on line 1, `rows` rows of prose) whose line k is replaced by `bad[k]`."""
    lines = [header.replace(",", sep)] + [
        f"{ENGLISH[i % 6].replace(',', '')} Row {i}.{sep}{i % 2}" for i in range(rows)
    ]
    for k, line in (bad or {}).items():
        lines[k - 1] = line
    return "\n".join(lines) + "\n"


def jsonl(rows: int = 300, bad: dict[int, str] | None = None) -> str:
    """JSON Lines of prose (line k replaced by `bad[k]`)."""
    lines = [json.dumps({"text": f"{ENGLISH[i % 6]}\nRow {i}.", "label": i % 2}) for i in range(rows)]
    for k, line in (bad or {}).items():
        lines[k - 1] = line
    return "\n".join(lines) + "\n"


def parquet(w: Path, name: str, columns: dict) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), w / name)
    return name


def labelled_table(bad: str = "", header: str = "text,label") -> str:
    """A fine-tuning CSV: a header, then `bad` as line 5 of 17."""
    lines = labelled().splitlines(keepends=True)
    return header + "\n" + "".join(lines[:3]) + (bad + "\n" if bad else "") + "".join(lines[3:])


@dataclass
class Case:
    name: str
    args: Callable[[Path], list[str]]
    says: str  # a piece of the error line
    status: int = 2


CASES = [
    # -- options and configs ------------------------------------------------------------------------------------
    Case("unknown option", lambda w: clm(w, "--data.batch_sizee", "3"), "batch_sizee"),
    Case("option of the wrong type", lambda w: clm(w, "--data.batch_size", "abc"), "batch_size"),
    Case("config file missing", lambda w: ["fit", "-c", str(w / "nope.yaml")], "does not exist"),
    Case("unknown LR schedule", lambda w: clm(w, "--model.init_args.lr_schedule", "bogus"), "lr_schedule"),
    Case("negative learning rate", lambda w: clm(w, "--model.init_args.optimizer.init_args.lr", "-1"), "learning rate"),
    Case("warmup longer than the run", lambda w: clm(w, "--model.init_args.warmup_steps", "50"), "warmup_steps=50"),
    Case("seq_len beyond the model's positions", lambda w: clm(w, "--data.seq_len", "256"), "positions"),
    Case("seq_len of 1", lambda w: clm(w, "--data.seq_len", "1"), "seq_len must be at least 2"),
    Case("val_fraction above 1", lambda w: clm(w, "--data.val_fraction", "1.5"), "val_fraction"),
    Case("mlm_probability 0", lambda w: mlm(w, "--model.init_args.mlm_probability", "0"), "mlm_probability"),
    Case(
        "noise density above 1",
        lambda w: [
            "fit",
            *config("pretrain/t5_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--model.init_args.noise_density",
            "1.5",
        ],
        "noise_density",
    ),
    Case(
        "sentence-pair objective on plain blocks",
        lambda w: clm(
            w, "--model", "lightning_pretrain.objectives.SentencePairMLM", "--model.model", "transformers.BertConfig"
        ),
        "sentence pairs",
    ),
    Case(
        "classifier on a pretraining corpus",
        lambda w: [
            "fit",
            *config("pretrain/clm_tiny.yaml"),
            *QUIET,
            *TINY[6:],
            "--data.source",
            str(w / "corpus.txt"),
            "--model",
            "lightning_pretrain.finetune.SequenceClassifier",
            "--model.backbone",
            str(w / "backbone"),
        ],
        "classification data",
    ),
    Case(
        "pretrained model folder missing",
        lambda w: mlm(w, "--model.model", str(w / "no_model")),
        "could not load pretrained model",
    ),
    Case(
        "streaming corpus without max_steps",
        lambda w: [
            "fit",
            *config("pretrain/clm_streaming_tiny.yaml"),
            *QUIET[:4],
            "--trainer.max_steps",
            "-1",
            "--trainer.max_epochs",
            "1",
            "--data.source",
            str(w / "corpus.txt"),
            "--data.vocab_size",
            "300",
        ],
        "max_steps",
    ),
    # -- corpus files -------------------------------------------------------------------------------------------
    Case("corpus missing", lambda w: clm(w, "--data.source", str(w / "missing.txt")), "file not found"),
    Case("empty corpus", lambda w: clm(w, "--data.source", str(w / write(w, "empty.txt", "\n \n"))), "empty"),
    Case(
        "binary corpus", lambda w: clm(w, "--data.source", str(w / write(w, "b.txt", bytes(range(256)) * 64))), "binary"
    ),
    Case(
        "latin-1 corpus",
        lambda w: clm(w, "--data.source", str(w / write(w, "l.txt", "café crème\n\nnaïve\n".encode("latin-1") * 99))),
        "not valid UTF-8",
    ),
    Case(
        "jsonl without the text column",
        lambda w: clm(w, "--data.source", str(w / write(w, "a.jsonl", '{"body": "x y"}\n' * 20))),
        "column 'text'",
    ),
    Case(
        "malformed jsonl",
        lambda w: clm(w, "--data.source", str(w / write(w, "bad.jsonl", '{"text": "a"\n' * 20))),
        "bad.jsonl",
    ),
    Case(
        "hub dataset unreachable",
        lambda w: clm(w, "--data.source", "no-such-user/no-such-dataset"),
        "could not load hub dataset",
    ),
    Case("tokenizer folder missing", lambda w: clm(w, "--data.tokenizer", str(w / "no_tok")), "tokenizer"),
    Case(
        "cache_dir is a file", lambda w: clm(w, "--data.cache_dir", str(w / write(w, "afile", "x"))), "not a directory"
    ),
    Case(
        "logs folder is a file",
        lambda w: clm(w, "--trainer.logger.init_args.save_dir", str(w / write(w, "f", "x"))),
        "not a directory",
    ),
    # -- fine-tuning data ---------------------------------------------------------------------------------------
    Case(
        "label column missing",
        lambda w: sst2(w, write(w, "t.csv", "text,y\n" + labelled()[:0] + "a,b\n" * 8)),
        "label column",
    ),
    Case(
        "text column missing",
        lambda w: sst2(w, write(w, "t2.csv", "txt,label\n" + "a,positive\n" * 8)),
        "column 'text'",
    ),
    Case("train file missing", lambda w: sst2(w, "nope.csv"), "not found"),
    # -- checkpoints --------------------------------------------------------------------------------------------
    Case(
        "checkpoint missing",
        lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "nope.ckpt")],
        "checkpoint not found",
    ),
    Case(
        "truncated checkpoint",
        lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "truncated.ckpt")],
        "not a readable checkpoint",
    ),
    Case(
        "text file as checkpoint",
        lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "corpus.txt")],
        "not a readable checkpoint",
    ),
    Case(
        "malicious pickle checkpoint",
        lambda w: ["validate", *clm(w)[1:], "--ckpt_path", str(w / "evil.ckpt")],
        "not a trusted checkpoint",
    ),
    Case(
        "checkpoint of another architecture",
        lambda w: ["validate", *mlm(w)[1:], "--ckpt_path", str(w / "clm.ckpt")],
        "was written by lightning_pretrain.objectives.CausalLM, not by lightning_pretrain.objectives.MaskedLM",
    ),
    Case(
        "resume of another model size",
        lambda w: clm(w, "--model.init_args.model.init_args.n_embd", "64", "--ckpt_path", str(w / "clm.ckpt")),
        "does not fit this model",
    ),
    # -- tables and JSON: one validation layer (data/records.py, data/validate.py), naming the line ---------------
    Case(
        "csv corpus with a ragged row (extra fields)",
        lambda w: clm(w, "--data.source", str(w / write(w, "ragged.csv", table(bad={42: "a, b, c,1"})))),
        "ragged.csv line 42: 4 fields where the header (line 1) has 2",
    ),
    Case(
        "csv corpus with a short row",
        lambda w: clm(
            w,
            "--data.source",
            str(w / write(w, "short.csv", table(bad={250: "no label here"}))),
            "--data.text_column",
            "text",
        ),
        "short.csv line 250: 1 field",
    ),
    Case(
        "tsv corpus with a ragged row",
        lambda w: clm(w, "--data.source", str(w / write(w, "ragged.tsv", table(sep="\t", bad={7: "a\tb\tc"})))),
        "ragged.tsv line 7: 3 fields",
    ),
    Case(
        "csv corpus with an unclosed quote",
        lambda w: clm(
            w, "--data.source", str(w / write(w, "quote.csv", table(bad={100: '"an opening quote, never closed,1'})))
        ),
        "quote.csv line 100: a double quote",
    ),
    Case(
        "csv corpus whose text column holds numbers only",
        lambda w: clm(
            w,
            "--data.source",
            str(w / write(w, "ids.csv", "id,text\n" + "".join(f"{i},{i * 7}\n" for i in range(300)))),
            "--data.text_column",
            "text",
        ),
        "every value of the text column 'text' is a number",
    ),
    Case(
        "csv corpus with a duplicate column name",
        lambda w: clm(w, "--data.source", str(w / write(w, "dupe.csv", table(header="text,text")))),
        "names column 'text' twice",
    ),
    Case(
        "csv corpus with a header and no rows",
        lambda w: clm(w, "--data.source", str(w / write(w, "header.csv", "text,label\n"))),
        "header.csv has a header (line 1) but no rows",
    ),
    Case(
        "jsonl corpus whose text is sometimes a number",
        lambda w: clm(
            w, "--data.source", str(w / write(w, "num.jsonl", jsonl(bad={120: '{"text": 12345, "label": 0}'})))
        ),
        "num.jsonl line 120: the text column 'text' is the number 12345",
    ),
    Case(
        "jsonl corpus whose text is sometimes null",
        lambda w: clm(w, "--data.source", str(w / write(w, "null.jsonl", jsonl(bad={3: '{"text": null}'})))),
        "null.jsonl line 3: the text column 'text' is missing or null",
    ),
    Case(
        "jsonl corpus whose text is sometimes an object",
        lambda w: clm(
            w, "--data.source", str(w / write(w, "obj.jsonl", jsonl(bad={299: '{"text": {"en": "hello"}}'})))
        ),
        "obj.jsonl line 299: the text column 'text' is an object",
    ),
    Case(
        "jsonl corpus with a malformed line",
        lambda w: clm(w, "--data.source", str(w / write(w, "broken.jsonl", jsonl(bad={77: '{"text": "cut off'})))),
        "broken.jsonl line 77: not valid JSON",
    ),
    Case(
        "json corpus whose top level is a number",
        lambda w: clm(w, "--data.source", str(w / write(w, "top.json", "42\n"))),
        "the top level is the number 42",
    ),
    Case(
        "parquet corpus with a text column of numbers",
        lambda w: clm(w, "--data.source", str(w / parquet(w, "ints.parquet", {"text": list(range(300))}))),
        "holds int64 values, not text",
    ),
    Case(
        "UTF-16 corpus (byte-order mark)",
        lambda w: clm(
            w,
            "--data.source",
            str(w / write(w, "u16.txt", "Hello there.\n\nA second paragraph.\n".encode("utf-16") * 50)),
        ),
        "is UTF-16 (it starts with a byte-order mark); convert it to UTF-8, e.g. `iconv -f utf-16 -t utf-8",
    ),
    Case(
        "UTF-16 corpus without a byte-order mark",
        lambda w: clm(w, "--data.source", str(w / write(w, "u16le.jsonl", jsonl().encode("utf-16-le")))),
        "looks like UTF-16LE text",
    ),
    Case(
        "UTF-32 fine-tuning file",
        lambda w: sst2(w, write(w, "u32.csv", labelled_table().encode("utf-32"))),
        "is UTF-32",
    ),
    Case(
        "fine-tuning csv with a ragged row",
        lambda w: sst2(w, write(w, "ft_ragged.csv", labelled_table("a dull film, really,negative"))),
        "ft_ragged.csv line 5: 3 fields where the header (line 1) has 2",
    ),
    Case(
        "header-only train file",
        lambda w: sst2(w, write(w, "ft_header.csv", "text,label\n"), val=write(w, "ft_ok.csv", labelled_table())),
        "but no rows",
    ),
    Case(
        "header-only val file",
        lambda w: sst2(w, write(w, "ft_ok2.csv", labelled_table()), val=write(w, "ft_header2.csv", "text,label\n")),
        "ft_header2.csv has a header (line 1) but no rows",
    ),
    Case(
        "label NaN with --data.labels null",
        lambda w: sst2(w, write(w, "ft_nan.csv", labelled_table('"a film",NaN')), "--data.labels", "null"),
        "ft_nan.csv line 5: no label ('NaN')",
    ),
    Case(
        "--data.labels with a duplicate name",
        lambda w: sst2(w, write(w, "ft_ok3.csv", labelled_table()), "--data.labels", "[negative, positive, negative]"),
        "--data.labels names 'negative' twice",
    ),
    Case(
        "label not in --data.labels",
        lambda w: sst2(w, write(w, "ft_other.csv", labelled_table('"a film",neutral'))),
        "ft_other.csv line 5: label 'neutral' is not one of",
    ),
    Case(
        "empty text in a labelled split",
        lambda w: sst2(w, write(w, "ft_empty.csv", labelled_table(",positive"))),
        "ft_empty.csv line 5: the text column 'text' is empty",
    ),
    Case(
        "numeric text in a fine-tuning jsonl",
        lambda w: sst2(
            w,
            write(
                w,
                "ft_num.jsonl",
                "".join(
                    json.dumps({"text": 3.5 if i == 9 else f"film {i}", "label": ["negative", "positive"][i % 2]})
                    + "\n"
                    for i in range(16)
                ),
            ),
        ),
        "ft_num.jsonl line 10: the text column 'text' is the number 3.5",
    ),
    Case(
        "a single class in the training labels",
        lambda w: sst2(
            w,
            write(w, "ft_one.csv", "text,label\n" + "".join(f"film {i},positive\n" for i in range(16))),
            "--data.labels",
            "null",
        ),
        "every training label is 'positive'",
    ),
    # -- nonsense settings, caches and loader workers -------------------------------------------------------------
    Case("vocab_size 0", lambda w: clm(w, "--data.vocab_size", "0"), "vocab_size=0 is below the minimum of 261"),
    Case(
        "vocab_size 10 for byte-level BPE",
        lambda w: clm(w, "--data.vocab_size", "10"),
        "minimum of 261 for a 'bpe' tokenizer",
    ),
    Case(
        "wordpiece vocabulary smaller than the corpus's characters",
        lambda w: mlm(w, "--data.vocab_size", "30"),
        "for a 'wordpiece' tokenizer of this corpus",
    ),
    Case(
        "unigram vocabulary smaller than the corpus's characters",
        lambda w: [
            "fit",
            *config("pretrain/t5_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--data.vocab_size",
            "20",
        ],
        "for a 'unigram' tokenizer of this corpus",
    ),
    Case("batch_size 0 (pretraining)", lambda w: clm(w, "--data.batch_size", "0"), "batch_size must be at least 1"),
    Case(
        "batch_size 0 (sentence pairs)",
        lambda w: [
            "fit",
            *config("pretrain/bert_nsp_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--data.batch_size",
            "0",
        ],
        "batch_size must be at least 1",
    ),
    Case(
        "batch_size 0 (streaming)",
        lambda w: [
            "fit",
            *config("pretrain/clm_streaming_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--data.vocab_size",
            "300",
            "--data.batch_size",
            "0",
        ],
        "batch_size must be at least 1",
    ),
    Case(
        "batch_size 0 (fine-tuning)",
        lambda w: sst2(w, write(w, "ft_bs.csv", labelled()), "--data.batch_size", "0"),
        "batch_size must be at least 1",
    ),
    Case(
        "eval_batch_size 0 (fine-tuning)",
        lambda w: sst2(w, write(w, "ft_ebs.csv", labelled()), "--data.eval_batch_size", "0"),
        "eval_batch_size must be at least 1",
    ),
    Case("negative num_workers", lambda w: clm(w, "--data.num_workers", "-1"), "num_workers must be 0"),
    Case(
        "negative num_workers (fine-tuning)",
        lambda w: sst2(w, write(w, "ft_nw.csv", labelled()), "--data.num_workers", "-2"),
        "num_workers must be 0",
    ),
    Case(
        "max_length 1 (fine-tuning)",
        lambda w: sst2(w, write(w, "ft_ml.csv", labelled()), "--data.max_length", "1"),
        "max_length must be at least 2",
    ),
    Case(
        "shuffle_window 0 (streaming)",
        lambda w: [
            "fit",
            *config("pretrain/clm_streaming_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--data.vocab_size",
            "300",
            "--data.shuffle_window",
            "0",
        ],
        "shuffle_window must be at least 1",
    ),
    Case(
        "cache_dir below a file",
        lambda w: clm(w, "--data.cache_dir", str(w / write(w, "cfile", "x") / "sub")),
        "cfile is a file",
    ),
    Case(
        "cache_dir is a file (fine-tuning)",
        lambda w: sst2(w, write(w, "ft_cd.csv", labelled()), "--data.cache_dir", str(w / write(w, "cfile2", "x"))),
        "not a directory",
    ),
    Case(
        "streaming max_steps below val_check_interval",
        lambda w: [
            "fit",
            *config("pretrain/clm_streaming_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--data.vocab_size",
            "300",
            "--data.seq_len",
            "32",
            "--data.val_documents",
            "20",
            "--data.num_workers",
            "0",
            "--trainer.val_check_interval",
            "5",
        ],
        "val_check_interval=5 is beyond the 2 training batches of this streaming run",
    ),
    Case(
        "val_check_interval beyond an epoch",
        lambda w: clm(w, "--trainer.check_val_every_n_epoch", "1", "--trainer.val_check_interval", "100000"),
        "val_check_interval=100000 is beyond the",
    ),
    Case(
        "InputError inside a DataLoader worker",
        lambda w: [
            "fit",
            *config("pretrain/clm_streaming_tiny.yaml"),
            *QUIET,
            "--data.source",
            str(w / "corpus.txt"),
            "--data.vocab_size",
            "300",
            "--data.seq_len",
            "32",
            "--data.val_documents",
            "20",
            "--data.num_workers",
            "2",
            "--data.shard_by",
            "files",
        ],
        "shard_by='files' needs at least as many files as ranks x workers (2); the source has 1",
    ),
]


class Evil:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_backbone) -> Path:  # noqa: F811
    """Files every case may point at, a trained checkpoint, and a warm cache (so a case's own changes show)."""
    from lightning_pretrain.cli import main

    w = tmp_path_factory.mktemp("world")
    (w / "corpus.txt").write_text(
        "\n\n".join(f"{ENGLISH[i % 6]} Paragraph {i} adds {i * 7 % 13} words." for i in range(300)) + "\n"
    )
    (w / "backbone").symlink_to(tiny_backbone)
    cwd = os.getcwd()
    os.chdir(w)
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            main(clm(w, "--trainer.logger.init_args.name", "warm"))
    finally:
        os.chdir(cwd)
    (ckpt,) = (w / "logs" / "warm" / "version_0" / "checkpoints").glob("*.ckpt")
    (w / "clm.ckpt").write_bytes(ckpt.read_bytes())
    (w / "truncated.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    torch.save({"state_dict": Evil()}, w / "evil.ckpt")
    return w


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return (
        {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else {}
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_line(case: Case, world: Path, tmp_path, monkeypatch):
    from lightning_pretrain.cli import main

    monkeypatch.chdir(tmp_path)  # this case's logs/ land here
    cache = Path(os.environ["LIGHTNING_PRETRAIN_CACHE"])
    before = snapshot(cache)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exit_info:
        main(case.args(world))
    text = err.getvalue()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == case.status, text[-3000:]
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert case.says in errors[0], errors[0]
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("version_*")), "a run dir was left"
    after = snapshot(cache)
    assert {k: v for k, v in after.items() if k in before} == before, "a cache file changed"
    assert not [k for k in after if "partial" in k], "a partial cache entry was left"
    assert not (tmp_path / "PWNED").exists() and not (world / "PWNED").exists()
