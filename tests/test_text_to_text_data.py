"""TextToText: parallel text and tables -> batches whose labels are -100 exactly on padding, with the task prefix, one
end token per side, a cache that is reused, the contract, window_tokens, and bad input refused in one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import ENGLISH, shared_file
from tokenizers import processors

from lightning_pretrain.data import TextToText
from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.generative.text_to_text import PadPairs
from lightning_pretrain.errors import InputError

PREFIX = "translate English to German: "
GERMAN = [
    "Der schnelle braune Fuchs springt.",
    "Sprachmodelle lernen Text.",
    "Ein Block hat viele Dokumente.",
    "Wörter werden in Stücke geteilt.",
    "Lightning führt die Schleife aus.",
    "Der Verlust sollte fallen.",
]


def _tokenizer(tmp_path_factory, kind: str) -> str:
    """A tokenizer trained here: 't5' (unigram, template '$A </s>' like T5's), 'bart' (BPE, '<s> $A </s>'),
    'bert' (WordPiece, '[CLS] $A [SEP]', no EOS) or 'bare' (BPE without a template: the end token is appended)."""
    texts = [PREFIX] + ENGLISH + GERMAN
    family = {"t5": "unigram", "bart": "bpe", "bert": "wordpiece", "bare": "bpe"}[kind]
    tok = toks.TRAINERS[family](texts, 300 if family == "bpe" else 120)
    if kind in ("t5", "bart"):
        template = "$A </s>" if kind == "t5" else "<s> $A </s>"
        specials = [(t, tok.convert_tokens_to_ids(t)) for t in ("<s>", "</s>") if t in template]
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    path = tmp_path_factory.mktemp(f"tok_{kind}")
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def t5_tok(tmp_path_factory) -> str:
    return _tokenizer(tmp_path_factory, "t5")


def write_lines(path, lines) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture
def pairs(tmp_path) -> dict:
    """Parallel train.en/train.de (24 lines of varied lengths) and val.en/val.de."""
    en = [ENGLISH[i % 6][: 20 + 9 * i].strip() for i in range(24)]
    de = [GERMAN[i % 6][: 8 + (5 * i) % 30].strip() for i in range(24)]
    return {
        "train_file": write_lines(tmp_path / "train.en", en),
        "train_target_file": write_lines(tmp_path / "train.de", de),
        "val_file": write_lines(tmp_path / "val.en", en[:6]),
        "val_target_file": write_lines(tmp_path / "val.de", de[:6]),
        "cache_dir": str(tmp_path / "c"),
    }


def test_labels_are_minus_100_exactly_on_padding_and_inputs_padded_with_pad_id(t5_tok, pairs):
    dm = TextToText(tokenizer=t5_tok, batch_size=5, **pairs)
    dm.setup("fit")
    pad = dm.tokenizer.pad_token_id
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            split = dm.splits["train" if "window_tokens" in batch else "val"]
            for i, eid in enumerate(batch["example_id"].tolist()):
                row = split[eid]
                n, m = len(row["input_ids"]), len(row["labels"])
                assert batch["labels"][i, :m].tolist() == row["labels"]
                assert (batch["labels"][i, m:] == -100).all() and (batch["labels"][i, :m] != -100).all()
                assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
                assert (batch["input_ids"][i, n:] == pad).all()
                assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
            longest = max(len(split[e]["labels"]) for e in batch["example_id"].tolist())
            assert batch["labels"].shape[1] == longest  # padded to the batch's own longest target only


def test_collate_pads_labels_with_minus_100_only_where_there_is_no_token():
    batch = PadPairs(pad_id=7)(
        [
            {"input_ids": [5, 1], "labels": [4, 4, 1], "example_id": 0, "source": "a", "target": "b"},
            {"input_ids": [3, 3, 3, 1], "labels": [1], "example_id": 1, "source": "c", "target": "d"},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 1, 7, 7], [3, 3, 3, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[4, 4, 1], [1, -100, -100]]
    assert batch["example_id"].tolist() == [0, 1] and batch["source"] == ["a", "c"] and batch["target"] == ["b", "d"]


def test_prefix_is_tokenized_with_the_source_but_not_part_of_the_source_text(t5_tok, pairs):
    dm = TextToText(tokenizer=t5_tok, prefix=PREFIX, batch_size=4, **pairs)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    first_line = open(pairs["val_file"]).readline().rstrip("\n")
    assert batch["source"][0] == first_line
    decoded = dm.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert decoded.startswith(PREFIX.strip()) and decoded == PREFIX + first_line
    assert batch["target"][0] == open(pairs["val_target_file"]).readline().rstrip("\n")


@pytest.mark.parametrize("kind", ["t5", "bart", "bert", "bare"])
def test_sources_and_targets_end_with_exactly_one_end_token(tmp_path_factory, pairs, kind):
    dm = TextToText(tokenizer=_tokenizer(tmp_path_factory, kind), **pairs)
    dm.setup("fit")
    tok, end = dm.tokenizer, dm.end_id
    assert end == (tok.sep_token_id if kind == "bert" else tok.eos_token_id)
    for row in dm.splits["train"]:
        for ids in (row["input_ids"], row["labels"]):
            assert ids[-1] == end and ids[-2] != end and ids.count(end) == 1
        assert row["n_labels"] == len(row["labels"])
        text = tok.decode(row["labels"], skip_special_tokens=True)
        norm = tok.backend_tokenizer.normalizer  # (BERT's: lower case, no accents)
        target = norm.normalize_str(row["target"]) if norm else row["target"]
        assert text.replace(" ", "") == target.replace(" ", "")
    if kind == "bart":  # the template's <s> stays: BART's labels start with it
        assert dm.splits["train"][0]["labels"][0] == tok.bos_token_id


def test_targets_are_tokenized_in_the_tokenizers_target_mode(t5_tok, pairs):
    """Tokenizers with target-specific processing (mBART, Marian: `_switch_to_target_mode`) see targets as such."""
    dm = TextToText(tokenizer=t5_tok, **pairs)
    tok, mode, seen = dm.tokenizer, ["input"], []
    tok._switch_to_target_mode = lambda: mode.__setitem__(0, "target")
    tok._switch_to_input_mode = lambda: mode.__setitem__(0, "input")
    encode = tok._encode_plus

    def spy(text=None, **kwargs):
        seen.extend((mode[0], t) for t in (text if isinstance(text, list) else [text]))
        return encode(text=text, **kwargs)

    tok._encode_plus = spy
    dm.setup("fit")
    targets = {t for f in ("train_target_file", "val_target_file") for t in open(pairs[f]).read().split("\n") if t}
    sources = {t for f in ("train_file", "val_file") for t in open(pairs[f]).read().split("\n") if t}
    assert {t for m, t in seen if m == "target"} == targets and {t for m, t in seen if m == "input"} == sources
    assert mode == ["input"]


def test_truncation_keeps_the_end_token_and_is_counted(t5_tok, pairs, caplog):
    dm = TextToText(tokenizer=t5_tok, max_source_length=6, max_target_length=4, **pairs)
    with caplog.at_level(logging.INFO, logger="lightning_pretrain.data.generative.text_to_text"):
        dm.setup("fit")
    train = dm.splits["train"]
    assert max(map(len, train["input_ids"])) == 6 and max(map(len, train["labels"])) == 4
    assert all(ids[-1] == dm.end_id for ids in train["labels"])
    full = TextToText(tokenizer=t5_tok, **pairs)
    full.setup("fit")
    cut_src = sum(len(ids) > 6 for ids in full.splits["train"]["input_ids"])
    cut_tgt = sum(len(ids) > 4 for ids in full.splits["train"]["labels"])
    assert cut_src > 0 and cut_tgt > 0
    assert f"24 examples ({cut_src} sources cut to 6 tokens, {cut_tgt} targets to 4)" in caplog.text


def test_parallel_files_are_read_line_aligned(t5_tok, tmp_path):
    # '\r\n' endings, and a U+2028 and a lone '\r' inside lines: only '\n' separates examples
    en = [f"source {i}" + ("\u2028tail" if i == 3 else "\rx" if i == 5 else "") for i in range(12)]
    (tmp_path / "a.en").write_bytes("".join(f"{s}\r\n" for s in en).encode())
    write_lines(tmp_path / "a.de", [f"ziel {i}" for i in range(12)])
    dm = TextToText(
        tokenizer=t5_tok,
        train_file=str(tmp_path / "a.en"),
        train_target_file=str(tmp_path / "a.de"),
        val_fraction=0.25,
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("fit")
    rows = list(zip(dm.splits["train"]["source"], dm.splits["train"]["target"])) + list(
        zip(dm.splits["val"]["source"], dm.splits["val"]["target"])
    )
    assert len(dm.splits["val"]) == 3 and len(rows) == 12
    assert sorted(rows, key=lambda r: int(r[1].split()[1])) == list(zip(en, [f"ziel {i}" for i in range(12)]))


def test_parallel_files_of_different_lengths_are_refused(t5_tok, tmp_path):
    src = write_lines(tmp_path / "t.en", ["one", "two", "three"])
    tgt = write_lines(tmp_path / "t.de", ["eins", "zwei"])
    dm = TextToText(
        tokenizer=t5_tok,
        train_file=src,
        train_target_file=tgt,
        val_file=src,
        val_target_file=src,
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(InputError, match=r"t\.en has 3 lines, .*t\.de has 2"):
        dm.setup("fit")


def test_an_empty_line_is_refused_naming_file_and_line_unless_dropped(t5_tok, tmp_path):
    src = write_lines(tmp_path / "t.en", ["one", "two", "three", "four"])
    tgt = write_lines(tmp_path / "t.de", ["eins", "zwei", "  ", "vier"])
    kw = dict(
        tokenizer=t5_tok,
        train_file=src,
        train_target_file=tgt,
        val_file=src,
        val_target_file=src,
        cache_dir=str(tmp_path / "c"),
    )
    with pytest.raises(InputError, match=r"t\.de line 3: empty line.*drop_empty"):
        TextToText(**kw).setup("fit")
    dm = TextToText(drop_empty=True, **kw)
    dm.setup("fit")
    assert dm.splits["train"]["source"] == ["one", "two", "four"]


@pytest.mark.parametrize(
    "records, kwargs, message",
    [
        ([{"en": "hello", "de": "hallo"}], {}, r"column 'source' not found in .*; available: en, de"),
        (
            [{"source": "hello", "de": "hallo"}],
            {},
            r"column 'target' not found .*available: source, de .*target_column",
        ),
        (
            [{"source": "hello", "target": "hallo"}, {"source": "bye", "target": " "}],
            {},
            r"t\.jsonl line 2: .*'target' is empty",
        ),
        ([{"source": "hello", "target": 3}], {}, r"t\.jsonl line 1: .*'target' is the number 3, not text"),
        ([{"source": None, "target": "x"}], {}, r"'source' is missing or null"),
        ([{"source": "a", "target": "b"}], {"source_column": 2}, r"column 2 not found .*--data.source_column"),
    ],
)
def test_bad_tables_are_input_errors(t5_tok, tmp_path, records, kwargs, message):
    path = write_jsonl(tmp_path / "t.jsonl", records)
    dm = TextToText(tokenizer=t5_tok, train_file=path, val_file=path, cache_dir=str(tmp_path / "c"), **kwargs)
    with pytest.raises(InputError, match=message):
        dm.setup("fit")


def test_missing_files_plain_text_without_targets_and_no_training_data(t5_tok, tmp_path, pairs):
    src = pairs["train_file"]
    bad = [
        dict(train_file=str(tmp_path / "nope.jsonl"), val_file=src),
        dict(train_file=src, train_target_file=str(tmp_path / "nope.de"), val_file=src, val_target_file=src),
        dict(train_file=src, val_file=src, val_target_file=src),
        dict(val_file=src, val_target_file=src),
    ]
    messages = [
        "train_file: file not found",
        "train_target_file: file not found",
        r"train_file .*train\.en is plain text: give its targets line by line as --data.train_target_file",
        "no train data",
    ]
    for kw, message in zip(bad, messages):
        with pytest.raises(InputError, match=message):
            TextToText(tokenizer=t5_tok, cache_dir=str(tmp_path / "c"), **kw).setup("fit")
    with pytest.raises(InputError, match="val_target_file needs --data.val_file"):
        TextToText(tokenizer=t5_tok, train_file=src, val_target_file=src)
    with pytest.raises(InputError, match="is a table"):
        TextToText(tokenizer=t5_tok, train_file=str(tmp_path / "t.csv"), train_target_file=src)
    with pytest.raises(InputError, match="needs --data.tokenizer"):
        TextToText(train_file=src, train_target_file=src).setup("fit")


def test_tokenized_once_then_reused_from_the_cache(t5_tok, pairs, caplog):
    entries = Path(pairs["cache_dir"]) / "text_to_text"
    with caplog.at_level(logging.INFO, logger="lightning_pretrain.data.generative.text_to_text"):
        TextToText(tokenizer=t5_tok, **pairs).setup("fit")
        assert caplog.text.count("tokenized the") == 2
        built = {p: (p / "meta.json").stat().st_mtime_ns for p in entries.iterdir()}
        caplog.clear()
        TextToText(tokenizer=t5_tok, **pairs).setup("fit")
        assert "tokenized the" not in caplog.text
        assert {p: (p / "meta.json").stat().st_mtime_ns for p in entries.iterdir()} == built
        TextToText(tokenizer=t5_tok, prefix=PREFIX, **pairs).setup("fit")  # another setting: new entries
        assert caplog.text.count("tokenized the") == 2 and len(list(entries.iterdir())) == 4


def test_contract_names_the_longest_source_and_target(t5_tok, pairs):
    dm = TextToText(tokenizer=t5_tok, prefix=PREFIX, **pairs)
    with pytest.raises(RuntimeError, match="publish"):  # the facts take tokenizing: never as a property's side effect
        _ = dm.contract
    contract = dm.publish()
    assert dm.contract == contract
    dm.setup("fit")
    ids = list(dm.splits["train"]["input_ids"]) + list(dm.splits["val"]["input_ids"])
    labels = list(dm.splits["train"]["labels"]) + list(dm.splits["val"]["labels"])
    assert contract.task == "text_to_text" and contract.tokenizer is dm.tokenizer
    assert contract.max_length == max(map(len, ids)) and contract.max_target_length == max(map(len, labels))
    assert contract.longest == contract.max_length


def test_training_batches_carry_window_tokens(t5_tok, pairs):
    class Trainer:  # what the loader reads of a trainer
        accumulate_grad_batches, limit_train_batches, global_rank, world_size = 2, None, 0, 1
        val_check_interval, check_val_every_n_epoch, limit_val_batches = 1.0, 1, 1.0

    dm = TextToText(tokenizer=t5_tok, batch_size=5, **pairs)
    dm.trainer = Trainer()
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    tokens = [int((b["labels"] != -100).sum()) for b in batches]
    assert len(batches) == 5  # 24 training examples in batches of 5: windows of batches 0-1, 2-3, 4
    for j, b in enumerate(batches):
        window = tokens[j // 2 * 2 : j // 2 * 2 + 2]
        assert b["window_tokens"].ndim == 0 and int(b["window_tokens"]) == sum(window)
    assert "window_tokens" not in next(iter(dm.val_dataloader()))


def test_predict_from_lines_or_a_table_has_no_labels(t5_tok, tmp_path):
    lines = write_lines(tmp_path / "in.txt", ["first input", "", "second input"])
    table = write_jsonl(tmp_path / "in.jsonl", [{"source": "a table input"}])
    for path, expected in ((lines, ["first input", "second input"]), (table, ["a table input"])):
        dm = TextToText(tokenizer=t5_tok, predict_file=path, prefix=PREFIX, cache_dir=str(tmp_path / "c"))
        dm.setup("predict")
        batch = next(iter(dm.predict_dataloader()))
        assert batch["source"] == expected and "labels" not in batch and "target" not in batch
        assert batch["example_id"].tolist() == list(range(len(expected)))
        assert dm.publish().max_target_length == 128  # no targets: the option's bound
    unlabelled = write_jsonl(tmp_path / "test.jsonl", [{"source": "only a source"}])  # predict reads the test split
    dm = TextToText(tokenizer=t5_tok, test_file=unlabelled, cache_dir=str(tmp_path / "c"))
    assert dm.publish().max_length == len(dm.tokenizer("only a source").input_ids)
    dm.setup("predict")
    assert dm.splits["predict"]["source"] == ["only a source"]
    with pytest.raises(InputError, match=r"column 'target' not found in .*test\.jsonl"):
        dm.setup("test")
    blank = write_lines(tmp_path / "blank.txt", ["", "  "])
    with pytest.raises(InputError, match=r"blank\.txt holds no example"):
        TextToText(tokenizer=t5_tok, predict_file=blank, cache_dir=str(tmp_path / "c")).setup("predict")


def test_hub_style_dict_column_and_training_subset(t5_tok, tmp_path, monkeypatch):
    import datasets

    from lightning_pretrain.data.sources import tables

    rows = [{"en": f"sentence {i}", "de": f"satz {i}"} for i in range(40)]
    hub = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"translation": rows}),
            "validation": datasets.Dataset.from_dict({"translation": rows[:4]}),
        }
    )
    monkeypatch.setattr(tables, "hub_splits", lambda spec: hub)
    dm = TextToText(
        tokenizer=t5_tok,
        source="wmt16:de-en",
        source_column="translation.en",
        target_column="translation.de",
        max_train_examples=10,
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("fit")
    train = dm.splits["train"]
    assert len(train) == 10 and len(dm.splits["val"]) == 4
    assert all(s.replace("sentence", "satz") == t for s, t in zip(train["source"], train["target"]))


def test_multi30k_parallel_files(tmp_path_factory, tmp_path):
    en, de = shared_file("multi30k/train.en"), shared_file("multi30k/train.de")
    val_en, val_de = shared_file("multi30k/val.en"), shared_file("multi30k/val.de")
    head = en.read_text(encoding="utf-8").split("\n")[:300] + de.read_text(encoding="utf-8").split("\n")[:300]
    tok = toks.train_unigram(head + [PREFIX], 400)
    tok.save_pretrained(tmp_path / "tok")
    dm = TextToText(
        tokenizer=str(tmp_path / "tok"),
        train_file=str(en),
        train_target_file=str(de),
        val_file=str(val_en),
        val_target_file=str(val_de),
        prefix=PREFIX,
        max_train_examples=300,
        batch_size=16,
        cache_dir=str(tmp_path / "c"),
    )
    dm.setup("fit")
    assert len(dm.splits["train"]) == 300 and len(dm.splits["val"]) == 1014
    val = dm.splits["val"]
    assert val[0]["source"] == val_en.read_text(encoding="utf-8").split("\n")[0]
    assert val[1013]["target"] == val_de.read_text(encoding="utf-8").split("\n")[1013]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 16 and int(batch["window_tokens"]) == int((batch["labels"] != -100).sum())
