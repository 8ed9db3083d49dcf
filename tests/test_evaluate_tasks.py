"""Task resolution and the gauntlet layouts, without a model: names, paths and `--data_dir` lookups, the shipped
delimiters, random baselines computed from the options, and the rows the lm-eval templates read."""

from __future__ import annotations

import pytest
import yaml
from test_evaluate_harness import write_jsonl

from lightning_pretrain.errors import InputError
from lightning_pretrain.evaluate import registry
from lightning_pretrain.evaluate.layouts import read_task_file


def test_names_paths_and_data_dir(tmp_path):
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir(), other.mkdir()
    mc = [{"query": "Question: q?\n", "choices": [" a ", "b"], "gold": 1}]
    write_jsonl(data / "piqa.jsonl", mc)
    write_jsonl(data / "my_task.jsonl", [{"context": "the cat", "continuation": "sat"}])
    write_jsonl(other / "piqa.jsonl", mc)
    specs = registry.resolve(["piqa", "my_task", str(other / "piqa.jsonl"), "some_lm_eval_task"], data_dir=data)
    assert [s.name for s in specs] == ["piqa", "my_task", "piqa_", "some_lm_eval_task"]
    assert [s.delimiter for s in specs[:3]] == ["\nAnswer: ", " ", "\nAnswer: "]  # a shipped name's, by file stem
    assert [s.file.layout for s in specs[:3]] == ["multiple_choice", "language_modeling", "multiple_choice"]
    assert specs[3].file is None and specs[3].lm_eval_name == "some_lm_eval_task"
    assert len({s.lm_eval_name for s in specs}) == 4
    with pytest.raises(InputError, match=r"none of \['hellaswag.jsonl'\] is in"):
        registry.resolve(["hellaswag"], data_dir=data)
    assert registry.resolve(["hellaswag"])[0].baseline == 0.25  # lm-eval's own task, the gauntlet's baseline

    registry.write_task_folder(specs, tmp_path / "tasks")
    config = yaml.safe_load((tmp_path / "tasks" / f"{specs[0].lm_eval_name}.yaml").read_text())
    assert config["target_delimiter"] == " " and config["output_type"] == "multiple_choice"
    assert config["dataset_kwargs"]["data_files"]["test"].endswith(f"{specs[0].lm_eval_name}.jsonl")


def test_layout_rows_and_random_baseline(tmp_path):
    mc = read_task_file(
        write_jsonl(
            tmp_path / "mc.jsonl",
            [
                {"query": " Question: q?\n", "choices": [" a ", "b"], "gold": 1, "category": "x"},
                {"query": "r", "choices": ["a", "b", "c", "d"], "gold": 0},
            ],
        )
    )
    assert mc.layout == "multiple_choice" and mc.random_baseline() == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert mc.random_baseline(limit=1) == 0.5
    rows, delimiter = mc.normalized("\nAnswer: ")
    assert rows[0] == {"text": "Question: q?\nAnswer:", "choices": ["a", "b"], "gold": 1} and delimiter == " "
    schema = read_task_file(
        write_jsonl(
            tmp_path / "s.jsonl",
            [{"context_options": ["x said A", "x said B"], "continuation": " went home.", "gold": 0}],
        )
    )
    assert schema.normalized() == (
        [{"contexts": ["x said A", "x said B"], "continuation": "went home.", "gold": 0}],
        " ",
    )
    lm = read_task_file(write_jsonl(tmp_path / "lm.jsonl", [{"context": "the cat ", "continuation": "sat"}]))
    # lm-eval puts no delimiter before a loglikelihood target: the continuation carries it
    assert lm.normalized() == ([{"context": "the cat", "continuation": " sat"}], "") and lm.random_baseline() == 0
