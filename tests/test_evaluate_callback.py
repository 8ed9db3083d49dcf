"""The during-training `ZeroShot` callback: it logs `eval/<task>/<metric>` on the live model, leaves the per-step
training losses of a run exactly as without it (dropout on, same seed: the RNG streams are restored), works for a
masked LM (pseudo-log-likelihood), and under `ddp_spawn` with 2 processes every rank scores its share."""

from __future__ import annotations

import pytest
from conftest import ENGLISH, REPO, cli
from test_evaluate_harness import write_jsonl
from test_resume import events_files, free_port, train_losses

TINY = [
    "--model.init_args.model.init_args.n_embd",
    "32",
    "--model.init_args.model.init_args.n_layer",
    "1",
    "--model.init_args.model.init_args.n_head",
    "2",
    "--model.init_args.model.init_args.n_positions",
    "64",
    "--model.init_args.model.init_args.resid_pdrop",
    "0.1",
    "--model.init_args.model.init_args.attn_pdrop",
    "0.1",
    "--model.init_args.warmup_steps",
    "2",
    "--data.vocab_size",
    "300",
    "--data.seq_len",
    "32",
    "--data.batch_size",
    "8",
    "--trainer.max_steps",
    "6",
    "--trainer.val_check_interval",
    "3",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--export.enabled",
    "false",
]
LIMIT = 7  # documents per evaluation: split 4 + 3 over two ranks


@pytest.fixture
def setup(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n\n".join(f"{ENGLISH[i % len(ENGLISH)]} Paragraph {i} has {i * 7 % 13} extra words." for i in range(200))
        + "\n"
    )
    words = " ".join(ENGLISH).lower().replace(".", "").split()
    choices = [[" ".join(words[i + 8 + 3 * j : i + 11 + 3 * j]) for j in range(3)] for i in range(10)]
    mc = write_jsonl(
        tmp_path / "mc.jsonl",
        [{"query": " ".join(words[i : i + 8]), "choices": choices[i], "gold": i % 3} for i in range(10)],
    )
    return corpus, mc


def zero_shot(mc, every: int = 2) -> list[str]:
    return [
        "--trainer.callbacks+=lightning_pretrain.callbacks.zero_shot.ZeroShot",
        "--trainer.callbacks.tasks",
        f"[{mc}]",
        "--trainer.callbacks.every_n_steps",
        str(every),
        "--trainer.callbacks.limit",
        str(LIMIT),
        "--trainer.callbacks.batch_size",
        "4",
    ]


def scalars(run_dir, prefix: str) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events_files(run_dir)[-1]), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"] if tag.startswith(prefix)}


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_training_losses_are_unchanged_by_the_callback(setup, tmp_path, monkeypatch, objective):
    corpus, mc = setup
    config = str(REPO / f"configs/pretrain/{objective}_tiny.yaml")
    args = ["-c", config, *(TINY if objective == "clm" else MLM_TINY), "--data.source", str(corpus)]
    runs = {}
    for name, extra in (("plain", []), ("with_eval", zero_shot(mc))):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        cli("fit", *args, *extra, "--trainer.logger.init_args.name", "run")
        runs[name] = tmp_path / name / "logs" / "run" / "version_0"
    assert train_losses(events_files(runs["with_eval"])[-1]) == train_losses(events_files(runs["plain"])[-1])
    logged = scalars(runs["with_eval"], "eval/")
    assert set(logged) == {"eval/mc/acc", "eval/mc/acc_norm"}
    assert sorted(logged["eval/mc/acc"]) == [2, 4, 6]
    assert all(0 <= v <= 1 for v in logged["eval/mc/acc"].values())


MLM_TINY = [
    "--model.init_args.model.init_args.hidden_size",
    "32",
    "--model.init_args.model.init_args.num_hidden_layers",
    "1",
    "--model.init_args.model.init_args.num_attention_heads",
    "2",
    "--model.init_args.model.init_args.intermediate_size",
    "64",
    "--model.init_args.model.init_args.max_position_embeddings",
    "64",
    "--model.init_args.model.init_args.hidden_dropout_prob",
    "0.1",
    *TINY[12:],
]


@pytest.mark.slow
def test_callback_logs_under_ddp_spawn_with_two_processes(setup, tmp_path, monkeypatch, capfd):
    corpus, mc = setup
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cli(
        "fit",
        "-c",
        str(REPO / "configs/pretrain/clm_tiny.yaml"),
        *TINY,
        "--data.source",
        str(corpus),
        "--trainer.strategy",
        "ddp_spawn",
        "--trainer.devices",
        "2",
        "--trainer.max_steps",
        "4",
        "--trainer.logger.init_args.name",
        "ddp",
        *zero_shot(mc),
    )
    logged = scalars(tmp_path / "logs" / "ddp" / "version_0", "eval/")
    assert sorted(logged["eval/mc/acc"]) == [2, 4]
    for values in logged.values():  # each value is over all LIMIT documents, not one rank's 4 or 3
        assert all(abs(v * LIMIT - round(v * LIMIT)) < 1e-4 for v in values.values()), values
    captured = capfd.readouterr()
    assert (captured.out + captured.err).count("zero-shot @ step") == 2  # printed by rank 0 only
