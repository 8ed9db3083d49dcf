"""benchmarks/pretraining_payoff.py: its statistics, budget parser and argument checks, and one tiny end-to-end run
(pretraining, both fine-tuning arms, the test scores and the paired gap) on a labelled table written here."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys

import pytest
import torch
from conftest import REPO

spec = importlib.util.spec_from_file_location("pretraining_payoff", REPO / "benchmarks" / "pretraining_payoff.py")
payoff = importlib.util.module_from_spec(spec)
sys.modules["pretraining_payoff"] = payoff
spec.loader.exec_module(payoff)


# -- statistics ------------------------------------------------------------------------------------------------------
def test_paired_stats_by_hand():
    # gaps 1, 3, 2 points: mean 2, sd 1, se 1/sqrt(3) = 0.57735, t(2) = 4.303, half-width 2.48434
    s = payoff.paired_stats([0.01, 0.03, 0.02])
    assert s["n"] == 3 and s["df"] == 2
    assert s["mean"] == pytest.approx(0.02)
    assert s["sd"] == pytest.approx(0.01)
    assert s["se"] == pytest.approx(0.0057735, abs=1e-7)
    assert s["t"] == 4.303
    assert s["ci95"] == pytest.approx([0.02 - 0.0248434, 0.02 + 0.0248434], abs=1e-6)
    # two pairs +10 / -10 points: mean 0, sd 14.1421, se 10, t(1) = 12.706
    s = payoff.paired_stats([0.1, -0.1])
    assert s["mean"] == pytest.approx(0.0, abs=1e-12) and s["se"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx([-1.2706, 1.2706])
    # five pairs: 2, 4, 4, 4, 6 -> mean 4, sd sqrt(2) = 1.41421, se 0.632456, t(4) = 2.776
    s = payoff.paired_stats([2.0, 4.0, 4.0, 4.0, 6.0])
    assert s["se"] == pytest.approx(0.632456, abs=1e-6)
    assert s["ci95"] == pytest.approx([4 - 2.776 * 0.632456, 4 + 2.776 * 0.632456], abs=1e-5)


def test_paired_stats_without_spread():
    one = payoff.paired_stats([0.05])
    assert one["n"] == 1 and one["mean"] == 0.05 and one["se"] is None and one["ci95"] is None
    assert payoff.paired_stats([])["mean"] is None


def test_t_critical():
    assert payoff.t_critical(1) == 12.706
    assert payoff.t_critical(9) == 2.262
    assert payoff.t_critical(35) == 2.042  # between table rows: the lower df's (wider, conservative)
    assert payoff.t_critical(500) == 1.96
    with pytest.raises(ValueError):
        payoff.t_critical(0)


def test_choose_lr_best_validation_then_lower_loss():
    assert payoff.choose_lr({1e-4: 0.6, 3e-4: 0.7, 1e-3: 0.65}) == 3e-4
    assert payoff.choose_lr({1e-3: 0.7, 1e-4: 0.7}, {1e-3: 0.50, 1e-4: 0.55}) == 1e-3
    assert payoff.choose_lr({1e-3: 0.7, 1e-4: 0.7}) == 1e-4
    assert payoff.choose_lr({1e-3: None, 1e-4: 0.5}) == 1e-4
    assert payoff.choose_lr({1e-3: None}) is None


def test_an_lr_chosen_at_the_sweep_s_end_for_most_seeds_is_noted():
    def results(pretrained, scratch):
        arms = {
            arm: {str(i + 1): {"lr": lr} for i, lr in enumerate(lrs)}
            for arm, lrs in (("pretrained", pretrained), ("scratch", scratch))
        }
        return {"setup": {"lrs": [2e-3, 2e-4, 6e-4], "seeds": [1, 2, 3]}, "arms": arms}

    notes = payoff.sweep_edges(results([2e-3, 2e-3, 6e-4], [2e-4, 6e-4, None]))
    assert len(notes) == 1 and notes[0].startswith("pretrained: the sweep's largest LR (0.002) was chosen for 2 of 3")
    notes = payoff.sweep_edges(results([6e-4, 2e-3, 2e-4], [2e-4, 2e-4, 6e-4]))
    assert len(notes) == 1 and notes[0].startswith("scratch: the sweep's smallest LR (0.0002) was chosen for 2 of 3")
    assert payoff.sweep_edges(results([6e-4, 6e-4, 2e-3], [6e-4, 2e-4, 2e-3])) == []


def test_split_labelled_seeded_and_disjoint():
    train, val = payoff.split_labelled(100, 50, 0.2, seed=1)
    assert len(train) == 40 and len(val) == 10 and not set(train) & set(val)
    assert train == sorted(train) and max(train + val) < 100
    assert (train, val) == payoff.split_labelled(100, 50, 0.2, seed=1)
    assert (train, val) != payoff.split_labelled(100, 50, 0.2, seed=2)
    with pytest.raises(ValueError, match="only 10"):
        payoff.split_labelled(10, 50, 0.2, seed=1)


# -- budget ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("30m", "00:00:30:00"),
        ("90s", "00:00:01:30"),
        ("1h", "00:01:00:00"),
        ("1h30m", "00:01:30:00"),
        ("36h", "01:12:00:00"),
        ("2d", "02:00:00:00"),
        ("20M", "00:00:20:00"),
        ("00:02:05:00", "00:02:05:00"),
    ],
)
def test_parse_budget(text, expected):
    assert payoff.parse_budget(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "abc", "0m", "1.5h", "m30", "-5m", "30 minutes", "00:25:00:00", "1:2:3", "30m1h"]
)
def test_parse_budget_refuses(text):
    with pytest.raises(ValueError):
        payoff.parse_budget(text)


# -- arguments -------------------------------------------------------------------------------------------------------
@pytest.fixture
def tables(tmp_path):
    """A labelled training table (60 rows, 2 labels) and a test table, both TSV with a header."""
    rng = random.Random(0)
    good, bad = "good great fine lovely superb".split(), "bad awful poor dull boring".split()
    filler = "the movie was a story film plot acting and it is with some very really".split()

    def rows(n, start):
        out = []
        for i in range(start, start + n):
            words = rng.sample(filler, 6) + [rng.choice(good if i % 2 else bad) for _ in range(2)]
            rng.shuffle(words)
            out.append(f"{' '.join(words)}\t{i % 2}")
        return "sentence\tlabel\n" + "\n".join(out) + "\n"

    (tmp_path / "train.tsv").write_text(rows(60, 0))
    (tmp_path / "test.tsv").write_text(rows(20, 100))
    return tmp_path / "train.tsv", tmp_path / "test.tsv"


def base(tables, *more):
    train, test = tables
    return [
        "--corpus",
        str(train),
        "--train_file",
        str(train),
        "--test_file",
        str(test),
        "--text_column",
        "sentence",
        "--label_column",
        "label",
        *more,
    ]


def test_arguments_defaults(tables):
    args = payoff.parse_args(base(tables, "--budget", "30m"))
    assert args.max_time == "00:00:30:00" and args.pretrain_steps is None
    assert args.finetune_epochs == 3 and args.finetune_steps is None
    assert args.lrs == [1e-4, 3e-4, 1e-3] and args.seeds == [1, 2, 3] and args.labels == 1000
    assert args.test_text_column == "sentence" and args.test_label_column == "label"
    assert args.corpus_text_column == "sentence" and args.test_label_offset == 0
    assert args.pretrain_config.endswith(("mlm_laptop.yaml", "mlm_tiny.yaml"))
    assert payoff.parse_args(base(tables, "--objective", "electra", "--pretrain_steps", "5")).pretrain_config.endswith(
        ("electra_laptop.yaml", "electra_tiny.yaml")
    )
    # header-less files: columns by index
    args = payoff.parse_args(base(tables, "--budget", "1h", "--text_column", "0", "--test_label_column", "0"))
    assert args.text_column == 0 and args.test_label_column == 0 and args.label_column == "label"


@pytest.mark.parametrize(
    "more,message",
    [
        ([], "one of the arguments --budget --pretrain_steps is required"),
        (["--budget", "30m", "--pretrain_steps", "5"], "not allowed with"),
        (["--budget", "soon"], "--budget"),
        (["--pretrain_steps", "0"], "--pretrain_steps must be positive"),
        (["--budget", "1m", "--labels", "1"], "--labels must be at least 2"),
        (["--budget", "1m", "--labels", "4", "--val_fraction", "0.9"], "leaves no training rows"),
        (["--budget", "1m", "--val_fraction", "1.5"], "--val_fraction"),
        (["--budget", "1m", "--finetune_steps", "5", "--finetune_epochs", "2"], "not both"),
        (["--budget", "1m", "--finetune_steps", "0"], "--finetune_steps must be positive"),
        (["--budget", "1m", "--lrs", "1e-3", "0"], "--lrs must be positive"),
        (["--budget", "1m", "--lrs", "1e-3", "1e-3"], "--lrs must be distinct"),
        (["--budget", "1m", "--seeds", "1", "1"], "--seeds must be distinct"),
        (["--budget", "1m", "--objective", "gpt"], "invalid choice"),
        (["--budget", "1m", "--label_names", "only"], "--label_names"),
        (["--budget", "1m", "--finetune_args", "--model.init_args.optimizer.init_args.lr 1"], "--lrs"),
        (["--budget", "1m", "--pretrain_args", "'unclosed"], "--pretrain_args"),
        (["--budget", "1m", "--pretrain_config", "nope.yaml"], "--pretrain_config: file not found"),
    ],
)
def test_arguments_refused(tables, capsys, more, message):
    with pytest.raises(SystemExit) as e:
        payoff.parse_args(base(tables, *more))
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_arguments_refuse_missing_and_shared_test_file(tables, capsys):
    train, test = tables
    with pytest.raises(SystemExit):
        payoff.parse_args(
            [
                "--corpus",
                str(train),
                "--train_file",
                str(train),
                "--test_file",
                str(train) + ".missing",
                "--budget",
                "1m",
            ]
        )
    assert "--test_file: file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        payoff.parse_args(
            ["--corpus", str(train), "--train_file", str(train), "--test_file", str(train), "--budget", "1m"]
        )
    assert "--test_file is --train_file" in capsys.readouterr().err


def test_labels_and_columns_checked_before_training(tables, tmp_path):
    """A wrong column or a label outside --label_names stops the script before any run starts."""
    with pytest.raises(SystemExit, match="no column 'text'"):
        payoff.main(base(tables, "--pretrain_steps", "3", "--text_column", "text", "--out", str(tmp_path / "o")))
    with pytest.raises(SystemExit, match="not one of"):
        payoff.main(
            base(
                tables,
                "--pretrain_steps",
                "3",
                "--label_names",
                "a",
                "b",
                "c",
                "--label_offset",
                "5",
                "--out",
                str(tmp_path / "o"),
            )
        )
    assert not (tmp_path / "o" / "pretrain_seed1").exists()


# -- end to end --------------------------------------------------------------------------------------------------------
def test_end_to_end_tiny(tables, workdir):
    out = workdir / "payoff"
    results = payoff.main(
        base(
            tables,
            "--pretrain_steps",
            "3",
            "--finetune_steps",
            "2",
            "--lrs",
            "1e-3",
            "--seeds",
            "1",
            "--labels",
            "40",
            "--label_names",
            "negative",
            "positive",
            "--out",
            str(out),
            "--json",
            str(workdir / "payoff.json"),
            "--in_process",
            "--pretrain_args",
            "--data.vocab_size 200 --data.seq_len 32 --data.batch_size 4 --data.val_fraction 0.2 "
            "--model.warmup_steps 1 --trainer.val_check_interval 2 --trainer.limit_val_batches 1",
            "--finetune_args",
            "--data.batch_size 8 --data.max_length 32",
        )
    )
    saved = json.loads((workdir / "payoff.json").read_text())
    assert saved["gap"] == results["gap"]
    for arm in ("pretrained", "scratch"):
        entry = saved["arms"][arm]["1"]
        assert entry["lr"] == 1e-3
        assert 0.0 <= entry["val_acc"] <= 1.0 and 0.0 <= entry["test_acc"] <= 1.0
    gap = saved["arms"]["pretrained"]["1"]["test_acc"] - saved["arms"]["scratch"]["1"]["test_acc"]
    assert saved["gap"]["n"] == 1 and saved["gap"]["per_seed"]["1"] == pytest.approx(gap)
    assert saved["gap"]["points"]["mean"] == pytest.approx(100 * gap) and saved["gap"]["ci95"] is None
    assert saved["setup"]["train_rows"] == 32 and saved["setup"]["val_rows"] == 8
    assert saved["setup"]["label_names"] == ["negative", "positive"]
    assert saved["setup"]["threads"] == torch.get_num_threads() >= 1  # a budget's steps depend on it
    assert f"3 steps on {torch.get_num_threads()} CPU threads" in (out / "payoff.md").read_text()
    pre = saved["pretraining"]["seed1"]
    assert pre["global_step"] == 3 and math.isfinite(pre["val_metrics"]["val/loss"]) and pre["wall_s"] > 0
    what = [c["what"] for c in saved["commands"]]
    assert what == [
        "pretrain seed1",
        "pretrained seed 1 lr 0.001",
        "pretrained seed 1 test (lr 0.001)",
        "scratch seed 1 lr 0.001",
        "scratch seed 1 test (lr 0.001)",
    ]
    assert all(c["status"] == 0 and c["command"].startswith("lightning-pretrain ") for c in saved["commands"])
    assert "--trainer.max_steps 3" in saved["commands"][0]["command"]
    # the scratch arm: the export's architecture and tokenizer, other weights
    assert (out / "scratch_seed1" / "model.safetensors").is_file()
    assert "scratch_seed1" in saved["commands"][3]["command"]
    # the seed's 40 labelled rows: 32 train, 8 choose the LR
    train = (out / "data" / "seed1" / "train.jsonl").read_text().splitlines()
    val = (out / "data" / "seed1" / "val.jsonl").read_text().splitlines()
    assert len(train) == 32 and len(val) == 8
    assert "Paired gap" in (out / "payoff.md").read_text() or "one seed" in (out / "payoff.md").read_text()


def fake_runner(tmp_path, monkeypatch):
    """A --reuse Runner whose "runs" only make their version folder, as the CLI would; and the list of its calls."""
    monkeypatch.chdir(tmp_path)
    runner = payoff.Runner(tmp_path / "out", reuse=True, in_process=False)
    calls = []

    def execute(full):
        calls.append(full)
        (tmp_path / "out" / "arm" / f"version_{len(calls) - 1}").mkdir(parents=True)
        return 0

    monkeypatch.setattr(runner, "_execute", execute)
    return runner, calls


def test_reuse_needs_the_same_command_and_the_same_config_files(tmp_path, monkeypatch):
    """--reuse takes a finished run of the same command only while the config files it names are unchanged (an
    edited recipe under the same path is another run; a record from before digests were kept matches by command)."""
    runner, calls = fake_runner(tmp_path, monkeypatch)
    config = tmp_path / "recipe.yaml"
    config.write_text("model: {lr: 1}\n")
    argv = ["-c", str(config), "--x", "1"]
    done = lambda run: True  # noqa: E731
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is False
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is True
    config.write_text("model: {lr: 2}\n")
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is False and len(calls) == 2
    record = tmp_path / "out" / "arm" / "version_1" / payoff.RECORD
    legacy = {k: v for k, v in json.loads(record.read_text()).items() if k != "configs"}
    record.write_text(json.dumps(legacy))
    config.write_text("model: {lr: 3}\n")
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is True


def test_reuse_needs_the_same_backbone_config(tmp_path, monkeypatch):
    """A scratch arm's backbone directory keeps its path while a new pretraining (another architecture) rewrites
    it: a fine-tune of the old random init must not be reused for the new one."""
    runner, calls = fake_runner(tmp_path, monkeypatch)
    backbone = tmp_path / "scratch_seed1"
    backbone.mkdir()
    (backbone / "config.json").write_text('{"hidden_size": 192}')
    argv = ["--model.backbone", str(backbone), "--x", "1"]
    done = lambda run: True  # noqa: E731
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is False
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is True
    (backbone / "config.json").write_text('{"hidden_size": 256}')
    assert runner.run("a", "fit", argv, "arm", done)["reused"] is False and len(calls) == 2
