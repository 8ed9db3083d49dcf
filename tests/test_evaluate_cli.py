"""`lightning-pretrain-eval` end to end, in-process: a table and eval_results.json for a saved model and for a
Lightning checkpoint of a run; bad input ends in one `error: ...` line on stderr and exit status 2."""

from __future__ import annotations

import json

import pytest
import torch
from test_evaluate_harness import task_files, tiny_bert, tiny_causal, write_jsonl  # noqa: F401 (fixtures)


def eval_cli(*args: str) -> None:
    from lightning_pretrain.evaluate.cli import main

    main(list(args))


def test_table_and_results_for_a_model_directory(tiny_causal, task_files, tmp_path, capsys):  # noqa: F811
    _, _, hf_dir = tiny_causal
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on a mat.\n\nA café under the tree.\n")
    eval_cli(
        "--model",
        str(hf_dir),
        "--tasks",
        str(task_files["mc"]),
        str(task_files["lm"]),
        "--task_file",
        f"piqa={task_files['mc']}",
        "--limit",
        "5",
        "--bpb_file",
        str(text),
        "--output_dir",
        str(tmp_path / "out"),
        "--device",
        "cpu",
    )
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["kind"] == "causal" and set(results["tasks"]) == {"mc", "lm", "piqa"}
    mc = results["tasks"]["mc"]
    assert mc["samples"] == 5 and mc["metrics"]["acc"]["random_baseline"] == pytest.approx(
        sum(1 / len(json.loads(line)["choices"]) for line in task_files["mc"].read_text().splitlines()[:5]) / 5
    )
    assert results["tasks"]["lm"]["metrics"]["perplexity"]["random_baseline"] is None
    assert results["text"]["bytes"] == len(text.read_text().encode()) and results["text"]["method"] == "exact"
    table = (tmp_path / "out" / "eval_results.md").read_text()
    assert "| task | n | metric | value | stderr | random baseline | rescaled |" in table
    assert "| mc | 5 | acc |" in printed and "bits_per_byte" in printed


def test_a_lightning_checkpoint_is_exported_then_scored(tiny_causal, task_files, tmp_path, capsys):  # noqa: F811
    model, tok, hf_dir = tiny_causal
    run = tmp_path / "run"
    tok.save_pretrained(run / "tokenizer")  # as HFExport saves it when fit starts
    (run / "checkpoints").mkdir(parents=True)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    torch.save(
        {"hf_config": config, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        run / "checkpoints" / "last.ckpt",
    )
    outputs = {}
    for name, spec in (("ckpt", run / "checkpoints" / "last.ckpt"), ("dir", hf_dir)):
        eval_cli(
            "--model",
            str(spec),
            "--tasks",
            str(task_files["mc"]),
            "--output_dir",
            str(tmp_path / name),
            "--device",
            "cpu",
        )
        outputs[name] = json.loads((tmp_path / name / "eval_results.json").read_text())
    assert outputs["ckpt"]["source"].startswith("Lightning checkpoint")
    assert outputs["ckpt"]["tasks"] == outputs["dir"]["tasks"]


def generation_task(folder, data):
    folder.mkdir()
    (folder / "gen.yaml").write_text(f"""task: gen_local
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: context
doc_to_target: continuation
generation_kwargs: {{until: ["\\n"], max_gen_toks: 4}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
""")
    return folder


BAD = {
    "unknown task": (["--tasks", "no_such_task_xyz"], "unknown task"),
    "missing task file": (["--tasks", "missing/piqa.jsonl"], "does not exist"),
    "malformed task file": (["--tasks", "{bad}"], "bad.jsonl:2: not a JSON object"),
    "unknown layout": (["--tasks", "{odd}"], "fit no task layout"),
    "gold out of range": (["--tasks", "{gold}"], "'gold' must be an index"),
    "task_file without =": (["--task_file", "piqa"], "NAME=PATH"),
    "shipped name, file not in data_dir": (["--tasks", "piqa", "--data_dir", "{root}"], "piqa.jsonl"),
    "model directory that does not exist": (["--model", "./no/such/model", "--tasks", "{good}"], "does not exist"),
    "generation task for a masked LM": (
        ["--model", "{bert}", "--tasks", "gen_local", "--include_path", "{gen}"],
        "masked LM cannot",
    ),
    "bpb file missing": (["--bpb_file", "nope.txt"], "does not exist"),
    "negative limit": (["--tasks", "{good}", "--limit", "0"], "--limit must be >= 1"),
    "argparse error": (["--num_fewshot", "x"], "invalid int value"),
    "output_dir is a file": (
        ["--tasks", "{good}", "--limit", "2", "--output_dir", "{good}"],
        "cannot write the results",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_error_line_and_exit_status_2(
    case,
    tiny_causal,
    tiny_bert,
    task_files,
    tmp_path,  # noqa: F811
    capsys,
):
    args, message = BAD[case]
    (tmp_path / "bad.jsonl").write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": \n')
    write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    write_jsonl(tmp_path / "gold.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 2}])
    write_jsonl(tmp_path / "gen.jsonl", [{"context": "the cat", "continuation": "sat"}])
    names = {
        "bad": tmp_path / "bad.jsonl",
        "odd": tmp_path / "odd.jsonl",
        "gold": tmp_path / "gold.jsonl",
        "good": task_files["mc"],
        "root": tmp_path,
        "bert": tiny_bert[2],
        "gen": generation_task(tmp_path / "gen", tmp_path / "gen.jsonl"),
    }
    args = [a.format(**names) for a in args]
    if "--model" not in args:
        args = ["--model", str(tiny_causal[2]), *args]
    capsys.readouterr()
    if "--output_dir" not in args:
        args += ["--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        eval_cli(*args, "--device", "cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
