"""Library chatter (transformers/DeepSpeed info and warnings, torch's UserWarnings) hidden unless ``-v``: a user of
any ``phi3v-train`` command should see only what they can act on."""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers that speak at INFO/WARNING about things a user cannot change (deprecations inside libraries, DeepSpeed's
# start-up report); errors still come through.
_CHATTY = ("transformers", "DeepSpeed", "deepspeed", "accelerate", "torch.distributed", "peft", "bitsandbytes")


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_libraries(*, verbose: bool) -> None:
    """Hide library warnings and info unless ``verbose``; our own warnings (``phi3v_train.*``) stay visible.

    A filter, not a level: DeepSpeed sets its logger's level itself when imported, after this runs.
    """
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in _CHATTY:
        logger = logging.getLogger(name)
        # The level reaches child loggers (bitsandbytes.backends.cpu.ops warns at import on AVX512-BF16 CPUs); a
        # filter on this logger does not, but it survives a library that resets its own logger's level.
        logger.setLevel(logging.ERROR)
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # already imported: the environment variables above came too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
