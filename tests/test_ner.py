"""Token classification (NER): IOB1 -> IOB2, CoNLL / JSON lines reading, first-sub-token alignment, entity scores
equal to seqeval's, a few-step fit in every fine-tuning mode, predict spans, the export in `pipeline(...)`, and bad
input through the CLI. A tiny BERT with a 30-word WordPiece vocabulary stands in for the backbone."""

import json
import logging
import random
from functools import partial

import lightning as L
import pytest
import torch
from conftest import REPO, cli, only_run_dir
from seqeval import metrics as seqeval
from seqeval.scheme import IOB2
from test_bad_input import expect_error
from transformers import AutoModelForTokenClassification, BertConfig, BertModel, BertTokenizer, pipeline

from lightning_pretrain.data.finetune.tag_files import read_columns, read_json, to_iob2
from lightning_pretrain.data.finetune.token_tags import TokenTagging
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import Frozen, GradualUnfreezing, LayerwiseLRDecay, LoRA, TopK
from lightning_pretrain.finetune.token_classifier import EntityScores, TokenClassifier

CONFIG = ["-c", str(REPO / "configs" / "finetune" / "conll2003.yaml")]
QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "mary",
    "john",
    "##son",
    "smith",
    "peter",
    "acme",
    "corp",
    "glob",
    "##ex",
    "paris",
    "bos",
    "##ton",
    "london",
    "visited",
    "works",
    "at",
    "in",
    "and",
    "met",
    ".",
]
PER, ORG, LOC = (
    [["Mary", "Johnson"], ["John", "Smith"], ["Peter"]],
    [["Acme", "Corp"], ["Globex"]],
    [["Paris"], ["Boston"], ["London"]],
)


def iob1(words: list[str], kind: str, touching: bool = False) -> list[tuple[str, str]]:
    """An entity's words with IOB1 tags (B- only when it touches the previous entity of its type)."""
    return [(w, f"{'B' if touching and i == 0 else 'I'}-{kind}") for i, w in enumerate(words)]


def sentences(n: int) -> list[list[tuple[str, str]]]:
    out = []
    for i in range(n):
        per, org, loc, loc2 = PER[i % 3], ORG[i % 2], LOC[i % 3], LOC[(i + 1) % 3]
        if i % 3 == 0:
            out.append(iob1(per, "PER") + [("visited", "O")] + iob1(loc, "LOC") + [(".", "O")])
        elif i % 3 == 1:
            out.append(
                iob1(per, "PER")
                + [("works", "O"), ("at", "O")]
                + iob1(org, "ORG")
                + [("in", "O")]
                + iob1(loc, "LOC")
                + [(".", "O")]
            )
        else:  # two touching locations: the second begins with B- in IOB1
            out.append(
                iob1(per, "PER") + [("visited", "O")] + iob1(loc, "LOC") + iob1(loc2, "LOC", True) + [(".", "O")]
            )
    return out


def conll_text(sents) -> str:
    """CoNLL-2003's layout: `word POS chunk NER`, a -DOCSTART- line, blank lines between sentences."""
    return "-DOCSTART- -X- -X- O\n\n" + "".join("".join(f"{w} NNP I-NP {t}\n" for w, t in s) + "\n" for s in sents)


@pytest.fixture(scope="session")
def tiny_ner_backbone(tmp_path_factory):
    """A 2-block BERT (hidden 32) and a WordPiece tokenizer of 25 tokens ('Johnson' -> john ##son)."""
    out = tmp_path_factory.mktemp("tiny_ner_bert")
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True).save_pretrained(out)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def conll_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("conll")
    (d / "eng.train").write_text(conll_text(sentences(48)))
    (d / "eng.testa").write_text(conll_text(sentences(12)))
    return d


