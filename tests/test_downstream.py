"""TextClassification: label maps, pairs, header-less TSV, regression targets, dynamic padding, the cache."""

import json

import pytest
import torch
from conftest import minilm_dir, shared_file

from lightning_pretrain.data import TextClassification
from lightning_pretrain.data.finetune.labels import encode_labels, label_vocabulary
from lightning_pretrain.data.sources.tables import Table, TableSource
from lightning_pretrain.errors import InputError


def read_table(path: str, header: bool) -> Table:
    """A local table as the fine-tuning splits read it."""
    return TableSource("file", path).read(header)


def data(**kwargs) -> TextClassification:
    return TextClassification(tokenizer=str(minilm_dir()), **kwargs)


def write(path, text: str):
    path.write_text(text)
    return str(path)


def test_label_vocabulary_and_encoding():
    assert label_vocabulary(["b", "a", "b", ""]) == ["a", "b"]
    assert label_vocabulary(["10", "2", "1"]) == ["1", "2", "10"]  # numeric, not lexicographic
    names = ["World", "Sports", "Business", "Sci/Tech"]
    assert encode_labels(["Sports", "1", 4], names, "classification", offset=1) == [1, 0, 3]
    assert encode_labels(["0", "1"], ["negative", "positive"], "classification") == [0, 1]
    assert encode_labels(["4.75", 0], None, "regression") == [4.75, 0.0]
    assert encode_labels(["-1", None], ["a", "b"], "classification") == [-1, -1]  # unlabelled
    with pytest.raises(InputError, match="label 'x' is not one of"):
        encode_labels(["x"], ["a", "b"], "classification", where="train.tsv")
    with pytest.raises(InputError, match="not a number"):
        encode_labels(["high"], None, "regression")


