"""NSP / SOP pairs: sentence and document boundaries, label balance, true continuations, negatives from elsewhere,
segment ids, lengths; the objective's loss against BertForPreTraining's; the tiny configs end to end."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import FAST, REPO, cli, minilm_dir, only_run_dir, shared_file
from transformers import (
    AlbertConfig,
    AlbertForPreTraining,
    AutoModelForPreTraining,
    AutoTokenizer,
    BertConfig,
    BertForPreTraining,
)

from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.data.pretrain.pair_drawing import TokenizedDocs, make_pairs, split_sentences, tokenize_documents
from lightning_pretrain.data.pretrain.sentence_pairs import PairDataset, SentencePairCorpus
from lightning_pretrain.data.sources.text import paragraphs
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.sentence_pairs import SentencePairMLM


def test_documents_and_sentences():
    text = ' = Title = \n \n First one. Second one!\n \n\n Dr. who said "Stop." Then 3 left. e.g. lower stays'
    docs = paragraphs(text)
    assert [d.strip() for d in docs] == [
        "= Title =",
        "First one. Second one!",
        'Dr. who said "Stop." Then 3 left. e.g. lower stays',
    ]
    for doc in docs:
        assert "".join(split_sentences(doc)) == doc  # nothing lost: whitespace opens the next sentence
    # an abbreviation before a lower-case word does not end a sentence; a closing quote stays with its sentence
    assert split_sentences(docs[2]) == [' Dr. who said "Stop."', " Then 3 left. e.g. lower stays"]
    # WikiText's tokenized punctuation: " . " ends a sentence, " @.@ " (a decimal point) does not
    assert len(split_sentences(" It is 0 @.@ 7 m long . It is blue .")) == 2


def synthetic_docs(seed=0, n_docs=300):
    """Token id = position in the corpus, so contiguity and document membership are checkable by arithmetic."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 3, 5, 8, 20]) for _ in range(n_docs)]
    lengths = [rng.randint(1, 40) for _ in range(sum(sizes))]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedDocs(np.arange(starts[-1]), starts, np.concatenate([[0], np.cumsum(sizes)]))


@pytest.mark.parametrize("task", ["nsp", "sop"])
@pytest.mark.parametrize("max_tokens", [29, 61, 125])
def test_pairs_are_balanced_true_and_fit(task, max_tokens):
    docs = synthetic_docs()
    doc_of_token = np.repeat(np.arange(docs.n_docs), np.diff(docs.sentence_starts[docs.doc_starts]))
    pairs = np.concatenate([make_pairs(docs, max_tokens, task, random.Random(s)) for s in range(8)])
    a0, a1, b0, b1, label = pairs.T
    assert len(pairs) > 2000 and abs(label.mean() - 0.5) < 0.03  # balanced
    assert ((a1 - a0) >= 1).all() and ((b1 - b0) >= 1).all() and ((a1 - a0) + (b1 - b0) <= max_tokens).all()
    # whole sentences: a cut segment would tell the order (SOP) or the origin (NSP) without reading the text
    cuts = docs.sentence_starts
    assert all(np.isin(x, cuts).all() for x in (a0, a1, b0))
    assert np.isin(b1, cuts).mean() > 0.98  # but a random B longer than the room left is cut
    same_doc = (doc_of_token[a0] == doc_of_token[a1 - 1]) & (doc_of_token[b0] == doc_of_token[b1 - 1])
    assert same_doc.all()  # each segment lies inside one document
    pos, neg = label == 0, label == 1
    assert (a1[pos] == b0[pos]).all() and (doc_of_token[a0[pos]] == doc_of_token[b0[pos]]).all()  # A then B, as written
    if task == "nsp":
        assert (doc_of_token[a0[neg]] != doc_of_token[b0[neg]]).all()  # B from another document
        # ... drawn where a true B could start: after the first sentence of a document of two sentences or more
        first_token = docs.sentence_starts[docs.doc_starts[:-1]]
        assert not np.isin(b0[neg], first_token).any()
        assert not np.isin(b0[pos], first_token).any()
    else:
        assert (b1[neg] == a0[neg]).all()  # the same two segments, swapped
    # deterministic given the seed
    assert np.array_equal(
        make_pairs(docs, max_tokens, task, random.Random(3)), make_pairs(docs, max_tokens, task, random.Random(3))
    )


def test_short_seq_prob_shortens_pairs():
    docs = synthetic_docs()

    def mean_length(prob):
        pairs = make_pairs(docs, 125, "sop", random.Random(0), short_seq_prob=prob)
        return ((pairs[:, 1] - pairs[:, 0]) + (pairs[:, 3] - pairs[:, 2])).mean()

    assert mean_length(1.0) < 0.8 * mean_length(0.0)


