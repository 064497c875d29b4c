"""Run every ``benchmarks/bench_*.py`` at small sizes and gather their figures in ``benchmarks/RESULTS.md``.

Each benchmark prints its own figures (a rich table and a closing summary line); this script runs each in a
subprocess with small-size flags where the script accepts them (it reads each one's ``--help``), records the
machine (platform, CPU count, Python, torch) and the date, and writes one markdown file atomically. A benchmark
that fails or times out is reported as such and the others still run. Run::

    .venv/bin/python benchmarks/run_all.py [--only padding] [--timeout 300] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from phi3v_data.io import atomic_write  # noqa: E402 - needs the repository root on sys.path first

SMALL_FLAGS: dict[str, dict[str, str]] = {
    "bench_convert_video.py": {"--clips": "100", "--rounds": "5"},
    "bench_validate.py": {"--records": "20000", "--header-records": "2000"},
    "bench_dataloader.py": {"--records": "24"},
    "bench_padding.py": {"--samples": "4000"},
    "bench_scale.py": {"--sizes": "2000", "--ranks": "1", "--pool": "100"},  # the real sizes: see RESULTS.md
}
"""Small sizes per benchmark (a few minutes in all on 2 cores); a flag is passed only if the script's --help lists
it."""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Outcome:
    name: str
    command: list[str]
    status: str
    seconds: float
    output: str

    @property
    def headline(self) -> str:
        """The closing line, by convention a benchmark's summary; a script that ends on a table has none."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        if not lines:
            return ""
        return "(figures in the table below)" if re.match(r"[\u2500-\u257f]", lines[-1]) else lines[-1]


def small_flags(script: Path, work: Path) -> list[str]:
    """The small-size flags this script understands, plus ``--work DIR`` where it takes one."""
    try:
        help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                                   timeout=120, cwd=HERE.parent, env=_env()).stdout
    except subprocess.TimeoutExpired:
        return []
    sizes = SMALL_FLAGS.get(script.name, {})
    flags = [item for flag, value in sizes.items() if re.search(rf"{flag}\b", help_text) for item in (flag, value)]
    if re.search(r"--work\b", help_text):
        flags += ["--work", str(work / script.stem)]
    return flags


def _env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "120", "TERM": "dumb", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


def run_one(script: Path, *, work: Path, timeout: int) -> Outcome:
    command = [sys.executable, str(script.relative_to(HERE.parent)), *small_flags(script, work)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent, env=_env())
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout if done.returncode == 0 else done.stdout + "\n" + done.stderr[-3000:]
    except subprocess.TimeoutExpired as exc:
        status, output = f"timed out after {timeout}s", (exc.stdout or b"").decode("utf-8", "replace")
    return Outcome(script.name, command, status, time.perf_counter() - start, ANSI.sub("", output).rstrip())


def machine() -> str:
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed"
    load = f", load average {os.getloadavg()[0]:.1f} at start (other work on the machine slows every figure)"
    return (f"{platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, torch {torch_version}{load}")


def shown(command: list[str]) -> str:
    """The command as a reader can rerun it: the interpreter relative to the repository, the scratch dir as $WORK."""
    python = os.path.relpath(sys.executable, HERE.parent) if sys.executable.startswith(str(HERE.parent)) else "python"
    text = " ".join([python, *command[1:]])
    return re.sub(r"\S*phi3v-benchmarks-[^/\s]+", "$WORK", text)


def render(outcomes: list[Outcome], *, started: str, host: str) -> str:
    lines = ["# Benchmark results", "", f"- machine: {host}", f"- date: {started}",
             "- command: `.venv/bin/python benchmarks/run_all.py` (small sizes; each section lists its exact command)",
             "", "| benchmark | status | seconds | headline |", "|---|---|---|---|"]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.headline.replace('|', '/')} |" for o in outcomes]
    for o in outcomes:
        lines += ["", f"## {o.name}", "", f"`{shown(o.command)}` — {o.status}, {o.seconds:.1f} s", "", "```",
                  o.output or "(no output)", "```"]
    return "\n".join(lines) + "\n"


def kept_sections(path: Path) -> str:
    """The ``## GPU …`` sections of the previous file: the GPU table comes from benchmarks/device/, not from here."""
    if not path.is_file():
        return ""
    sections = re.split(r"(?m)^(?=## )", path.read_text(encoding="utf-8"))
    return "".join("\n" + section.rstrip("\n") + "\n" for section in sections if section.startswith("## GPU"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="Run only benchmarks whose name contains this.")
    parser.add_argument("--timeout", type=int, default=300, help="Seconds allowed per benchmark.")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()

    scripts = sorted(p for p in HERE.glob("bench_*.py") if not args.only or any(o in p.name for o in args.only))
    started, host = time.strftime("%Y-%m-%d %H:%M %Z"), machine()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="phi3v-benchmarks-") as tmp:
        for script in scripts:
            print(f"running {script.name} …", flush=True)
            outcome = run_one(script, work=Path(tmp), timeout=args.timeout)
            print(f"  {outcome.status} in {outcome.seconds:.0f}s: {outcome.headline}", flush=True)
            outcomes.append(outcome)
    kept = kept_sections(args.out)
    with atomic_write(args.out, "w", encoding="utf-8") as handle:
        handle.write(render(outcomes, started=started, host=host) + kept)
    print(f"wrote {args.out}")
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