def test_string_labels_map_to_ids_in_sorted_order(tmp_path):
    train = write(
        tmp_path / "train.jsonl",
        "".join(
            json.dumps({"text": f"t{i}", "label": lab}) + "\n" for i, lab in enumerate(["pos", "neg", "neutral", "pos"])
        ),
    )
    val = write(tmp_path / "val.jsonl", json.dumps({"text": "v", "label": "neutral"}) + "\n")
    dm = data(train_file=train, val_file=val, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert dm.label_names == ["neg", "neutral", "pos"] and dm.num_labels == 3
    assert dm.splits["train"]["labels"] == [2, 0, 1, 2] and dm.splits["val"]["labels"] == [1]


def test_explicit_labels_accept_names_and_ids(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\ngood,positive\nbad,0\nfine,1\n")
    dm = data(train_file=train, val_file=train, labels=["negative", "positive"], cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert dm.splits["train"]["labels"] == [1, 0, 1]


def test_pairs_carry_both_texts_and_segment_ids(tmp_path):
    rows = [
        {"text_a": "A man plays a guitar.", "text_b": "Someone makes music.", "label": "entailment"},
        {"text_a": "A dog sleeps.", "text_b": "The dog runs.", "label": "contradiction"},
    ]
    path = write(tmp_path / "mnli.json", json.dumps({str(i): r for i, r in enumerate(rows)}))  # MNLI subset layout
    dm = data(
        train_file=path, val_file=path, text_column="text_a", text_pair_column="text_b", cache_dir=str(tmp_path / "c")
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    tok = dm.tokenizer
    first = tok.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert first == "[CLS] a man plays a guitar. [SEP] someone makes music. [SEP]"
    assert batch["token_type_ids"][0].max() == 1 and batch["labels"].tolist() == [1, 0]


def test_headerless_tsv_by_column_index_without_quote_processing(tmp_path):
    # CoLA's layout: source, label, original label (blank), sentence; a bare quote must not swallow lines
    path = write(tmp_path / "train.tsv", 'gj04\t1\t\t"Quoted start, no end.\nclc95\t0\t*\tThe more you eat.\n')
    table = read_table(path, header=False)
    assert table.columns == ["0", "1", "2", "3"] and len(table.where) == 2
    dm = data(train_file=path, val_file=path, text_column=3, label_column=1, cache_dir=str(tmp_path / "c"))
    assert dm.header is False
    dm.setup("fit")
    assert dm.label_names == ["0", "1"] and dm.splits["val"]["labels"] == [1, 0]


def test_regression_targets_stay_floats(tmp_path):
    tsv = (
        "index\tsentence1\tsentence2\tscore\n0\tA plane takes off.\tAn air plane is taking off.\t5.000\n"
        "1\tA man plays.\tA cat sleeps.\t0.400\n"
    )
    path = write(tmp_path / "dev.tsv", tsv)
    dm = data(
        train_file=path,
        val_file=path,
        text_column="sentence1",
        text_pair_column="sentence2",
        label_column="score",
        task="regression",
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert dm.label_names is None and dm.num_labels == 1
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == pytest.approx([5.0, 0.4])


def test_batches_are_padded_to_their_longest_example_only(tmp_path):
    texts = ["short"] * 4 + ["a considerably longer sentence with many more words in it than the others"] * 4
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(texts)))
    dm = data(train_file=path, val_file=path, max_length=64, batch_size=4, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    first, second = list(dm.val_dataloader())
    assert first["input_ids"].shape == (4, 3)  # [CLS] short [SEP]
    assert 3 < second["input_ids"].shape[1] < 64


def test_truncation_to_max_length(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + " ".join(["word"] * 100) + ",1\nshort,0\n")
    dm = data(train_file=path, val_file=path, max_length=16, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert max(len(ids) for ids in dm.splits["train"]["input_ids"]) == 16


def test_tokenized_splits_are_cached_and_keyed_by_settings(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\nfine,1\nbad,0\n")
    cache = tmp_path / "c"
    data(train_file=path, val_file=path, cache_dir=str(cache)).setup("fit")
    entries = set((cache / "downstream").iterdir())
    data(train_file=path, val_file=path, cache_dir=str(cache)).setup("fit")
    assert set((cache / "downstream").iterdir()) == entries  # reused, also after tokenizing with truncation
    data(train_file=path, val_file=path, max_length=8, cache_dir=str(cache)).setup("fit")
    assert len(set((cache / "downstream").iterdir())) == len(entries) + 2


def test_holdout_and_training_subset(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(100)))
    dm = data(train_file=path, val_fraction=0.2, max_train_examples=30, cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert len(dm.splits["val"]) == 20 and len(dm.splits["train"]) == 30
    dm_full = data(train_file=path, val_fraction=0.2, cache_dir=str(tmp_path / "c"))
    dm_full.setup("fit")
    tok = dm.tokenizer
    val = {tok.decode(ids, skip_special_tokens=True) for ids in dm_full.splits["val"]["input_ids"]}
    train = {tok.decode(ids, skip_special_tokens=True) for ids in dm_full.splits["train"]["input_ids"]}
    assert len(train) == 80 and not val & train


def test_local_directory_finds_glue_split_files(tmp_path):
    (tmp_path / "RTE").mkdir()
    tsv = "index\tsentence1\tsentence2\tlabel\n0\tA is B.\tB is A.\tentailment\n1\tA.\tNot A.\tnot_entailment\n"
    write(tmp_path / "RTE" / "train.tsv", tsv)
    write(tmp_path / "RTE" / "dev.tsv", tsv)
    write(tmp_path / "RTE" / "test.tsv", "index\tsentence1\tsentence2\n0\tX.\tY.\n")
    dm = data(
        source=str(tmp_path / "RTE"),
        text_column="sentence1",
        text_pair_column="sentence2",
        labels=["entailment", "not_entailment"],
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("fit")
    assert dm.splits["val"]["labels"] == [0, 1]
    dm.setup("predict")  # the unlabelled test split is fine for predict...
    assert dm.splits["predict"]["text"] == ["X."]
    with pytest.raises(InputError, match="has no labels"):  # ...but not for test
        dm.setup("test")


def test_predict_file_of_lines(tmp_path):
    path = write(tmp_path / "texts.txt", "a great film\n\nan awful film\n")
    dm = data(predict_file=path, labels=["negative", "positive"], cache_dir=str(tmp_path / "c"))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["text"] == ["a great film", "an awful film"] and "labels" not in batch


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"text_column": "sentence"}, "column 'sentence' not found in .*available: text, label"),
        ({"label_column": "gold"}, "label column 'gold' not found"),
        ({"labels": ["x", "y"]}, "label '1' is not one of|label 'pos' is not one of"),
    ],
)
def test_bad_columns_and_labels_are_input_errors(tmp_path, kwargs, message):
    path = write(tmp_path / "t.csv", "text,label\nfine,pos\n")
    dm = data(train_file=path, val_file=path, cache_dir=str(tmp_path / "c"), **kwargs)
    with pytest.raises(InputError, match=message):
        dm.setup("fit")


def test_missing_file_and_no_data_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no data"):
        data()
    with pytest.raises(InputError, match="file not found"):
        data(train_file=str(tmp_path / "nope.tsv"), val_file=str(tmp_path / "nope.tsv")).setup("fit")


def test_real_glue_files(tmp_path):
    """The shared copies of SST-2, CoLA (header-less), MRPC (BOM, bare quotes) and STS-B read as documented."""
    sst2 = shared_file("sst2/dev.tsv")
    dm = data(
        val_file=str(sst2),
        train_file=str(sst2),
        text_column="sentence",
        labels=["negative", "positive"],
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("validate")
    assert len(dm.splits["val"]) == 872
    cola = read_table(str(shared_file("glue/CoLA/dev.tsv")), header=False)
    assert (len(cola.where), len(cola.columns)) == (1043, 4) and set(cola.values("1")) == {"0", "1"}
    mrpc = read_table(str(shared_file("glue/MRPC/dev.tsv")), header=True)
    assert (len(mrpc.where), len(mrpc.columns)) == (408, 5) and mrpc.columns[0] == "Quality"
    stsb = read_table(str(shared_file("glue/STS-B/dev.tsv")), header=True)
    assert (len(stsb.where), len(stsb.columns)) == (1500, 10) and float(stsb.values("score")[0]) == 5.0


def test_hub_dataset_splits_and_class_label_names(tmp_path, monkeypatch):
    """A hub dataset (stubbed: no network here): ClassLabel ids are matched by name, so --data.labels may order the
    classes differently; with no validation split the test split validates (IMDb, AG News)."""
    import datasets

    from lightning_pretrain.data.sources import tables

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    hub = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["good", "bad", "great"], "label": [1, 0, 1]}, features=features
            ),
            "test": datasets.Dataset.from_dict({"text": ["fine", "awful"], "label": [1, 0]}, features=features),
            "unsupervised": datasets.Dataset.from_dict({"text": ["meh"], "label": [-1]}, features=features),
        }
    )
    monkeypatch.setattr(tables, "hub_splits", lambda spec: hub)
    dm = data(source="imdb", labels=["pos", "neg"], cache_dir=str(tmp_path / "c"))
    assert dm.inputs.source_of("val").split == "test" and dm.inputs.source_of("train").split == "train"
    dm.setup("fit")
    assert dm.splits["train"]["labels"] == [0, 1, 0] and dm.splits["val"]["labels"] == [0, 1]
    with pytest.raises(InputError, match="has no split 'validation'"):
        data(source="imdb", val_split="validation").inputs.source_of("val")


