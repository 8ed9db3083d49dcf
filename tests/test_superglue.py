"""SuperGLUE: every task's official row layout converted, its metrics by hand (MultiRC F1a / EM, CB macro-F1), the
runner on a tiny FewGLUE-like folder, and bad input as one `error:` line with exit status 2."""

import json

import pytest
import torch
from conftest import SHARED_DATA
from test_finetune_modes import tiny_backbone  # noqa: F401 (fixture)

from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import superglue
from lightning_pretrain.finetune.classifier import task_metrics
from lightning_pretrain.finetune.superglue_tasks import TASKS, convert_file, exact_match, f1a

AT = "x.jsonl line 3"
# one official row of each task, in SuperGLUE's own field layout
OFFICIAL = {
    "boolq": {"question": "is the sky blue", "passage": "The sky is blue on clear days.", "idx": 7, "label": True},
    "cb": {"premise": "It rained, she said.", "hypothesis": "it rained", "label": "entailment", "idx": 44},
    "rte": {"premise": "Paris is in France.", "hypothesis": "Paris is in Spain.", "label": "not_entailment", "idx": 1},
    "copa": {
        "premise": "The chandelier shattered on the floor.",
        "choice1": "It dropped from the ceiling.",
        "choice2": "Its lights flickered.",
        "question": "cause",
        "label": 0,
        "idx": 249,
    },
    "wic": {
        "word": "feel",
        "sentence1": "You make me feel naked.",
        "sentence2": "She felt small.",
        "idx": 4232,
        "label": False,
        "start1": 12,
        "start2": 4,
        "end1": 16,
        "end2": 8,
        "version": 1.1,
    },
    "wsc": {
        "text": "The city councilmen refused the demonstrators a permit because they advocated violence.",
        "target": {"span2_index": 9, "span1_index": 4, "span1_text": "The demonstrators", "span2_text": "they"},
        "idx": 16,
        "label": True,
    },
    "multirc": {
        "idx": 6,
        "version": 1.1,
        "passage": {
            "text": "Jason objects to the stranger.",
            "questions": [
                {
                    "question": "How does Jason react?",
                    "idx": 0,
                    "answers": [
                        {"text": "He objects", "idx": 0, "label": 1},
                        {"text": "He welcomes him", "idx": 1, "label": 0},
                    ],
                },
                {"question": "Who is Jason?", "idx": 1, "answers": [{"text": "A guardian", "idx": 2, "label": 1}]},
            ],
        },
    },
}
EXPECTED = {
    "boolq": [{"idx": 7, "text": "is the sky blue", "text_pair": "The sky is blue on clear days.", "label": "true"}],
    "cb": [{"idx": 44, "text": "It rained, she said.", "text_pair": "it rained", "label": "entailment"}],
    "rte": [{"idx": 1, "text": "Paris is in France.", "text_pair": "Paris is in Spain.", "label": "not_entailment"}],
    "copa": [
        {
            "idx": 249,
            "context": "The chandelier shattered on the floor. What was the cause?",
            "choice1": "It dropped from the ceiling.",
            "choice2": "Its lights flickered.",
            "label": 0,
        }
    ],
    "wic": [
        {"idx": 4232, "text": "feel: You make me *feel* naked.", "text_pair": "She *felt* small.", "label": "false"}
    ],
    "wsc": [
        {
            "idx": 16,
            "text": "The city councilmen refused *the demonstrators* a permit because #they# advocated violence.",
            "text_pair": 'Does "they" refer to "The demonstrators"?',
            "label": "true",
        }
    ],
    "multirc": [
        {
            "idx": 0,
            "question": "6/0",
            "text": "Jason objects to the stranger.",
            "text_pair": "How does Jason react? He objects",
            "label": "true",
        },
        {
            "idx": 1,
            "question": "6/0",
            "text": "Jason objects to the stranger.",
            "text_pair": "How does Jason react? He welcomes him",
            "label": "false",
        },
        {
            "idx": 2,
            "question": "6/1",
            "text": "Jason objects to the stranger.",
            "text_pair": "Who is Jason? A guardian",
            "label": "true",
        },
    ],
}


@pytest.mark.parametrize("task", sorted(OFFICIAL))
def test_each_task_converts_its_official_layout(task):
    assert TASKS[task].convert(OFFICIAL[task], AT) == EXPECTED[task]


