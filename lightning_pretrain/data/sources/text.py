"""Where input comes from: the embedded corpus, local files, or a Hugging Face hub dataset (`id[:config][@split]`).

`resolve(spec)` turns a `--data.source` string into a text source with `identity()` (a cheap string that changes
whenever the text could; it goes into cache keys) and `load()` (a `datasets.Dataset` of one `text` column, one
document per row). The forms (builtin; a file, directory or glob of .jsonl/.json/.csv/.tsv/.parquet or plain text;
a hub id) are listed in docs/design/data.md. Every local file passes `validate.py` (encoding, rows, the text
column's values) before it is read, remembered by content; fine-tuning tables share those checks, the hub loading
and the remembered file digests.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import datasets
import pyarrow as pa

from lightning_pretrain import compat
from lightning_pretrain.data.cache import content_digest
from lightning_pretrain.data.sources import formats, records, validate
from lightning_pretrain.errors import InputError

_GLOB_CHARS = set("*?[")
# what reading or loading input raises when the input (not this code) is at fault: missing or unreachable files and
# hub ids (OSError, ConnectionError), parse and schema errors (pandas/json: ValueError; pyarrow; `datasets` wraps
# its builders' errors in DatasetGenerationError)
READ_ERRORS = (OSError, ValueError, pa.ArrowException, datasets.exceptions.DatasetsError)
# A paragraph break is a blank line, also one holding spaces: WikiText writes its blank lines as " \n", which
# `datasets`' own `sample_by="paragraph"` (a split on "\n\n") does not see, leaving a whole file as one row.
_BLANK_LINE = re.compile(r"\n(?:[ \t]*\n)+")


def paragraphs(text: str) -> list[str]:
    """The blank-line separated blocks of a text, blank ones dropped."""
    return [p for p in _BLANK_LINE.split(text) if p.strip()]


@dataclass(frozen=True)
class BuiltinSource:
    """Documentation shipped inside CPython: ~1.8 MB of human-written English on every machine."""

    min_chars: int = 100  # drop one-line docstrings ("Return self.") that are mostly noise

    def identity(self) -> str:
        return f"builtin:python-{sys.version}:min{self.min_chars}"

    def load(self) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"text": builtin_documents(self.min_chars)})


def builtin_documents(min_chars: int = 100) -> list[str]:
    """The `pydoc_data` help topics plus every module/class/function docstring of the pure-Python standard library.

    Docstrings are read with `ast` (no module is imported, so nothing runs) in sorted path order: the result is
    deterministic for a given Python installation.
    """
    from pydoc_data.topics import topics

    docs = [topics[name] for name in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    docs.append(doc)
    return [d.strip() for d in docs if d.strip()]


@dataclass(frozen=True)
class LocalSource:
    """One or more local files (a file, a directory searched recursively, or a glob)."""

    spec: str
    files: tuple[str, ...]
    text_column: str = "text"
    streaming: bool = False  # read lazily as a `datasets.IterableDataset` instead of converting to Arrow first
    delimiter: str | None = None  # plain text: a line holding only this ends a document (None: blank lines do)

    def check(self) -> None:
        """Refuse files that are not what they claim (see `check_file`), before anything reads or caches them."""
        for f in self.files:
            validate.check_file(f, content_digest(f), self.text_column)

    def identity(self) -> str:
        self.check()  # also on a cache hit: a file must pass today's checks to reuse entries built from it
        # v2: paragraphs also break at blank lines holding spaces (older cache entries split differently)
        h = hashlib.sha256(
            f"local-v2:{self.text_column}".encode()
            + (f":delim:{self.delimiter}".encode() if self.delimiter is not None else b"")
        )
        for f in self.files:  # content, not path or mtime: a touched-but-equal file keeps its cache
            h.update(os.path.basename(f).encode())
            h.update(bytes.fromhex(content_digest(f)))
        return "local:" + h.hexdigest()

    def load(self) -> datasets.Dataset | datasets.IterableDataset:
        self.check()
        parts = []
        for builder, delimiter in sorted({_loader(f) for f in self.files}, key=_load_order):
            files = [f for f in self.files if _loader(f) == (builder, delimiter)]
            if builder == "json":  # a JSON document of records (not JSON Lines): read as fine-tuning reads it
                documents = [f for f in files if not records.json_lines(f)]
                parts.extend(self._json_document(f) for f in documents)
                files = [f for f in files if f not in documents]
                if not files:
                    continue
            # a delimiter line may sit anywhere, also across paragraphs: such a file is read whole, then cut
            kwargs = {"sample_by": "document" if self.delimiter else "paragraph"} if builder == "text" else {}
            if builder == "text" and self.streaming:  # a streamed .txt has no schema until read: name its column
                kwargs["features"] = datasets.Features({"text": datasets.Value("string")})
            if delimiter:
                kwargs["delimiter"] = delimiter
            try:
                ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=self.streaming, **kwargs)
            except READ_ERRORS as e:  # pyarrow/pandas parse errors carry no file name: add it
                raise InputError(f"could not read {', '.join(files)} as {builder}: {first_line(e)}") from e
            if builder == "text":  # (a streamed map loses the schema unless it is given)
                split = partial(_split_documents, self.delimiter) if self.delimiter else _split_paragraphs
                ds = ds.map(split, batched=True, features=datasets.Features({"text": datasets.Value("string")}))
            column = "text" if builder == "text" else self.text_column
            parts.append(_text_column(ds, column, self.spec))
        return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def _json_document(self, path: str) -> datasets.Dataset | datasets.IterableDataset:
        """A .json file holding a list of records, an object of records or one list field (checked already)."""
        texts = [record.get(self.text_column) for _, record in records.records(path)[1]]
        ds = datasets.Dataset.from_dict({"text": texts}, features=datasets.Features({"text": datasets.Value("string")}))
        return ds.to_iterable_dataset() if self.streaming else ds


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub (or in the local `datasets` cache when offline)."""

    path: str
    config: str | None = None
    split: str = "train"
    text_column: str = "text"
    streaming: bool = False

    def identity(self) -> str:
        # the dataset's own fingerprint changes when its files do; loading it is needed to know it
        ds = self.load()
        fp = compat.dataset_fingerprint(ds) or "streaming"
        return f"hub:{self.path}:{self.config}:{self.split}:{self.text_column}:{fp}"

    def load(self) -> datasets.Dataset | datasets.IterableDataset:
        ds = load_hub(self.path, self.config, self.split, streaming=self.streaming)
        return _text_column(ds, self.text_column, self.path, strict=True)


