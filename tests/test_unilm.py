"""UniLM: the four attention masks by hand on 6 tokens, a real BERT (sdpa and eager) that honours them token by token,
the statistics of the kinds, splits and corruption, the per-kind validation losses, bad options, and a CLI run whose
export is a plain BertForMaskedLM (fill-mask works) and whose predict equals a greedy seq2seq loop on that export."""

import json

import pytest
import torch
from conftest import ENGLISH, FAST, REPO, cli, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    GPT2Config,
    pipeline,
)

from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.unilm import UniLM, draw_kinds, draw_source_lengths, mix_probabilities, unilm_corrupt
from lightning_pretrain.objectives.unilm_masks import (
    BIDIRECTIONAL,
    KINDS,
    LEFT_TO_RIGHT,
    RIGHT_TO_LEFT,
    SEQ2SEQ,
    attention_masks,
    segment_ids,
)

VOCAB, PAD, SEP, MASK = 120, 0, 2, 4
SPECIALS = torch.tensor([0, 1, 2, 3, 4])
REPLACEMENTS = torch.arange(5, VOCAB)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


class _Tok:
    """The facts UniLM reads from a tokenizer: [PAD] 0, [CLS] 1, [SEP] 2 (the document separator), [UNK] 3, [MASK] 4."""

    pad_token_id, cls_token_id, sep_token_id, mask_token_id = PAD, 1, SEP, MASK
    bos_token_id = eos_token_id = None
    all_special_ids = [0, 1, 2, 3, 4]

    def __len__(self):
        return VOCAB


def module(**kwargs) -> UniLM:
    torch.manual_seed(0)
    kwargs = {"model": BertConfig(**TINY), "data": DataContract(_Tok(), seq_len=64), **kwargs}
    return UniLM(**kwargs)


