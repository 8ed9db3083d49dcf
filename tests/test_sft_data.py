"""`SFTData`: labels -100 exactly on prompt tokens, padding and every example's first token; packed rows hold whole
examples with position ids restarting and the same labels as unpacked; window_tokens per accumulation window;
left-padded prompts for generation; chat messages rendered with the tokenizer's template; bad input refused."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ENGLISH

from lightning_pretrain.data import SFTData
from lightning_pretrain.data.generative.completions import first_fit
from lightning_pretrain.data.tokenizers import train_bpe
from lightning_pretrain.errors import InputError

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = " ".join(ENGLISH).split()


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Path, Path]:
    """A small byte-level BPE tokenizer (pad, eos), saved without and with a chat template."""
    tok = train_bpe(ENGLISH * 5, 600)
    plain, chat = tmp_path_factory.mktemp("tok_plain"), tmp_path_factory.mktemp("tok_chat")
    tok.save_pretrained(plain)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(chat)
    return plain, chat


def pairs(n: int, start: int = 0) -> list[dict]:
    """Prompts and completions of varied lengths."""
    return [
        {
            "prompt": "Question: " + " ".join(WORDS[i : i + 2 + i % 7]) + "?",
            "completion": " " + " ".join(WORDS[i + 3 : i + 4 + (5 * i) % 9]),
        }
        for i in range(start, start + n)
    ]


def jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def fitted(tmp_path, tok: Path, train: list[dict], val: list[dict] | None = None, **kw) -> SFTData:
    dm = SFTData(
        train_file=jsonl(tmp_path / "train.jsonl", train),
        val_file=jsonl(tmp_path / "val.jsonl", val or pairs(5, 40)),
        tokenizer=str(tok),
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def expected(dm: SFTData, records: list[dict]) -> dict[tuple, list[int]]:
    """input ids -> labels of each example, built by hand: the prompt, then the completion and EOS as labels."""
    tok, out = dm.tokenizer, {}
    for r in records:
        p = tok(r["prompt"])["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out[tuple(p + c)] = [-100] * len(p) + c
    return out


def examples_of(batch: dict) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of every example in a batch: a new one starts where position_ids == 0 on a real token."""
    out = []
    for ids, mask, labels, pos in zip(
        batch["input_ids"], batch["attention_mask"], batch["labels"], batch["position_ids"]
    ):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any() and (labels[n:] == -100).all() and (pos[n:] == 0).all()
        starts = [i for i in range(n) if pos[i] == 0] + [n]
        for a, b in zip(starts, starts[1:]):
            assert pos[a:b].tolist() == list(range(b - a))  # positions restart at each example
            assert labels[a] == -100  # nothing of its own example precedes its first token
            out.append((ids[a:b].tolist(), labels[a:b].tolist()))
    return out


@pytest.mark.parametrize("pack", [False, True])
def test_labels_only_on_completion_tokens_unpacked_and_packed(tmp_path, tokenizers, pack):
    train = pairs(24)
    dm = fitted(tmp_path, tokenizers[0], train, pack=pack, max_length=40, batch_size=3)
    want, seen = expected(dm, train), []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape[1] <= 40
        found = examples_of(batch)
        assert int(batch["window_tokens"]) == int((batch["labels"] != -100).sum())  # accumulate 1 outside a Trainer
        if not pack:
            assert len(found) == len(batch["input_ids"])
        for ids, labels in found:
            assert labels == want[tuple(ids)]
        seen += [tuple(ids) for ids, _ in found]
    assert sorted(seen) == sorted(want)  # every example once, whole
    rows = len(dm.train_dataloader().dataset)
    assert (rows < len(train)) if pack else rows == len(train)
    assert dm.publish().task == "sft" and dm.contract.max_length == (
        40 if pack else max(map(len, want | expected(dm, pairs(5, 40))))
    )


def test_first_fit_puts_each_example_in_the_first_row_with_room():
    assert first_fit([5, 3, 4, 2, 6], 8) == [[0, 1], [2, 3], [4]]
    assert first_fit([5, 4, 3, 1], 8) == [[0, 2], [1, 3]]


def test_window_tokens_sum_the_accumulation_window(tmp_path, tokenizers):
    dm = fitted(tmp_path, tokenizers[0], pairs(22), batch_size=3)
    dm.trainer = SimpleNamespace(accumulate_grad_batches=4, limit_train_batches=1.0, global_rank=0, world_size=1)
    batches = list(dm.train_dataloader())
    tokens = [int((b["labels"] != -100).sum()) for b in batches]
    assert len(batches) == 8  # windows of 4 and 4 batches, the last batch holding one example
    assert [int(b["window_tokens"]) for b in batches] == [sum(tokens[:4])] * 4 + [sum(tokens[4:])] * 4