def load_hub(path: str, config: str | None = None, split: str | None = None, streaming: bool = False, hint: str = ""):
    """`datasets.load_dataset(path, config, split=split)` (all splits as a DatasetDict when `split` is None); a
    dataset that cannot be loaded (offline, unknown id, config or split) is one InputError line ending in `hint`."""
    try:
        return datasets.load_dataset(path, config, split=split, streaming=streaming)
    except READ_ERRORS as e:
        raise InputError(
            f"could not load hub dataset '{path}'{f' config {config!r}' if config else ''}"
            f"{f' split {split!r}' if split else ''}: {first_line(e)}{hint}"
        ) from e


TextSource = BuiltinSource | LocalSource | HubSource


def resolve(spec: str, text_column: str = "text", streaming: bool = False, delimiter: str | None = None) -> TextSource:
    """Parse a `--data.source` string: 'builtin'; a local file, directory (searched for the suffixes of `FORMATS`)
    or glob (plain text is split into documents at blank lines, or at lines holding only `delimiter`; a named file
    of another suffix is plain text); else
    a hub dataset 'id[:config][@split]' for `datasets.load_dataset` (the split defaults to 'train')."""
    if not spec or not spec.strip():
        raise InputError("data source is empty: pass 'builtin', a file/directory/glob, or a hub dataset id")
    if delimiter is not None and (not delimiter.strip() or "\n" in delimiter):
        raise InputError(
            f"document_delimiter {delimiter!r} must be the text of one non-blank line (e.g. "
            f"'<|endoftext|>'); leave it unset to separate documents at blank lines"
        )
    if spec == "builtin":
        return BuiltinSource()
    if looks_local(spec):
        return LocalSource(spec, _local_files(os.path.expanduser(spec)), text_column, streaming, delimiter)
    dataset_id, config, split = parse_hub(spec)
    return HubSource(dataset_id, config, split or "train", text_column, streaming)


