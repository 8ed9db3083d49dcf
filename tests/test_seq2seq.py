"""Seq2SeqFineTune: the loss of 4 accumulated batches of 2 equals one batch of 8 (window_tokens); layer depths and
modes on encoder-decoders and LMs; LoRA on T5 (adapters train, base frozen, export merged); a T5 built from a config;
warm-starting an EncoderDecoderModel; a T5 fine-tune through the CLI that exports, loads in transformers, generates
and predicts; a decoder-only model refused in one line."""

import io
import json
from contextlib import redirect_stderr
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import FAST, REPO, cli, only_run_dir
from lightning.pytorch.strategies import DDPStrategy
from peft import PeftModelForCausalLM, PeftModelForSeq2SeqLM, PeftModelForSequenceClassification
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from lightning_pretrain.architecture import layer_depths
from lightning_pretrain.data.contract import DataContract
from lightning_pretrain.data.tokenizers import train_unigram
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import LoRA, Seq2SeqFineTune, TopK
from lightning_pretrain.finetune.trainability import depth_groups
from lightning_pretrain.generation import Generation

EN = [
    "a man rides a bike",
    "two dogs play in the snow",
    "a woman reads a book on a bench",
    "children run",
    "a cat sleeps on a red chair in the sun",
    "people walk",
    "a boy jumps into the lake",
    "an old man sings a song",
]
DE = [
    "ein mann fährt fahrrad",
    "zwei hunde spielen im schnee",
    "eine frau liest ein buch auf einer bank",
    "kinder laufen",
    "eine katze schläft auf einem roten stuhl in der sonne",
    "leute gehen",
    "ein junge springt in den see",
    "ein alter mann singt ein lied",
]
PREFIX = "translate English to German: "


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A 2+2-block T5 (d_model 32, no dropout) with a Unigram tokenizer trained here, as an HF directory."""
    out = tmp_path_factory.mktemp("tiny_t5")
    tok = train_unigram((EN + DE + [PREFIX]) * 5, 160)
    tok.save_pretrained(out)
    torch.manual_seed(0)
    T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )
    ).save_pretrained(out)
    return out


def contract(t5_dir) -> DataContract:
    return DataContract(AutoTokenizer.from_pretrained(t5_dir), max_length=32, max_target_length=32, task="text_to_text")


def batch(tok, rows: list[int], window_tokens: int | None = None) -> dict:
    """TextToText's batch layout, built by hand: right-padded inputs, labels ending in EOS and -100 on padding."""

    def pad(seqs, value):
        return torch.tensor([s + [value] * (max(map(len, seqs)) - len(s)) for s in seqs])

    src = [tok(PREFIX + EN[i])["input_ids"] + [tok.eos_token_id] for i in rows]
    tgt = [tok(DE[i])["input_ids"] + [tok.eos_token_id] for i in rows]
    out = {
        "input_ids": pad(src, tok.pad_token_id),
        "attention_mask": pad([[1] * len(s) for s in src], 0),
        "labels": pad(tgt, -100),
        "example_id": torch.tensor(rows),
        "source": [EN[i] for i in rows],
        "target": [DE[i] for i in rows],
    }
    if window_tokens is not None:
        out["window_tokens"] = torch.tensor(window_tokens)
    return out


def n_labels(tok, rows: list[int]) -> int:
    return int((batch(tok, rows)["labels"] != -100).sum())


def finetune(t5_dir, **kwargs) -> Seq2SeqFineTune:
    kwargs = {"optimizer": partial(torch.optim.SGD, lr=1.0), "warmup_steps": 0, "lr_schedule": "constant", **kwargs}
    return Seq2SeqFineTune(model=str(t5_dir), data=contract(t5_dir), **kwargs)


def train(model, batches, tmp_path, steps=1, accumulate=1, **kwargs) -> None:
    L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        **kwargs,
    ).fit(model, train_dataloaders=DataLoader(batches, batch_size=None))


