"""The model under evaluation: a run's `hf/` export or any Hugging Face directory, a Lightning checkpoint of a run
(exported to Hugging Face format first), or a hub id; whether it is a causal, seq2seq or masked LM; and the lm-eval
`LM` that scores it: lm-eval's own `HFLM` around the in-memory model for causal and seq2seq models,
`MaskedLMHarness` (pseudo-log-likelihood) for masked LMs.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

from lightning_pretrain.errors import InputError

AUTO_CLASS = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "masked": AutoModelForMaskedLM}


def model_kind(model_or_config) -> str:
    """'causal', 'seq2seq' or 'masked', from a model's class or a config's `architectures` and type."""
    config = model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config
    names = (
        [type(model_or_config).__name__]
        if isinstance(model_or_config, torch.nn.Module)
        else list(getattr(config, "architectures", None) or [])
    )
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return "causal"
    if any(n.endswith(("ForMaskedLM", "ForPreTraining")) for n in names):
        return "masked"
    # a bare backbone (sentence-transformers' BertModel): what its architecture can be
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING and not getattr(config, "is_decoder", False):
        return "masked"
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        return "causal"
    raise InputError(
        f"cannot tell whether {names or config.model_type} is a causal, seq2seq or masked LM: pass --model_kind"
    )


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    kind: str
    source: str  # what `--model` turned out to be
    notes: list[str] = field(default_factory=list)


def locate(spec: str, workdir: str | Path, tokenizer: str | None = None) -> tuple[str, str]:
    """A loadable directory or hub id for `spec`, and what it was; a checkpoint is exported into `workdir` (with its
    run's tokenizer, or `tokenizer` when that is a folder; a hub id is loaded later)."""
    path = Path(spec).expanduser()
    if (path.is_file() and path.suffix == ".ckpt") or (path.is_dir() and (path / ".metadata").is_file()):
        from lightning_pretrain.export import export_checkpoint

        folder = tokenizer if tokenizer and Path(tokenizer).is_dir() else None
        out = export_checkpoint(path, Path(workdir) / "hf", folder, require_tokenizer=tokenizer is None)
        return str(out), f"Lightning checkpoint {spec} (exported)"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"model directory {spec} holds no config.json (not a Hugging Face model directory)")
        return str(path), f"directory {spec}"
    if path.exists():
        raise InputError(f"model {spec} is neither a Hugging Face directory nor a Lightning .ckpt checkpoint")
    if spec.startswith((".", "/", "~")) or spec.endswith(".ckpt") or spec.count("/") > 1:
        raise InputError(f"model {spec} does not exist")
    return spec, f"hub id {spec}"


@dataclass
class ModelRef:
    where: str  # a directory or hub id that `from_pretrained` loads
    source: str
    config: PretrainedConfig
    kind: str


def inspect(spec: str, kind: str = "auto", workdir: str | Path = ".", tokenizer: str | None = None) -> ModelRef:
    """Where the model is and what kind it is, from its config alone (no weights are read yet)."""
    where, source = locate(spec, workdir, tokenizer)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load model '{spec}': {str(e).strip().splitlines()[0]}") from e
    return ModelRef(where, source, config, model_kind(config) if kind == "auto" else kind)


def load_model(ref: ModelRef, tokenizer: str | None = None, device: str = "cpu") -> Loaded:
    torch.manual_seed(0)  # weights the checkpoint lacks (e.g. an MLM head) are initialised the same every run
    try:
        model, info = AUTO_CLASS[ref.kind].from_pretrained(
            ref.where, trust_remote_code=False, output_loading_info=True, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(tokenizer or ref.where, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"could not load {ref.kind} model '{ref.where}': {str(e).strip().splitlines()[0]}") from e
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(set(info["missing_keys"]) - tied)
    notes = []
    if missing:
        head = ref.kind == "masked" and any(k.startswith(("cls.", "lm_head.", "predictions.")) for k in missing)
        notes.append(
            f"{len(missing)} weights are not in the checkpoint ({', '.join(missing[:3])}, ...): "
            f"{'its masked-LM head is' if head else 'they are'} randomly initialised (seed 0), so its "
            f"scores mean little"
        )
        print(f"warning: {notes[-1]}", file=sys.stderr)
    if len(tok) > model.get_input_embeddings().num_embeddings:
        raise InputError(
            f"the tokenizer has {len(tok)} tokens but the model embeds only "
            f"{model.get_input_embeddings().num_embeddings}: use the model's own tokenizer"
        )
    return Loaded(model.to(device).eval(), tok, ref.kind, ref.source, notes)


def build_lm(
    model,
    tokenizer,
    kind: str,
    batch_size: int = 16,
    spread: bool = False,
    max_length: int | None = None,
    progress: bool = False,
):
    """The lm-eval `LM` for an in-memory model. `spread`: split documents over the torch.distributed ranks;
    `progress`: a progress bar over the PLL batches (lm-eval draws its own for causal models)."""
    if kind == "masked":
        from lightning_pretrain.evaluate.pll import MaskedLMHarness

        lm = MaskedLMHarness(model, tokenizer, batch_size=batch_size, max_length=max_length, progress=progress)
    else:
        from lightning_pretrain.evaluate.hflm import LiveHFLM

        # HFLM gives a tokenizer without padding token one: work on a copy, never the training run's tokenizer.
        # logits_cache off when spread: the number of forwards must not depend on a rank's documents (FSDP)
        lm = LiveHFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            backend=kind,
            batch_size=batch_size,
            max_length=max_length,
            logits_cache=not spread,
            device=str(next(model.parameters()).device),
        )
    lm.spread_over_ranks(spread)
    return lm
