"""Labels of a classification or regression task: the class vocabulary and the targets encoded from raw labels."""

from __future__ import annotations

import math
from typing import Literal

from lightning_pretrain.data.sources.records import describe
from lightning_pretrain.errors import InputError

Task = Literal["classification", "regression"]
MISSING = (None, "", "-1", -1)  # unlabelled rows: blank cells, and hub test splits' label -1
NAN = "nan"  # how pandas and `str(float("nan"))` write a missing number (any case): no label, never a class


def check_label_names(names: list | None) -> None:
    """Refuse `--data.labels` that cannot name classes: fewer than two, a blank name, or a name given twice (every
    row of it would silently go to the last of its ids)."""
    if not names:
        return
    names = [str(n) for n in names]
    if len(names) < 2:
        raise InputError(f"--data.labels names {len(names)} class ({names[0]!r}); a classifier needs two or more")
    if any(not n.strip() for n in names):
        raise InputError(f"--data.labels {names} holds a blank name; every class needs a name")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise InputError(f"--data.labels names {twice!r} twice ({names}); each class needs its own name")


def label_vocabulary(values: list, where: str = "", positions: list[str] | None = None) -> list[str]:
    """Class names in id order inferred from training labels: sorted, numerically when every label is an integer.
    Blank, NaN and -1 labels are no class; a single class is refused (nothing to tell apart)."""
    for row, v in enumerate(values):
        _scalar(v, _at(where, positions, row))
    present = {_name(v) for v in values if not is_missing(v)}
    if not present:
        raise InputError(f"{where + ': ' if where else ''}the training split has no labels")
    if len(present) < 2:
        raise InputError(
            f"{where + ': ' if where else ''}every training label is {present.pop()!r}; a classifier "
            f"needs two classes or more (check --data.label_column, or name the classes with "
            f"--data.labels)"
        )
    if all(_is_int(v) for v in present):
        return sorted(present, key=lambda v: int(float(v)))
    return sorted(present)


def encode_labels(
    values: list,
    names: list[str] | None,
    task: Task,
    offset: int = 0,
    where: str = "",
    positions: list[str] | None = None,
) -> list:
    """Targets for `values`: class ids for classification (by name, else integer minus `offset`), floats for
    regression. Unlabelled rows get -1 (classification) or NaN (regression). `positions[i]` says where the i-th
    value came from ("line 17"), for messages."""
    out: list = []
    index = {str(n): i for i, n in enumerate(names or [])}
    for row, v in enumerate(values):
        _scalar(v, _at(where, positions, row))
        if task == "classification" and _name(v) in index:  # a named class wins, also one named "-1" or "nan"
            out.append(index[_name(v)])
        elif is_missing(v):
            out.append(math.nan if task == "regression" else -1)
        elif task == "regression":
            try:
                target = float(v) if not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                target = None
            if target is None or not math.isfinite(target):
                what = "not a number" if target is None or isinstance(v, bool) else "not finite"
                raise InputError(f"{_at(where, positions, row)}: regression target {_short(v)} is {what}")
            out.append(target)
        elif _is_int(v) and 0 <= int(float(v)) - offset < len(index):
            out.append(int(float(v)) - offset)
        else:
            raise InputError(
                f"{_at(where, positions, row)}: label {_short(v)} is not one of {names}"
                f"{f' (nor an id {offset}..{offset + len(index) - 1})' if names else ''}; "
                f"set --data.labels (and --data.label_offset for 1-based ids)"
            )
    return out


def labelled(
    values: list, targets: list, task: Task, optional: bool, where: str = "", positions: list[str] | None = None
) -> bool:
    """Whether a split's rows carry labels: all of them (True) or, where labels are `optional` (test and predict
    splits, e.g. GLUE's test files), none of them (False); anything between is refused, naming the first row."""
    missing = [i for i, t in enumerate(targets) if is_unlabelled(t, task)]
    if not missing:
        return True
    if optional and len(missing) == len(targets):
        return False
    i = missing[0]
    raise InputError(
        f"{_at(where, positions, i)}: no label ({_short(values[i])}); {len(missing)} of "
        f"{len(targets)} rows have none (blank, NaN and -1 mean no label: give each row its class, or "
        f"name a class '-1' in --data.labels)"
    )


def is_missing(v) -> bool:
    """An unlabelled row's label: blank, -1 (hub test splits) or NaN."""
    if isinstance(v, str):
        return v.strip() in MISSING or v.strip().lower() == NAN
    return v in MISSING or (isinstance(v, float) and math.isnan(v))


def is_unlabelled(target, task: Task) -> bool:
    """An encoded target that stands for no label (-1, or NaN for regression)."""
    return target == -1 if task == "classification" else math.isnan(target)


def _name(v) -> str:
    """A label as a class name: strings without surrounding blanks (`"pos "` is `"pos"`)."""
    return v.strip() if isinstance(v, str) else str(v)


def _scalar(v, at: str) -> None:
    if isinstance(v, (list, tuple, dict)):
        raise InputError(f"{at}: the label is {describe(v)}, not a class name or a number")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _at(where: str, positions: list[str] | None, row: int) -> str:
    return f"{where} {positions[row]}" if positions else f"{where} row {row}".strip()


def _is_int(v) -> bool:
    try:
        return float(v) == int(float(v)) and not isinstance(v, bool)
    except (TypeError, ValueError, OverflowError):
        return False