def looks_local(spec: str) -> bool:
    """A path (existing, a glob, a known suffix, or starting with . / ~) rather than a hub id."""
    path = os.path.expanduser(spec)
    return bool(
        os.path.exists(path)
        or _GLOB_CHARS.intersection(path)
        or formats.suffix(path) in formats.FORMATS
        or path.startswith((".", "/", "~"))
    )


def parse_hub(spec: str) -> tuple[str, str | None, str | None]:
    """`id[:config][@split]` -> (id, config or None, split or None)."""
    name, _, split = spec.partition("@")
    dataset_id, _, config = name.partition(":")
    return dataset_id, config or None, split or None


def _local_files(path: str) -> tuple[str, ...]:
    if os.path.isdir(path):
        candidates = [str(p) for p in sorted(Path(path).rglob("*")) if p.is_file()]
        files = [f for f in candidates if formats.suffix(f) in formats.FORMATS]
        if not files:
            raise InputError(f"directory {path} holds no {'/'.join(sorted(formats.FORMATS))} files")
    elif _GLOB_CHARS.intersection(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not files:
            raise InputError(f"no file matches {path}")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise InputError(f"file not found: {path}")
    return tuple(os.path.abspath(f) for f in files)


def _loader(path: str) -> tuple[str, str | None]:
    """(`datasets` builder, field delimiter) of a file: files alike are loaded in one call."""
    fmt = formats.format_of(path)
    return fmt.builder, fmt.delimiter


def _load_order(loader: tuple[str, str | None]) -> tuple[str, bool]:
    # the order older versions concatenated a mixed folder's parts in (csv before tsv): the held-out split follows it
    return loader[0], loader[1] != ","


def _split_documents(delimiter: str, batch: dict) -> dict:
    line = re.compile(rf"^[ \t]*{re.escape(delimiter)}[ \t]*\r?$", re.MULTILINE)
    return {"text": [d.strip("\n") for text in batch["text"] for d in line.split(text) if d.strip()]}


def _split_paragraphs(batch: dict) -> dict:
    return {"text": [p for text in batch["text"] for p in paragraphs(text)]}


def _text_column(ds, column: str, where: str, strict: bool = False):
    names = ds.column_names or []
    if column not in names:
        raise validate.column_not_found(column, where, names)
    feature = (getattr(ds, "features", None) or {}).get(column)
    if strict and feature is not None and not (isinstance(feature, datasets.Value) and "string" in feature.dtype):
        # a hub dataset's files are not checked row by row (local files are): its declared type must be text
        raise InputError(f"the text column {column!r} of {where} holds {feature}, not text (set --data.text_column)")
    if names != ["text"]:
        ds = ds.select_columns([column])
        if column != "text":
            ds = ds.rename_column(column, "text")
    features = getattr(ds, "features", None)
    if features is not None and features["text"] != datasets.Value("string"):
        # parquet/json give large_string (or numbers): one type, so sources of several formats concatenate
        ds = ds.cast_column("text", datasets.Value("string"))
    return ds


def first_line(e: BaseException) -> str:
    """`Type: first line` of an exception's root cause (what the user can fix), for one-line InputErrors."""
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:  # the root cause names the real problem
        nxt = cause.__cause__ or cause.__context__
        if nxt is cause:
            break
        cause = nxt
    msg = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {msg[0] if msg else ''}"
