"""SequenceClassifier end to end: one-batch overfit, the CLI with the task configs and modes, export loaded by
`pipeline("text-classification")`, predict, regression and pairs, fine-tuning a pretraining export, the GLUE runner."""

import io
import json
from contextlib import redirect_stderr
from functools import partial

import lightning as L
import pytest
import torch
from conftest import FAST, REPO, cli, only_run_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_finetune_modes import NEGATIVE, POSITIVE, sentiment_csv, tiny_backbone  # noqa: F401 (fixtures)
from transformers import AutoModelForSequenceClassification, pipeline

from lightning_pretrain.data import TextClassification
from lightning_pretrain.finetune import SequenceClassifier, glue

QUIET = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]


def config(name: str) -> list[str]:
    return ["-c", str(REPO / "configs" / "finetune" / name)]


@pytest.fixture
def sst2_like(tmp_path):
    """SST-2's layout (sentence<TAB>label with a header) in a directory, as --data.source takes it."""
    d = tmp_path / "sst2"
    d.mkdir()
    rows = [(f"{POSITIVE[i % 6]} take {i}", 1) if i % 2 else (f"{NEGATIVE[i % 6]} take {i}", 0) for i in range(64)]
    for split in ("train", "dev"):
        (d / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    return d


def scalars(run_dir) -> dict[str, list]:
    acc = EventAccumulator(str(run_dir)).Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_one_batch_overfit_reaches_full_train_accuracy(tiny_backbone, sentiment_csv, tmp_path):  # noqa: F811
    dm = TextClassification(
        train_file=str(sentiment_csv),
        val_file=str(sentiment_csv),
        tokenizer=str(tiny_backbone),
        batch_size=16,
        cache_dir=str(tmp_path / "cache"),
    )
    model = SequenceClassifier(
        str(tiny_backbone),
        data=dm.publish(),
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        warmup_steps=0,
        lr_schedule="constant",
    )
    accuracy = []

    class Track(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            accuracy.append(trainer.callback_metrics["train/acc"].item())

    trainer = L.Trainer(
        accelerator="cpu",
        overfit_batches=1,
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Track()],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, dm)
    assert accuracy[0] < 0.9 and accuracy[-1] == 1.0


def test_cli_fit_gradual_logs_exports_and_predicts(workdir, tiny_backbone, sst2_like):  # noqa: F811
    cli(
        "fit",
        *config("sst2.yaml"),
        *config("modes/gradual.yaml"),
        *QUIET,
        "--model.backbone",
        str(tiny_backbone),
        "--data.source",
        str(sst2_like),
        "--trainer.max_epochs",
        "2",
        "--model.trainability.every_n_steps",
        "1",
    )
    run = only_run_dir(workdir, "sst2")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and {"val/acc", "val/f1", "val/mcc", "val/f1_pos", "val/loss"} <= set(metrics)
    assert json.loads((run / "labels.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    tags = scalars(run)
    assert [v for _, v in tags["train/unfrozen_groups"]] == [1, 2, 3, 4]
    assert tags["train/trainable_params"][0][1] < tags["train/total_params"][0][1]
    assert tags["lr-AdamW/layer.0"][0][1] == 0.0 and tags["lr-AdamW/head"][0][1] > 0.0

    hf = run / "hf"
    assert AutoModelForSequenceClassification.from_pretrained(hf).config.label2id == {"negative": 0, "positive": 1}
    out = pipeline("text-classification", model=str(hf), device="cpu")(["a wonderful moving film", "a dull mess"])
    assert {o["label"] for o in out} <= {"negative", "positive"}

    texts = workdir / "texts.txt"
    texts.write_text("a wonderful moving film\nboring from start to end\n")
    cli(
        "predict",
        *config("sst2.yaml"),
        "--model.backbone",
        str(hf),
        "--data.source",
        "null",
        "--data.predict_file",
        str(texts),
        "--model.predictions_file",
        str(workdir / "pred.jsonl"),
        "--trainer.enable_progress_bar",
        "false",
    )
    rows = [json.loads(line) for line in (workdir / "pred.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts.read_text().splitlines()
    for r in rows:
        assert r["label"] in {"negative", "positive"} and sum(r["probabilities"].values()) == pytest.approx(1, 1e-4)
        assert r["score"] == max(r["probabilities"].values())

    cli(
        "validate",
        *config("sst2.yaml"),
        "--model.backbone",
        str(hf),
        "--data.source",
        str(sst2_like),
        "--trainer.enable_progress_bar",
        "false",
    )
    validated = json.loads((only_run_dir(workdir, "sst2") / "validate_metrics.json").read_text())
    # the exported model scores the validation split exactly as the trained one did at the end of fit
    assert validated["val/acc"] == pytest.approx(metrics["val/acc"])
    assert validated["val/loss"] == pytest.approx(metrics["val/loss"], rel=1e-4)


def test_cli_regression_on_pairs(workdir, tiny_backbone):  # noqa: F811
    """STS-B's layout: sentence pairs with a 0-5 score column; Pearson and Spearman are reported."""
    d = workdir / "STS-B"
    d.mkdir()
    pairs = [
        ("A man plays a guitar.", "A man is playing guitar.", 4.8),
        ("A cat sleeps.", "A car drives.", 0.2),
        ("Kids play football.", "Children play soccer.", 4.0),
        ("It rains.", "The sun is out.", 0.8),
    ] * 8
    tsv = "index\tsentence1\tsentence2\tscore\n" + "".join(f"{i}\t{a}\t{b}\t{s}\n" for i, (a, b, s) in enumerate(pairs))
    (d / "train.tsv").write_text(tsv)
    (d / "dev.tsv").write_text(tsv)
    cli(
        "fit",
        *config("glue/stsb.yaml"),
        *config("modes/llrd.yaml"),
        *QUIET,
        "--model.backbone",
        str(tiny_backbone),
        "--data.source",
        str(d),
        "--data.label_column",
        "score",
        "--trainer.max_epochs",
        "2",
    )
    metrics = json.loads((only_run_dir(workdir, "stsb") / "metrics.json").read_text())
    assert {"val/pearson", "val/spearman", "val/mse"} <= set(metrics)
    model = AutoModelForSequenceClassification.from_pretrained(only_run_dir(workdir, "stsb") / "hf")
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_cli_mnli_pairs_from_json_objects(workdir, tiny_backbone):  # noqa: F811
    rows = [
        {"text_a": "A man plays.", "text_b": "Someone plays.", "label": "entailment"},
        {"text_a": "A man plays.", "text_b": "Nobody plays.", "label": "contradiction"},
        {"text_a": "A man plays.", "text_b": "A tall man plays.", "label": "neutral"},
    ] * 6
    path = workdir / "mnli.json"
    path.write_text(json.dumps({str(i): r for i, r in enumerate(rows)}))
    cli(
        "fit",
        *config("mnli.yaml"),
        *config("modes/frozen.yaml"),
        *QUIET,
        "--model.backbone",
        str(tiny_backbone),
        "--data.source",
        "null",
        "--data.train_file",
        str(path),
        "--data.val_file",
        str(path),
        "--data.text_column",
        "text_a",
        "--data.text_pair_column",
        "text_b",
        "--trainer.max_epochs",
        "1",
    )
    run = only_run_dir(workdir, "mnli")
    assert "val/acc" in json.loads((run / "metrics.json").read_text())
    config_json = json.loads((run / "hf" / "config.json").read_text())
    assert config_json["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}


@pytest.mark.parametrize("objective", ["mlm_tiny", "clm_tiny"])
def test_finetune_from_a_pretraining_export(workdir, tiny_corpus, sst2_like, objective):
    """Pretrain a tiny BERT / GPT-2 here, then fine-tune a classifier on its `hf/` export (its own tokenizer)."""
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain" / f"{objective}.yaml"),
        *FAST,
        "--data.source",
        str(tiny_corpus),
        "--data.vocab_size",
        "500",
    )
    export = only_run_dir(workdir, objective) / "hf"
    cli(
        "fit",
        *config("sst2.yaml"),
        *config("modes/full.yaml"),
        *QUIET,
        "--model.backbone",
        str(export),
        "--data.source",
        str(sst2_like),
        "--trainer.max_epochs",
        "1",
    )
    run = only_run_dir(workdir, "sst2")
    assert "val/acc" in json.loads((run / "metrics.json").read_text())
    out = pipeline("text-classification", model=str(run / "hf"), device="cpu")("a wonderful moving film")
    assert out[0]["label"] in {"negative", "positive"}


def test_glue_runner_writes_a_table(workdir, tiny_backbone):  # noqa: F811
    glue_dir = workdir / "glue"
    (glue_dir / "CoLA").mkdir(parents=True)
    (glue_dir / "STS-B").mkdir()
    cola = "".join(
        f"src\t{i % 2}\t\t{'The cat sat on the mat.' if i % 2 else 'Cat the mat on sat.'} {i}\n" for i in range(32)
    )
    for split in ("train", "dev"):
        (glue_dir / "CoLA" / f"{split}.tsv").write_text(cola)
        (glue_dir / "STS-B" / f"{split}.tsv").write_text(
            "index\tsentence1\tsentence2\tscore\n"
            + "".join(f"{i}\tA dog runs {i}.\tA dog is running.\t{i % 5}.0\n" for i in range(32))
        )
    (glue_dir / "MRPC").mkdir()
    mrpc = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
        f'{i % 2}\t{i}\t{i + 1}\tThe firm said " profits rose {i} .\t{"Profits rose ." if i % 2 else "It rained ."}\n'
        for i in range(32)
    )
    for split in ("train", "dev"):
        (glue_dir / "MRPC" / f"{split}.tsv").write_text(mrpc)
    status = glue.main(
        [
            "--backbone",
            str(tiny_backbone),
            "--tasks",
            "cola",
            "mrpc",
            "stsb",
            "--glue_dir",
            str(glue_dir),
            "--out",
            str(workdir / "runs"),
            "--in_process",
            *QUIET,
            "--trainer.max_epochs",
            "1",
        ]
    )
    assert status == 0
    table = json.loads((workdir / "runs" / "glue_full.json").read_text())
    cola_score, stsb = table["tasks"]["cola"]["score"], table["tasks"]["stsb"]
    assert cola_score == pytest.approx(100 * table["tasks"]["cola"]["metrics"]["val/mcc"])
    assert stsb["score"] == pytest.approx(50 * (stsb["metrics"]["val/pearson"] + stsb["metrics"]["val/spearman"]))
    mrpc = table["tasks"]["mrpc"]
    assert mrpc["score"] == pytest.approx(50 * (mrpc["metrics"]["val/f1_pos"] + mrpc["metrics"]["val/acc"]))
    assert table["average"] == pytest.approx((cola_score + mrpc["score"] + stsb["score"]) / 3)
    markdown = (workdir / "runs" / "glue_full.md").read_text()
    assert "| CoLA | mcc |" in markdown and "| MRPC | f1_pos/acc |" in markdown and "**average**" in markdown


def test_cli_reports_a_missing_column_in_one_line(workdir, tiny_backbone, sst2_like):  # noqa: F811
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        cli(
            "fit",
            *config("sst2.yaml"),
            "--model.backbone",
            str(tiny_backbone),
            "--data.source",
            str(sst2_like),
            "--data.text_column",
            "review",
        )
    assert exit_info.value.code == 2
    assert "error: column 'review' not found" in err.getvalue() and "available: sentence, label" in err.getvalue()