def test_pretrained_tokenizer_that_pads_in_its_json_tokenizes_sentences_unpadded():
    """all-MiniLM's tokenizer.json pads to 128 and truncates in the Rust tokenizer; sentences must come out bare."""
    tok = toks.load_pretrained(str(minilm_dir()))
    docs = tokenize_documents(tok, [["One short sentence. Another one here.\n\nA second document. With two."]])
    assert docs.n_docs == 2 and np.diff(docs.sentence_starts).max() < 10
    assert tok.pad_token_id not in docs.tokens.tolist()


def test_nsp_needs_two_documents():
    docs = synthetic_docs(n_docs=1)
    with pytest.raises(InputError, match="two documents"):
        make_pairs(docs, 60, "nsp", random.Random(0))


def test_dataset_rows_segment_ids_and_padding():
    tokens = np.arange(100, 200)
    pairs = np.array([[0, 3, 3, 5, 0], [10, 11, 50, 53, 1]])
    ds = PairDataset(tokens, pairs, seq_len=12, cls_id=2, sep_id=3, pad_id=0)
    first, second = ds.__getitems__([0, 1])
    assert first["input_ids"].tolist() == [2, 100, 101, 102, 3, 103, 104, 3, 0, 0, 0, 0]
    assert first["token_type_ids"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert first["attention_mask"].tolist() == [1] * 8 + [0] * 4
    assert second["input_ids"].tolist() == [2, 110, 3, 150, 151, 152, 3, 0, 0, 0, 0, 0]
    assert second["token_type_ids"].tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert (first["pair_label"].item(), second["pair_label"].item()) == (0, 1)
    assert ds[1]["input_ids"].tolist() == second["input_ids"].tolist()


def corpus(path, **kw):
    args = dict(
        source=str(path),
        tokenizer="wordpiece",
        vocab_size=300,
        seq_len=64,
        batch_size=4,
        cache_dir=str(path.parent / "cache"),
    )
    args.update(kw)
    dm = SentencePairCorpus(**args)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_pairs_are_cached_and_deterministic(tiny_corpus):
    dm = corpus(tiny_corpus, task="sop", dupe_factor=2)
    meta = json.loads((dm.cache_entry / "meta.json").read_text())
    assert meta["splits"]["train"]["n_pairs"] == len(dm.train_pairs) > 300
    stamp = (dm.cache_entry / "train.pairs.npy").stat().st_mtime_ns
    again = corpus(tiny_corpus, task="sop", dupe_factor=2)
    assert again.cache_entry == dm.cache_entry and (dm.cache_entry / "train.pairs.npy").stat().st_mtime_ns == stamp
    other = corpus(tiny_corpus, task="sop", dupe_factor=2, seed=7)
    assert other.cache_entry != dm.cache_entry
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 64) and set(batch) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "pair_label",
    }
    assert (batch["input_ids"][:, 0] == dm.tokenizer.cls_token_id).all()
    assert ((batch["input_ids"] == dm.tokenizer.sep_token_id).sum(1) == 2).all()


def test_pairs_from_wikitext_are_real_continuations(tmp_path):
    """On real text with an exact tokenizer (byte-level BPE): a positive decodes to a passage of the file."""
    raw = shared_file("wikitext2/wiki.valid.raw")
    text = raw.read_text(encoding="utf-8")
    tok = toks.train_bpe(paragraphs(text), 2000)
    docs = tokenize_documents(tok, [[text]])
    assert docs.n_docs > 1000  # paragraphs and headings, cut at WikiText's " \n" blank lines
    for task in ("nsp", "sop"):
        pairs = make_pairs(docs, 125, task, random.Random(0))
        assert abs(pairs[:, 4].mean() - 0.5) < 0.05
        for a0, a1, b0, b1, label in pairs[:200]:
            # a segment truncated inside a multi-byte character decodes with U+FFFD at that (outer) end
            a, b = (tok.decode(docs.tokens[s:e]).strip("\ufffd") for s, e in ((a0, a1), (b0, b1)))
            assert a in text and b in text
            if label == 0:
                assert a + b in text
            elif task == "sop":
                assert b + a in text and a + b not in text
            else:
                assert a + b not in text


class _Tok:
    mask_token_id, pad_token_id, cls_token_id, sep_token_id = 4, 0, 2, 3
    bos_token_id = eos_token_id = None
    all_special_ids = [0, 1, 2, 3, 4]

    def __len__(self):
        return 300


