"""Multiple choice: rows of N choice columns or a list column (index or letter labels) -> (batch, N, len) batches
padded per batch; bad rows refused naming their line; a few-step fit with every fine-tuning mode; the CLI with
configs/finetune/copa.yaml, its export loaded by AutoModelForMultipleChoice, and predict."""

import json
from functools import partial

import lightning as L
import pytest
import torch
from conftest import REPO, cli, only_run_dir
from test_bad_input import expect_error
from test_finetune_modes import tiny_backbone  # noqa: F401 (fixture)
from transformers import AutoModelForMultipleChoice

from lightning_pretrain.data.finetune.multiple_choice import MultipleChoiceData, choice_index
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import Frozen, GradualUnfreezing, LayerwiseLRDecay, LoRA, TopK
from lightning_pretrain.finetune.multiple_choice import MultipleChoice

GOOD = ["the glass broke into pieces", "water flowed from the spout", "she lost her appetite", "the crowd cheered"]
BAD = ["the sky turned green", "a cat sang opera", "the table flew away", "numbers danced slowly at noon"]
QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]


def copa_rows(n: int = 24) -> list[dict]:
    """COPA-shaped rows: the right choice is a GOOD sentence, at position label."""
    rows = []
    for i in range(n):
        label = i % 2
        pair = [BAD[i % 4], GOOD[i % 4]] if label else [GOOD[i % 4], BAD[i % 4]]
        rows.append(
            {
                "context": f"Event {i} happened. What happened as a result?",
                "choice1": pair[0],
                "choice2": pair[1],
                "label": label,
            }
        )
    return rows


def write_jsonl(path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def data(tmp_path, backbone, rows, **kwargs) -> MultipleChoiceData:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    kwargs = {"choice_columns": ["choice1", "choice2"], **kwargs}
    return MultipleChoiceData(
        train_file=path,
        val_file=path,
        tokenizer=str(backbone),
        batch_size=4,
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )


def first_batch(dm) -> dict:
    dm.setup("fit")
    return next(iter(dm.val_dataloader()))


def test_choice_columns_and_list_column_give_the_same_padded_batches(tmp_path, tiny_backbone):  # noqa: F811
    rows = copa_rows(8)
    by_columns = first_batch(data(tmp_path / "a", tiny_backbone, rows))
    listed = [
        {"query": r["context"], "choices": [r["choice1"], r["choice2"]], "gold": "AB"[r["label"]]} for r in rows
    ]  # the zero-shot layout, with letter labels
    by_list = first_batch(
        data(
            tmp_path / "b",
            tiny_backbone,
            listed,
            context_column="query",
            choice_columns=["choices"],
            label_column="gold",
        )
    )
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels", "example_id"):
        assert torch.equal(by_columns[key], by_list[key]), key
    ids, mask = by_columns["input_ids"], by_columns["attention_mask"]
    assert ids.shape[:2] == (4, 2) and by_columns["labels"].tolist() == [0, 1, 0, 1]
    # padded to the batch's longest pair, not to max_length: some pair fills the width, padding is masked out
    assert ids.shape[2] == int(mask.sum(-1).max()) < 128 and int(mask.sum(-1).min()) < ids.shape[2]
    tok = data(tmp_path / "c", tiny_backbone, rows).tokenizer
    assert (
        tok.decode(ids[1, 1][mask[1, 1].bool()], skip_special_tokens=True)
        == f"{rows[1]['context']} {rows[1]['choice2']}".lower()
    )


def test_choice_prefix_column_goes_before_every_choice(tmp_path, tiny_backbone):  # noqa: F811
    rows = [
        {
            "sent1": f"Someone {i} opens the door.",
            "sent2": "Then he",
            "ending0": "walks in.",
            "ending1": "eats the door.",
            "ending2": "flies away.",
            "label": "0",
        }
        for i in range(4)
    ]
    dm = data(
        tmp_path,
        tiny_backbone,
        rows,
        context_column="sent1",
        choice_prefix_column="sent2",
        choice_columns=["ending0", "ending1", "ending2"],
    )
    batch = first_batch(dm)
    assert batch["input_ids"].shape[:2] == (4, 3) and dm.publish().label_names == ("0", "1", "2")
    pair = dm.tokenizer.decode(batch["input_ids"][0, 2], skip_special_tokens=True)
    assert pair == "someone 0 opens the door. then he flies away."


def test_choice_index_reads_ids_letters_and_offsets():
    assert [choice_index(v, 4, 0, "x") for v in (0, "3", "A", "d", 2.0, None, "")] == [0, 3, 0, 3, 2, -1, -1]
    assert choice_index(4, 4, 1, "x") == 3
    assert choice_index("choice2", 2, 0, "x", ("choice1", "choice2")) == 1  # a hub ClassLabel's name
    with pytest.raises(InputError, match="x: label id 4 is out of range: the row has 4 choices .*label_offset 1"):
        choice_index(4, 4, 0, "x")
    with pytest.raises(InputError, match="letter 'E' is out of range"):
        choice_index("E", 4, 0, "x")
    with pytest.raises(InputError, match="neither a choice id nor a letter"):
        choice_index("maybe", 4, 0, "x")


COPA = ["fit", "-c", str(REPO / "configs" / "finetune" / "copa.yaml"), *QUIET]


@pytest.mark.parametrize(
    "rows,needles",
    [
        (
            [
                {"context": "c", "choices": ["a", "b"], "label": 0},
                {"context": "c", "choices": ["a", "b", "x"], "label": 0},
            ],
            ["rows.jsonl line 2: 3 choices, but line 1 has 2"],
        ),
        (
            [{"context": "c", "choices": ["a", "b"], "label": 0}, {"context": "c", "choices": ["a", "b"], "label": 2}],
            ["rows.jsonl line 2: label id 2 is out of range: the row has 2 choices"],
        ),
        (
            [{"context": "c", "choices": ["a", "b"], "label": 0}, {"context": "c", "choices": ["a", "  "], "label": 1}],
            ["rows.jsonl line 2: the choice 'choices[1]' is empty"],
        ),
        (
            [{"context": "c", "choices": "a or b", "label": 0}],
            ["rows.jsonl line 1: the choices column 'choices' is the string 'a or b', not a list"],
        ),
        (
            [{"context": "c", "choices": ["a", "b"], "label": 0}, {"context": "c", "choices": ["a", "b"]}],
            ["rows.jsonl line 2: no label"],
        ),
    ],
)
def test_bad_rows_end_in_one_error_line(capsys, workdir, tiny_backbone, rows, needles):  # noqa: F811
    path = write_jsonl(workdir / "rows.jsonl", rows)
    expect_error(
        capsys,
        [
            *COPA,
            "--model.backbone",
            str(tiny_backbone),
            "--data.train_file",
            path,
            "--data.val_file",
            path,
            "--data.choice_columns",
            "[choices]",
        ],
        *needles,
    )


def test_val_split_with_another_number_of_choices_is_refused(capsys, workdir, tiny_backbone):  # noqa: F811
    train = write_jsonl(
        workdir / "train.jsonl", [{"context": "c", "choices": ["a", "b"], "label": i % 2} for i in range(4)]
    )
    val = write_jsonl(workdir / "val.jsonl", [{"context": "c", "choices": ["a", "b", "c"], "label": 2}])
    expect_error(
        capsys,
        [
            *COPA,
            "--model.backbone",
            str(tiny_backbone),
            "--data.train_file",
            train,
            "--data.val_file",
            val,
            "--data.choice_columns",
            "[choices]",
        ],
        "val.jsonl has 3 choices per row, but the model was built for 2",
    )


def test_a_model_for_another_task_refuses_the_contract(tmp_path, tiny_backbone):  # noqa: F811
    from lightning_pretrain.finetune import SequenceClassifier

    dm = data(tmp_path, tiny_backbone, copa_rows(4))
    with pytest.raises(InputError, match="needs a classification data module"):
        SequenceClassifier(str(tiny_backbone), data=dm.publish())


def changed_parameters(tiny_backbone, tmp_path, trainability) -> set[str]:  # noqa: F811
    dm = data(tmp_path, tiny_backbone, copa_rows(16))
    model = MultipleChoice(
        str(tiny_backbone),
        data=dm.publish(),
        trainability=trainability,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        warmup_steps=0,
        lr_schedule="constant",
    )
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    ).fit(model, dm)
    return {
        n.removeprefix("base_model.model.")
        for n, p in model.model.named_parameters()
        if not torch.equal(before[n], p.detach())
    }