# -- reading and IOB -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tags,expected,was_iob1",
    [
        (["I-PER", "I-PER", "O", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC"], True),
        (["I-LOC", "B-LOC", "I-LOC", "O"], ["B-LOC", "B-LOC", "I-LOC", "O"], True),  # two touching LOCs
        (["I-ORG", "I-PER", "O", "O", "I-MISC"], ["B-ORG", "B-PER", "O", "O", "B-MISC"], True),  # type change
        (["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"], False),  # IOB2 already
        (["O", "O"], ["O", "O"], False),
    ],
)
def test_iob1_to_iob2_by_hand(tags, expected, was_iob1):
    at = [f"line {i}" for i in range(len(tags))]
    assert to_iob2(tags, at, "iob1", "f") == (expected, was_iob1)
    assert to_iob2(tags, at, "auto", "f") == (expected, was_iob1)
    if was_iob1:
        with pytest.raises(InputError, match="not IOB2"):
            to_iob2(tags, at, "iob2", "f")
    else:
        assert to_iob2(tags, at, "iob2", "f") == (expected, False)


def test_column_and_json_readers(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- O O\n\nEU\tNNP I-ORG\nrejects  VBZ O\n\n\n-DOCSTART- -X- O O\nPeter NNP I-PER\n")
    rows = read_columns(str(path), -1, True)
    assert rows["words"] == [["EU", "rejects"], ["Peter"]] and rows["tags"] == [["I-ORG", "O"], ["I-PER"]]
    assert rows["at"] == [["line 3", "line 4"], ["line 8"]]
    assert read_columns(str(path), 1, True)["tags"] == [["NNP", "VBZ"], ["NNP"]]
    (tmp_path / "words.txt").write_text("EU\nrejects\n\nPeter\n")
    assert "tags" not in read_columns(str(tmp_path / "words.txt"), -1, True)  # one column: words only
    path = tmp_path / "a.jsonl"
    path.write_text('{"tokens": ["EU", "rejects"], "tags": [3, 0]}\n{"tokens": ["Peter"], "tags": ["B-PER"]}\n')
    rows = read_json(str(path), "tokens", "tags", True, ["O", "B-PER", "I-PER", "B-ORG"])
    assert rows["tags"] == [["B-ORG", "O"], ["B-PER"]] and "text" not in rows
    path.write_text('{"text": "EU  rejects it"}\n')
    rows = read_json(str(path), "tokens", "tags", False, None)
    assert rows["words"] == [["EU", "rejects", "it"]] and rows["spans"] == [[[0, 2], [4, 11], [12, 14]]]


def test_first_subtoken_alignment_and_truncation(tiny_ner_backbone, tmp_path, caplog):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps(
            {"tokens": ["Mary", "Johnson", "visited", "Boston", "."], "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]}
        )
        + "\n"
    )
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    dm = TokenTagging(
        train_file=str(path),
        val_file=str(path),
        tokenizer=str(tiny_ner_backbone),
        labels=labels,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    row = dm.splits["train"][0]
    assert dm.tokenizer.convert_ids_to_tokens(row["input_ids"]) == [
        "[CLS]",
        "mary",
        "john",
        "##son",
        "visited",
        "bos",
        "##ton",
        ".",
        "[SEP]",
    ]
    assert row["word_ids"] == [-1, 0, 1, 1, 2, 3, 3, 4, -1]
    assert row["labels"] == [-100, 1, 2, -100, 0, 3, -100, 0, -100]
    assert row["tags"] == [1, 2, 0, 3, 0]
    # 5 tokens: [CLS] mary john ##son [SEP]; 'visited', 'Boston' and '.' are cut, counted and warned about
    short = TokenTagging(
        train_file=str(path),
        val_file=str(path),
        tokenizer=str(tiny_ner_backbone),
        labels=labels,
        max_length=5,
        cache_dir=str(tmp_path / "cache"),
    )
    with caplog.at_level(logging.WARNING):
        short.setup("fit")
    assert short.splits["train"][0]["labels"] == [-100, 1, 2, -100, -100]
    assert "1 of 1 sentences are longer than max_length=5" in caplog.text and "3 words have no sub-token" in caplog.text
    batch = short.collate(False)([short.splits["val"][0]])
    positions = TokenClassifier.first_tokens(batch["word_ids"], [len(t) for t in batch["tags"]])
    assert positions == [[1, 2, None, None, None]]


def test_length_grouped_batches_pad_little_and_resume_exactly(tiny_ner_backbone, tmp_path):
    rng = random.Random(0)
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(
            json.dumps({"tokens": ["visited"] * (n := rng.randint(1, 40)), "tags": ["O"] * n}) + "\n"
            for _ in range(240)
        )
    )

    def padding(grouped: bool) -> tuple[float, list[int]]:
        dm = TokenTagging(
            train_file=str(path),
            val_file=str(path),
            tokenizer=str(tiny_ner_backbone),
            batch_size=8,
            group_by_length=grouped,
            labels=["O", "B-PER", "I-PER"],
            cache_dir=str(tmp_path / "cache"),
        )
        dm.setup("fit")
        batches = list(dm.train_dataloader())
        ids = sorted(i for b in batches for i in b["example_id"].tolist())
        return sum(b["input_ids"].numel() for b in batches) / sum(int(b["attention_mask"].sum()) for b in batches), ids

    (grouped, ids), (shuffled, _) = padding(True), padding(False)
    assert ids == list(range(240)) and grouped < 1.15 < 1.5 < shuffled
    dm = TokenTagging(
        train_file=str(path),
        val_file=str(path),
        tokenizer=str(tiny_ner_backbone),
        batch_size=8,
        group_by_length=True,
        labels=["O", "B-PER", "I-PER"],
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)  # as Lightning does every epoch
    it = iter(loader)
    [next(it) for _ in range(5)]
    state, rest = loader.state_dict(), [b["example_id"].tolist() for b in it]
    resumed = dm.train_dataloader()
    resumed.sampler.set_epoch(1)
    resumed.load_state_dict(state)  # a mid-epoch resume replays the epoch's order and skips what was seen
    assert [b["example_id"].tolist() for b in resumed] == rest and len(rest) == 25


# -- metrics ---------------------------------------------------------------------------------------------------------
def random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]) for _ in range(n)]


