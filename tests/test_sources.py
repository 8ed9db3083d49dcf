"""Text sources: the embedded corpus and each local file form."""

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_pretrain.data.sources import formats, prompts
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.data.sources.tables import TableSource
from lightning_pretrain.errors import InputError


def test_builtin_corpus_is_real_english_and_large_enough():
    docs = sources.builtin_documents()
    text = "\n".join(docs)
    assert len(text.encode()) > 1_000_000
    words = text.lower().split()
    for common in ("the", "of", "and", "is", "returns"):  # prose, not code or synthetic tokens
        assert words.count(common) > 500
    assert docs == sources.builtin_documents()  # deterministic
    assert sources.resolve("builtin").identity().startswith("builtin:python-")


def test_txt_paragraphs_are_documents(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    ds = sources.resolve(str(f)).load()
    assert [t.strip() for t in ds["text"]] == ["first paragraph\nstill first", "second paragraph"]


def test_other_suffixes_named_explicitly_are_plain_text(tmp_path):
    # WikiText ships wiki.valid.raw / wiki.train.tokens; a user's notes may have no suffix at all
    for name in ("wiki.valid.raw", "wiki.train.tokens", "NOTES", "story.xyz"):
        f = tmp_path / name
        f.write_text(" = Title = \n \n One sentence . \n \n")
        assert [t.strip() for t in sources.resolve(str(f)).load()["text"]] == ["= Title =", "One sentence ."]
        streamed = sources.resolve(str(f), streaming=True).load()
        assert [row["text"].strip() for row in streamed] == ["= Title =", "One sentence ."]
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    with pytest.raises(InputError, match="looks binary"):
        sources.resolve(str(tmp_path / "blob.bin")).load()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.raw").write_text("raw doc")
    (tmp_path / "d" / "skip.bin").write_bytes(b"\x00")  # a directory is searched for known suffixes only
    assert sources.resolve(str(tmp_path / "d")).load()["text"] == ["raw doc"]


def test_jsonl_csv_parquet_dir_and_glob(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("\n".join(json.dumps({"body": f"json doc {i}", "n": i}) for i in range(3)))
    (tmp_path / "d" / "b.csv").write_text('id,body\n1,csv doc one\n2,"csv, doc two"\n')
    pq.write_table(pa.table({"body": ["parquet doc"], "x": [1]}), tmp_path / "d" / "c.parquet")
    ds = sources.resolve(str(tmp_path / "d"), text_column="body").load()
    assert sorted(ds["text"]) == sorted(
        ["json doc 0", "json doc 1", "json doc 2", "csv doc one", "csv, doc two", "parquet doc"]
    )
    assert ds.column_names == ["text"]
    globbed = sources.resolve(str(tmp_path / "d" / "*.jsonl"), text_column="body").load()
    assert len(globbed) == 3


def test_identity_follows_content_not_mtime(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world")
    before = sources.resolve(str(f)).identity()
    f.write_text("hello world")  # same bytes, new mtime
    assert sources.resolve(str(f)).identity() == before
    f.write_text("hello there")
    assert sources.resolve(str(f)).identity() != before


def test_content_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_PRETRAIN_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "a.txt"
    f.write_text("hello world")
    fresh = sources.content_digest(str(f))
    assert not (tmp_path / "cache" / "digests").exists()  # written just now: not remembered (same-tick rewrites)
    os.utime(f, ns=(time.time_ns() - 10**10,) * 2)
    first = sources.content_digest(str(f))
    assert first == fresh
    memo = list((tmp_path / "cache" / "digests").iterdir())
    assert len(memo) == 1 and memo[0].read_text() == first
    memo[0].write_text("0" * 64)  # proves the second call reads the memo instead of the file
    assert sources.content_digest(str(f)) == "0" * 64
    f.write_text("hello there")  # a write changes the mtime: hashed again
    assert sources.content_digest(str(f)) not in (first, "0" * 64)


def test_hub_spec_parsing():
    src = sources.resolve("wikitext:wikitext-103-raw-v1@validation")
    assert (src.path, src.config, src.split) == ("wikitext", "wikitext-103-raw-v1", "validation")
    assert sources.resolve("imdb").split == "train"


def test_unreachable_hub_dataset_is_a_clear_error():
    with pytest.raises(InputError, match="could not load hub dataset 'no-such-user/no-such-dataset'"):
        sources.resolve("no-such-user/no-such-dataset").load()


def test_hub_ids_and_local_paths_parse_one_way():
    assert sources.parse_hub("wikitext:wikitext-2-raw-v1@validation") == ("wikitext", "wikitext-2-raw-v1", "validation")
    assert sources.parse_hub("imdb") == ("imdb", None, None)
    assert sources.parse_hub("nyu-mll/multi_nli@train") == ("nyu-mll/multi_nli", None, "train")
    for local in ("./x", "/abs/file", "~/data", "corpus.txt", "data/*.jsonl", "dev.tsv"):
        assert sources.looks_local(local), local
    for hub in ("imdb", "glue:sst2", "nyu-mll/multi_nli@train"):
        assert not sources.looks_local(hub), hub
    src = sources.resolve("wikitext:wikitext-2-raw-v1@validation")
    assert (src.path, src.config, src.split) == ("wikitext", "wikitext-2-raw-v1", "validation")


def test_a_library_bug_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    """Only the errors bad input raises become one-line InputErrors; anything else keeps its traceback."""
    import datasets

    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"text": "x"}) + "\n")

    def bug(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'split'")

    monkeypatch.setattr(datasets, "load_dataset", bug)
    with pytest.raises(AttributeError):
        sources.resolve(str(f)).load()
    with pytest.raises(AttributeError):
        sources.load_hub("imdb")


def test_a_delimiter_line_ends_each_document_of_a_plain_text_file(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("Once upon a time.\n\nThe end.\n<|endoftext|>\nAnother story.\n  <|endoftext|>  \nLast one.\n")
    plain, delimited = sources.resolve(str(path)), sources.resolve(str(path), delimiter="<|endoftext|>")
    assert delimited.load()["text"] == ["Once upon a time.\n\nThe end.", "Another story.", "Last one."]
    assert len(plain.load()) == 2  # blank lines separate documents when no delimiter is given
    assert plain.identity() != delimited.identity()  # a cache built one way is never reused for the other
    streamed = [row["text"] for row in sources.resolve(str(path), streaming=True, delimiter="<|endoftext|>").load()]
    assert streamed == delimited.load()["text"]


@pytest.mark.parametrize("delimiter", ["", "  ", "a\nb"])
def test_a_delimiter_must_be_one_non_blank_line(tmp_path, delimiter):
    with pytest.raises(InputError, match="document_delimiter"):
        sources.resolve(str(tmp_path), delimiter=delimiter)


# -- the formats table: every reader takes a table suffix as the table says -----------------------------------------
ROWS = [{"text": "first document, with a comma", "label": "1"}, {"text": "second document", "label": "0"}]


def write_table(path, fmt: formats.Format) -> None:
    """`ROWS` in the layout `fmt` describes (one writer per kind of file: a new kind adds one here)."""
    if fmt.builder == "csv":
        sep = fmt.delimiter
        quote = (lambda v: f'"{v}"' if sep in v else v) if fmt.quoting else (lambda v: v)
        path.write_text(
            "".join(
                sep.join(quote(v) for v in row.values()) + "\n" for row in [dict(text="text", label="label"), *ROWS]
            )
        )
    elif fmt.builder == "json":
        path.write_text("\n".join(map(json.dumps, ROWS)) + "\n" if fmt.lines else json.dumps(ROWS))
    else:
        assert fmt.builder == "parquet", f"{path.suffix}: no writer for its kind in this test"
        pq.write_table(pa.Table.from_pylist(ROWS), path)


@pytest.mark.parametrize("suffix", formats.TABLES)
def test_every_table_format_reads_the_same_rows_everywhere(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    write_table(path, formats.FORMATS[suffix])
    texts = [row["text"] for row in ROWS]
    assert sources.resolve(str(path)).load()["text"] == texts  # the corpus
    assert [row["text"] for row in sources.resolve(str(path), streaming=True).load()] == texts  # streamed
    table = TableSource("file", str(path)).read(header=True)  # a fine-tuning split
    assert table.values("text") == texts and [str(v) for v in table.values("label")] == ["1", "0"]
    with pytest.raises(InputError, match="prompts are plain text"):
        prompts.read_prompts(str(path))
    assert sorted(sources.resolve(str(tmp_path)).load()["text"]) == sorted(texts)  # found in a directory