@pytest.mark.parametrize(
    "config,cls",
    [
        (
            BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            BertForPreTraining,
        ),
        (
            AlbertConfig(
                hidden_size=32,
                embedding_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                hidden_dropout_prob=0.0,
                classifier_dropout_prob=0.0,
            ),
            AlbertForPreTraining,
        ),
    ],
)
def test_losses_equal_hf_pretraining_loss(config, cls):
    module = SentencePairMLM(model=config, data=DataContract(_Tok(), task="nsp"))
    assert isinstance(module.model, cls)
    module.model.eval()
    docs = synthetic_docs()
    tokens = np.random.default_rng(0).integers(5, 300, len(docs.tokens))
    ds = PairDataset(tokens, make_pairs(docs, 29, "nsp", random.Random(0)), 32, cls_id=2, sep_id=3, pad_id=0)
    batch = {k: torch.stack([item[k] for item in ds.__getitems__(list(range(8)))]) for k in ds[0]}
    inputs, labels = module.corrupt(batch["input_ids"], 0, 0)
    mlm, pair, _ = module.losses(batch, inputs, labels)
    label_kw = "next_sentence_label" if cls is BertForPreTraining else "sentence_order_label"
    out = module.model(
        input_ids=inputs,
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        labels=labels,
        **{label_kw: batch["pair_label"]},
    )
    torch.testing.assert_close(mlm + pair, out.loss)
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()  # padding is never a prediction target


def test_architecture_without_pair_head_is_refused():
    from transformers import RobertaConfig

    with pytest.raises(InputError, match="sentence-pair heads"):
        SentencePairMLM(
            model=RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            data=DataContract(_Tok(), task="nsp"),
        )


@pytest.mark.parametrize("config,task", [("bert_nsp_tiny.yaml", "nsp"), ("bert_sop_tiny.yaml", "sop")])
def test_tiny_pair_configs_train_log_and_export(workdir, tiny_corpus, config, task):
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain" / config),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        "--data.seq_len",
        "64",
    )
    run_dir = only_run_dir(workdir, config.removesuffix(".yaml"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/loss", f"val/{task}_loss", f"val/{task}_acc"} <= set(metrics) and 0 <= metrics[f"val/{task}_acc"] <= 1
    hf = run_dir / "hf"
    model, tok = AutoModelForPreTraining.from_pretrained(hf), AutoTokenizer.from_pretrained(hf)
    assert isinstance(model, BertForPreTraining) and model.config.vocab_size == len(tok)
    enc = tok("the quick brown fox.", "it was not the first time.", return_tensors="pt")
    assert enc.token_type_ids.tolist()[0].count(1) > 0
    assert model(**enc).seq_relationship_logits.shape == (1, 2)


def test_help_and_print_config_show_every_option_with_its_documentation(capsys):
    """SentencePairCorpus takes only its own options and passes the rest to PretrainCorpus (**kwargs): `--help`
    still lists each inherited option with PretrainCorpus's documentation, and `--print_config` every value."""
    with pytest.raises(SystemExit) as exit_:
        cli("fit", "--data.help", "lightning_pretrain.data.SentencePairCorpus")
    assert exit_.value.code in (0, None)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for option, doc in [
        ("source", "'builtin' (CPython's documentation"),
        ("val_source", "validation text"),
        ("seq_len", "tokens per example"),
        ("batch_size", "examples (blocks or pairs) per batch"),
        ("vocab_size", "vocabulary size of a tokenizer"),
        ("seed", "seed of the held-out validation documents"),
        ("tokenizer", "it needs CLS, SEP and PAD tokens"),
        ("task", "'nsp' (BERT"),
        ("short_seq_prob", "random length below seq_len"),
        ("dupe_factor", "independent draws"),
    ]:
        assert f"--data.{option} " in text and doc in text, option

    with pytest.raises(SystemExit) as exit_:
        cli("fit", "-c", str(REPO / "configs/pretrain/bert_nsp_tiny.yaml"), "--print_config")
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    data = printed[printed.index("\ndata:") :]
    for line in (
        "class_path: lightning_pretrain.data.SentencePairCorpus",
        "source: builtin",
        "tokenizer: wordpiece",
        "vocab_size: 4096",
        "seq_len: 128",
        "batch_size: 16",
        "task: nsp",
        "dupe_factor: 3",
        "short_seq_prob: 0.1",
        "val_fraction: 0.1",
        "seed: 1234",
    ):
        assert line in data, line
