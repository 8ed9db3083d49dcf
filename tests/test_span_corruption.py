"""T5 span corruption: the noise mask's statistics against T5's own algorithm, fixed lengths, exact reconstruction,
sentinels, BART as well as T5, and the tiny config end to end with a seq2seq export."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import ENGLISH, FAST, REPO, cli, only_run_dir
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.sentinels import with_sentinels
from lightning_pretrain.objectives.span_corruption import (
    SpanCorruption,
    block_length_for,
    prefix_lm,
    random_spans_noise_mask,
    span_corrupt,
    span_lengths,
)

SETTINGS = [(0.15, 3.0), (0.3, 5.0), (0.5, 2.0)]


def t5_reference_mask(length, noise_density, mean_noise_span_length, rng):
    """T5's `random_spans_noise_mask` as HF's run_t5_mlm_flax.py writes it in numpy (the reference we match)."""
    num_noise_tokens = min(max(int(np.round(length * noise_density)), 1), length - 1)
    num_noise_spans = max(int(np.round(num_noise_tokens / mean_noise_span_length)), 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def _random_segmentation(num_items, num_segments):
        mask_indices = np.arange(num_items - 1) < (num_segments - 1)
        rng.shuffle(mask_indices)
        first_in_segment = np.pad(mask_indices, [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        _, segment_length = np.unique(segment_id, return_counts=True)
        return segment_length

    noise_span_lengths = _random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = _random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved = np.reshape(np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_noise_spans * 2])
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros((length,), dtype=np.int8)
    span_start_indicator[span_starts] = True
    span_num = np.cumsum(span_start_indicator)
    return np.equal(span_num % 2, 1)


def runs(row):
    """Lengths of the maximal True runs of a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_lengths_follow_t5_arithmetic():
    # HF's compute_input_and_target_lengths(512, 0.15, 3) = (568, 114): the published T5 numbers
    assert span_lengths(568) == (85, 28, 512, 114)
    assert block_length_for(512) == 568 and block_length_for(128) == 141 and span_lengths(141).inputs == 128
    for inputs in range(16, 600, 7):
        for density, mean in SETTINGS:
            raw = block_length_for(inputs, density, mean)
            assert span_lengths(raw, density, mean).inputs <= inputs < span_lengths(raw + 1, density, mean).inputs
    with pytest.raises(InputError, match="noise spans"):
        span_lengths(10, 0.9, 1.0)


@pytest.mark.parametrize("density,mean", SETTINGS)
def test_noise_mask_matches_t5_statistics(density, mean):
    length, rows = 256, 2000
    g = torch.Generator().manual_seed(0)
    ours = random_spans_noise_mask(rows, length, density, mean, generator=g).numpy()
    rng = np.random.default_rng(0)
    theirs = np.stack([t5_reference_mask(length, density, mean, rng) for _ in range(rows)])
    n = span_lengths(length, density, mean)
    # exact per row: the noise count and the number of spans, hence the mean span length
    assert (ours.sum(1) == n.noise).all() and all(len(runs(r)) == n.spans for r in ours)
    assert abs(ours.mean() - density) < 0.5 / length and abs(n.noise / n.spans - mean) < mean * 0.1
    assert not ours[:, 0].any() and ours[:, -1].all()  # T5's layout: kept first, noise last
    # the distribution of span lengths and of noise positions matches T5's algorithm
    ours_hist, theirs_hist = (
        Counter(np.concatenate([runs(r) for r in ours])),
        Counter(np.concatenate([runs(r) for r in theirs])),
    )
    total = rows * n.spans
    for k in range(1, 6):
        assert abs(ours_hist[k] - theirs_hist[k]) / total < 0.01, (k, ours_hist[k], theirs_hist[k])
    np.testing.assert_allclose(
        ours[:, 16:240].mean(0).reshape(-1, 32).mean(1), theirs[:, 16:240].mean(0).reshape(-1, 32).mean(1), atol=0.02
    )


def reconstruct(inputs, targets, sentinels):
    """Put each target span back in place of its sentinel in the input (drops the EOS of both)."""
    pieces, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            pieces[current] = []
        else:
            pieces[current].append(t)
    out = []
    for t in inputs[:-1]:
        out.extend(pieces[t] if t in sentinels else [t])
    return out


