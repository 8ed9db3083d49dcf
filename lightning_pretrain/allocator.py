"""glibc malloc settings that stop CPU training from paying page faults for every large tensor, every step.

By default glibc serves allocations above a (dynamic, at most 32 MB) threshold with a fresh `mmap` and returns them
to the kernel on `free`. A training step allocates and frees the same large activations, logits and gradients each
step, so every step faults in hundreds of MB of fresh zeroed pages again: a 2-layer GPT-2 with an 8k vocabulary
faults ~70k pages (280 MB) per step by default and none once the heap has settled with this setting
(tests/test_allocator.py). Serving large blocks from the heap and never trimming it lets the allocator reuse them,
as PyTorch's caching allocator does on GPUs; memory is returned to the OS at exit instead of after every step.

The CLI applies this at start-up on Linux/glibc unless the user set `MALLOC_MMAP_THRESHOLD_` themselves or
`LIGHTNING_PRETRAIN_MALLOC=default`.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's <malloc.h>


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Raise glibc's mmap and trim thresholds; return whether the settings took effect."""
    if sys.platform != "linux" or os.environ.get("LIGHTNING_PRETRAIN_MALLOC") == "default" \
            or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):  # not glibc (musl, ...): keep the platform's allocator as it is
        return False
