"""phi3v_data.workers: pool workers leave Ctrl-C to their parent, die on terminate, and are stopped, not waited for."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from phi3v_data.workers import start_worker, stop_pool


def _dispositions() -> list[object]:
    return [signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)]


def _mark_then_sleep(folder: str, seconds: float) -> None:
    open(os.path.join(folder, str(os.getpid())), "w").close()
    time.sleep(seconds)


def test_a_worker_ignores_ctrl_c_and_takes_sigterms_default_whatever_its_parent_had() -> None:
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a run's "save, then stop" handler, inherited by fork
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=start_worker,
                                 initargs=(os.getpid(),)) as pool:
            assert pool.submit(_dispositions).result(timeout=60) == [signal.SIG_IGN, signal.SIG_DFL]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stop_pool_ends_running_tasks_instead_of_waiting_for_them(tmp_path: Path) -> None:
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), initializer=start_worker,
                               initargs=(os.getpid(),))
    for _ in range(2):
        pool.submit(_mark_then_sleep, str(tmp_path), 600)
    queued = pool.submit(open, str(tmp_path / "ran-the-queued-task"), "w")
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:  # both workers are in their task
        time.sleep(0.05)
    processes = list(pool._processes.values())
    assert sorted(p.pid for p in processes) == sorted(int(p.name) for p in tmp_path.iterdir())
    stop_pool(pool)  # returns once the workers are gone; a plain shutdown would wait ten minutes
    # the executor's own thread reaps the workers too, and a Process polled while it does reads as alive for a moment
    deadline = time.monotonic() + 60
    while any(process.exitcode is None for process in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [process.is_alive() for process in processes] == [False, False]
    assert [process.exitcode for process in processes] == [-signal.SIGTERM] * 2
    assert queued.done() and not (tmp_path / "ran-the-queued-task").exists()  # cancelled, or broken with the pool


STOPPED_MID_SEND = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from phi3v_data.workers import start_worker, stop_pool

def big(folder):
    payload = b"x" * 200_000_000
    open(os.path.join(folder, str(os.getpid())), "w").close()
    return payload  # sending 200 MB takes a while: the worker is stopped in the middle of it

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=start_worker,
                               initargs=(os.getpid(),))
    pool.submit(big, sys.argv[1])
    while not os.listdir(sys.argv[1]):
        time.sleep(0.001)
    time.sleep(float(sys.argv[2]))
    stop_pool(pool)
    print("stopped")
"""


def test_a_worker_stopped_while_sending_its_result_does_not_hang_the_exit(tmp_path: Path) -> None:
    """Killed halfway through a result, a worker left the executor's thread waiting for the rest of the message, and
    interpreter exit waited for that thread forever (Ctrl-C during a parallel validate hung about 1 time in 6)."""
    import subprocess
    import sys

    script = tmp_path / "stop.py"
    script.write_text(STOPPED_MID_SEND)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for attempt, delay in enumerate(["0", "0.02", "0.05", "0.1", "0.2"]):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        proc = subprocess.run([sys.executable, str(script), str(folder), delay], capture_output=True, text=True,
                              env=env, timeout=60)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "stopped\n", ""), delay
