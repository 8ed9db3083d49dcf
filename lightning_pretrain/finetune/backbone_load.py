"""Load a pretrained backbone and say which weights the checkpoint did not provide.

`load_pretrained` wraps `from_pretrained(..., output_loading_info=True)` and returns a `LoadReport`: the weights
newly initialised (missing from the checkpoint, or re-initialised for a shape mismatch, e.g. a head of another
size) and the checkpoint weights left unused (e.g. an MLM head's `cls.predictions.*`). `LoadReport.log()` prints
one short block on rank zero through the `lightning_pretrain` logger; long lists are grouped by prefix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from transformers import PreTrainedModel

from lightning_pretrain.errors import InputError

log = logging.getLogger("lightning_pretrain")


@dataclass
class LoadReport:
    source: str
    model_class: str
    newly_initialised: list[str] = field(default_factory=list)  # the model's names, sorted
    unused: list[str] = field(default_factory=list)  # the checkpoint's names, sorted
    mismatched: list[str] = field(default_factory=list)  # also in newly_initialised: "name: ckpt shape -> model shape"

    def text(self, max_names: int = 8) -> str:
        lines = [f"loaded {self.model_class} from {self.source}"]
        for what, names in (
            ("newly initialised (not in the checkpoint, trained from scratch)", self.newly_initialised),
            ("unused checkpoint weights (dropped)", self.unused),
        ):
            lines.append(f"  {what}: {len(names) if names else 'none'}")
            lines.extend(f"    {entry}" for entry in group_names(names, max_names))
        lines.extend(f"  size mismatch, re-initialised: {m}" for m in self.mismatched)
        return "\n".join(lines)

    @rank_zero_only
    def log(self) -> None:
        log.info(self.text())


def group_names(names: list[str], max_names: int = 8) -> list[str]:
    """The names themselves when few; else grouped by ever shorter prefixes (`cls.predictions.* (5)`) until the
    groups are few, layer numbers kept (`bert.encoder.layer.0.*`) as long as that is short enough."""
    names = sorted(names)
    if len(names) <= max_names:
        return names
    parts = [n.split(".") for n in names]
    for depth in range(max(len(p) for p in parts) - 1, 0, -1):
        groups: dict[str, int] = {}
        for p in parts:
            key = ".".join(p[:depth]) + (".*" if len(p) > depth else "")
            groups[key] = groups.get(key, 0) + 1
        if len(groups) <= max_names:
            return [f"{k} ({n})" if k.endswith("*") else k for k, n in groups.items()]
    return [f"{len(names)} weights"]


def load_pretrained(auto_class, source: str | Path, **kwargs) -> tuple[PreTrainedModel, LoadReport]:
    """`auto_class.from_pretrained(source, **kwargs)` and what the checkpoint did and did not provide."""
    model, info = auto_class.from_pretrained(source, output_loading_info=True, **kwargs)
    mismatched = sorted(info.get("mismatched_keys") or ())
    report = LoadReport(
        source=str(source),
        model_class=type(model).__name__,
        newly_initialised=sorted(set(info.get("missing_keys") or ()) | {m[0] for m in mismatched}),
        unused=sorted(info.get("unexpected_keys") or ()),
        mismatched=[f"{name}: {tuple(ckpt)} -> {tuple(new)}" for name, ckpt, new in mismatched],
    )
    return model, report


def load_backbone(
    auto_class, backbone: str, tokenizer, purpose: str = "", **kwargs
) -> tuple[PreTrainedModel, LoadReport]:
    """A task model (`auto_class`: the backbone plus its head) for fine-tuning: loaded with the report logged, its
    embeddings checked against the data's tokenizer, in train mode. Every fine-tuning task loads through here."""
    try:
        model, report = load_pretrained(auto_class, backbone, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as e:  # not found, unreachable, or no class of this kind for it (GPT-2 + QA)
        raise InputError(f"could not load backbone '{backbone}'{purpose}: {str(e).splitlines()[0]}") from e
    report.log()
    embedded = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embedded:
        raise InputError(
            f"the tokenizer has {len(tokenizer)} tokens but '{backbone}' embeds only {embedded}; use "
            f"the backbone's own tokenizer"
        )
    model.train()  # from_pretrained returns eval mode (dropout off); Lightning does not switch it back
    return model, report
