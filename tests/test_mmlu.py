"""MMLU from local CSV files: the prompts and answer strings equal those of lm-eval's own `mmlu_<subject>` task
(built from its installed YAML on the same questions), both CSV layouts read the same rows, the CLI reports each
subject and the micro/macro averages, and bad folders are one `error:` line with exit status 2."""

from __future__ import annotations

import csv
import json

import pytest
from test_evaluate_harness import loaded_tasks, tiny_bert, tiny_causal  # noqa: F401 (fixtures)

SUBJECTS = {"anatomy": 6, "pet_care": 4}  # one subject lm-eval knows, one it does not; test questions each


def question(subject: str, split: str, k: int) -> list[str]:
    word = ["cat", "dog", "bird", "tree", "house", "water", "garden", "mat"][k]  # in the tiny vocabularies
    return [
        f" {subject} {split} question {k} on the {word}, with a comma? ",
        f"red {word}",
        f"blue {k}",
        "big, green",
        "",
        "ABCD"[(k * 3 + len(subject)) % 4],
    ]


def write_mmlu(root, header: bool = False, dev_rows: int = 5):
    """A tiny MMLU folder in the released layout (no header, letters) or the header-ful one (answers 0-3)."""
    for split, counts in (("dev", {s: dev_rows for s in SUBJECTS}), ("test", SUBJECTS)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject, n in counts.items():
            with open(root / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                if header:
                    w.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
                for k in range(n):
                    row = question(subject, split, k)
                    w.writerow(row[:5] + [str("ABCD".index(row[5]))] if header else row)
    return root


def requests_of(task, num_fewshot: int = 5) -> list[tuple[str, str]]:
    task.set_config(key="num_fewshot", value=num_fewshot)
    task.build_all_requests(rank=0, world_size=1)
    return [tuple(inst.args) for inst in task.instances]


def lm_eval_own_task(subject: str, folder, rows: dict[str, list[dict]]):
    """lm-eval's `mmlu_<subject>` exactly as it ships, with only its hub dataset swapped for local rows in the
    `cais/mmlu` record format (written here, not by our reader)."""
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    from lightning_pretrain.evaluate.mmlu import lm_eval_yaml

    path, description = lm_eval_yaml(subject)
    assert (path.name == f"mmlu_{subject}.yaml") == (description is None)
    assert path.parent == __import__("pathlib").Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    config = load_yaml(path)
    files = {}
    for split, records in rows.items():
        files[split] = folder / f"ref_{subject}_{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in records))
    config.update(
        dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {k: str(v) for k, v in files.items()}}
    )
    if description is not None:  # what lm-eval's _generate_configs.py writes for a subject
        config["description"] = description
    config.pop("tag", None)
    return ConfigurableTask(config=config)


def cais_records(subject: str, split: str, n: int) -> list[dict]:
    return [
        {"question": q[0], "subject": subject, "choices": q[1:5], "answer": "ABCD".index(q[5])}
        for q in (question(subject, split, k) for k in range(n))
    ]


def test_prompts_equal_lm_eval_own_mmlu_task(tmp_path):
    from lightning_pretrain.evaluate import mmlu, registry

    root = write_mmlu(tmp_path / "mmlu")
    specs = mmlu.resolve(root)
    assert [s.name for s in specs] == ["mmlu_anatomy", "mmlu_pet_care"]
    ours = loaded_tasks(specs, tmp_path)["tasks"]
    for spec, subject in zip(specs, ["anatomy", "pet_care"]):
        reference = lm_eval_own_task(
            subject,
            tmp_path,
            {"test": cais_records(subject, "test", SUBJECTS[subject]), "dev": cais_records(subject, "dev", 5)},
        )
        got = requests_of(ours[spec.lm_eval_name])
        assert got == requests_of(reference) and len(got) == 4 * SUBJECTS[subject]
    # and written out: description, the first 5 dev questions in order with their answers, the question, " A".." D"
    shot = "".join(
        f"{subject_q.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}\n\n"
        for subject_q, a, b, c, d, ans in (question("anatomy", "dev", k) for k in range(5))
    )
    q = question("anatomy", "test", 2)
    context = (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        + shot
        + f"{q[0].strip()}\nA. {q[1]}\nB. {q[2]}\nC. {q[3]}\nD. \nAnswer:"
    )
    assert requests_of(ours[specs[0].lm_eval_name])[8:12] == [
        (context, " A"),
        (context, " B"),
        (context, " C"),
        (context, " D"),
    ]
    pet = requests_of(ours[specs[1].lm_eval_name], num_fewshot=0)[0][0]
    assert pet.startswith(
        "The following are multiple choice questions (with answers) about pet care.\n\n"
        "pet_care test question 0 on the cat"
    )
    assert registry.shipped()["mmlu"]["layout"] == "multiple_choice"  # `--tasks mmlu` without --mmlu_dir unchanged


def test_both_csv_layouts_read_the_same_questions(tmp_path):
    from lightning_pretrain.evaluate import mmlu

    plain = mmlu.resolve(write_mmlu(tmp_path / "plain"), ["anatomy"])
    header = mmlu.resolve(write_mmlu(tmp_path / "header", header=True), ["anatomy"])
    assert plain[0].splits == header[0].splits
    assert plain[0].splits["test"] == cais_records("anatomy", "test", 6)
    # 0-shot needs no dev folder; the release's data/ folder is found too
    for f in (tmp_path / "plain" / "dev").iterdir():
        f.unlink()
    (tmp_path / "wrapped").mkdir()
    (tmp_path / "plain").rename(tmp_path / "wrapped" / "data")
    (spec,) = mmlu.resolve(tmp_path / "wrapped", ["pet_care"], num_fewshot=0)
    assert "dev" not in spec.splits and spec.config["fewshot_split"] is None


def test_cli_scores_every_subject_and_the_averages(tiny_causal, tmp_path, capsys):  # noqa: F811
    from lightning_pretrain.evaluate.cli import main

    _, _, model_dir = tiny_causal
    root = write_mmlu(tmp_path / "mmlu")
    main(
        [
            "--model",
            str(model_dir),
            "--tasks",
            "mmlu",
            "--mmlu_dir",
            str(root),
            "--limit",
            "5",
            "--device",
            "cpu",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    out = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    tasks = out["tasks"]
    assert set(tasks) == {"mmlu_anatomy", "mmlu_pet_care", "mmlu"} and out["num_fewshot"] == 5
    sizes = {"mmlu_anatomy": 5, "mmlu_pet_care": 4}  # --limit counts per subject
    accs = {}
    for name, n in sizes.items():
        assert tasks[name]["samples"] == n and tasks[name]["num_fewshot"] == 5
        acc = tasks[name]["metrics"]["acc"]
        assert acc["random_baseline"] == 0.25 and round(acc["value"] * n) == pytest.approx(acc["value"] * n)
        accs[name] = acc["value"]
    total = tasks["mmlu"]["metrics"]
    assert tasks["mmlu"]["samples"] == 9
    assert total["acc"]["value"] == pytest.approx(sum(accs[k] * n for k, n in sizes.items()) / 9)
    assert total["acc_macro"]["value"] == pytest.approx(sum(accs.values()) / 2)
    assert "| mmlu | 9 | acc_macro |" in capsys.readouterr().out


def test_masked_lm_scores_mmlu_with_one_forward_per_question(tiny_bert, tmp_path):  # noqa: F811
    """PLL masks the answer letter, so the four choices are one and the same input: scored by one forward."""
    from lightning_pretrain.evaluate import mmlu
    from lightning_pretrain.evaluate.harness import run_tasks
    from lightning_pretrain.evaluate.models import build_lm

    model, tok, _ = tiny_bert
    specs = mmlu.resolve(write_mmlu(tmp_path / "mmlu"), ["anatomy"], num_fewshot=1)
    lm = build_lm(model, tok, "masked", batch_size=64)
    seen = []
    forward = lm.scorer._forward
    lm.scorer._forward = lambda ids, mask, at: seen.append(len(ids)) or forward(ids, mask, at)
    rows = run_tasks(lm, specs, loaded_tasks(specs, tmp_path), num_fewshot=1, bootstrap_iters=0)
    assert sum(seen) == SUBJECTS["anatomy"] and rows[0].samples == SUBJECTS["anatomy"]


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_dev", "5-shot MMLU needs"),
        ("columns", "5 columns, expected 6"),
        ("letter", "answer 'E' is not one of A, B, C, D"),
        ("header_answer", "answer '4' is not one of 0, 1, 2, 3"),
        ("empty", "no <subject>_test.csv files"),
        ("subject", "MMLU subject(s) botany have no test file"),
        ("subjects_alone", "--mmlu_subjects needs --mmlu_dir"),
        ("short_dev", "holds 2 questions, fewer than --num_fewshot 5"),
    ],
)
def test_bad_mmlu_folders_are_one_error_line(tmp_path, capsys, breakage, message):
    from lightning_pretrain.evaluate.cli import main

    root = write_mmlu(
        tmp_path / "mmlu", header=breakage == "header_answer", dev_rows=2 if breakage == "short_dev" else 5
    )
    test_file = root / "test" / "anatomy_test.csv"
    args = ["--model", str(tmp_path / "never_loaded"), "--mmlu_dir", str(root), "--output_dir", str(tmp_path / "o")]
    if breakage == "no_dev":
        (root / "dev" / "anatomy_dev.csv").unlink()
    elif breakage == "columns":
        test_file.write_text(test_file.read_text() + "a question,1,2,3,A\n")
    elif breakage == "letter":
        test_file.write_text(test_file.read_text() + "a question,1,2,3,4,E\n")
    elif breakage == "header_answer":
        test_file.write_text(test_file.read_text() + "a question,1,2,3,4,4\n")
    elif breakage == "empty":
        for f in (root / "test").iterdir():
            f.unlink()
    elif breakage == "subject":
        args += ["--mmlu_subjects", "anatomy", "botany"]
    elif breakage == "subjects_alone":
        args = args[:2] + ["--tasks", "piqa", "--mmlu_subjects", "anatomy"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
