"""What every worker process of ours does first: take SIGTERM's default back and die with the process that started it.

A forked worker inherits its parent's Python signal handlers. The trainer's SIGTERM handler only sets a flag ("save,
then stop"), so a pre-flight worker forked while it was installed ignored its pool's terminate() and the parent's
join at exit waited forever (seen in CI). A worker whose parent is killed would otherwise go on writing.
"""

from __future__ import annotations

import os
import signal
import sys


def start_worker(parent: int) -> None:
    """Call first in a pool initializer, with the starting process's pid (``os.getpid()`` there)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
