"""lm-eval as the engine: the in-memory model path gives the log-likelihoods and accuracies of lm-eval's own `hf`
model type loading the same model from a directory, and the gauntlet layouts compute what they mean (checked
against log-likelihoods summed by hand). Also holds the tiny models and task files the other evaluate tests use."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

WORDS = (
    "the cat dog bird sat ran flew on under a mat log tree big small red blue green house garden water "
    "because therefore quickly slowly happy sad"
).split()


def sentences(n: int, seed: int = 0, length: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(n)]


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(
        sentences(300) + ["Answer: Question:"],
        trainers.BpeTrainer(
            vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def wordpiece_tokenizer() -> BertTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(
        sentences(300),
        trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    )
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return BertTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="session")
def tiny_causal(tmp_path_factory):
    """A 1-layer GPT-2 (random weights, seed 0) and its BPE tokenizer, saved as a Hugging Face directory."""
    tok = bpe_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_embd=32,
            n_layer=1,
            n_head=2,
            n_positions=64,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    out = tmp_path_factory.mktemp("tiny_gpt2")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 1-layer BERT masked LM (random weights, seed 0) and its WordPiece tokenizer, saved."""
    tok = wordpiece_tokenizer()
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            vocab_size=len(tok),
            pad_token_id=tok.pad_token_id,
        )
    ).eval()
    out = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok, out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def task_files(tmp_path_factory):
    """One small file per gauntlet layout, with random words (no file of ../shared/data is special-cased)."""
    root = tmp_path_factory.mktemp("tasks")
    rng = random.Random(1)
    qs, answers = sentences(24, seed=2), sentences(96, seed=3, length=3)
    mc = [
        {"query": q, "choices": answers[4 * i : 4 * i + rng.choice([2, 3, 4])], "gold": i % 2} for i, q in enumerate(qs)
    ]
    schema = [
        {
            "context_options": [f"the {a} sat because the {a}", f"the {a} sat because the {b}"],
            "continuation": s,
            "gold": i % 2,
        }
        for i, (a, b, s) in enumerate(zip(WORDS[:12], WORDS[12:24], sentences(12, seed=4, length=3)))
    ]
    lm = [{"context": c, "continuation": w} for c, w in zip(sentences(10, seed=5), WORDS[:10])]
    return {
        "mc": write_jsonl(root / "mc.jsonl", mc),
        "schema": write_jsonl(root / "schema.jsonl", schema),
        "lm": write_jsonl(root / "lm.jsonl", lm),
    }


def loaded_tasks(specs, folder):
    from lightning_pretrain.evaluate import registry

    registry.write_task_folder(specs, folder)
    return registry.load_tasks(registry.task_manager(specs, folder), specs)


def logged_samples(lm, loaded, limit=None) -> dict:
    """lm-eval's per-document records: {task: {doc_id: (filtered responses, metrics)}}."""
    from lm_eval.evaluator import evaluate

    out = evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=0, log_samples=True)
    return {t: {s["doc_id"]: s for s in samples} for t, samples in out["samples"].items()}, out["results"]


