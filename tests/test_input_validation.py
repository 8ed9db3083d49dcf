"""One validation layer for tabular and JSON input (data/records.py, data/validate.py), shared by the
pretraining corpus and the fine-tuning tables: every refusal names the file and the line (or record, or row)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARED_DATA

from lightning_pretrain.data.finetune.labels import check_label_names, encode_labels, label_vocabulary, labelled
from lightning_pretrain.data.finetune.splits import Splits
from lightning_pretrain.data.sources import records, validate
from lightning_pretrain.data.sources import text as sources
from lightning_pretrain.data.sources.tables import Table, TableSource
from lightning_pretrain.errors import InputError


def write(path, content: str | bytes) -> str:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def read_table(path: str, header: bool) -> Table:
    """A local table as the fine-tuning splits read it."""
    return TableSource("file", os.path.abspath(path)).read(header)


def corpus(path: str, column: str = "text"):
    return sources.resolve(path, text_column=column).load()


def splits(tmp_path, train: str, **kwargs) -> Splits:
    return Splits(
        None,
        {
            "train": train,
            "val": kwargs.pop("val", train),
            "test": kwargs.pop("test", None),
            "predict": kwargs.pop("predict", None),
        },
        {},
        **kwargs,
    )


# -- rows and columns ----------------------------------------------------------------------------------------------
def test_ragged_rows_are_refused_by_corpus_and_fine_tuning_alike(tmp_path):
    rows = "".join(f"document {i},{i % 2}\n" for i in range(300))
    extra = write(tmp_path / "extra.csv", "text,label\n" + rows.replace("document 40,0", "document, forty,0"))
    short = write(tmp_path / "short.csv", "text,label\n" + rows.replace("document 7,1", "document 7"))
    for path, line, fields in ((extra, 42, "3 fields"), (short, 9, "1 field ")):
        message = f"{path} line {line}: {fields}"
        with pytest.raises(InputError, match=message):
            corpus(path)
        with pytest.raises(InputError, match=message):
            sources.resolve(path).identity()  # also when the blocks are cached already
        with pytest.raises(InputError, match=message):
            read_table(path, header=True)
        with pytest.raises(InputError, match=message):
            splits(tmp_path, path).identity("train")


def test_ragged_rows_of_headerless_and_quoted_files(tmp_path):
    cola = write(tmp_path / "cola.tsv", "gj04\t1\t\tFine.\nclc95\t0\t*\tAlso fine.\nx\t1\tA tab\tinside.\t\n")
    with pytest.raises(InputError, match=r"line 3: 5 fields where the first row \(line 1\) has 4 \(a text must not"):
        read_table(cola, header=False)
    quote = write(tmp_path / "q.csv", 'text,label\nok,1\n"never closed,0\nmore,1\n')
    with pytest.raises(InputError, match="q.csv line 3: a double quote opens a field that runs on to line 4"):
        read_table(quote, header=True)
    multiline = write(tmp_path / "m.csv", 'text,label\n"one\ndocument, two lines",1\nnext,0\n')
    columns, rows = records.records(multiline)
    assert [w for w, _ in rows] == ["line 2", "line 4"]  # the place where each row starts


def test_duplicate_and_blank_column_names(tmp_path):
    with pytest.raises(InputError, match="names column 'text' twice"):
        corpus(write(tmp_path / "d.csv", "text,label,text\na,1,b\n"))
    table = read_table(write(tmp_path / "blank.csv", "text,label,\na,1,\n"), header=True)
    assert table.columns == ["text", "label", "Unnamed: 2"]  # pandas' name for a blank header field
    with pytest.raises(InputError, match="appears 2 times"):
        pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), tmp_path / "d.parquet")
        corpus(str(tmp_path / "d.parquet"))


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    path = write(tmp_path / "bom.csv", "\ufefftext,label\nhello there,1\nbye now,0\n")
    assert corpus(path)["text"] == ["hello there", "bye now"]
    assert list(read_table(path, header=True).columns) == ["text", "label"]
    jsonl = write(tmp_path / "bom.jsonl", "\ufeff" + json.dumps({"text": "hi"}) + "\n")
    assert corpus(jsonl)["text"] == ["hi"]


def test_files_without_rows(tmp_path):
    for name, content, message in (
        ("h.csv", "text,label\n", "h.csv has a header \\(line 1\\) but no rows"),
        ("e.csv", "", "e.csv is empty"),
        ("e.jsonl", "\n\n", "e.jsonl is empty"),
        ("e.json", "[]", "e.json holds no records"),
    ):
        path = write(tmp_path / name, content)
        with pytest.raises(InputError, match=message):
            corpus(path)
        with pytest.raises(InputError, match=message):
            read_table(path, header=True)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(InputError, match="holds no rows"):
        corpus(str(tmp_path / "e.parquet"))
    with pytest.raises(InputError, match="holds no rows"):
        read_table(str(tmp_path / "e.parquet"), header=True)


def test_a_field_longer_than_the_csv_modules_default_limit(tmp_path):
    long = "word " * 60_000  # 300 KB: above the csv module's 128 KiB default field limit
    path = write(tmp_path / "long.csv", f'text,label\n"{long}",1\nshort,0\n')
    assert [len(t) for t in corpus(path)["text"]] == [len(long), 5]


def test_a_directory_of_csv_and_tsv_reads_each_with_its_delimiter(tmp_path):
    write(tmp_path / "a.csv", 'text,n\n"comma, inside",1\n')
    write(tmp_path / "b.tsv", "text\tn\ttab doc, with a comma\t2\n".replace("\ttab", "\ntab"))
    assert sorted(corpus(str(tmp_path))["text"]) == ["comma, inside", "tab doc, with a comma"]


# -- JSON ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,says",
    [
        (17, "the number 17"),
        (None, "missing or null"),
        (["a"], "a list"),
        ({"en": "a"}, "an object"),
        (True, "the boolean true"),
    ],
)
def test_a_text_that_is_not_a_string_is_refused_with_its_line(tmp_path, value, says):
    lines = [json.dumps({"text": f"line {i}\nnext", "label": i % 2}) for i in range(9)]
    lines[6] = json.dumps({"text": value, "label": 0})
    path = write(tmp_path / "t.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=f"t.jsonl line 7: the text column 'text' is {says}"):
        corpus(path)
    with pytest.raises(InputError, match=f"t.jsonl line 7: the text column 'text' is {says}"):
        splits(tmp_path, path).rows("train")


def test_malformed_json_names_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(InputError, match="bad.jsonl line 3: not valid JSON"):
        corpus(path)
    with pytest.raises(InputError, match="bad.jsonl line 2: a list, not a JSON object"):
        corpus(write(tmp_path / "bad.jsonl", '{"text": "a"}\n[1, 2]\n'))
    with pytest.raises(InputError, match="doc.json line 3 column 1: not valid JSON"):
        read_table(write(tmp_path / "doc.json", '[{"text": "a"},\n{"text": "b"}\n'), header=True)
    with pytest.raises(InputError, match="m.jsonl line 2: the record has no 'text' field"):
        corpus(write(tmp_path / "m.jsonl", '{"text": "a"}\n{"body": "b"}\n'))
    with pytest.raises(InputError, match="column 'text' not found .*available columns: body"):
        corpus(write(tmp_path / "n.jsonl", '{"body": "a"}\n{"body": "b"}\n'))


@pytest.mark.parametrize(
    "content",
    [
        [{"text": "a b"}, {"text": "c d"}],  # a list of records
        {"0": {"text": "a b"}, "1": {"text": "c d"}},  # an object of records (the MNLI subsets)
        {"data": [{"text": "a b"}, {"text": "c d"}], "version": 2},  # one list field
        "\n".join(json.dumps({"text": t}) for t in ("a b", "c d")),  # JSON Lines in a .json file
    ],
)
def test_corpus_and_fine_tuning_read_the_same_json_layouts(tmp_path, content):
    path = write(tmp_path / "d.json", content if isinstance(content, str) else json.dumps(content))
    assert corpus(path)["text"] == ["a b", "c d"]
    assert [row["text"] for row in sources.resolve(path, streaming=True).load()] == ["a b", "c d"]
    assert read_table(path, header=True).values("text") == ["a b", "c d"]


@pytest.mark.parametrize(
    "content,says",
    [
        ("42", "the top level is the number 42"),
        ('"text"', "the top level is the string"),
        ("[1, 2]", "record 0: the number 1, not an object"),
        ('{"a": [], "b": []}', "2 list fields"),
    ],
)
def test_json_documents_that_hold_no_records(tmp_path, content, says):
    path = write(tmp_path / "x.json", content)
    with pytest.raises(InputError, match=says):
        corpus(path)
    with pytest.raises(InputError, match=says):
        read_table(path, header=True)


# -- encodings -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "encoding,says",
    [
        (
            "utf-16",
            "is UTF-16 \\(it starts with a byte-order mark\\); convert it to UTF-8, e.g. `iconv -f utf-16 -t utf-8",
        ),
        ("utf-32", "is UTF-32 \\(it starts with a byte-order mark\\)"),
        ("utf-16-le", "looks like UTF-16LE text"),
        ("utf-16-be", "looks like UTF-16BE text"),
        ("utf-32-le", "looks like UTF-32LE text"),
    ],
)
def test_wide_encodings_are_named(tmp_path, encoding, says):
    for name in ("u.txt", "u.csv", "u.jsonl"):
        text = {
            "u.txt": "Hello there.\n\nSecond.\n",
            "u.csv": "text,label\nhello,1\n",
            "u.jsonl": '{"text": "hello"}\n',
        }[name]
        path = write(tmp_path / name, text.encode(encoding))
        with pytest.raises(InputError, match=says):
            corpus(path)
    with pytest.raises(InputError, match=says):
        read_table(path, header=True)


def test_binary_and_latin1_keep_their_messages(tmp_path):
    with pytest.raises(InputError, match="looks binary"):
        corpus(write(tmp_path / "b.txt", bytes(range(256)) * 64))
    with pytest.raises(InputError, match="not valid UTF-8"):
        corpus(write(tmp_path / "l.csv", "text\ncafé\n".encode("latin-1")))


# -- text columns --------------------------------------------------------------------------------------------------
def test_a_text_column_of_numbers_only_is_refused(tmp_path):
    path = write(tmp_path / "ids.csv", "id,text,label\n" + "".join(f"{i},{i * 3},{i % 2}\n" for i in range(50)))
    with pytest.raises(InputError, match="every value of the text column 'text' is a number \\(e.g. line 2: '0'\\)"):
        corpus(path)
    with pytest.raises(InputError, match="every value of the text column 'text' is a number"):
        splits(tmp_path, path).rows("train")
    mixed = write(tmp_path / "mixed.csv", "text,label\n1984,1\nA novel,0\n")  # some numbers among texts: fine
    assert corpus(mixed)["text"] == ["1984", "A novel"]


def test_parquet_text_columns(tmp_path):
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "i.parquet")
    with pytest.raises(InputError, match="i.parquet: the text column 'text' holds int64 values, not text"):
        corpus(str(tmp_path / "i.parquet"))
    pq.write_table(pa.table({"text": ["a", None, "c"], "label": [0, 1, 0]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match="n.parquet row 1: the text column 'text' is missing or null"):
        corpus(str(tmp_path / "n.parquet"))
    with pytest.raises(InputError, match="n.parquet row 1: the text column 'text' is missing or null"):
        splits(tmp_path, str(tmp_path / "n.parquet")).rows("train")
    pq.write_table(pa.table({"text": [5, 6], "label": [0, 1]}), tmp_path / "f.parquet")
    with pytest.raises(InputError, match="f.parquet row 0: the text column 'text' is the number 5"):
        splits(tmp_path, str(tmp_path / "f.parquet")).rows("train")


def test_blank_texts_are_dropped_by_the_corpus_and_refused_in_labelled_splits(tmp_path):
    path = write(tmp_path / "b.csv", "text,label\nfirst,pos\n,neg\nthird,pos\n")
    assert corpus(path)["text"][0] == "first"  # the corpus drops blank documents later (PretrainCorpus)
    with pytest.raises(InputError, match="b.csv line 3: the text column 'text' is empty"):
        splits(tmp_path, path).rows("train")
    assert splits(tmp_path, path, predict=path).rows("predict")["text"] == ["first", "", "third"]


def test_rows_keep_their_file_lines_through_the_holdout(tmp_path):
    lines = [f"text {i},{i % 2}" for i in range(40)]
    lines[30] = "text 30,nan"  # line 32 of the file
    path = write(tmp_path / "t.csv", "text,label\n" + "\n".join(lines) + "\n")
    held_out = splits(tmp_path, path, val=None, val_fraction=0.25)
    for split in ("train", "val"):
        rows = held_out.rows(split)
        assert all(w == f"line {int(t.split()[1]) + 2}" for t, w in zip(rows["text"], rows["where"]))
        if "line 32" in rows["where"]:
            targets = encode_labels(rows["label"], ["0", "1"], "classification", positions=rows["where"])
            with pytest.raises(InputError, match="t.csv line 32: no label \\('nan'\\)"):
                labelled(rows["label"], targets, "classification", False, "t.csv", rows["where"])


# -- labels --------------------------------------------------------------------------------------------------------
def test_missing_labels_are_no_class():
    for spelling in ("NaN", "nan", "", " ", float("nan"), None, "-1"):
        assert label_vocabulary(["a", spelling, "b"]) == ["a", "b"]
        targets = encode_labels(
            ["a", spelling], ["a", "b"], "classification", where="t.csv", positions=["line 2", "line 3"]
        )
        with pytest.raises(InputError, match="t.csv line 3: no label"):
            labelled(["a", spelling], targets, "classification", False, "t.csv", ["line 2", "line 3"])
    assert encode_labels(["nan", "-1"], ["nan", "-1"], "classification") == [0, 1]  # unless named as classes
    assert labelled([None, None], [-1, -1], "classification", optional=True) is False  # GLUE test files


def test_label_names_and_values():
    for names, says in (
        (["pos", "neg", "pos"], "names 'pos' twice"),
        (["pos"], "names 1 class"),
        (["pos", " "], "blank name"),
    ):
        with pytest.raises(InputError, match=says):
            check_label_names(names)
    check_label_names(None)
    with pytest.raises(InputError, match="every training label is 'pos'"):
        label_vocabulary(["pos", "pos ", "nan"])
    assert label_vocabulary(["pos ", "neg", "pos"]) == ["neg", "pos"]  # surrounding blanks are not a new class
    assert encode_labels(["1.0", 0.0], ["neg", "pos"], "classification") == [1, 0]  # a float id
    with pytest.raises(InputError, match="t.jsonl line 4: the label is a list"):
        encode_labels(["a", ["b"]], ["a", "b"], "classification", where="t.jsonl", positions=["line 3", "line 4"])
    with pytest.raises(InputError, match="line 3: regression target 'inf' is not finite"):
        encode_labels(["1.5", "inf"], None, "regression", positions=["line 2", "line 3"])
    with pytest.raises(InputError, match="regression target True is not a number"):
        encode_labels([True], None, "regression")


# -- remembered checks and real files ------------------------------------------------------------------------------
def test_a_checked_file_is_remembered_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_PRETRAIN_CACHE", str(tmp_path / "cache"))
    path = write(tmp_path / "c.csv", "text,label\nhello there,1\nbye now,0\n")
    sources.resolve(path).identity()
    assert len(list((tmp_path / "cache" / "validated").iterdir())) == 1
    monkeypatch.setattr(validate, "_passed", set())
    monkeypatch.setattr(validate, "records", lambda *a, **k: pytest.fail("a remembered file was read again"))
    sources.resolve(path).identity()
    monkeypatch.undo()
    monkeypatch.setenv("LIGHTNING_PRETRAIN_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "c.csv", "text,label\nhello there,1\nbye,now,0\n")  # new content: checked again
    with pytest.raises(InputError, match="line 3"):
        sources.resolve(path).identity()


def test_the_shared_data_files_pass(tmp_path):
    """GLUE (MRPC's BOM and bare quotes, CoLA without a header), SST-2, AG News, MNLI read as fine-tuning reads them."""
    if not SHARED_DATA.exists():
        pytest.skip(f"needs {SHARED_DATA}")
    # the classification tables only: the folder also holds task files of other shapes (MMLU's header-less 5-row
    # dev CSVs, SQuAD JSON, SuperGLUE JSONL), which their own readers check
    found = sorted(
        p
        for folder in ("glue", "sst2", "ag_news", "mnli")
        for p in (SHARED_DATA / folder).rglob("*")
        if p.suffix in (".tsv", ".csv", ".json", ".jsonl")
    )
    assert found
    for path in found:
        header = not ("CoLA" in path.parts or path.name.startswith("alps") or path.parent.name == "ag_news")
        columns, rows = records.records(str(path), header, quoting=path.suffix != ".tsv")
        assert sum(1 for _ in rows) > 10, path


def test_a_hub_text_column_must_be_declared_text(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_dict({"text": [1, 2], "body": ["a", "b"]})
    monkeypatch.setattr(sources, "load_hub", lambda *a, **k: ds)
    with pytest.raises(InputError, match="the text column 'text' of some/data holds Value\\(.*int64"):
        sources.resolve("some/data").load()
    assert sources.resolve("some/data", text_column="body").load()["text"] == ["a", "b"]


def test_a_column_name_with_blanks_is_shown_quoted(tmp_path):
    with pytest.raises(InputError, match="available columns: 'text ', label"):
        corpus(write(tmp_path / "s.csv", "text ,label\nhello,1\n"))
