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
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


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
    results = getattr(pool, "_result_queue", None)  # shutdown(wait=False) drops it
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
    # A worker killed while sending its result leaves the executor's thread waiting for the rest of the message, and
    # interpreter exit joins that thread (a hang after Ctrl-C, 32 of 40 times with 4 MB results). With every worker
    # gone, ours is the last write end of the pipe: closing it ends that wait with EOF, which the thread takes for a
    # broken pool and exits.
    if results is not None and all(process.exitcode is not None for process in processes):
        results._writer.close()


@contextmanager
def running(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """``with running(ProcessPoolExecutor(...)) as pool:`` shuts the pool down as usual when the block ends, and stops
    it (:func:`stop_pool`) when the block raises: Ctrl-C, SIGTERM's stop, a failed task, or a generator closed early."""
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown()