@pytest.mark.parametrize("density,mean", SETTINGS)
def test_fixed_lengths_exact_reconstruction_descending_sentinels(density, mean):
    vocab, eos = 1000, 1
    sentinel_ids = torch.arange(vocab + 99, vocab - 1, -1)  # <extra_id_0> = the last id, as in T5
    sentinels = set(sentinel_ids.tolist())
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        length = int(torch.randint(20, 300, (1,), generator=g))
        blocks = torch.randint(2, vocab, (8, length), generator=g)
        mask = random_spans_noise_mask(8, length, density, mean, generator=g)
        inputs, targets = span_corrupt(blocks, mask, sentinel_ids, eos)
        n = span_lengths(length, density, mean)
        assert inputs.shape == (8, n.inputs) and targets.shape == (8, n.targets)
        assert (inputs[:, -1] == eos).all() and (targets[:, -1] == eos).all()
        for b, i, t in zip(blocks.tolist(), inputs.tolist(), targets.tolist()):
            assert reconstruct(i, t, sentinels) == b
            in_sent = [x for x in i if x in sentinels]
            assert in_sent == [x for x in t if x in sentinels] == sentinel_ids[: n.spans].tolist()  # descending
            assert in_sent == sorted(in_sent, reverse=True)


@pytest.fixture(scope="module")
def unigram():
    return toks.train_unigram(ENGLISH * 40, 300)


def test_sentinels_added_descending_never_produced_by_text(unigram):
    before = unigram.get_vocab()
    tok, added = with_sentinels(unigram, 100)
    assert added == 100 and tok is not unigram and unigram.get_vocab() == before  # the data's tokenizer is untouched
    ids = tok.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(100)])
    assert ids == list(range(len(tok) - 1, len(unigram) - 1, -1))  # <extra_id_0> is the last id
    assert set(ids) <= set(tok.all_special_ids)
    corpus_ids = {i for text in ENGLISH for i in tok(text, add_special_tokens=False).input_ids}
    assert not corpus_ids & set(ids) and max(corpus_ids) < len(unigram)
    assert tok("hello").input_ids[-1] == tok.eos_token_id  # T5's template: prompts end with </s>
    # a tokenizer that already has them is used as it is
    assert with_sentinels(tok, 100) == (tok, 0)
    with pytest.raises(InputError, match="only some of the sentinels"):
        with_sentinels(tok, 150)


TINY_T5 = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, dropout_rate=0.0)
TINY_BART = BartConfig(
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_position_embeddings=64,
    dropout=0.0,
)


@pytest.mark.parametrize(
    "config,cls", [(TINY_T5, T5ForConditionalGeneration), (TINY_BART, BartForConditionalGeneration)]
)
def test_objective_learns_on_t5_and_bart(config, cls, unigram):
    torch.manual_seed(0)
    module = SpanCorruption(model=config, data=DataContract(unigram), num_sentinels=20)
    assert isinstance(module.model, cls) and module.model.config.vocab_size == len(unigram) + 20
    start = module.model.config.decoder_start_token_id
    assert start == (unigram.pad_token_id if cls is T5ForConditionalGeneration else unigram.eos_token_id)
    ids = [i for text in ENGLISH for i in unigram(text, add_special_tokens=False).input_ids]
    batch = torch.tensor(ids[: 4 * 60]).view(4, 60)
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    [(inputs, targets)] = module.corrupt(batch, 0, 0)
    losses = []
    for _ in range(30):  # one fixed corrupted batch: a working objective memorises it
        loss = module.model(input_ids=inputs, labels=targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    # the same (seed, epoch, batch) draws the same corruption; another batch index another one
    assert torch.equal(module.corrupt(batch, 0, 0)[0][0], inputs)
    assert not torch.equal(module.corrupt(batch, 0, 1)[0][0], inputs)
    with pytest.raises(InputError, match="50 noise spans but only 20 sentinels"):
        module.check_seq_len(1000)
    if cls is BartForConditionalGeneration:  # learned positions: the corrupted input must fit them
        with pytest.raises(InputError, match="91-token inputs, more than the model's 64 positions"):
            module.check_seq_len(100)


def test_pretrained_checkpoint_without_sentinels_gets_them_and_resized_embeddings(tmp_path):
    bpe = toks.train_bpe(ENGLISH * 20, 300)
    config = BartConfig(
        **{
            **TINY_BART.to_dict(),
            "vocab_size": len(bpe),
            "pad_token_id": bpe.pad_token_id,
            "eos_token_id": bpe.eos_token_id,
            "bos_token_id": bpe.bos_token_id,
        }
    )
    BartForConditionalGeneration(config).save_pretrained(tmp_path)
    bpe.save_pretrained(tmp_path)
    module = SpanCorruption(
        model=str(tmp_path), data=DataContract(AutoTokenizer.from_pretrained(tmp_path)), num_sentinels=10
    )
    assert module.model.get_input_embeddings().num_embeddings == len(bpe) + 10 == len(module.tokenizer)
    assert module.model.training  # from_pretrained's eval mode is undone
    batch = torch.tensor([bpe(" ".join(ENGLISH), add_special_tokens=False).input_ids[:48]])
    [(inputs, targets)] = module.corrupt(batch, 0, 0)
    assert module.model(input_ids=inputs, labels=targets).loss.isfinite()


def test_t5_tiny_config_trains_and_exports_a_seq2seq_model(workdir, tiny_corpus):
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/t5_tiny.yaml"),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        "--data.seq_len",
        "64",
    )
    run_dir = only_run_dir(workdir, "t5_tiny")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 4 and np.isfinite(metrics["val/loss"])
    hf = run_dir / "hf"
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(hf), AutoTokenizer.from_pretrained(hf)
    assert isinstance(model, T5ForConditionalGeneration) and model.config.vocab_size == len(tok)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == len(tok) - 1
    assert model.generation_config.decoder_start_token_id == tok.pad_token_id
    prompt = tok("The quick brown <extra_id_0> jumps.", return_tensors="pt")
    assert prompt.input_ids[0, -1] == tok.eos_token_id
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 6