def test_the_four_masks_by_hand_on_six_tokens():
    kinds = torch.tensor([BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ])
    masks = attention_masks(kinds, torch.tensor([2, 2, 2, 2]), 6)  # source length 2: read by seq2seq only
    assert masks.shape == (4, 1, 6, 6) and masks.dtype == torch.bool
    expected = {
        BIDIRECTIONAL: [[1] * 6] * 6,
        LEFT_TO_RIGHT: [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
        ],
        RIGHT_TO_LEFT: [
            [1, 1, 1, 1, 1, 1],
            [0, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1],
            [0, 0, 0, 0, 0, 1],
        ],
        SEQ2SEQ: [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],  # the source sees the source only
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],  # the target: the source and itself up to here
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1],
        ],
    }
    for kind, matrix in expected.items():
        assert masks[kind, 0].int().tolist() == matrix, KINDS[kind]
    four = attention_masks(torch.tensor([SEQ2SEQ]), torch.tensor([4]), 6)[0, 0].int().tolist()
    assert four == [[1, 1, 1, 1, 0, 0]] * 4 + [[1, 1, 1, 1, 1, 0], [1] * 6]
    assert segment_ids(kinds, torch.tensor([2, 2, 2, 2]), 6).tolist() == [[0] * 6] * 3 + [[0, 0, 1, 1, 1, 1]]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_bert_honours_each_mask_token_by_token(implementation):
    """Changing token j changes the output at i exactly where i may see j (2 layers: what i sees through others too;
    every mask is closed under that, so the direct mask is the whole answer)."""
    m = module(attn_implementation=implementation).eval()
    assert m.model.config._attn_implementation == implementation
    kinds, sources, length = (
        torch.tensor([BIDIRECTIONAL, LEFT_TO_RIGHT, RIGHT_TO_LEFT, SEQ2SEQ]),
        torch.tensor([3, 3, 3, 3]),
        6,
    )
    ids = torch.randint(5, VOCAB, (4, length), generator=torch.Generator().manual_seed(0))
    allowed = attention_masks(kinds, sources, length)[:, 0]
    with torch.no_grad():
        base = m.model.cls(m.encode(ids, kinds, sources))
        for j in range(length):
            changed = ids.clone()
            changed[:, j] = 5 + (ids[:, j] - 5 + 7) % (VOCAB - 5)
            out = m.model.cls(m.encode(changed, kinds, sources))
            moved = (out - base).abs().amax(-1)  # [kinds, positions]
            assert torch.all(moved[~allowed[:, :, j]] == 0), (implementation, j, moved)
            assert torch.all(moved[allowed[:, :, j]] > 1e-4), (implementation, j, moved)
    other = module(attn_implementation="eager" if implementation == "sdpa" else "sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(other.model.cls(other.encode(ids, kinds, sources)), base, atol=1e-5, rtol=1e-5)


def test_kinds_splits_and_corruption_statistics():
    g = torch.Generator().manual_seed(0)
    rows, length = 6000, 64
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    ids[torch.rand(rows, length, generator=g) < 0.05] = SEP
    kinds = draw_kinds(
        rows, mix_probabilities({"bidirectional": 2, "seq2seq": 2, "left_to_right": 1, "right_to_left": 1}), g
    )
    share = torch.bincount(kinds, minlength=4).float() / rows
    torch.testing.assert_close(share, torch.tensor([1 / 3, 1 / 6, 1 / 6, 1 / 3]), atol=0.015, rtol=0)
    sources = draw_source_lengths(ids, SEP, generator=g)
    assert sources.min() == 1 and sources.max() == length - 1 and abs(sources.float().mean() - 32) < 0.7
    inputs, labels = unilm_corrupt(ids, kinds, sources, MASK, SPECIALS, REPLACEMENTS, SEP, 0.15, 0.8, 0.1, g)
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected]) and torch.equal(inputs[~selected], ids[~selected])

    position = torch.arange(length)[None, :]
    seq2seq, target = (kinds == SEQ2SEQ)[:, None], position >= sources[:, None]
    assert not selected[seq2seq & ~target].any()  # a seq2seq source is never corrupted
    assert not selected[~seq2seq & (ids == SEP)].any()  # separators are predicted in seq2seq targets only
    for where in (~seq2seq & (ids != SEP), seq2seq & target & (ids != SEP), seq2seq & target & (ids == SEP)):
        rate = selected[where.expand_as(ids)].float().mean()
        assert abs(rate - 0.15) < 0.01, rate
    masked = (inputs[selected] == MASK).float().mean()
    random = ((inputs[selected] != MASK) & (inputs[selected] != ids[selected])).float().mean()
    assert abs(masked - 0.8) < 0.01 and abs(random - 0.1 * (1 - 1 / (VOCAB - 5))) < 0.01

    at_documents = draw_source_lengths(ids, SEP, at_documents=True, generator=g)
    has = (ids[:, :-1] == SEP).any(1)
    assert torch.all(ids[has, at_documents[has] - 1] == SEP)  # the source ends with a separator
    assert at_documents.min() >= 1 and at_documents.max() <= length - 1

    two = draw_kinds(4000, mix_probabilities({"bidirectional": 1, "seq2seq": 3}), g)
    assert set(two.tolist()) == {BIDIRECTIONAL, SEQ2SEQ} and abs((two == SEQ2SEQ).float().mean() - 0.75) < 0.03


def test_training_draws_reproducibly_and_validation_scores_each_kind():
    m = module()
    batch = torch.randint(5, VOCAB, (12, 48), generator=torch.Generator().manual_seed(2))
    first, second = m.masked_nll(batch, 0, 3), m.masked_nll(batch, 0, 3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])  # a stream is reproducible
    assert not torch.equal(first[0], m.masked_nll(batch, 0, 4)[0])
    loss = m.training_loss(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and m.model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    with torch.no_grad():
        m.validation_update(batch, 0)
        each = {k: m.masked_nll(batch, -1, 0, kind=k) for k in range(len(KINDS))}
    assert all(torch.all(kinds == k) for k, (_, kinds) in each.items())  # every block under each kind
    # the same draws under each kind: the same masked positions, bar the seq2seq source (and its target's separators)
    assert len(each[BIDIRECTIONAL][0]) == len(each[LEFT_TO_RIGHT][0]) == len(each[RIGHT_TO_LEFT][0])
    assert 0 < len(each[SEQ2SEQ][0]) < len(each[BIDIRECTIONAL][0])
    for k, name in enumerate(KINDS):
        torch.testing.assert_close(m.kind_nll[name].compute(), each[k][0].mean())
    weights = {k: m.mix[k] * len(each[k][0]) for k in each}  # the paper's mix: 1/3, 1/6, 1/6, 1/3
    expected = sum(weights[k] * each[k][0].mean() for k in each) / sum(weights.values())
    torch.testing.assert_close(m.val_nll.compute(), expected)

    only = module(mix={"bidirectional": 1, "seq2seq": 1})
    with torch.no_grad():
        only.validation_update(batch, 0)
    assert [name for name, metric in only.kind_nll.items() if metric.update_count] == ["bidirectional", "seq2seq"]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(mix={"bidirectional": 1, "prefix": 1}), "mix takes weights"),
        (dict(mix={"bidirectional": 0}), "mix takes weights"),
        (dict(mix={"seq2seq": -1, "bidirectional": 2}), "mix takes weights"),
        (dict(mlm_probability=0.0), "mlm_probability"),
        (dict(model=GPT2Config(n_embd=32, n_layer=1, n_head=2)), "BERT-family"),
        (dict(model=DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)), "BERT-family"),
        (dict(attn_implementation="flex_attention"), "'sdpa' or 'eager'"),
    ],
)
def test_bad_options_are_input_errors(kwargs, needle):
    with pytest.raises(InputError, match=needle):
        module(**kwargs)


