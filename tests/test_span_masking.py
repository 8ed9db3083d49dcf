"""SpanBERT span masking: the masking budget, span lengths in words against the truncated geometric distribution,
80/10/10 per span, specials and padding never masked, determinism; the span-boundary objective on a hand-built
case; spanbert_tiny.yaml end to end (loss falls, the export loads without the SBO head)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ENGLISH, FAST, REPO, cli, only_run_dir
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForMaskedLM, BertConfig

from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import IGNORE_INDEX, DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives import MaskedLM
from lightning_pretrain.objectives.span_masking import (
    SpanBoundaryHead,
    span_boundaries,
    span_length_probs,
    span_mask_tokens,
)
from lightning_pretrain.objectives.word_boundaries import word_boundaries, word_index

TINY_BERT = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def texts():
    from pydoc_data.topics import topics  # the start of the builtin corpus (~100k tokens), without its stdlib scan

    return [topics[name] for name in sorted(topics)] + ENGLISH * 5


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tok(request, texts):
    return toks.TRAINERS[request.param](texts, 2000)


def padded_rows(tok, texts, rows=512, length=128, seed=0):
    """`[CLS]`-less packed text then `[SEP]`/eos and a random run of padding, as a padded batch would look."""
    ids = texts if isinstance(texts[0], int) else [i for t in texts for i in tok(t, add_special_tokens=False).input_ids]
    g = torch.Generator().manual_seed(seed)
    pads = torch.randint(0, 40, (rows,), generator=g).tolist()
    end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    out, at = [], 0
    for k in pads:
        n = length - 1 - k
        out.append(ids[at : at + n] + [end] + [tok.pad_token_id] * k)
        at += n
    return torch.tensor(out)


def spans_of(chosen):
    """[(row, first, last)] of the maximal runs of True."""
    runs = []
    for r, row in enumerate(chosen.tolist()):
        start = None
        for t, c in enumerate(row + [False]):
            if c and start is None:
                start = t
            elif not c and start is not None:
                runs.append((r, start, t - 1))
                start = None
    return runs


def corrupt(tok, batch, seed, **kw):
    specials = torch.tensor(sorted(set(tok.all_special_ids)))
    vocab = torch.arange(len(tok))
    words = word_index(batch, *word_boundaries(tok))
    inputs, labels = span_mask_tokens(
        batch,
        tok.mask_token_id,
        specials,
        vocab[~torch.isin(vocab, specials)],
        words,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )
    return words, specials, inputs, labels


def test_budget_span_lengths_and_80_10_10_per_span(tok, texts):
    lengths, kinds, masked, selectable = torch.zeros(10), torch.zeros(3), 0, 0
    ids = [i for t in texts for i in tok(t, add_special_tokens=False).input_ids]
    for seed in range(3):
        batch = padded_rows(tok, ids, seed=seed)
        words, specials, inputs, labels = corrupt(tok, batch, seed)
        chosen = labels != IGNORE_INDEX
        special = torch.isin(batch, specials)
        assert not (chosen & special).any()  # never a special token, never padding
        assert torch.equal(labels[chosen], batch[chosen]) and torch.equal(inputs[~chosen], batch[~chosen])
        masked, selectable = masked + chosen.sum().item(), selectable + (~special).sum().item()
        words, inputs, batch = words.tolist(), inputs.tolist(), batch.tolist()
        for r, a, b in spans_of(chosen):
            # whole words, with an unmasked token on either side inside the row (the SBO boundaries)
            assert 0 < a and b < len(batch[r]) - 1
            assert words[r][a - 1] != words[r][a] and words[r][b + 1] != words[r][b]
            lengths[words[r][b] - words[r][a]] += 1
            span_in, span_orig = inputs[r][a : b + 1], batch[r][a : b + 1]
            n_mask = span_in.count(tok.mask_token_id)
            assert n_mask in (0, len(span_in))  # one kind per span
            kinds[0 if n_mask else 1 if span_in == span_orig else 2] += 1
    assert abs(masked / selectable - 0.15) < 0.008, masked / selectable
    # span lengths in words follow Geometric(0.2) restricted to 1..10 (mean 3.8): chi-square, 9 dof, p = 0.001
    expected = span_length_probs(0.2, 10).float() * lengths.sum()
    assert lengths.sum() > 5000 and ((lengths - expected) ** 2 / expected).sum() < 27.9, lengths
    mask, kept, rand = (kinds / kinds.sum()).tolist()
    assert abs(mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015 and abs(rand - 0.1) < 0.015, kinds


def test_seeded_and_options(texts):
    tok = toks.TRAINERS["wordpiece"](texts[:200], 1000)
    batch = padded_rows(tok, texts, rows=16, length=64)
    a, b, c = (corrupt(tok, batch, s)[2:] for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[1], c[1])
    # max_span_words=1: every span is one word; a 30% budget is kept
    words, specials, _, labels = corrupt(tok, batch, 0, max_span_words=1, mlm_probability=0.3)
    assert all(words[r, a] == words[r, b] for r, a, b in spans_of(labels != IGNORE_INDEX))
    selectable = (~torch.isin(batch, specials)).sum().item()
    assert abs((labels != IGNORE_INDEX).sum().item() / selectable - 0.3) < 0.05


def test_span_boundaries_and_sbo_head_on_a_hand_built_case():
    labels = torch.full((2, 8), IGNORE_INDEX)
    labels[0, 2:5] = torch.tensor([11, 12, 13])  # one span of 3 in row 0: boundaries 1 and 5
    labels[1, 1] = 21  # one of 1 in row 1 (boundaries 0, 2) and one of 2 (boundaries 4, 7)
    labels[1, 5:7] = torch.tensor([22, 23])
    rows, left, right, offset = span_boundaries(labels)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1]
    assert left.tolist() == [1, 1, 1, 0, 4, 4] and right.tolist() == [5, 5, 5, 2, 7, 7]
    assert offset.tolist() == [0, 1, 2, 0, 0, 1]

    torch.manual_seed(0)
    head = SpanBoundaryHead(hidden_size=16, max_offset=8)
    hidden = torch.randn(2, 8, 16, requires_grad=True)
    out = head(hidden, labels)
    assert out.shape == (6, 16)
    # the 4th target (row 1, position 1): f(x_0, x_2, p_0), by hand
    x = torch.cat([hidden[1, 0], hidden[1, 2], head.position.weight[0]])
    lin1, _, ln1, lin2, _, ln2 = head.mlp
    by_hand = ln2(F.gelu(lin2(ln1(F.gelu(lin1(x))))))
    assert torch.allclose(out[3], by_hand, atol=1e-6)
    # only the boundary states feed SBO: no gradient reaches the masked positions themselves
    (out * torch.randn_like(out)).sum().backward()  # (a plain sum of LayerNorm outputs is constant)
    touched = hidden.grad.abs().sum(-1) > 0
    assert touched.nonzero().tolist() == [[0, 1], [0, 5], [1, 0], [1, 2], [1, 4], [1, 7]]


def test_masked_lm_sbo_loss_and_refusals(texts):
    tok = toks.TRAINERS["wordpiece"](texts[:200], 1000)
    module = MaskedLM(model=TINY_BERT, data=DataContract(tok), span_mask=True, sbo=True).eval()  # no dropout
    batch = padded_rows(tok, texts, rows=4, length=64)
    inputs, labels = module.corrupt(batch, 0, 0)
    assert (labels != IGNORE_INDEX).sum() > 0
    mlm, sbo = module.mlm_and_sbo_loss(inputs, labels)
    hidden = module.model.base_model(input_ids=inputs).last_hidden_state
    logits = module.model.get_output_embeddings()(module.sbo_head(hidden, labels))  # the MLM decoder, shared
    assert logits.shape == ((labels != IGNORE_INDEX).sum().item(), len(tok))
    assert torch.allclose(sbo, F.cross_entropy(logits, labels[labels != IGNORE_INDEX]))
    assert torch.allclose(mlm, module.model(input_ids=inputs, labels=labels).loss, atol=1e-5)
    assert not any("sbo" in k for k in module.model.state_dict())  # the head is not part of the HF model
    with pytest.raises(InputError, match="span_mask"):
        MaskedLM(model=TINY_BERT, data=DataContract(tok), sbo=True)
    with pytest.raises(InputError, match="span_p"):
        MaskedLM(model=TINY_BERT, data=DataContract(tok), span_mask=True, span_p=0.0)

    class OwnLoss(MaskedLM):  # like SentencePairMLM: a loss of its own would silently drop SBO
        def training_loss(self, batch, batch_idx):
            return super().training_loss(batch, batch_idx)

    with pytest.raises(InputError, match="sbo is implemented for MaskedLM"):
        OwnLoss(model=TINY_BERT, data=DataContract(tok), span_mask=True, sbo=True)


def test_spanbert_tiny_learns_and_exports(workdir, tiny_corpus):
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/spanbert_tiny.yaml"),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        "--data.seq_len",
        "64",
        "--data.batch_size",
        "8",
        "--trainer.max_steps",
        "16",
        "--trainer.val_check_interval",
        "8",
    )
    run_dir = only_run_dir(workdir, "spanbert_tiny")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 16 and math.isfinite(metrics["val/loss"])
    events = EventAccumulator(str(run_dir)).Reload()
    loss = [e.value for e in events.Scalars("train/loss")]
    sbo = [e.value for e in events.Scalars("train/sbo_loss")]
    assert len(loss) == 16 and sum(loss[-4:]) / 4 < loss[0] - 1.0, loss
    assert sum(sbo[-4:]) / 4 < sbo[0] - 0.5, sbo  # the SBO head trains (it is in the optimizer)
    hf = run_dir / "hf"
    with safe_open(hf / "model.safetensors", "pt") as f:
        assert not any("sbo" in k for k in f.keys())
    model, info = AutoModelForMaskedLM.from_pretrained(hf, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model(input_ids=torch.tensor([[2, 5, 6, 3]])).logits.shape == (1, 4, model.config.vocab_size)