@pytest.mark.parametrize(
    "trainability,expected",
    [
        (Frozen(), lambda n: n.startswith("classifier.")),
        (TopK(k=1), lambda n: n.startswith(("classifier.", "bert.encoder.layer.1.", "bert.pooler."))),
        (LayerwiseLRDecay(decay=0.5), lambda n: True),
        (
            GradualUnfreezing(every_n_steps=10),
            lambda n: n.startswith(("classifier.", "bert.pooler.", "bert.encoder.layer.1.")),
        ),
        (LoRA(r=2, alpha=4, dropout=0.0), lambda n: "lora_" in n or "classifier" in n),
    ],
    ids=["frozen", "top_k", "llrd", "gradual", "lora"],
)
def test_every_fine_tuning_mode_trains_its_part(tmp_path, tiny_backbone, trainability, expected):  # noqa: F811
    changed = changed_parameters(tiny_backbone, tmp_path, trainability)
    assert changed and all(expected(n) for n in changed), sorted(changed)
    assert any("classifier" in n for n in changed)


def test_cli_fit_export_and_predict(workdir, tiny_backbone):  # noqa: F811
    train = write_jsonl(workdir / "train.jsonl", copa_rows(24))
    cli(
        *COPA,
        "--model.backbone",
        str(tiny_backbone),
        "--data.train_file",
        train,
        "--data.val_file",
        train,
        "--trainer.max_epochs",
        "4",
        "--data.batch_size",
        "8",
        "--model.optimizer.init_args.lr",
        "3e-3",
    )
    run = only_run_dir(workdir, "copa")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 12 and set(metrics) >= {"val/acc", "val/loss"}
    assert metrics["val/acc"] > 0.9  # the right choices are always GOOD sentences: learnable in 12 steps
    assert json.loads((run / "labels.json").read_text()) == {"task": "multiple_choice", "num_choices": 2}

    model = AutoModelForMultipleChoice.from_pretrained(run / "hf").eval()
    dm = data(workdir, tiny_backbone, copa_rows(24))
    batch = first_batch(dm)
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
    assert logits.shape == (4, 2) and (logits.argmax(-1) == batch["labels"]).all()

    unlabelled = write_jsonl(
        workdir / "predict.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in copa_rows(3)]
    )
    cli(
        "predict",
        "-c",
        str(REPO / "configs" / "finetune" / "copa.yaml"),
        "--model.backbone",
        str(run / "hf"),
        "--data.predict_file",
        unlabelled,
        "--model.predictions_file",
        str(workdir / "pred.jsonl"),
        "--trainer.enable_progress_bar",
        "false",
    )
    rows = [json.loads(line) for line in (workdir / "pred.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["choice"] for r in rows] == [0, 1, 0]
    for r in rows:
        assert r["score"] == max(r["probabilities"]) and sum(r["probabilities"]) == pytest.approx(1, abs=1e-5)
        assert len(r["choices"]) == 2 and r["context"].startswith("Event")
