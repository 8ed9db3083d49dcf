"""A newcomer's console shows what concerns their run: known third-party noise is silenced here, narrowly.

Each filter names one message and the module it comes from (never a whole category), so a new warning of the same
libraries still shows. Lightning's advertising tips (litlogger, litmodels) go through its rank-zero logger; the
two deprecations are raised inside torchdata and Lightning about their own use of torch, which no user can act on.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

from transformers.utils import logging as hf_logging

# (message regex, category, module regex): warnings raised inside libraries about their own code
KNOWN_WARNINGS = (
    (r"'set_vital' is deprecated", UserWarning, r"torchdata\.stateful_dataloader"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
)
TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


# messages of Lightning's rank-zero logger that say nothing about the run: its tips, and its note that our own
# model summary replaced its default one (callbacks/summary.py)
QUIET_INFO = ("💡 Tip", "Trainer already configured with model summary callbacks")


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(QUIET_INFO)


def quiet_known_noise() -> None:
    """Install the filters (idempotent)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in TIP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


@contextlib.contextmanager
def no_save_bars():
    """transformers' progress bars off inside the block (an export's 'Writing model shards'), as they were after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
