"""CausalSFT: packed rows never attend across examples (per-example losses equal the examples run alone),
completion-only loss normalised over the accumulated batch, generation from left-padded prompts, end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from lightning_pretrain.document_attention import document_mask
from lightning_pretrain.finetune.causal_sft import completion_nll, packed_inputs

VOCAB = 97


def tiny_config(kind: str):
    if kind == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )


def example(prompt: int, completion: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and unshifted labels of one example: -100 on the prompt (which includes the first token)."""
    ids = torch.randint(1, VOCAB, (prompt + completion,), generator=gen)
    labels = ids.clone()
    labels[:prompt] = -100
    return ids, labels


def pack(rows: list[list[tuple[torch.Tensor, torch.Tensor]]], length: int) -> dict:
    """Right-padded packed rows as SFTData makes them: positions restart at 0 per example, 0 on padding."""
    batch = {
        k: torch.zeros(len(rows), length, dtype=torch.long) for k in ("input_ids", "attention_mask", "position_ids")
    }
    batch["labels"] = torch.full((len(rows), length), -100)
    for r, row in enumerate(rows):
        start = 0
        for ids, labels in row:
            end = start + len(ids)
            batch["input_ids"][r, start:end], batch["labels"][r, start:end] = ids, labels
            batch["attention_mask"][r, start:end] = 1
            batch["position_ids"][r, start:end] = torch.arange(len(ids))
            start = end
    return batch