def test_t5_base_recipe_is_t5_base_sized_and_its_optimizer_steps(unigram):
    import yaml

    from lightning_pretrain import optim

    recipe = yaml.safe_load((REPO / "configs/pretrain/t5_base.yaml").read_text())
    model_args = recipe["model"]["init_args"]
    with torch.device("meta"):  # count without allocating 900 MB
        model = T5ForConditionalGeneration(T5Config(**model_args["model"]["init_args"], vocab_size=32000 + 100))
    assert 222e6 < sum(p.numel() for p in model.parameters()) < 224e6  # google-t5/t5-base: 222.9M
    n = span_lengths(recipe["data"]["init_args"]["seq_len"])
    assert (n.inputs, n.targets) == (512, 114)  # T5's input and target lengths
    assert model_args["optimizer"]["class_path"] == "torch.optim.Adafactor"  # T5's optimizer, relative step
    tiny = SpanCorruption(model=TINY_T5, data=DataContract(unigram)).model
    opt = torch.optim.Adafactor(optim.decay_groups(tiny.named_parameters()), **model_args["optimizer"]["init_args"])
    ids = torch.randint(0, len(unigram), (2, 8))
    tiny(input_ids=ids, labels=ids).loss.backward()
    before = tiny.shared.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, tiny.shared.weight)


def test_prefix_lm_rows_are_a_block_start_then_its_continuation(unigram):
    blocks = torch.arange(10, 30).view(2, 10)
    inputs, targets = prefix_lm(blocks, 4, 99, 1)
    assert inputs.tolist() == [[10, 11, 12, 13, 99, 1], [20, 21, 22, 23, 99, 1]]
    assert targets.tolist() == [[99, 14, 15, 16, 17, 18, 19, 1], [99, 24, 25, 26, 27, 28, 29, 1]]

    torch.manual_seed(0)
    module = SpanCorruption(model=TINY_T5, data=DataContract(unigram), num_sentinels=20, prefix_lm_fraction=0.25)
    batch = torch.randint(5, len(unigram), (8, 60), generator=torch.Generator().manual_seed(0))
    (span_in, span_out), (pre_in, pre_out) = module.corrupt(batch, 0, 0)
    assert len(span_in) == 6 and len(pre_in) == 2  # the last quarter of the rows
    split = pre_in.shape[1] - 2
    assert 15 <= split <= 45 and pre_out.shape[1] == 60 - split + 2
    assert torch.equal(pre_in[:, :split], batch[6:, :split]) and torch.equal(pre_out[:, 1:-1], batch[6:, split:])
    assert set(pre_in[:, split].tolist()) == {int(module.sentinel_ids[0])}  # <extra_id_0>, as T5 writes one span
    loss, count = module.nll(batch, 0, 0)  # the token-weighted mean over both kinds of rows
    expected = sum(module.model(input_ids=i, labels=o).loss * o.numel() for i, o in module.corrupt(batch, 0, 0))
    assert count == span_out.numel() + pre_out.numel()
    torch.testing.assert_close(loss, expected / count)
    with pytest.raises(InputError, match="prefix_lm_fraction"):
        SpanCorruption(model=TINY_T5, data=DataContract(unigram), num_sentinels=20, prefix_lm_fraction=1.5)
