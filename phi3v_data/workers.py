"""What every worker process of ours does first: leave Ctrl-C to its parent, take SIGTERM's default back, and die with
the process that started it.

A forked worker inherits its parent's Python signal handlers. The trainer's SIGTERM handler only sets a flag ("save,
then stop"), so a pre-flight worker forked while it was installed ignored its pool's terminate() and the parent's
join at exit waited forever (seen in CI). Ctrl-C reaches the whole process group: a worker interrupted inside the
pool's queue left its lock taken, and the parent's terminate() then waited on that lock forever; so workers ignore
SIGINT and the parent, interrupted, ends them. A worker whose parent is killed would otherwise go on writing.
"""

from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor


def start_worker(parent: int) -> None:
    """Call first in a pool initializer, with the starting process's pid (``os.getpid()`` there)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """End a ProcessPoolExecutor now, when its parent is interrupted or fails: queued work is cancelled and the
    running tasks' workers are terminated. A plain shutdown waits for every running task to finish, and interpreter
    exit waits for them too: Ctrl-C during a long measuring pass would otherwise seem to be ignored."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