def test_block_causal_mask_is_causal_within_each_example_only():
    # one row: an example of 2 tokens, one of 3, one padding token
    position_ids = torch.tensor([[0, 1, 0, 1, 2, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    mask = document_mask(position_ids, attention_mask)
    assert mask.shape == (1, 1, 6, 6) and torch.equal(mask[0, 0], expected)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", "flash_attention_2"])
def test_packed_rows_give_each_example_its_own_loss(kind, attn):
    """Per-example summed completion NLL of packed rows == each example alone (1e-5): no attention crosses
    examples. 'flash_attention_2' is the position-ids-only path (no mask): on CPU transformers' sdpa builds the
    packed mask from the restarting positions, as varlen flash attention reads them on GPU."""
    torch.manual_seed(0)
    impl = "sdpa" if attn == "flash_attention_2" else attn
    model = AutoModelForCausalLM.from_config(tiny_config(kind), attn_implementation=impl).eval()
    gen = torch.Generator().manual_seed(1)
    rows = [[example(3, 4, gen), example(2, 6, gen), example(4, 2, gen)], [example(5, 5, gen), example(1, 3, gen)]]
    batch = pack(rows, 24)
    inputs = packed_inputs(batch, attn)
    assert ("attention_mask" in inputs) == (attn != "flash_attention_2")
    assert inputs["input_ids"].shape[0] == (1 if attn == "flash_attention_2" else 2)  # varlen reads one row
    with torch.no_grad():
        logits = model(**inputs).logits.reshape(*batch["input_ids"].shape, -1)  # (varlen: the rows were one)
        naive = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits  # 2D mask: attends across
    token_nll = {}
    for name, out in (("packed", logits), ("naive", naive)):
        token_nll[name] = F.cross_entropy(out[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none")
    total, worst_naive = 0, 0.0
    for r, row in enumerate(rows):
        start = 0
        for ids, labels in row:
            with torch.no_grad():
                alone, n = completion_nll(model(input_ids=ids[None]).logits, labels[None])
            span = slice(start, start + len(ids) - 1)  # shifted: token t's NLL sits at t - 1
            assert n == (labels != -100).sum()
            assert token_nll["packed"][r, span].sum().item() == pytest.approx(alone.item(), abs=1e-5)
            worst_naive = max(worst_naive, abs(token_nll["naive"][r, span].sum().item() - alone.item()))
            start, total = start + len(ids), total + 1
    assert total == 5 and worst_naive > 1e-2  # negative control: a padding-only mask lets examples attend across
    packed_sum, packed_n = completion_nll(logits, batch["labels"])
    assert packed_n == sum((labels != -100).sum() for row in rows for _, labels in row)
    assert packed_sum.item() == pytest.approx(token_nll["packed"].sum().item(), abs=1e-4)


# -- the Lightning module ------------------------------------------------------------------------------------------
WORDS = "the a film movie was is good bad great awful plot actors story fun dull review sentiment positive negative"


@pytest.fixture(scope="module")
def tokenizer():
    from lightning_pretrain.data.tokenizers import train_bpe

    words = WORDS.split()
    texts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)) for i in range(200)]
    return train_bpe(texts, 300)


def sft_module(tokenizer, kind: str = "gpt2", **kwargs):
    from lightning_pretrain.data.contract import DataContract
    from lightning_pretrain.finetune.causal_sft import CausalSFT

    torch.manual_seed(0)
    return CausalSFT(model=tiny_config(kind), data=DataContract(tokenizer, max_length=32, task="sft"), **kwargs)


def fit_one_step(module, data, accumulate: int) -> dict[str, torch.Tensor]:
    """The model's weights after one optimizer step on `data` (a list of batches, or a DataModule)."""
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(
        max_steps=1,
        accumulate_grad_batches=accumulate,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    if isinstance(data, list):
        trainer.fit(module, DataLoader(data, batch_size=None))
    else:
        trainer.fit(module, datamodule=data)
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def test_accumulated_loss_equals_the_loss_of_the_big_batch(tokenizer):
    """accumulate_grad_batches=4 at batch 2 takes the optimizer step of one batch of 8 (1e-6), with micro-batches
    holding very different numbers of completion tokens; averaging per-micro-batch means would not (checked)."""
    gen = torch.Generator().manual_seed(3)
    lengths = [(3, 1), (2, 9), (4, 2), (1, 12), (5, 1), (3, 3), (2, 14), (6, 2)]  # (prompt, completion)
    rows = [[example(p, c, gen)] for p, c in lengths]
    rows[1].append(example(2, 3, gen))  # a packed row too
    big = pack(rows, 24)  # token ids < VOCAB < len(tokenizer), the size of the model built for it
    micro = [{k: v[i : i + 2] for k, v in big.items()} for i in range(0, 8, 2)]
    n_tokens = int((big["labels"] != -100).sum())
    counts = [int((b["labels"] != -100).sum()) for b in micro]
    assert max(counts) > 2 * min(counts)

    sgd = lambda params: torch.optim.SGD(params, lr=1.0)  # noqa: E731
    options = {"optimizer": sgd, "lr_schedule": "constant", "warmup_steps": 0}
    before = {k: v.clone() for k, v in sft_module(tokenizer, **options).model.state_dict().items()}
    one = fit_one_step(sft_module(tokenizer, **options), [{**big, "window_tokens": torch.tensor(n_tokens)}], 1)
    four = fit_one_step(
        sft_module(tokenizer, **options), [{**b, "window_tokens": torch.tensor(n_tokens)} for b in micro], 4
    )
    naive = fit_one_step(sft_module(tokenizer, **options), micro, 4)  # no window_tokens: per-micro-batch means
    moved = max((one[k] - before[k]).abs().max().item() for k in one)
    assert moved > 1e-3
    diff = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)  # noqa: E731
    assert diff(one, four) < 1e-6
    assert diff(one, naive) > 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_generation_continues_left_padded_prompts_and_decodes_only_the_new_tokens(tokenizer, kind):
    """Greedy generation of a left-padded batch == a hand-written greedy loop over each prompt alone."""
    from lightning_pretrain.generation import Generation

    module = sft_module(tokenizer, kind, generation=Generation(max_new_tokens=6)).eval()
    prompts = ["the film was", "review the plot of a great movie : sentiment", "a dull"]
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    pad = tokenizer.pad_token_id
    batch = {
        "prompt_input_ids": torch.tensor([[pad] * (width - len(e)) + e for e in encoded]),
        "prompt_attention_mask": torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded]),
        "prompt": prompts,
        "completion": ["x"] * 3,
        "example_id": torch.arange(3),
    }
    assert len(set(map(len, encoded))) == 3
    expected = []
    with torch.no_grad():
        for e in encoded:
            ids, new = torch.tensor([e]), []
            for _ in range(6):
                token = module.model(input_ids=ids).logits[0, -1].argmax().item()
                if token == tokenizer.eos_token_id:
                    break
                new.append(token)
                ids = torch.cat([ids, torch.tensor([[token]])], 1)
            expected.append(tokenizer.decode(new, skip_special_tokens=True))
        generations = module.generate_batch(batch)
    assert generations == expected and any(generations)
    assert module.prediction_rows(batch, generations) == [
        {"id": i, "prompt": p, "generation": g} for i, (p, g) in enumerate(zip(prompts, generations))
    ]
    assert module.sources(batch) == prompts and module.references(batch) == ["x"] * 3


def test_an_encoder_decoder_is_refused(tokenizer):
    from transformers import T5Config

    from lightning_pretrain.data.contract import DataContract
    from lightning_pretrain.errors import InputError
    from lightning_pretrain.finetune.causal_sft import CausalSFT

    with pytest.raises(InputError, match="Seq2SeqFineTune"):
        CausalSFT(
            model=T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32),
            data=DataContract(tokenizer, max_length=32, task="sft"),
        )


def test_an_encoder_that_sees_later_tokens_is_refused(tokenizer):
    from transformers import BertConfig

    from lightning_pretrain.data.contract import DataContract
    from lightning_pretrain.errors import InputError
    from lightning_pretrain.finetune.causal_sft import CausalSFT

    bert = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(InputError, match="attends to later tokens"):  # BertLMHeadModel without is_decoder
        CausalSFT(model=BertConfig(**bert), data=DataContract(tokenizer, max_length=32, task="sft"))
    CausalSFT(model=BertConfig(is_decoder=True, **bert), data=DataContract(tokenizer, max_length=32, task="sft"))


