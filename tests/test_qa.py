"""Extractive QA: windows and their character offsets by hand, answer token labels, the best span / null answer
postprocessing, the official SQuAD 2.0 EM / F1 (hand cases, and torchmetrics' v1.1 metric where both apply), every
fine-tuning mode on a span head, fit + validate + predict + export through the CLI, and bad input in one line."""

import io
import json
import random
from contextlib import redirect_stderr
from functools import partial

import lightning as L
import pytest
import torch
from conftest import REPO, cli, only_run_dir, shared_file
from test_finetune_modes import tiny_backbone  # noqa: F401 (fixture)
from torchmetrics.functional.text import squad as tm_squad
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from lightning_pretrain.data.finetune.squad import SquadData, span_labels
from lightning_pretrain.data.finetune.squad_json import read_squad
from lightning_pretrain.errors import InputError
from lightning_pretrain.finetune import Frozen, Full, GradualUnfreezing, LayerwiseLRDecay, LoRA, TopK
from lightning_pretrain.finetune.question_answering import QuestionAnswering, best_answers, window_spans
from lightning_pretrain.finetune.squad_metrics import SquadScores, normalize_answer, score

QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]
SMALL = ["--data.max_length", "48", "--data.doc_stride", "8", "--data.max_question_length", "24"]
FILLER = "the river runs past a quiet town where old stone houses stand beside narrow lanes and fields".split()
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "brown"]