def test_ag_news_csv_with_one_based_class_ids(tmp_path):
    """AG News's test.csv: no header, quoted fields with commas, classes 1-4."""
    path = write(
        tmp_path / "test.csv",
        '"3","Oil prices rise","Crude, again, climbs."\n"2","Cup final","A late goal, then penalties."\n',
    )
    dm = data(
        test_file=path,
        text_column=2,
        label_column=0,
        label_offset=1,
        labels=["World", "Sports", "Business", "Sci/Tech"],
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("test")
    assert dm.splits["test"]["labels"] == [2, 1]
    assert dm.tokenizer.decode(dm.splits["test"]["input_ids"][0], skip_special_tokens=True) == "crude, again, climbs."


def test_columns_by_position_also_with_a_header(tmp_path):
    """MRPC: a BOM, a header whose text columns start with '#' (a YAML comment on the command line), bare quotes."""
    tsv = (
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t11\t12\tHe said the pie business fits .\t" The pie business fits .\n'
        "0\t21\t22\tA man sleeps .\tA woman runs .\n"
    )
    path = write(tmp_path / "dev.tsv", tsv)
    dm = data(
        train_file=path,
        val_file=path,
        header=True,
        text_column=3,
        text_pair_column=4,
        label_column=0,
        labels=["not_equivalent", "equivalent"],
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("fit")
    assert dm.splits["val"]["labels"] == [1, 0]
    first = dm.tokenizer.decode(dm.splits["val"]["input_ids"][0], skip_special_tokens=True)
    assert first == 'he said the pie business fits. " the pie business fits.'


def test_hub_source_split_suffix_names_the_training_split(tmp_path, monkeypatch):
    """One `id[:config][@split]` syntax for pretraining and fine-tuning sources: `@split` is the training split."""
    import datasets

    from lightning_pretrain.data.sources import tables

    hub = datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({"text": [s, s + "!"], "label": [0, 1]})
            for s in ("train", "extra", "validation")
        }
    )
    asked = []
    monkeypatch.setattr(tables, "hub_splits", lambda spec: asked.append(spec) or hub)
    dm = data(source="some/dataset:cfg@extra", cache_dir=str(tmp_path / "c"))
    assert dm.inputs.source_of("train").describe() == "some/dataset:cfg@extra"
    assert dm.inputs.source_of("val").split == "validation" and set(asked) == {"some/dataset:cfg"}
    dm.setup("fit")
    assert dm.splits["train"]["labels"] == [0, 1]
    with pytest.raises(InputError, match="give one"):
        data(source="some/dataset@extra", train_split="train")


def test_files_are_identified_by_the_shared_remembered_digest(tmp_path):
    """Fine-tuning files are hashed like corpus files: once, then remembered under their stat key."""
    import os
    import time

    from lightning_pretrain.data import cache
    from lightning_pretrain.data.sources import text as sources

    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,1\nbad,0\n")
    old = time.time() - 60
    os.utime(path, (old, old))  # not "racy": old enough to be remembered
    dm = data(train_file=str(path), val_file=str(path), cache_dir=str(tmp_path / "c"))
    identity = dm.inputs.source_of("train").identity()
    assert identity == f"file:t.csv:{sources.content_digest(str(path))}"
    memo = cache.default_root() / "digests"
    assert any(f.read_text().strip() == identity.rsplit(":", 1)[1] for f in memo.iterdir())