def test_accumulated_batches_give_the_loss_of_one_big_batch(t5_dir, tmp_path):
    """4 micro-batches of 2 (targets of 4 to 12 tokens: unequal token counts) make the same SGD step as one batch
    of 8, through window_tokens; without it (each micro-batch its own mean) the step differs, so the test can fail."""
    tok = AutoTokenizer.from_pretrained(t5_dir)
    rows = [[0, 1], [2, 3], [4, 5], [6, 7]]
    total = n_labels(tok, list(range(8)))
    assert len({n_labels(tok, r) for r in rows}) > 1
    weights = {}
    for name, batches, k in [
        ("big", [batch(tok, list(range(8)), total)], 1),
        ("accumulated", [batch(tok, r, total) for r in rows], 4),
        ("mean of means", [batch(tok, r) for r in rows], 4),
    ]:
        model = finetune(t5_dir)
        train(model, batches, tmp_path, accumulate=k)
        weights[name] = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    initial = dict(AutoModelForSeq2SeqLM.from_pretrained(t5_dir).named_parameters())
    assert all(not torch.equal(weights["big"][n], initial[n]) for n in initial)
    for n in initial:
        torch.testing.assert_close(weights["accumulated"][n], weights["big"][n], rtol=1e-5, atol=1e-6)
    assert any(
        not torch.allclose(weights["mean of means"][n], weights["big"][n], rtol=1e-4, atol=1e-5) for n in initial
    )


class RankBatches(torch.utils.data.Dataset):
    """Under DDP, rank r reads its own list of batches (no distributed sampler: the test chooses the shards)."""

    def __init__(self, per_rank: list[list[dict]]):
        self.per_rank = per_rank

    def __len__(self) -> int:
        return len(self.per_rank[0])

    def __getitem__(self, i: int) -> dict:
        return self.per_rank[torch.distributed.get_rank()][i]


class SaveWeights(L.Callback):
    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(dict(pl_module.model.named_parameters()), Path(trainer.default_root_dir) / "ddp.pt")