def squad_doc(n_paragraphs: int = 4, unanswerable: bool = True, n_facts: int = 8) -> dict:
    """Paragraphs of facts "the <colour> box holds <n> coins."; a question per colour, answer the number, and (v2)
    an unanswerable question about a purple box."""
    data = []
    for p in range(n_paragraphs):
        facts = [f"In room {p} the {c} box holds {3 * i + p + 1} coins." for i, c in enumerate(COLOURS[:n_facts])]
        context = " ".join(facts)
        qas = []
        for i, c in enumerate(COLOURS[:n_facts]):
            number = str(3 * i + p + 1)
            start = context.index(facts[i]) + facts[i].index(f"holds {number}") + len("holds ")
            qas.append(
                {
                    "id": f"p{p}q{i}",
                    "question": f"In room {p}, how many coins does the {c} box hold?",
                    "answers": [{"text": number, "answer_start": start}],
                    "is_impossible": False,
                }
            )
        if unanswerable:
            qas.append(
                {
                    "id": f"p{p}none",
                    "question": f"In room {p}, how many coins does the purple box hold?",
                    "answers": [],
                    "is_impossible": True,
                }
            )
        data.append({"title": f"room {p}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "v2.0", "data": data}


@pytest.fixture
def squad_file(tmp_path):
    path = tmp_path / "rooms.json"
    path.write_text(json.dumps(squad_doc()))
    return path


def data(backbone, train, val=None, **kwargs) -> SquadData:
    kwargs = {"max_length": 48, "doc_stride": 8, "max_question_length": 24, "batch_size": 8, **kwargs}
    return SquadData(train_file=str(train), val_file=str(val or train), tokenizer=str(backbone), **kwargs)


# -- windows, offsets, labels -----------------------------------------------------------------------------------
def test_span_labels_by_hand():
    # context tokens at characters [10, 15) [16, 20) [21, 24) [24, 25); token 0 and 1 are [CLS] and a question token
    offsets = [[-1, -1], [-1, -1], [10, 15], [16, 20], [21, 24], [24, 25], [-1, -1]]
    assert span_labels(offsets, "quick brown", 10) == (2, 3)
    assert span_labels(offsets, " brown ", 15) == (3, 3)  # surrounding whitespace is not the answer's
    assert span_labels(offsets, "row", 17) == (3, 3)  # inside a token: the token
    assert span_labels(offsets, "fox.", 21) == (4, 5)
    assert span_labels(offsets, "lazy quick", 5) == (0, 0)  # begins before this window's context
    assert span_labels(offsets, "fox. Next", 21) == (0, 0)  # ends after it
    assert span_labels(offsets, "", None) == (0, 0)  # unanswerable


def test_windows_overlap_by_doc_stride_and_offsets_map_back(tiny_backbone, squad_file, tmp_path):  # noqa: F811
    dm = data(tiny_backbone, squad_file, cache_dir=str(tmp_path / "cache"))
    dm.setup("validate")
    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    doc = squad_doc()
    for row in dm.splits["val"]:
        context = row["context"]
        assert row["question"] in [q["question"] for a in doc["data"] for q in a["paragraphs"][0]["qas"]]
        context_ids = tok(context, add_special_tokens=False)["input_ids"]
        question_ids = tok(row["question"], add_special_tokens=False)["input_ids"]
        room = 48 - len(question_ids) - 3  # [CLS] question [SEP] context [SEP]
        expected = 1 + -(-(len(context_ids) - room) // (room - 8))  # first window, then room - stride new tokens each
        assert len(row["input_ids"]) == expected > 1
        seen = []
        for ids, offsets, start, end in zip(
            row["input_ids"], row["offsets"], row["start_positions"], row["end_positions"]
        ):
            inside = [i for i, (s, _) in enumerate(offsets) if s >= 0]
            assert ids[: len(question_ids) + 2] == [tok.cls_token_id, *question_ids, tok.sep_token_id]
            assert inside == list(range(len(question_ids) + 2, len(ids) - 1)) and len(ids) <= 48
            # each context token's offsets cut out exactly its text
            for i in inside:
                piece = tok.convert_ids_to_tokens(ids[i]).removeprefix("##")
                assert context[offsets[i][0] : offsets[i][1]].lower() == piece
            if seen:
                assert seen[-1][-8:] == [ids[i] for i in inside][:8]  # doc_stride tokens shared with the last window
            seen.append([ids[i] for i in inside])
            if start:  # a window holding the answer labels its tokens; the others the no-answer position
                assert context[offsets[start][0] : offsets[end][1]] == row["answers"][0]
            else:
                assert end == 0
        assert set(context_ids) == {t for window in seen for t in window}  # the windows cover the context
        if row["answers"]:
            assert any(row["start_positions"])
        else:
            assert not any(row["start_positions"]) and not any(row["end_positions"])


# -- postprocessing ---------------------------------------------------------------------------------------------
def logits(values: dict[int, float], length: int = 8) -> torch.Tensor:
    out = torch.full((length,), -10.0)
    for i, v in values.items():
        out[i] = v
    return out


def test_window_spans_obey_order_length_and_context():
    context = torch.tensor([[False, False, True, True, True, True, True, False]])
    # (0, 0) scores most but is not context; (6, 5) runs backwards; (2, 5) is 4 tokens long; (6, 6) is fine
    start = logits({0: 9, 6: 5, 2: 4, 4: 1})[None]
    end = logits({0: 9, 5: 6, 6: 4, 4: 2})[None]
    best, first, last = window_spans(start, end, context, max_answer_length=3)
    assert (first.item(), last.item()) == (6, 6) and best.item() == pytest.approx(9.0)
    best, first, last = window_spans(start, end, context, max_answer_length=4)
    assert (first.item(), last.item()) == (2, 5) and best.item() == pytest.approx(10.0)
    best, *_ = window_spans(start, end, torch.zeros_like(context), max_answer_length=3)
    assert best.item() == float("-inf")  # no context token: no span


def test_best_answers_over_windows_and_null_threshold():
    context = "alpha beta gamma delta"
    # two windows of one question: window 0 holds "alpha beta", window 1 "gamma delta"
    offsets = torch.tensor([[[-1, -1], [0, 5], [6, 10], [-1, -1]], [[-1, -1], [11, 16], [17, 22], [-1, -1]]])
    start = torch.stack([logits({0: 2.0, 1: 1.0}, 4), logits({0: 0.5, 2: 3.0}, 4)])
    end = torch.stack([logits({0: 1.0, 2: 1.5}, 4), logits({0: 0.5, 2: 2.0}, 4)])
    owner = torch.tensor([0, 0])
    pick = partial(best_answers, start, end, offsets, owner, [context], 30)
    # best span: "delta" (3 + 2 = 5) in window 1; null score: the lower of 2 + 1 and 0.5 + 0.5, i.e. 1
    assert pick(0.0) == [{"answer": "delta", "start": 17, "end": 22, "score": 5.0}]
    assert pick(-4.5) == [{"answer": "", "start": None, "end": None, "score": 1.0}]  # 1 > 5 - 4.5
    assert pick(-3.5)[0]["answer"] == "delta"  # 1 < 5 - 3.5
    assert pick(None)[0]["answer"] == "delta"
    assert best_answers(start, end, offsets, owner, [context], 1, 0.0)[0]["answer"] == "delta"
    # two questions in one batch, one window each
    two = best_answers(start, end, offsets, torch.tensor([0, 1]), ["alpha beta", context], 30, 0.0)
    assert two[0]["answer"] == "" and two[0]["score"] == 3.0  # null 3 > best 1 + 1.5 = 2.5
    assert two[1]["answer"] == "delta"


# -- metrics ----------------------------------------------------------------------------------------------------
def test_normalisation_and_scores_by_hand():
    assert normalize_answer("  The  Quick, brown FOX!  ") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert score(["Denver Broncos"], "the Denver Broncos!") == (1, 1.0)
    em, f1 = score(["Denver Broncos"], "Broncos win")  # 1 shared of 2 and 2: P = R = 1/2
    assert em == 0 and f1 == pytest.approx(0.5)
    assert score(["a b c d", "b"], "b") == (1, 1.0)  # the best gold counts
    em, f1 = score(["x y z w"], "y z")  # P = 1, R = 1/2
    assert f1 == pytest.approx(2 / 3)
    assert score([], "") == (1, 1.0) and score([], "anything") == (0, 0.0)  # unanswerable: the empty answer
    assert score(["The"], "") == (1, 1.0)  # a gold that normalises to nothing is dropped, as the script does
    assert score(["one two one"], "one one one")[1] == pytest.approx(2 / 3)  # tokens counted with multiplicity


def test_squad_scores_breakdown_and_agreement_with_torchmetrics():
    preds = ["Denver Broncos", "the 1920s", "", "a cat", "", "Paris France"]
    golds = [["Denver Broncos", "Broncos"], ["1920s"], ["Chicago"], [], [], ["Paris"]]
    metric = SquadScores()
    metric.update(preds[:3], golds[:3])
    metric.update(preds[3:], golds[3:])
    out = {k: v.item() for k, v in metric.compute().items()}
    has = [score(g, p) for p, g in zip(preds, golds) if g]
    assert out["has_ans_exact"] == pytest.approx(100 * 2 / 4) and out["no_ans_exact"] == pytest.approx(50.0)
    assert out["has_ans_f1"] == pytest.approx(100 * sum(f for _, f in has) / 4)
    assert out["exact"] == pytest.approx(100 * 3 / 6) and out["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3 + 1) / 6)
    # torchmetrics' SQuAD (v1.1) agrees on the answerable questions
    answerable = [(str(i), p, g) for i, (p, g) in enumerate(zip(preds, golds)) if g]
    reference = tm_squad(
        [{"prediction_text": p, "id": i} for i, p, _ in answerable],
        [{"answers": {"text": g, "answer_start": [0] * len(g)}, "id": i} for i, _, g in answerable],
    )
    assert out["has_ans_exact"] == pytest.approx(reference["exact_match"].item())
    assert out["has_ans_f1"] == pytest.approx(reference["f1"].item())
    only_has = SquadScores()
    only_has.update(["x"], [["x"]])
    assert set(only_has.compute()) == {"exact", "f1", "has_ans_exact", "has_ans_f1"}


# -- reading ----------------------------------------------------------------------------------------------------
def test_read_squad_v1_v2_and_counted_drops(tmp_path):
    doc = squad_doc(1)
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"].append({"text": "wrong", "answer_start": 0})
    del qas[1]["is_impossible"]
    qas[2]["answers"] = [{"text": "", "answer_start": 0}]  # a blank answer (TyDi's dev copy has only such)
    qas[-1] = {"id": "v2-no-flag", "question": "Who?", "answers": []}  # no answers, no flag: unanswerable
    path = tmp_path / "d.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(
        InputError,
        match=r"d\.json: article 0 paragraph 0 question 0 \(id p0q0\): answer 'wrong' "
        r"does not match the context at 0",
    ):
        read_squad(str(path), labelled=True)
    cols, counts = read_squad(str(path), labelled=True, drop_bad_answers=True)
    assert counts == {"dropped_answers": 2, "skipped_questions": 1}  # p0q2 lost its only answer
    assert "p0q2" not in cols["id"] and cols["answers"][cols["id"].index("p0q0")] == ["1"]
    assert cols["answers"][-1] == [] and cols["id"][-1] == "v2-no-flag"
    cols, counts = read_squad(str(path), labelled=False)  # predict: answers are not read
    assert len(cols["id"]) == 9 and not counts


BAD = {  # what is wrong with one question of a SQuAD file -> what the one-line refusal must say
    "not json": (lambda d: "not json {", ["is not JSON"]),
    "not squad": (lambda d: json.dumps([{"context": "c", "question": "q"}]), ["is not SQuAD JSON"]),
    "no id": (
        lambda d: d["data"][0]["paragraphs"][0]["qas"][1].__delitem__("id"),
        ["article 0 paragraph 0 question 1 has no id"],
    ),
    "blank question": (
        lambda d: d["data"][0]["paragraphs"][0]["qas"][2].update(question="  "),
        ["(id p0q2): the question is"],
    ),
    "empty context": (lambda d: d["data"][0]["paragraphs"][0].update(context=""), ["(id p0q0): the context is empty"]),
    "start out of range": (
        lambda d: d["data"][0]["paragraphs"][0]["qas"][3]["answers"][0].update(answer_start=10_000),
        ["(id p0q3)", "answer_start 10000 lies outside the context"],
    ),
    "text mismatch": (
        lambda d: d["data"][0]["paragraphs"][0]["qas"][3]["answers"][0].update(text="9999"),
        ["(id p0q3)", "answer '9999' does not match"],
    ),
    "blank answer": (
        lambda d: d["data"][0]["paragraphs"][0]["qas"][4].update(answers=[{"text": "", "answer_start": 0}]),
        ["(id p0q4)", "answer's text is empty"],
    ),
    "answerable without answers": (
        lambda d: d["data"][0]["paragraphs"][0]["qas"][5].update(answers=[]),
        ["(id p0q5)", "has no answers"],
    ),
}


def bad_file(directory, case: str):
    doc = squad_doc(1)
    text = BAD[case][0](doc)
    path = directory / "bad.json"
    path.write_text(text if isinstance(text, str) else json.dumps(doc))
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_naming_file_and_question(tmp_path, case):
    with pytest.raises(InputError) as refused:
        read_squad(str(bad_file(tmp_path, case)), labelled=True)
    assert str(tmp_path / "bad.json") in str(refused.value) and all(n in str(refused.value) for n in BAD[case][1])


@pytest.mark.parametrize("case", ["not squad", "no id", "text mismatch"])
def test_bad_input_through_the_cli_is_one_line(workdir, tiny_backbone, case):  # noqa: F811
    good = workdir / "good.json"
    good.write_text(json.dumps(squad_doc(1)))
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli(
            "fit",
            "-c",
            str(REPO / "configs/finetune/squad.yaml"),
            "--model.backbone",
            str(tiny_backbone),
            *SMALL,
            "--data.train_file",
            str(good),
            "--data.val_file",
            str(bad_file(workdir, case)),
            "--trainer.logger",
            "false",
        )
    assert exit_info.value.code == 2
    lines = err.getvalue().strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in err.getvalue(), lines
    assert "bad.json" in lines[-1] and all(n in lines[-1] for n in BAD[case][1]), lines[-1]


# -- training -----------------------------------------------------------------------------------------------------
def year_doc(n: int = 12, words: int = 40) -> dict:
    """One question per paragraph, "In which year?": the one year among filler words, at a random place (in some
    window of the context), or none (every 4th: unanswerable)."""
    rng, data = random.Random(0), []
    for p in range(n):
        context = [rng.choice(FILLER) for _ in range(words)]
        qa = {"id": f"y{p}", "question": "In which year?", "answers": [], "is_impossible": True}
        if p % 4 != 3:
            context.insert(rng.randrange(words), str(1950 + p))
            qa.update(
                answers=[{"text": str(1950 + p), "answer_start": " ".join(context).index(str(1950 + p))}],
                is_impossible=False,
            )
        data.append({"paragraphs": [{"context": " ".join(context), "qas": [qa]}]})
    return {"data": data}


def test_overfits_a_small_set_to_exact_answers(tiny_backbone, tmp_path):  # noqa: F811
    """What the window labels teach, the postprocessing reads back: the spans and no-answers of the training set."""
    path = tmp_path / "years.json"
    path.write_text(json.dumps(year_doc()))
    dm = data(
        tiny_backbone,
        path,
        cache_dir=str(tmp_path / "cache"),
        max_length=24,
        doc_stride=4,
        max_question_length=8,
        batch_size=64,
        eval_batch_size=64,
    )
    model = QuestionAnswering(
        str(tiny_backbone),
        data=dm.contract,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        warmup_steps=0,
        lr_schedule="constant",
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=80,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=80,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert len(dm.splits["train"]) > 2 * len(year_doc()["data"])  # (several windows per context)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert metrics["val/exact"] == metrics["val/has_ans_exact"] == metrics["val/no_ans_exact"] == 100.0, metrics


@pytest.mark.parametrize(
    "mode,trained",
    [
        (Full(), "all"),
        (Frozen(), "head"),
        (TopK(k=1), "top"),
        (LayerwiseLRDecay(decay=0.5), "all"),
        (GradualUnfreezing(every_n_steps=100), "head"),
        (LoRA(r=2, alpha=4, dropout=0.0), "lora"),
    ],
)
def test_every_mode_trains_the_span_head(tiny_backbone, squad_file, tmp_path, mode, trained):  # noqa: F811
    dm = data(tiny_backbone, squad_file, cache_dir=str(tmp_path / "cache"))
    model = QuestionAnswering(
        str(tiny_backbone),
        data=dm.contract,
        trainability=mode,
        warmup_steps=0,
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
    )
    before = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    ).fit(model, dm)
    changed = {n for n, p in model.model.named_parameters() if not torch.equal(p, before[n])}
    assert any("qa_outputs" in n for n in changed), changed  # the span head always trains
    expected = {
        "all": lambda n: True,
        "head": lambda n: "qa_outputs" in n,
        "top": lambda n: "qa_outputs" in n or "layer.1." in n,
        "lora": lambda n: "lora_" in n or "qa_outputs.modules_to_save" in n,
    }[trained]
    assert changed == {n for n in before if expected(n)}
    if trained == "lora":  # the merged export answers as the adapted model does
        out = model.export_hf(tmp_path / "hf")
        merged = AutoModelForQuestionAnswering.from_pretrained(out).eval()
        batch = next(iter(dm.val_dataloader()))
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        model.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(
                merged(**inputs).start_logits, model.model(**inputs).start_logits, rtol=1e-4, atol=1e-5
            )


def test_cli_fit_validate_predict_and_export(workdir, tiny_backbone, squad_file):  # noqa: F811
    args = [
        "-c",
        str(REPO / "configs/finetune/squad.yaml"),
        *QUIET,
        "--model.backbone",
        str(tiny_backbone),
        "--data.val_file",
        str(squad_file),
        *SMALL,
    ]
    cli(
        "fit",
        *args,
        "--data.train_file",
        f"[{squad_file}, {squad_file}]",
        "--trainer.max_epochs",
        "1",
        "--data.batch_size",
        "16",
    )
    run = only_run_dir(workdir, "squad")
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/exact", "val/f1", "val/loss", "val/has_ans_f1", "val/no_ans_f1"} <= set(metrics)
    assert 0 <= metrics["val/exact"] <= metrics["val/f1"] <= 100

    hf = run / "hf"
    model = AutoModelForQuestionAnswering.from_pretrained(hf)
    assert type(model).__name__ == "BertForQuestionAnswering"
    cli("validate", *args, "--model.backbone", str(hf))
    validated = json.loads((only_run_dir(workdir, "squad") / "validate_metrics.json").read_text())
    assert validated["val/f1"] == pytest.approx(metrics["val/f1"]) and validated["val/loss"] == pytest.approx(
        metrics["val/loss"], rel=1e-4
    )

    cli(
        "predict",
        *args,
        "--model.backbone",
        str(hf),
        "--data.val_file",
        "null",
        "--data.predict_file",
        str(squad_file),
        "--model.predictions_file",
        str(workdir / "pred.jsonl"),
        "--model.null_threshold",
        "null",
    )
    rows = [json.loads(line) for line in (workdir / "pred.jsonl").read_text().splitlines()]
    doc = squad_doc()
    questions = [
        (q["id"], q["question"], a["paragraphs"][0]["context"]) for a in doc["data"] for q in a["paragraphs"][0]["qas"]
    ]
    assert [(r["id"], r["question"]) for r in rows] == [(i, q) for i, q, _ in questions]
    for row, (_, _, context) in zip(rows, questions):
        assert list(row) == ["id", "question", "answer", "start", "end", "score"]
        assert row["answer"] and context[row["start"] : row["end"]] == row["answer"]  # null_threshold null: a span


def test_export_loads_in_the_question_answering_pipeline(tiny_backbone, squad_file, tmp_path):  # noqa: F811
    from transformers.pipelines import SUPPORTED_TASKS, pipeline

    if "question-answering" not in SUPPORTED_TASKS:
        pytest.skip("this transformers has no question-answering pipeline (version 5 removed it)")
    dm = data(tiny_backbone, squad_file, cache_dir=str(tmp_path / "cache"))
    out = QuestionAnswering(str(tiny_backbone), data=dm.contract).export_hf(tmp_path / "hf")
    answer = pipeline("question-answering", model=str(out), device="cpu")(
        question="How many coins does the red box hold?", context=squad_doc()["data"][0]["paragraphs"][0]["context"]
    )
    assert {"answer", "start", "end", "score"} <= set(answer)


def test_measured_data_reads_cleanly():
    """The shared data the README's numbers use: TyDi train's ids repeat (counted), its dev copy has no gold answers
    (refused for validation), MLQA and SQuAD 2.0 read as they are."""
    tydi = shared_file("tydiqa_goldp/tydiqa.goldp.en.train.json")
    cols, _ = read_squad(str(tydi), labelled=True)
    assert len(cols["id"]) == 3696 and len(set(cols["id"])) < 100
    cols, _ = read_squad(str(shared_file("squad_v2_cs224n/dev-v2.0.json")), labelled=True)
    assert len(cols["id"]) == 6078 and sum(not a for a in cols["answers"]) == 3168
    assert len(read_squad(str(shared_file("mlqa/dev-context-en-question-en.json")), labelled=True)[0]["id"]) == 1148
    with pytest.raises(InputError, match="answer's text is empty"):
        read_squad(str(shared_file("tydiqa_goldp/tydiqa.goldp.en.dev.json")), labelled=True)