def test_documents_kept_apart_are_refused():
    m = module(data=DataContract(_Tok(), seq_len=64, cross_document_attention=False))
    with pytest.raises(InputError, match="does not keep packed documents apart"):
        m.setup("fit")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("unilm")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"{ENGLISH[i % len(ENGLISH)]} Paragraph number {i}." for i in range(400)))
    data = [
        "-c",
        str(REPO / "configs/pretrain/unilm_tiny.yaml"),
        "--data.source",
        str(corpus),
        "--data.vocab_size",
        "500",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli("fit", *data, *FAST)
        yield root, data, only_run_dir(root, "unilm_tiny")


def test_cli_logs_each_kind_and_exports_a_plain_bert(run):
    _, _, path = run
    tags = set(EventAccumulator(str(path)).Reload().Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/ppl", *(f"val/loss_{k}" for k in KINDS)} <= tags
    metrics = json.loads((path / "metrics.json").read_text())
    assert all(0 < metrics[f"val/loss_{k}"] < 10 for k in KINDS)
    model = AutoModelForMaskedLM.from_pretrained(path / "hf")
    assert type(model) is BertForMaskedLM
    fill = pipeline("fill-mask", model=str(path / "hf"), top_k=3)
    out = fill("the quick [MASK] fox.")
    assert len(out) == 3 and all(0 < r["score"] < 1 for r in out)


def greedy_seq2seq(model, tok, prompt: str, max_new: int) -> str:
    """An independent greedy loop on the export: the source [SEP] + prompt, then a [MASK] after it, the mask by hand."""
    source = [tok.sep_token_id, *tok(prompt, add_special_tokens=False).input_ids]
    banned = [i for i in tok.all_special_ids if i != tok.sep_token_id]
    target: list[int] = []
    while len(target) < max_new:
        ids = torch.tensor([source + target + [tok.mask_token_id]])
        n, s = ids.shape[1], len(source)
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        allowed[:s, :s] = True
        with torch.no_grad():
            logits = model(
                input_ids=ids,
                attention_mask=allowed[None, None],
                token_type_ids=torch.tensor([[0] * s + [1] * (n - s)]),
            ).logits[0, -1]
        logits[banned] = float("-inf")
        token = int(logits.argmax())
        if token == tok.sep_token_id:
            break
        target.append(token)
    return tok.decode(target, skip_special_tokens=True)


def test_predict_generates_what_a_greedy_loop_on_the_export_does(run, capsys):
    root, data, path = run
    prompts = ["The quick brown fox", "Language models learn the statistics of text by", "A"]
    (root / "prompts.txt").write_text("\n".join(prompts) + "\n")
    quiet = [
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.model",
        str(path / "hf"),
        "--data.predict_file",
        str(root / "prompts.txt"),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cli("predict", *data, *quiet, "--model.init_args.generation.max_new_tokens", "5")
        rows = [json.loads(line) for line in (only_run_dir(root, "unilm_tiny") / "predictions.jsonl").open()]
        with pytest.raises(SystemExit) as exit_info:
            cli("predict", *data, *quiet, "--model.init_args.generation.do_sample", "true")
    assert exit_info.value.code == 2 and "decodes greedily" in capsys.readouterr().err
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["prompt"] for r in rows] == prompts
    assert all(set(r) == {"id", "prompt", "generation"} for r in rows)
    model, tok = BertForMaskedLM.from_pretrained(path / "hf").eval(), AutoTokenizer.from_pretrained(path / "hf")
    for prompt, row in zip(prompts, rows):  # one at a time, unpadded: what the batched, padded rows must equal
        assert row["generation"] == greedy_seq2seq(model, tok, prompt, 5)
    assert any(r["generation"] for r in rows)
