"""BART denoising: text infilling's statistics (one mask per span, exact budget, Poisson span lengths), exact
reconstruction of the original from (corrupted row, record), sentence permutation, determinism, the tokenizer's
mask token and template, and bart_tiny.yaml end to end (loss falls, the export generates, predict fills masks)."""

import json
import math
from collections import Counter

import pytest
import torch
from conftest import ENGLISH, FAST, REPO, cli, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from lightning_pretrain.data import tokenizers as toks
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.errors import InputError
from lightning_pretrain.objectives.denoising import Denoising, denoise, sentence_ends, with_mask_and_template

MASK, VOCAB = 3, 1000
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def restore(corrupted, record):
    """The original block from the corrupted row and its record alone: masks -> their spans, deletions put back,
    sentences moved back to where they came from."""
    masks, spans = set(record.masks), iter(record.spans)
    x = []
    for i, t in enumerate(corrupted.tolist()):
        x.extend(next(spans) if i in masks else [t])
    for pos, t in sorted(record.deleted):
        x.insert(pos, t)
    out, p = [None] * len(x), 0
    for s, e in record.sentences:
        out[s:e], p = x[p : p + e - s], p + e - s
    return out


def random_blocks(rows, length, seed, end_every=0):
    """Random ids above the specials; with `end_every`, id 10 (a sentence end) at random about that often."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(11, VOCAB, (rows, length), generator=g)
    if end_every:
        blocks[torch.rand(rows, length, generator=g) < 1 / end_every] = 10
    return blocks


ENDS = torch.zeros(VOCAB, dtype=torch.bool)
ENDS[10] = True


@pytest.mark.parametrize("ratio,lam", [(0.3, 3.0), (0.15, 3.5), (0.5, 1.0)])
def test_infilling_one_mask_per_span_exact_budget_poisson_lengths(ratio, lam):
    g = torch.Generator().manual_seed(0)
    lengths, zero_spans = [], 0
    short = [b[: int(torch.randint(2, 300, (1,), generator=g))] for b in random_blocks(200, 300, 2)]
    for block in [*random_blocks(40, 3000, 1), *short]:
        corrupted, rec = denoise(block, MASK, None, ratio, lam, generator=g)
        # one mask token per span, zero-length ones included, exactly where the record says
        assert (corrupted == MASK).nonzero().flatten().tolist() == rec.masks and len(rec.masks) == len(rec.spans)
        budget = round(len(block) * ratio)
        assert sum(map(len, rec.spans)) == budget and len(corrupted) == len(block) - budget + len(rec.spans)
        zero_spans += sum(not s for s in rec.spans)
        if len(block) == 3000:  # long blocks: ~1000/lam spans, so stopping at the budget hardly biases them
            lengths += [len(s) for s in rec.spans[:-1]]  # the last span of a row is cut to fit the budget
    assert zero_spans > 0  # Poisson(lam) draws 0 with probability exp(-lam): masks inserted
    hist, n = Counter(lengths), len(lengths)
    for k in range(9):  # each frequency within 4 standard errors of Poisson(lam)'s
        pmf = math.exp(-lam) * lam**k / math.factorial(k)
        assert abs(hist[k] / n - pmf) < 4 * math.sqrt(pmf * (1 - pmf) / n) + 1e-3, (k, hist[k] / n, pmf)
    assert abs(sum(lengths) / n - lam) < 4 * math.sqrt(lam / n)


def test_reconstruction_is_exact_with_permutation_infilling_and_deletion():
    deleted = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        length = int(torch.randint(5, 200, (1,), generator=g))
        block = random_blocks(1, length, seed, end_every=12)[0]
        delete = 0.1 * (seed % 2)
        corrupted, rec = denoise(block, MASK, ENDS, 0.3, 3.0, 1.0, delete_ratio=delete, generator=g)
        assert restore(corrupted, rec) == block.tolist()  # the target is the original block
        assert len(corrupted) <= length and (corrupted == MASK).sum() == len(rec.masks)
        assert len(corrupted) == length - sum(map(len, rec.spans)) + len(rec.spans) - len(rec.deleted)
        assert delete or not rec.deleted
        deleted += len(rec.deleted)
    assert deleted > 20  # ~10% of ~70% of ~2000 tokens in the deleting half


def test_sentence_permutation_moves_whole_sentences():
    moved = 0
    for seed in range(30):
        block = random_blocks(1, 120, seed, end_every=10)[0]
        corrupted, rec = denoise(block, MASK, ENDS, mask_ratio=0.0, generator=torch.Generator().manual_seed(seed))
        x = block.tolist()
        cuts = [i + 1 for i, t in enumerate(x[:-1]) if t == 10]
        sentences = list(zip([0, *cuts], [*cuts, len(x)]))
        assert sorted(rec.sentences) == sentences  # a permutation of the sentences, each intact
        assert corrupted.tolist() == [t for s, e in rec.sentences for t in x[s:e]]
        assert sorted(corrupted.tolist()) == sorted(x) and not rec.masks and not rec.deleted
        moved += rec.sentences != sentences
    assert moved >= 28  # ~12 sentences each: shuffled nearly always
    # permute_ratio 0.25: at most ceil(n / 4) sentences leave their place
    block = random_blocks(1, 200, 7, end_every=10)[0]
    _, rec = denoise(block, MASK, ENDS, 0.0, permute_ratio=0.25, generator=torch.Generator().manual_seed(0))
    n = len(rec.sentences)
    assert 0 < sum(a != b for a, b in zip(rec.sentences, sorted(rec.sentences))) <= math.ceil(n / 4)


def test_same_seed_same_corruption():
    block = random_blocks(1, 150, 3, end_every=10)[0]
    a = denoise(block, MASK, ENDS, delete_ratio=0.1, generator=torch.Generator().manual_seed(5))
    b = denoise(block, MASK, ENDS, delete_ratio=0.1, generator=torch.Generator().manual_seed(5))
    c = denoise(block, MASK, ENDS, delete_ratio=0.1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and not torch.equal(a[0], c[0])


@pytest.fixture(scope="module")
def bpe():
    return toks.train_bpe(ENGLISH * 20, 400)


def test_sentence_ends_and_mask_token_added_with_bart_template(bpe):
    ends = sentence_ends(bpe)
    marked = {bpe.convert_ids_to_tokens(i) for i in ends.nonzero().flatten().tolist()}
    assert {".", "</s>"} <= marked and not marked & {"<pad>", "<s>", "<mask>", "Ġthe"}
    tok = with_mask_and_template(bpe)  # has <mask> already: only the template is new
    assert tok is not bpe and len(tok) == len(bpe)
    assert bpe("a b").input_ids == bpe("a b", add_special_tokens=False).input_ids  # the data's stays as it was
    assert tok("a b").input_ids == [tok.bos_token_id, *bpe("a b").input_ids, tok.eos_token_id]
    assert with_mask_and_template(tok) is tok
    bare = PreTrainedTokenizerFast(
        tokenizer_object=bpe.backend_tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    assert bare.mask_token_id is None
    tok = with_mask_and_template(bare)
    assert bare.mask_token_id is None and tok.mask_token_id is not None and tok.mask_token_id in tok.all_special_ids
    assert tok("The <mask> fox").input_ids.count(tok.mask_token_id) == 1


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


def test_objective_batches_and_learns(bpe):
    torch.manual_seed(0)
    module = Denoising(model=TINY_BART, data=DataContract(bpe))
    assert isinstance(module.model, BartForConditionalGeneration)
    assert module.model.config.decoder_start_token_id == bpe.eos_token_id  # BART's decoder starts with </s>
    ids = [i for text in ENGLISH for i in bpe(text, add_special_tokens=False).input_ids]
    batch = torch.tensor(ids[: 4 * 60]).view(4, 60)
    inputs = module.corrupt(batch, 0, 0)
    labels, rows, mask = inputs["labels"], inputs["input_ids"], inputs["attention_mask"]
    assert labels.tolist() == [[bpe.bos_token_id, *b, bpe.eos_token_id] for b in batch.tolist()]
    lengths = mask.sum(1)
    assert rows.shape[1] == lengths.max() < 62 and (rows[:, 0] == bpe.bos_token_id).all()
    for row, n in zip(rows, lengths):  # <s> corrupted </s>, then padding the encoder does not attend to
        assert row[n - 1] == bpe.eos_token_id and (row[n:] == bpe.pad_token_id).all()
        assert (row == bpe.mask_token_id).any()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):  # one fixed corrupted batch: a working objective memorises it
        loss = module.model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    again, other = module.corrupt(batch, 0, 0), module.corrupt(batch, 0, 1)
    assert torch.equal(again["input_ids"], rows) and not torch.equal(other["input_ids"], rows)
    module.check_seq_len(62)
    with pytest.raises(InputError, match="65-token targets"):
        module.check_seq_len(63)
    with pytest.raises(InputError, match="mask_ratio"):
        Denoising(model=TINY_BART, data=DataContract(bpe), mask_ratio=1.0)


def test_pretrained_bart_whose_tokenizer_lacks_a_mask_gets_one(tmp_path):
    backend = Tokenizer(models.BPE())  # a byte-level BPE whose vocabulary has no <mask> at all
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    backend.train_from_iterator(
        ENGLISH * 20,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bare = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    config = BartConfig(
        **{
            **TINY_BART.to_dict(),
            "vocab_size": len(bare),
            "pad_token_id": bare.pad_token_id,
            "eos_token_id": bare.eos_token_id,
            "bos_token_id": bare.bos_token_id,
        }
    )
    BartForConditionalGeneration(config).save_pretrained(tmp_path)
    bare.save_pretrained(tmp_path)
    module = Denoising(model=str(tmp_path), data=DataContract(AutoTokenizer.from_pretrained(tmp_path)))
    assert module.tokenizer.mask_token_id is not None and module.model.training
    assert module.model.get_input_embeddings().num_embeddings == len(module.tokenizer) == len(bare) + 1
    batch = torch.tensor([bare(" ".join(ENGLISH), add_special_tokens=False).input_ids[:48]])
    assert module.model(**module.corrupt(batch, 0, 0)).loss.isfinite()


def test_bart_tiny_config_learns_exports_and_fills_masks(workdir, tiny_corpus):
    data = [
        "-c",
        str(REPO / "configs/pretrain/bart_tiny.yaml"),
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
        "--data.seq_len",
        "62",
        "--data.batch_size",
        "8",
    ]
    cli("fit", *data, *FAST, "--trainer.max_steps", "16", "--trainer.val_check_interval", "8")
    run_dir = only_run_dir(workdir, "bart_tiny")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 16 and math.isfinite(metrics["val/loss"])
    loss = [e.value for e in EventAccumulator(str(run_dir)).Reload().Scalars("train/loss")]
    assert len(loss) == 16 and sum(loss[-4:]) / 4 < loss[0] - 0.5, loss  # measured: 6.27 -> 5.2
    hf = run_dir / "hf"
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(hf), AutoTokenizer.from_pretrained(hf)
    assert isinstance(model, BartForConditionalGeneration) and model.config.vocab_size == len(tok)
    assert tok.mask_token == "<mask>" and model.generation_config.decoder_start_token_id == tok.eos_token_id
    prompt = tok("The quick brown <mask> over the lazy dog.", return_tensors="pt")
    assert prompt.input_ids[0, 0] == tok.bos_token_id and prompt.input_ids[0, -1] == tok.eos_token_id
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 9
    prompts = workdir / "prompts.txt"
    prompts.write_text("The quick brown <mask> over the lazy dog.\nLanguage models <mask>.\n")
    cli(
        "predict",
        *data,
        *QUIET,
        "--data.predict_file",
        str(prompts),
        "--model.model",
        str(hf),
        "--model.init_args.generation.max_new_tokens",
        "8",
    )
    predictions = only_run_dir(workdir, "bart_tiny") / "predictions.jsonl"  # predict's own, newer version_N
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and all(set(r) == {"id", "text", "filled"} for r in rows)
    expected = tok.decode(out[0], skip_special_tokens=True)
    assert rows[0]["filled"] == expected.strip()