def test_copa_effect_and_a_single_word_wsc_span():
    effect = {**OFFICIAL["copa"], "question": "effect", "label": 1}
    assert TASKS["copa"].convert(effect, AT)[0]["context"].endswith("floor. What happened as a result?")
    row = {
        "text": "She changed it to Tina , because it was easier.",
        "label": False,
        "target": {"span1_index": 4, "span1_text": "Tina", "span2_index": 7, "span2_text": "it"},
    }
    assert TASKS["wsc"].convert(row, AT)[0]["text"] == "She changed it to *Tina* , because #it# was easier."


def run_main(argv: list[str]) -> int:
    """The console script's exit status (entry.console exits on bad input)."""
    try:
        return superglue.main(argv)
    except SystemExit as e:
        return e.code


def test_record_is_left_out_with_its_reason(capsys):
    with pytest.raises(SystemExit) as exit_info:
        superglue.main(["--backbone", "b", "--superglue_dir", ".", "--tasks", "record"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ReCoRD is left out: it is a cloze task")


@pytest.mark.parametrize(
    "task,change,needle",
    [
        ("cb", {"label": "maybe"}, "label 'maybe' is not one of entailment, contradiction, neutral"),
        ("rte", {"hypothesis": "  "}, "'hypothesis' is empty"),
        ("boolq", {"passage": None}, "'passage' is null, not text"),
        ("boolq", {"label": None}, "label None is not one of false, true"),
        ("copa", {"question": "why"}, "question 'why' is neither 'cause' nor 'effect'"),
        ("copa", {"label": 2}, "label 2 is not 0 or 1"),
        ("wic", {"end1": 99}, "the span start1/end1 (12, 99) is not inside its sentence (23 characters)"),
        (
            "wsc",
            {"target": {"span1_index": 5, "span1_text": "The demonstrators", "span2_index": 9, "span2_text": "they"}},
            "span1_text 'The demonstrators' is not the text's words at span1_index 5 ('demonstrators a')",
        ),
        ("wsc", {"target": {"span1_index": 4, "span1_text": "the"}}, "no 'span2_text' field"),
        ("multirc", {"passage": {"text": "p", "questions": []}}, "the passage has no questions"),
    ],
)
def test_bad_official_rows_name_their_line(task, change, needle):
    with pytest.raises(InputError) as e:
        TASKS[task].convert({**OFFICIAL[task], **change}, AT)
    assert str(e.value).startswith(AT) and needle in str(e.value), str(e.value)


def test_multirc_f1a_and_em_by_hand():
    questions = ["a", "a", "a", "b", "b", "c"]
    gold = [1, 0, 1, 0, 1, 1]
    pred = [1, 0, 0, 0, 1, 0]
    # F1a over all six options: tp 2, fp 0, fn 2 -> P 1, R 0.5, F1 2/3; EM: only question b is all right -> 1/3
    assert f1a(gold, pred) == pytest.approx(2 / 3)
    assert exact_match(questions, gold, pred) == pytest.approx(1 / 3)
    assert superglue.score("multirc", {"val/f1a": 2 / 3, "val/em": 1 / 3}) == pytest.approx(50.0)


def test_cb_macro_f1_by_hand():
    """CB's score is the mean of accuracy and the macro-F1 the classifier logs (torchmetrics): checked by hand."""
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 1, 0])
    # entailment: tp 2 fp 1 fn 1 -> 2/3; contradiction: tp 2 fp 1 fn 0 -> 0.8; neutral: tp 0 -> 0
    macro = (2 / 3 + 0.8 + 0) / 3
    metrics = task_metrics(list(TASKS["cb"].labels))
    values = {f"val/{k}": float(v) for k, v in metrics(pred, target).items()}
    assert values["val/f1"] == pytest.approx(macro) and values["val/acc"] == pytest.approx(4 / 6)
    assert superglue.score("cb", values) == pytest.approx(100 * (4 / 6 + macro) / 2)


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def multirc_passage(i: int) -> dict:
    return {
        "idx": i,
        "passage": {
            "text": f"Passage {i}: the cat sat on the mat.",
            "questions": [
                {
                    "question": f"Where did the cat sit {i}?",
                    "idx": 0,
                    "answers": [
                        {"text": "on the mat", "idx": 3 * i, "label": 1},
                        {"text": "in the sky", "idx": 3 * i + 1, "label": 0},
                        {"text": "on a mat", "idx": 3 * i + 2, "label": 1},
                    ],
                }
            ],
        },
    }