@pytest.mark.parametrize("strict", [False, True])
def test_entity_scores_equal_seqeval_on_random_tags(strict):
    rng = random.Random(0)
    golds = [random_tags(rng, rng.randint(1, 12)) for _ in range(300)]
    preds = [[t if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC"]) for t in g] for g in golds]
    metric = EntityScores(strict)
    for start in range(0, 300, 64):  # accumulated over batches
        metric.update(preds[start : start + 64], golds[start : start + 64])
    got = metric.compute()
    kw = {"mode": "strict", "scheme": IOB2} if strict else {}
    assert got["precision"].item() == pytest.approx(seqeval.precision_score(golds, preds, **kw), abs=1e-6)
    assert got["recall"].item() == pytest.approx(seqeval.recall_score(golds, preds, **kw), abs=1e-6)
    assert got["f1"].item() == pytest.approx(seqeval.f1_score(golds, preds, **kw), abs=1e-6)
    assert got["acc"].item() == pytest.approx(seqeval.accuracy_score(golds, preds), abs=1e-6)
    assert 0.2 < got["f1"].item() < 0.9  # a real mixture of hits and misses


# -- training, modes, predict, export --------------------------------------------------------------------------------
def test_cli_fit_predict_export_pipeline(workdir, tiny_ner_backbone, conll_dir):
    cli(
        "fit",
        *CONFIG,
        *QUIET,
        "--model.backbone",
        str(tiny_ner_backbone),
        "--data.source",
        str(conll_dir),
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "6",
        "--model.optimizer.init_args.lr",
        "0.01",
    )
    run = only_run_dir(workdir, "conll2003")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/loss", "val/acc", "val/precision", "val/recall", "val/f1"} <= set(metrics)
    assert metrics["val/f1"] > 0.9, metrics
    labels = json.loads((run / "labels.json").read_text())
    assert labels["task"] == "token_classification" and labels["id2label"]["1"] == "B-PER"

    hf = run / "hf"
    assert AutoModelForTokenClassification.from_pretrained(hf).config.id2label[5] == "B-LOC"
    texts = ["Mary Johnson  visited Boston .", "Peter works at Acme Corp in Paris London ."]
    (workdir / "pred.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cli(
        "predict",
        *CONFIG,
        "--model.backbone",
        str(hf),
        "--data.source",
        "null",
        "--data.predict_file",
        str(workdir / "pred.jsonl"),
        "--model.predictions_file",
        str(workdir / "out.jsonl"),
        "--trainer.enable_progress_bar",
        "false",
    )
    rows = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts and [r["id"] for r in rows] == [0, 1]
    for r in rows:
        for e in r["entities"]:
            assert r["text"][e["start"] : e["end"]] == e["text"] and 0 < e["score"] <= 1
    found = [[(e["type"], e["text"]) for e in r["entities"]] for r in rows]
    assert found == [
        [("PER", "Mary Johnson"), ("LOC", "Boston")],
        [("PER", "Peter"), ("ORG", "Acme Corp"), ("LOC", "Paris"), ("LOC", "London")],
    ]

    # the export in transformers' own pipeline: 'simple' groups sub-tokens by their own tags (only first sub-tokens
    # were trained, so a word may split); 'first' takes each word's tag from its first sub-token, as predict does,
    # and finds the same entities at the same character spans
    for text, r in zip(texts, rows):
        simple = pipeline("token-classification", model=str(hf), aggregation_strategy="simple", device="cpu")(text)
        assert simple and all(
            g["entity_group"] in {"PER", "ORG", "LOC"} and 0 <= g["start"] < g["end"] <= len(text) for g in simple
        )
        first = pipeline("token-classification", model=str(hf), aggregation_strategy="first", device="cpu")(text)
        assert [(g["entity_group"], g["start"], g["end"]) for g in first] == [
            (e["type"], e["start"], e["end"]) for e in r["entities"]
        ]

    # the export scores the validation split as the trained model did at the end of fit
    cli(
        "validate",
        *CONFIG,
        "--model.backbone",
        str(hf),
        "--data.source",
        str(conll_dir),
        "--trainer.enable_progress_bar",
        "false",
    )
    validated = json.loads((only_run_dir(workdir, "conll2003") / "validate_metrics.json").read_text())
    assert validated["val/f1"] == pytest.approx(metrics["val/f1"])
    assert validated["val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-4)


@pytest.mark.parametrize(
    "policy,trains",
    [
        (Frozen(), ("classifier.",)),
        (TopK(k=1), ("classifier.", "layer.1.")),
        (LayerwiseLRDecay(0.5), ("",)),
        (GradualUnfreezing(every_n_steps=2), ("classifier.", "layer.1.")),
        (LoRA(r=2, alpha=4, dropout=0.0), ("classifier.", "lora_")),
    ],
)
def test_every_fine_tuning_mode(tiny_ner_backbone, conll_dir, tmp_path, policy, trains):
    dm = TokenTagging(
        source=str(conll_dir), tokenizer=str(tiny_ner_backbone), batch_size=8, cache_dir=str(tmp_path / "cache")
    )
    model = TokenClassifier(
        backbone=str(tiny_ner_backbone),
        data=dm.contract,
        trainability=policy,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        warmup_steps=0,
        lr_schedule="constant",
    )
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(any(t in n for t in trains) for n in changed), sorted(changed)
    assert any("classifier." in n for n in changed)
    assert trainer.callback_metrics["val/f1"] >= 0
    export = AutoModelForTokenClassification.from_pretrained(model.export_hf(tmp_path / "hf"))
    assert export.config.id2label == dict(enumerate(dm.label_names))
    assert not any("lora" in n for n in export.state_dict())  # LoRA's adapters are merged into the export


# -- bad input -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,args,needles",
    [
        ("EU NNP I-NP I-ORG\nrejects VBZ I-VP\n", [], ["line 2", "3 columns where line 1 has 4"]),
        ("", [], ["holds no sentence"]),
        (
            "Mary NNP I-PER\nvisited VBD O\nParis NNP I-LOC\n",
            ["--data.labels", "[O,B-PER,I-PER]"],
            ["line 3", "'B-LOC'", "--data.labels"],
        ),
        ("Mary I-PER\nvisited O\n", ["--data.tag_column", "3"], ["line 1", "2 columns", "--data.tag_column 3"]),
        ('{"tokens": ["Mary"], "tags": ["B-PER"]}\n{"tokens": ["Mary"], "tags": [\n', [], ["line 2", "not valid JSON"]),
    ],
)
def test_bad_input_is_one_line(capsys, workdir, tiny_ner_backbone, content, args, needles):
    path = workdir / ("train.jsonl" if content.startswith("{") else "train.conll")
    path.write_text(content)
    expect_error(
        capsys,
        [
            "fit",
            *CONFIG,
            *QUIET,
            "--model.backbone",
            str(tiny_ner_backbone),
            "--data.source",
            "null",
            "--data.train_file",
            str(path),
            "--data.val_file",
            str(path),
            *args,
        ],
        str(path),
        *needles,
    )


@pytest.mark.parametrize(
    "content,kwargs,needles",
    [
        ("\n\n-DOCSTART- -X- O O\n\n", {}, ["holds no sentence"]),
        ("Mary NNP I-PER\nvisited VBD O\n", {"tag_column": 1}, ["line 1", "'NNP' is not O, B-TYPE or I-TYPE"]),
        ("Mary NNP I-PER\nvisited VBD O\n", {"scheme": "iob2"}, ["line 1", "not IOB2", "iob1"]),
        ("Mary NNP I-PER\nvisited VBD\n", {"tag_column": 2}, ["line 2", "2 columns where line 1 has 3"]),
        ('{"tokens": ["Mary", "visited"], "tags": ["B-PER"]}\n', {}, ["line 1", "1 tags for 2 words"]),
        ('{"tokens": ["Mary", ""], "tags": ["B-PER", "O"]}\n', {}, ["line 1", "tokens[1]", "not a word"]),
        ('{"tokens": ["Mary"], "tags": [7]}\n', {}, ["line 1", "the id 7", "--data.labels"]),
        ('{"tokens": ["Mary"], "tags": ["B-PER"]}\n{"tokens": ["Mary"]}\n', {}, ["line 2", "tag every sentence"]),
    ],
)
def test_bad_files_name_their_line(tiny_ner_backbone, tmp_path, content, kwargs, needles):
    path = tmp_path / ("train.jsonl" if content.startswith("{") else "train.conll")
    path.write_text(content)
    dm = TokenTagging(
        train_file=str(path),
        val_file=str(path),
        tokenizer=str(tiny_ner_backbone),
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )
    with pytest.raises(InputError) as e:
        dm.setup("fit")
    assert all(n in str(e.value) for n in [str(path), *needles]), str(e.value)


def test_real_conll2003_reads_as_published():
    from conftest import shared_file

    rows = read_columns(str(shared_file("conll2003/eng.testa")), -1, True)
    assert len(rows["words"]) == 3250 and sum(map(len, rows["words"])) == 51362
    converted = [to_iob2(t, a, "iob1", "eng.testa")[0] for t, a in zip(rows["tags"], rows["at"])]
    # CoNLL-2003's dev set has 5942 entities (1837 PER, 1341 ORG, 1837 LOC, 922 MISC)
    assert sum(t.startswith("B-") for s in converted for t in s) == 5942
