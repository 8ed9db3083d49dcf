"""glibc malloc settings that stop CPU training from paying page faults for every large tensor, every step.

A training step allocates and frees the same large activations and gradients every step; glibc serves them with
fresh `mmap`s and returns them on `free`, so each step faults hundreds of MB of zeroed pages in again. Serving large
blocks from the heap and never trimming it lets the allocator reuse them (as PyTorch's caching allocator does on
GPUs). The CLI applies this on Linux/glibc unless `MALLOC_MMAP_THRESHOLD_` is set or
`LIGHTNING_PRETRAIN_MALLOC=default`. Measurements: docs/design/performance.md.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's mmap and trim thresholds; return whether the settings took effect."""
    if (
        sys.platform != "linux"
        or os.environ.get("LIGHTNING_PRETRAIN_MALLOC") == "default"
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
    ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the platform's allocator as it is
        return False