def test_runner_on_a_fewglue_like_folder(workdir, tiny_backbone, capsys):  # noqa: F811
    root = workdir / "superglue"
    copa = [{**OFFICIAL["copa"], "label": i % 2, "idx": i} for i in range(8)]
    write_jsonl(root / "COPA" / "train.jsonl", copa)
    write_jsonl(root / "COPA" / "val.jsonl", copa[:4])
    write_jsonl(root / "COPA" / "dev32.jsonl", copa[:2])  # val.jsonl is there: dev32 is not the choice
    write_jsonl(root / "MultiRC" / "train.jsonl", [multirc_passage(i) for i in range(4)])
    write_jsonl(root / "MultiRC" / "dev32.jsonl", [multirc_passage(i) for i in range(4, 7)])  # FewGLUE: no val
    status = run_main(
        [
            "--backbone",
            str(tiny_backbone),
            "--tasks",
            "multirc",
            "copa",
            "--superglue_dir",
            str(root),
            "--out",
            str(workdir / "runs"),
            "--in_process",
            "--trainer.max_epochs",
            "1",
            "--data.max_length",
            "64",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert (
        f"multirc: train on {root}/MultiRC/train.jsonl (4 examples), evaluate on {root}/MultiRC/dev32.jsonl "
        f"(3 examples, 9 rows)" in out
    )
    assert f"copa: train on {root}/COPA/train.jsonl (8 examples), evaluate on {root}/COPA/val.jsonl (4 examples" in out
    table = json.loads((workdir / "runs" / "superglue_full.json").read_text())
    multirc, copa_result = table["tasks"]["multirc"], table["tasks"]["copa"]
    # the exported model's predictions score exactly as the last validation of the fit did
    assert multirc["metrics"]["val/f1a"] == pytest.approx(multirc["metrics"]["val/f1_pos"])
    predictions = [
        json.loads(line) for line in (workdir / multirc["run_dir"] / "val_predictions.jsonl").read_text().splitlines()
    ]
    right = [p["label"] == ("true" if i % 3 != 1 else "false") for i, p in enumerate(predictions)]
    assert multirc["metrics"]["val/em"] == pytest.approx(sum(all(right[q : q + 3]) for q in (0, 3, 6)) / 3)
    assert multirc["score"] == pytest.approx(50 * (multirc["metrics"]["val/f1a"] + multirc["metrics"]["val/em"]))
    assert copa_result["score"] == pytest.approx(100 * copa_result["metrics"]["val/acc"])
    assert table["average"] == pytest.approx((multirc["score"] + copa_result["score"]) / 2)
    markdown = (workdir / "runs" / "superglue_full.md").read_text()
    assert "| MultiRC | F1a/EM | 4 | dev32.jsonl (3) |" in markdown and "| COPA | acc | 8 | val.jsonl (4) |" in markdown


def test_runner_bad_row_is_one_error_line(workdir, capsys):
    write_jsonl(workdir / "sg" / "CB" / "train.jsonl", [OFFICIAL["cb"], {**OFFICIAL["cb"], "label": "yes"}])
    status = run_main(
        ["--backbone", "b", "--tasks", "cb", "--superglue_dir", str(workdir / "sg"), "--out", str(workdir / "runs")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert (
        err[0] == f"error: {workdir}/sg/CB/train.jsonl line 2: label 'yes' is not one of entailment, "
        f"contradiction, neutral"
    )


def test_runner_missing_task_folder_and_eval_file(workdir, capsys):
    write_jsonl(workdir / "sg" / "CB" / "train.jsonl", [OFFICIAL["cb"]])
    args = ["--backbone", "b", "--superglue_dir", str(workdir / "sg"), "--out", str(workdir / "runs")]
    assert run_main([*args, "--tasks", "rte"]) == 2
    assert f"error: --superglue_dir {workdir}/sg has no RTE/ folder" in capsys.readouterr().err
    assert run_main([*args, "--tasks", "cb"]) == 2  # neither val.jsonl nor dev32.jsonl
    assert f"error: CB: file not found: {workdir}/sg/CB/val.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("task", sorted(TASKS))
def test_shared_fewglue_files_convert(task):
    folder = SHARED_DATA / "superglue" / TASKS[task].name
    if not folder.is_dir():
        pytest.skip(f"needs {folder} (public datasets folder ../shared/data is absent on this machine)")
    for name in ("train.jsonl", "dev32.jsonl", "val.jsonl"):
        if (folder / name).is_file():
            rows, n = convert_file(task, folder / name)
            assert n >= 32 and len(rows) >= n