@pytest.mark.slow
def test_ddp_with_accumulation_gives_the_loss_of_one_big_batch(t5_dir, tmp_path):
    """2 ranks x 2 accumulated batches of 2, each rank with its own window_tokens (summed across ranks by the
    model), make the step of one batch of 8 in one process."""
    tok = AutoTokenizer.from_pretrained(t5_dir)
    shards = [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    per_rank = [[batch(tok, r, sum(n_labels(tok, x) for x in shard)) for r in shard] for shard in shards]
    assert per_rank[0][0]["window_tokens"] != per_rank[1][0]["window_tokens"]  # unequal ranks: the sum matters
    train(
        finetune(t5_dir),
        RankBatches(per_rank),
        tmp_path,
        accumulate=2,
        devices=2,
        use_distributed_sampler=False,
        strategy=DDPStrategy(start_method="spawn"),
        callbacks=[SaveWeights()],
    )
    big = finetune(t5_dir)
    train(big, [batch(tok, list(range(8)), n_labels(tok, list(range(8))))], tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt")
    for n, p in big.model.named_parameters():
        torch.testing.assert_close(ddp[n], p.detach(), rtol=1e-5, atol=1e-6)


def tiny(config_cls, model_cls, **kwargs):
    return model_cls(config_cls(vocab_size=64, **kwargs))


@pytest.mark.parametrize(
    "build,expected,n",
    [
        (
            lambda: tiny(
                T5Config,
                T5ForConditionalGeneration,
                d_model=16,
                d_kv=4,
                d_ff=32,
                num_layers=2,
                num_decoder_layers=3,
                num_heads=2,
            ),
            {
                "shared.weight": 0,
                "decoder.final_layer_norm.weight": 1,
                "decoder.block.2.layer.0.SelfAttention.q.weight": 1,
                "decoder.block.0.layer.1.EncDecAttention.q.weight": 3,
                "encoder.final_layer_norm.weight": 4,
                "encoder.block.1.layer.0.SelfAttention.q.weight": 4,
                "encoder.block.0.layer.0.SelfAttention.q.weight": 5,
            },
            5,
        ),
        (
            lambda: AutoModelForSeq2SeqLM.from_config(
                BartConfig(
                    vocab_size=64,
                    d_model=16,
                    encoder_layers=1,
                    decoder_layers=1,
                    encoder_attention_heads=2,
                    decoder_attention_heads=2,
                    encoder_ffn_dim=32,
                    decoder_ffn_dim=32,
                    max_position_embeddings=32,
                )
            ),
            {
                "model.shared.weight": 0,
                "model.decoder.layers.0.fc1.weight": 1,
                "model.encoder.layers.0.fc1.weight": 2,
                "model.encoder.layernorm_embedding.weight": 3,
                "model.decoder.embed_positions.weight": 3,
            },
            2,
        ),
        (
            lambda: tiny(GPT2Config, GPT2LMHeadModel, n_embd=16, n_layer=2, n_head=2, n_positions=32),
            {
                "transformer.wte.weight": 0,
                "transformer.ln_f.weight": 1,
                "transformer.h.1.attn.c_attn.weight": 1,
                "transformer.h.0.attn.c_attn.weight": 2,
                "transformer.wpe.weight": 3,
            },
            2,
        ),
        (
            lambda: tiny(
                LlamaConfig,
                LlamaForCausalLM,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
            ),
            {
                "lm_head.weight": 0,
                "model.norm.weight": 1,
                "model.layers.0.self_attn.q_proj.weight": 2,
                "model.embed_tokens.weight": 3,
            },
            2,
        ),
    ],
)
def test_layer_depths_of_generative_models(build, expected, n):
    """The LM head is depth 0 even tied to the input embeddings; an encoder-decoder's decoder sits above its
    encoder; embeddings (also BART's layernorm_embedding, registered after its layers) at the bottom."""
    depths, n_layers = layer_depths(build())
    assert n_layers == n and {k: depths[k] for k in expected} == expected


def test_top_k_and_llrd_on_t5(t5_dir):
    model = finetune(t5_dir, trainability=TopK(k=1))
    trained = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert "shared.weight" in trained and "decoder.final_layer_norm.weight" in trained
    assert all(
        n.startswith("decoder.block.1.") or n in ("shared.weight", "decoder.final_layer_norm.weight") for n in trained
    )
    names = {g["name"] for g in depth_groups(finetune(t5_dir).model)}
    assert {"head", "decoder.layer.1", "decoder.layer.0", "encoder.layer.1", "encoder.layer.0"} <= names


def test_lora_task_type_follows_the_model():
    gpt2 = tiny(GPT2Config, GPT2LMHeadModel, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    bert = tiny(
        BertConfig,
        BertForSequenceClassification,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    assert isinstance(LoRA(r=2).prepare(gpt2), PeftModelForCausalLM)
    assert isinstance(LoRA(r=2).prepare(bert), PeftModelForSequenceClassification)


def test_lora_on_t5_trains_adapters_only_and_exports_merged(t5_dir, tmp_path):
    model = finetune(
        t5_dir, trainability=LoRA(r=4, alpha=8, dropout=0.0), optimizer=partial(torch.optim.AdamW, lr=1e-2)
    )
    assert isinstance(model.model, PeftModelForSeq2SeqLM)
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    tok = model.tokenizer
    train(model, [batch(tok, [0, 1, 2, 3]), batch(tok, [4, 5, 6, 7])], tmp_path, steps=2)
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert changed == {n for n, p in model.model.named_parameters() if p.requires_grad}
    out = model.export_hf(tmp_path / "hf")
    assert (out / "adapter").is_dir()
    merged = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    b, model = batch(tok, [0, 5]), model.eval()
    decoder_inputs = merged.prepare_decoder_input_ids_from_labels(labels=b["labels"])
    with torch.no_grad():
        expected = model.model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=decoder_inputs
        ).logits
        got = merged(input_ids=b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=decoder_inputs)
    torch.testing.assert_close(got.logits, expected, rtol=1e-4, atol=1e-5)


def test_from_config_is_sized_to_the_tokenizer(t5_dir):
    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = Seq2SeqFineTune(
        model=T5Config(
            d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=99, pad_token_id=99
        ),
        data=contract(t5_dir),
        generation=Generation(max_new_tokens=3),
    )
    config = model.model.config
    assert config.vocab_size == len(tok) and config.pad_token_id == config.decoder_start_token_id == tok.pad_token_id
    # evaluation options never enter the checkpoint's hyperparameters (LightningCLI would apply them over the CLI)
    assert "generation" not in model.hparams and model.generation.max_new_tokens == 3
    model.eval()
    generations = model.generate_batch(batch(tok, [0, 1]))
    assert len(generations) == 2 and all(len(tok(g)["input_ids"]) <= 3 for g in generations)


def test_warm_started_encoder_decoder(t5_dir, tmp_path):
    """Two BERT checkpoints become an EncoderDecoderModel: [CLS] starts the target, the decoder cross-attends."""
    tok = AutoTokenizer.from_pretrained(t5_dir)
    tok.cls_token = tok.bos_token
    bert = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            pad_token_id=tok.pad_token_id,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    data = DataContract(tok, max_length=32, max_target_length=32, task="text_to_text")
    model = Seq2SeqFineTune(
        encoder=str(tmp_path / "bert"),
        decoder=str(tmp_path / "bert"),
        data=data,
        generation=Generation(max_new_tokens=4),
    )
    assert model.model.config.decoder_start_token_id == tok.bos_token_id
    assert model.model.config.decoder.add_cross_attention and model.model.config.decoder.is_decoder
    nll, n = model.forward_loss(batch(tok, [0, 1]))
    assert n == n_labels(tok, [0, 1]) and torch.isfinite(nll)
    assert len(model.eval().generate_batch(batch(tok, [0, 1]))) == 2
    with pytest.raises(InputError, match="both --model.encoder and --model.decoder"):
        Seq2SeqFineTune(encoder=str(tmp_path / "bert"), data=data)


def test_decoder_only_model_is_refused(t5_dir):
    with pytest.raises(InputError, match="gpt2 model without an encoder-decoder.*CausalSFT"):
        Seq2SeqFineTune(model=GPT2Config(n_embd=16, n_layer=1, n_head=2), data=contract(t5_dir))


# -- end to end, through the CLI ----------------------------------------------------------------------------------
@pytest.fixture
def parallel_text(workdir):
    """train.en / train.de (16 lines) and val.en / val.de (4 lines), Multi30k's layout."""
    for split, rows in (("train", list(range(8)) * 2), ("val", [0, 3, 5, 7])):
        (workdir / f"{split}.en").write_text("".join(EN[i] + "\n" for i in rows))
        (workdir / f"{split}.de").write_text("".join(DE[i] + "\n" for i in rows))
    return workdir


def data_args(root, model_dir) -> list[str]:
    """The model directory (the data module takes its tokenizer) and the parallel files."""
    return [
        "--model.model",
        str(model_dir),
        *[
            a
            for s in ("train", "val")
            for a in (f"--data.{s}_file", str(root / f"{s}.en"), f"--data.{s}_target_file", str(root / f"{s}.de"))
        ],
    ]


CONFIG = ["-c", str(REPO / "configs/finetune/multi30k_t5.yaml")]


def fine_tune(root, model_dir, *more: str) -> None:
    """A FAST Multi30k-layout fine-tune of `model_dir` on the parallel files under `root` (batches of 4, 8 new
    tokens at validation)."""
    cli(
        "fit",
        *CONFIG,
        *FAST,
        *data_args(root, model_dir),
        "--data.batch_size",
        "4",
        "--model.generation.max_new_tokens",
        "8",
        *more,
    )


def test_t5_laptop_denoises_a_t5_whose_export_fine_tunes_as_text_to_text(parallel_text, tiny_corpus):
    """configs/pretrain/t5_laptop.yaml: BART's denoising on T5's architecture; the export (a T5 with `<mask>` and
    the `<s> ... </s>` template in its tokenizer) is what configs/finetune/multi30k_t5.yaml fine-tunes."""
    steps = ["--trainer.max_steps", "16", "--trainer.val_check_interval", "8", "--trainer.max_time", "null"]
    small = ["--data.vocab_size", "500", "--data.seq_len", "30", "--data.batch_size", "8"]
    recipe = ["-c", str(REPO / "configs/pretrain/t5_laptop.yaml"), "--model.init_args.warmup_steps", "2"]
    cli("fit", *recipe, "--data.source", str(tiny_corpus), *small, *FAST, *steps)
    run = only_run_dir(parallel_text, "t5_laptop")
    loss = [e.value for e in EventAccumulator(str(run)).Reload().Scalars("train/loss")]
    assert len(loss) == 16 and sum(loss[-4:]) / 4 < loss[0] - 0.5, loss
    hf = run / "hf"
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(hf), AutoTokenizer.from_pretrained(hf)
    assert type(model).__name__ == "T5ForConditionalGeneration" and tok.mask_token == "<mask>"
    ids = tok("a dog runs").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id  # what the encoder read in pretraining

    fine_tune(parallel_text, hf)
    metrics = json.loads((only_run_dir(parallel_text, "multi30k_t5") / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and 0 <= metrics["val/sacrebleu"] <= 100 and metrics["val/ppl"] > 1


def test_cli_fit_export_generate_and_predict(parallel_text, t5_dir):
    workdir = parallel_text
    fine_tune(workdir, t5_dir, "--trainer.accumulate_grad_batches", "2")
    run = only_run_dir(workdir, "multi30k_t5")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and {"val/loss", "val/ppl", "val/sacrebleu", "val/chrf"} <= set(metrics)
    assert 0 <= metrics["val/sacrebleu"] <= 100 and metrics["val/ppl"] > 1
    assert "val/samples/text_summary" in EventAccumulator(str(run)).Reload().Tags()["tensors"]

    hf = run / "hf"
    assert GenerationConfig.from_pretrained(hf).max_new_tokens == 8
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(hf), AutoTokenizer.from_pretrained(hf)
    out = model.generate(**tok([PREFIX + EN[0], PREFIX + EN[4]], return_tensors="pt", padding=True))
    assert out.shape[0] == 2 and out.shape[1] <= 8 + 1

    inputs = workdir / "inputs.txt"
    inputs.write_text("a dog runs\ntwo cats sleep\na man sings\n")
    cli(
        "predict",
        *CONFIG,
        "--model.model",
        str(hf),
        "--data.train_file",
        "null",
        "--data.train_target_file",
        "null",
        "--data.val_file",
        "null",
        "--data.val_target_file",
        "null",
        "--data.predict_file",
        str(inputs),
        "--model.predictions_file",
        str(workdir / "pred.jsonl"),
        "--model.generation.max_new_tokens",
        "8",
        "--trainer.enable_progress_bar",
        "false",
    )
    rows = [json.loads(line) for line in (workdir / "pred.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["source"] for r in rows] == inputs.read_text().splitlines()
    assert all(isinstance(r["generation"], str) for r in rows)


def decoder_only(root, t5_dir):
    tok = AutoTokenizer.from_pretrained(t5_dir)
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        root / "gpt2"
    )
    tok.save_pretrained(root / "gpt2")
    return data_args(root, root / "gpt2")


def short_target_file(root, t5_dir):
    (root / "train.de").write_text("".join(DE[i] + "\n" for i in range(7)))  # 7 targets for 16 sources
    return data_args(root, t5_dir)


def empty_target(root, t5_dir):
    (root / "val.de").write_text(DE[0] + "\n\n" + DE[5] + "\n" + DE[7] + "\n")
    return data_args(root, t5_dir)


def table_without_target(root, t5_dir):
    (root / "train.jsonl").write_text("".join(json.dumps({"source": EN[i]}) + "\n" for i in range(8)))
    return [
        *data_args(root, t5_dir),
        "--data.train_file",
        str(root / "train.jsonl"),
        "--data.train_target_file",
        "null",
    ]


@pytest.mark.parametrize(
    "make_args, expected",
    [
        (decoder_only, "without an encoder-decoder"),
        (short_target_file, "7"),
        (empty_target, "line 2"),
        (table_without_target, "target"),
    ],
)
def test_cli_bad_input_is_one_error_line(parallel_text, t5_dir, make_args, expected):
    """A decoder-only model, parallel files of different lengths, an empty target, a table without the target
    column: one `error:` line, exit status 2."""
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli("fit", *CONFIG, *FAST, *make_args(parallel_text, t5_dir))
    assert exit_info.value.code == 2
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], err.getvalue()[-2000:]
