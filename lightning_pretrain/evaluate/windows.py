"""Rolling windows over a token stream (HF's perplexity guide): every position is scored exactly once, with the
window's earlier positions as context. Shared by exact causal scoring (rolling.py) and PLL (pll.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_pretrain.errors import InputError

MASKED_WINDOW = 128  # default PLL window: each scored token costs one forward of the whole window


@dataclass(frozen=True)
class Window:
    begin: int  # first input position
    score_from: int  # first scored position (earlier ones are context)
    end: int  # one past the last position, input and scored


def windows(n: int, max_length: int, stride: int, first_scored: int = 0, min_context: int = 0) -> list[Window]:
    """Windows over a stream of `n` tokens scoring each position in [first_scored, n) exactly once."""
    if max_length <= min_context or stride < 1:
        raise InputError(
            f"need max_length > {min_context} and stride >= 1 (got max_length={max_length}, stride={stride})"
        )
    out, scored, begin = [], first_scored, 0
    while scored < n:
        begin = min(begin, scored - min_context)
        end = min(begin + max_length, n)
        out.append(Window(begin, scored, end))
        scored, begin = end, begin + stride
    return out
