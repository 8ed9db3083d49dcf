"""A seeded slice of the CLI fuzzer (tests/cli_fuzz.py): option values drawn from every console script's own config
and signatures, every draw held to the contract (exit 0 | exit 2 with one `error:` line | a stopped run's one line;
never a traceback, a changed earlier run or a refused run's leftovers). The long run: benchmarks/fuzz_cli.py.
`LP_FUZZ_DRAWS` / `LP_FUZZ_SEED` change the slice."""

from __future__ import annotations

import os

import cli_fuzz
import pytest
from conftest import minilm_dir

DRAWS = int(os.environ.get("LP_FUZZ_DRAWS", "24"))
SEED = int(os.environ.get("LP_FUZZ_SEED", "20240"))


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    minilm_dir()  # skips without the offline encoder (its tokenizer is the GLUE backbone's)
    return cli_fuzz.setup(tmp_path_factory.mktemp("fuzz") / "world")


def test_every_console_script_is_drawn_from_its_own_options(fuzz_world):
    _, scripts, families = fuzz_world
    assert {f.script for f in families} == set(scripts)
    fit = next(f for f in families if f.name == "fit")
    # the printed config and the signatures give types, Literal choices and paths
    assert (
        "--trainer.accumulate_grad_batches" in fit.options and "0" in fit.options["--trainer.accumulate_grad_batches"]
    )
    assert (
        "bogus" in fit.options["--model.init_args.lr_schedule"]
        and "wsd" in fit.options["--model.init_args.lr_schedule"]
    )
    assert any("trunc_30k.ckpt" in v for v in fit.options["--ckpt_path"])
    export = next(f for f in families if f.script == "lightning-pretrain-export")
    assert any("random.ckpt" in v for v in export.options["checkpoint"])


def test_a_seeded_slice_of_draws_keeps_the_contract(fuzz_world):
    world, scripts, families = fuzz_world
    findings, stats = cli_fuzz.fuzz(world, scripts, families, DRAWS, SEED, timeout=180)
    assert stats["draws"] == DRAWS
    assert not findings, "\n".join(f"{f.family} {' '.join(f.changed)}: {f.what}" for f in findings)


def test_the_contract_check_catches_what_it_must(fuzz_world):
    """The checker itself: a planted traceback, a second error line and a changed earlier file are findings."""
    world, _, families = fuzz_world
    fam = families[0]
    draw = cli_fuzz.Draw(fam.name, fam.base, [])
    assert cli_fuzz.verdict(fam, draw, ValueError("boom"), "", "", [], []).startswith("traceback")
    assert cli_fuzz.verdict(fam, draw, 2, "", "error: a\nerror: b\n", [], []).startswith("exit 2 with 2")
    assert cli_fuzz.verdict(fam, draw, 2, "", "error: a\n", ["logs/earlier/version_0/config.yaml"], [])
    assert cli_fuzz.verdict(fam, draw, 2, "", "error: a\n", [], ["logs/draw/version_0/"])
    assert cli_fuzz.verdict(fam, draw, 2, "", "error: a\n", [], []) is None
    assert cli_fuzz.verdict(fam, draw, 0, "", "", [], []) is None