def test_in_memory_model_equals_lm_eval_hf_model_type(tiny_causal, task_files, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from lightning_pretrain.evaluate import registry
    from lightning_pretrain.evaluate.harness import run_tasks
    from lightning_pretrain.evaluate.models import build_lm

    model, tok, hf_dir = tiny_causal
    specs = registry.resolve([str(p) for p in task_files.values()])
    loaded = loaded_tasks(specs, tmp_path / "tasks")
    ours, ours_results = logged_samples(build_lm(model, tok, "causal", batch_size=4), loaded)
    reference = HFLM(pretrained=str(hf_dir), device="cpu", batch_size=3, dtype="float32")  # lm-eval's `hf`
    theirs, their_results = logged_samples(reference, loaded)
    for task, docs in theirs.items():
        assert docs.keys() == ours[task].keys()
        for doc_id, sample in docs.items():
            got = [r[0] for r in ours[task][doc_id]["resps"]]
            want = [r[0] for r in sample["resps"]]
            assert [g[1] for g in got] == [w[1] for w in want]  # is_greedy
            assert torch.allclose(torch.tensor([g[0] for g in got]), torch.tensor([w[0] for w in want]), atol=1e-4)
    rows = {
        r.task: {m.name: m.value for m in r.metrics}
        for r in run_tasks(build_lm(model, tok, "causal"), specs, loaded, bootstrap_iters=0)
    }
    for spec in specs:
        for key, value in their_results[spec.lm_eval_name].items():
            if key in ("acc,none", "acc_norm,none", "perplexity,none"):
                assert rows[spec.name][key.split(",")[0]] == pytest.approx(value, abs=1e-4), (spec.name, key)


@torch.no_grad()
def continuation_logprob(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) summed by hand, with the continuation's tokens those of the whole text after
    the context's (lm-eval's convention); and whether greedy decoding reproduces them."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    logp = model(input_ids=torch.tensor([whole])).logits[0].log_softmax(-1)
    targets = whole[len(ctx) :]
    rows = logp[len(ctx) - 1 : len(whole) - 1]
    return float(sum(rows[i, t] for i, t in enumerate(targets))), all(
        int(rows[i].argmax()) == t for i, t in enumerate(targets)
    )


def test_gauntlet_layouts_compute_what_they_mean(tiny_causal, task_files, tmp_path):
    """Multiple choice: argmax over choices of log p(" " + choice | query) (acc) and of that divided by the
    choice's length (acc_norm); schema: argmax over contexts of log p(" " + continuation | context); language
    modelling: greedy decoding reproduces the continuation. A shipped name's delimiter ("\\nAnswer: ") ends the
    prompt with "\\nAnswer:"."""
    from lightning_pretrain.evaluate import registry
    from lightning_pretrain.evaluate.harness import run_tasks
    from lightning_pretrain.evaluate.layouts import read_task_file
    from lightning_pretrain.evaluate.models import build_lm

    model, tok, _ = tiny_causal
    specs = registry.resolve(
        ["piqa", str(task_files["mc"]), str(task_files["schema"]), str(task_files["lm"])],
        task_files={"piqa": str(task_files["mc"])},
    )
    assert [s.delimiter for s in specs] == ["\nAnswer: ", " ", " ", " "]
    got = {
        r.task: {m.name: m.value for m in r.metrics}
        for r in run_tasks(build_lm(model, tok, "causal"), specs, loaded_tasks(specs, tmp_path), bootstrap_iters=0)
    }

    def mc_accuracy(suffix: str) -> tuple[float, float]:
        acc = acc_norm = 0
        rows = read_task_file(task_files["mc"]).rows
        for r in rows:
            lls = [continuation_logprob(model, tok, r["query"] + suffix, " " + c)[0] for c in r["choices"]]
            acc += max(range(len(lls)), key=lambda i: lls[i]) == r["gold"]
            acc_norm += max(range(len(lls)), key=lambda i: lls[i] / len(r["choices"][i])) == r["gold"]
        return acc / len(rows), acc_norm / len(rows)

    assert (got["mc"]["acc"], got["mc"]["acc_norm"]) == pytest.approx(mc_accuracy(""))
    assert (got["piqa"]["acc"], got["piqa"]["acc_norm"]) == pytest.approx(mc_accuracy("\nAnswer:"))
    rows = read_task_file(task_files["schema"]).rows
    wins = [
        max(
            range(2),
            key=lambda i: continuation_logprob(model, tok, r["context_options"][i], " " + r["continuation"])[0],
        )
        == r["gold"]
        for r in rows
    ]
    assert got["schema"]["acc"] == pytest.approx(sum(wins) / len(rows))
    rows = read_task_file(task_files["lm"]).rows
    scored = [continuation_logprob(model, tok, r["context"], " " + r["continuation"]) for r in rows]
    assert got["lm"]["acc"] == pytest.approx(sum(g for _, g in scored) / len(rows))
    assert got["lm"]["perplexity"] == pytest.approx(
        torch.tensor([-lp for lp, _ in scored]).mean().exp().item(), rel=1e-4
    )