# -- end to end through the CLI, with configs/finetune/sft_tiny.yaml ------------------------------------------------
WORDS_SENTIMENT = "the a film movie was is good bad great awful plot actors story fun dull".split()


@pytest.fixture
def sft_files(workdir):
    """A tiny 'pretrained' GPT-2 directory (its BPE tokenizer trained here) and prompt/completion files."""
    import json
    import random

    from transformers import GPT2LMHeadModel

    from lightning_pretrain.data.tokenizers import train_bpe

    rng = random.Random(0)

    def record() -> dict:
        text = " ".join(rng.choice(WORDS_SENTIMENT) for _ in range(rng.randint(3, 9)))
        return {"prompt": text, "completion": " positive" if {"good", "great"} & set(text.split()) else " negative"}

    tok = train_bpe([record()["prompt"] + " Review: Sentiment: positive negative" for _ in range(300)], 300)
    config = tiny_config("gpt2")
    config.update({"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id})
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(workdir / "base")
    tok.save_pretrained(workdir / "base")
    for name, n in (("train", 40), ("dev", 8)):
        (workdir / f"{name}.jsonl").write_text("".join(json.dumps(record()) + "\n" for _ in range(n)))
    (workdir / "reviews.txt").write_text("the film was good\nawful plot\nthe actors were fun\n")
    return workdir


def sft_cli(command: str, *args: str) -> None:
    from conftest import REPO, cli

    cli(
        command,
        "-c",
        str(REPO / "configs/finetune/sft_tiny.yaml"),
        "--data.max_length",
        "48",
        "--data.batch_size",
        "4",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *args,
    )


def test_sft_fit_export_generate_and_predict(sft_files):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft_cli(
        "fit",
        "--model.model",
        "base",
        "--data.tokenizer",
        "base",
        "--data.train_file",
        "train.jsonl",
        "--data.val_file",
        "dev.jsonl",
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "2",
        "--trainer.log_every_n_steps",
        "1",
    )
    run = sft_files / "logs/sft_tiny/version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/loss", "val/ppl", "val/exact_match"} <= set(metrics) and metrics["global_step"] == 4
    model, tok = AutoModelForCausalLM.from_pretrained(run / "hf"), AutoTokenizer.from_pretrained(run / "hf")
    prompt = tok("Review: the film was good\nSentiment:", return_tensors="pt")
    out = model.generate(**prompt, pad_token_id=tok.pad_token_id)
    assert out.shape[1] - prompt["input_ids"].shape[1] == 3  # the export carries generation.max_new_tokens

    sft_cli(
        "predict",
        "--model.model",
        str(run / "hf"),
        "--data.tokenizer",
        str(run / "hf"),
        "--data.train_file",
        "null",
        "--data.val_file",
        "null",
        "--data.predict_file",
        "reviews.txt",
    )
    rows = [json.loads(line) for line in (sft_files / "logs/sft_tiny/version_1/predictions.jsonl").open()]
    assert [r["id"] for r in rows] == [0, 1, 2] and all(set(r) == {"id", "prompt", "generation"} for r in rows)
    assert [r["prompt"].count("the film was good") for r in rows] == [1, 0, 0]


def test_sft_refuses_an_encoder_decoder_in_one_line(sft_files, capsys):
    from transformers import T5Config, T5ForConditionalGeneration

    T5ForConditionalGeneration(
        T5Config(vocab_size=320, d_model=16, num_layers=1, num_heads=2, d_ff=32, d_kv=8)
    ).save_pretrained(sft_files / "t5")
    with pytest.raises(SystemExit) as exit_info:
        sft_cli(
            "fit",
            "--model.model",
            "t5",
            "--data.tokenizer",
            "base",
            "--data.train_file",
            "train.jsonl",
            "--data.val_file",
            "dev.jsonl",
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("error: ") and "Seq2SeqFineTune" in err[-1]
    assert not (sft_files / "logs/sft_tiny/version_0").exists()


@pytest.mark.parametrize("pack", [False, True])
def test_accumulation_is_exact_through_sft_data(sft_files, pack):
    """The same with SFTData's own window_tokens: batch 2 x accumulate 4 == batch 8 after one SGD step."""
    from lightning_pretrain.data import SFTData
    from lightning_pretrain.finetune.causal_sft import CausalSFT

    def one_step(batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
        data = SFTData(
            train_file="train.jsonl",
            val_file="dev.jsonl",
            tokenizer="base",
            max_length=48,
            pack=pack,
            batch_size=batch_size,
        )
        torch.manual_seed(0)
        module = CausalSFT(
            model=tiny_config("gpt2"),
            data=data.publish(),
            lr_schedule="constant",
            warmup_steps=0,
            optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        )
        return fit_one_step(module, data, accumulate)

    big, accumulated = one_step(8, 1), one_step(2, 4)
    assert max((big[k] - accumulated[k]).abs().max().item() for k in big) < 1e-6