def test_evaluation_batches_left_pad_the_prompts_for_generation(tmp_path, tokenizers):
    val = pairs(5, 40)
    dm = fitted(tmp_path, tokenizers[0], pairs(8), val, eval_batch_size=5)
    batch = next(iter(dm.val_dataloader()))
    assert "window_tokens" not in batch and batch["example_id"].tolist() == [0, 1, 2, 3, 4]
    assert batch["prompt"] == [r["prompt"] for r in val] and batch["completion"] == [r["completion"] for r in val]
    width = batch["prompt_input_ids"].shape[1]
    for i, r in enumerate(val):
        p = dm.tokenizer(r["prompt"])["input_ids"]
        assert batch["prompt_attention_mask"][i].tolist() == [0] * (width - len(p)) + [1] * len(p)  # left padding
        assert batch["prompt_input_ids"][i, width - len(p) :].tolist() == p == batch["input_ids"][i, : len(p)].tolist()
    assert [ids for ids, _ in examples_of(batch)] == [ids for ids in map(list, expected(dm, val))]

    (tmp_path / "prompts.txt").write_text("Question: what is a fox?\n\nQuestion: the dog?\n")
    dm = SFTData(predict_file=str(tmp_path / "prompts.txt"), tokenizer=str(tokenizers[0]), cache_dir=str(tmp_path))
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert set(batch) == {"prompt_input_ids", "prompt_attention_mask", "prompt", "example_id"}
    assert batch["prompt"] == ["Question: what is a fox?", "Question: the dog?"]
    # a .txt file's prompts get the template the model was trained with, as a table's prompt column does
    dm = SFTData(
        predict_file=str(tmp_path / "prompts.txt"),
        tokenizer=str(tokenizers[0]),
        cache_dir=str(tmp_path),
        prompt_template="Q: {prompt}\nA:",
    )
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["prompt"] == ["Q: Question: what is a fox?\nA:", "Q: Question: the dog?\nA:"]
    assert dm.tokenizer.decode(batch["prompt_input_ids"][1][batch["prompt_attention_mask"][1].bool()]).endswith("A:")


def test_chat_messages_render_with_the_tokenizers_template(tmp_path, tokenizers):
    chats = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]
        }
        for r in pairs(6)
    ]
    dm = fitted(tmp_path, tokenizers[1], chats, chats[:2], messages_column="messages", batch_size=6)
    first, tok = pairs(1)[0], dm.tokenizer
    rendered = f"<|system|>Be brief.\n<|user|>{first['prompt']}\n<|assistant|>"
    batch = next(iter(dm.val_dataloader()))
    assert batch["prompt"][0] == rendered and batch["completion"][0] == first["completion"]
    want = {}
    for chat in chats:  # the rendered prompt holds its own special tokens: none are added to it
        p = tok.apply_chat_template(chat["messages"][:-1], add_generation_prompt=True)["input_ids"]
        c = tok(chat["messages"][-1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        want[tuple(p + c)] = [-100] * len(p) + c
    assert examples_of(batch)[0] == (list(next(iter(want))), next(iter(want.values())))
    found = examples_of(next(iter(dm.train_dataloader())))
    assert len(found) == len(chats) and all(labels == want[tuple(ids)] for ids, labels in found)

    no_template = dict(
        train_file=str(tmp_path / "train.jsonl"),
        val_file=str(tmp_path / "val.jsonl"),
        tokenizer=str(tokenizers[0]),
        messages_column="messages",
        cache_dir=str(tmp_path / "c2"),
    )
    with pytest.raises(InputError, match="no chat template"):
        SFTData(**no_template).prepare_data()
    SFTData(**no_template, chat_template=TEMPLATE).prepare_data()  # the explicit fallback

    (tmp_path / "prompts.txt").write_text("What is a fox?\n")  # a chat model's prompt file: one user message a line
    dm = SFTData(
        predict_file=str(tmp_path / "prompts.txt"),
        tokenizer=str(tokenizers[1]),
        messages_column="messages",
        cache_dir=str(tmp_path / "c3"),
    )
    dm.setup("predict")
    assert next(iter(dm.predict_dataloader()))["prompt"] == ["<|user|>What is a fox?\n<|assistant|>"]


def test_prompts_that_fill_max_length_are_dropped_and_counted(tmp_path, tokenizers, caplog):
    train = pairs(6) + [{"prompt": "Question: " + " ".join(WORDS[:60]), "completion": " yes"}]
    with caplog.at_level(logging.WARNING):
        dm = fitted(tmp_path, tokenizers[0], train, max_length=32)
    assert len(dm.splits["train"]) == 6 and "dropped 1 examples of the train split" in caplog.text
    (tmp_path / "again").mkdir()
    with pytest.raises(InputError, match="every prompt has max_length=4 tokens or more"):
        fitted(tmp_path / "again", tokenizers[0], train, max_length=4)


@pytest.mark.parametrize(
    "records,match",
    [
        ([{"prompt": "a question", "answer": "yes"}] * 3, "completion column 'completion' not found"),
        (
            [{"prompt": "a question", "completion": "yes"}, {"prompt": "another", "completion": "  "}],
            "line 2: the text column 'completion' is empty",
        ),
        (
            [
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
            ],
            "line 2: the conversation does not end with an assistant message",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_line(tmp_path, tokenizers, records, match):
    chat = "messages" in records[0]
    dm = SFTData(
        train_file=jsonl(tmp_path / "t.jsonl", records),
        val_file=str(tmp_path / "t.jsonl"),
        tokenizer=str(tokenizers[1]),
        messages_column="messages" if chat else None,
        cache_dir=str(tmp_path),
    )
    with pytest.raises(InputError, match=match):
        dm.prepare_data()
