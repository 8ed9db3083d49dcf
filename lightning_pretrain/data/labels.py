"""Labels of a classification or regression task: the class vocabulary and the targets encoded from raw labels."""

from __future__ import annotations

import math
from typing import Literal

from lightning_pretrain.errors import InputError

Task = Literal["classification", "regression"]
MISSING = (None, "", "-1", -1)  # unlabelled rows: blank cells, and hub test splits' label -1


def label_vocabulary(values: list) -> list[str]:
    """Class names in id order inferred from training labels: sorted, numerically when every label is an integer."""
    present = {str(v) for v in values if v not in MISSING}
    if not present:
        raise InputError("the training split has no labels")
    if all(_is_int(v) for v in present):
        return sorted(present, key=int)
    return sorted(present)


def encode_labels(values: list, names: list[str] | None, task: Task, offset: int = 0, where: str = "") -> list:
    """Targets for `values`: class ids for classification (by name, else integer minus `offset`), floats for
    regression. Unlabelled rows get -1 (classification) or NaN (regression)."""
    out: list = []
    index = {n: i for i, n in enumerate(names or [])}
    for row, v in enumerate(values):
        if is_missing(v):
            out.append(math.nan if task == "regression" else -1)
        elif task == "regression":
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise InputError(f"{where} row {row}: regression target {v!r} is not a number") from None
        elif str(v) in index:
            out.append(index[str(v)])
        elif _is_int(v) and 0 <= int(v) - offset < len(index):
            out.append(int(v) - offset)
        else:
            raise InputError(f"{where} row {row}: label {v!r} is not one of {names}"
                             f"{f' (nor an id {offset}..{offset + len(index) - 1})' if names else ''}; "
                             f"set --data.labels (and --data.label_offset for 1-based ids)")
    return out


def is_missing(v) -> bool:
    """An unlabelled row's label: blank, -1 (hub test splits) or NaN."""
    return v in MISSING or (isinstance(v, float) and math.isnan(v))


def is_unlabelled(target, task: Task) -> bool:
    """An encoded target that stands for no label (-1, or NaN for regression)."""
    return target == -1 if task == "classification" else math.isnan(target)


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v)) and not isinstance(v, bool)
    except (TypeError, ValueError, OverflowError):
        return False
