"""The first GPU run in one go: install, GPU correctness, then the speed table; ``gpu_report.md`` + ``.json``.

Made for a GPU machine that is lent for minutes, has no network and none of our venv (``run.sh`` calls this with the
machine's ``python3``): the wheels ``prepare.sh`` downloaded and the project itself are installed with ``--no-deps``
into a target folder over the preinstalled torch/transformers, then every step runs as its own process with a
timeout, so a step that fails (out of memory, a missing package, a hang) becomes one row with its reason and the
rest goes on. Steps run in order, correctness before speed:

install, env                  wheels + project into ``WORK/site``; versions, the card, the driver
data                          a DocVQA-layout sample → ``phi3v-data convert docvqa`` → ``phi3v-data validate``
tiny-model, attention-tiny    ``phi3v-train init-tiny``; sdpa vs eager logits of the tiny model
train-lora, train-full        a few bf16 steps of ``phi3v-train run`` on the sample: loss falls, ``final/`` written
export, resume                ``phi3v-train export`` loads and matches the adapter; ``--resume`` repeats the losses
model-full-size               random-weight Phi-3.5-vision from the official config.json (8.3 GB), built on the GPU
attention-full-size           sdpa vs eager logits at the DocVQA shape (num_crops 16, ~2,443 tokens)
bench-<strategy>              ``phi3v_train.bench`` per strategy, sdpa and flash-attn (when importable)
memory-vs-plan                each bench row's peak memory against ``phi3v-train plan``'s estimate (±20 %)
speed-table                   the bench rows as one table (``phi3v_train.bench.render_markdown``)

With ``--device cpu`` (``DEVICE=cpu``) the same steps run on CPU at tiny sizes: the full-size model is the tiny
preset and the DocVQA shape shrinks, so the script can be rehearsed (``tests/test_device_rehearsal.py``). Only the
standard library is used here: pydantic and the project are importable only after the install step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHECKS = HERE / "checks.py"
STRATEGIES = ("full", "frozen-vision", "lora", "qlora")
RESERVE_S = 45  # kept back for the last two steps (memory-vs-plan, speed-table), which need no model
MEMORY_BAND = 0.20  # measured peak within ±20 % of plan's estimate

# The original guide's speed table ("Speed benchmarking (NOTE: Phi-3-vision)", 8x A100-80GB, DocVQA, 2443.23 tokens
# at num_crops 16, effective batch 64): (method, flash attention, img/s on 8 GPUs, peak GB per GPU).
ORIGINAL_8XA100 = [
    ("full", False, 5.041, 42), ("full", True, 8.657, 36), ("frozen-vision", False, 17.578, 29),
    ("frozen-vision", True, 31.736, 27), ("lora", False, 5.591, 50), ("lora", True, 12.127, 16),
    ("qlora", False, 4.831, 32), ("qlora", True, 10.545, 10),
]
GOALS_IMG_S = {"full": 5.0, "lora": 7.0, "frozen-vision": 15.0}  # per GPU at DocVQA shapes (issue 22)


@dataclass(frozen=True)
class Sizes:
    """What differs between the GPU run and its CPU rehearsal."""

    full_size_preset: str
    precision: str  # of the training steps and the attention checks
    num_crops: int  # DocVQA shape of the full-size checks and the bench
    seq_len: int
    page: str
    bench_steps: int
    bench_warmup: int
    train_page: str = "660x1100"  # the sample dataset's pages
    train_crops: int = 4  # num_crops of the training steps
    budget_s: float = 450


GPU_SIZES = Sizes("phi-3.5-vision", "bf16", 16, 2443, "1320x2200", bench_steps=5, bench_warmup=2, budget_s=450)
CPU_SIZES = Sizes("tiny", "fp32", 2, 512, "336x672", bench_steps=1, bench_warmup=0, train_page="336x560", train_crops=1,
                  budget_s=900)


@dataclass
class Row:
    """One step's outcome: a row of the report."""

    name: str
    title: str
    status: str = "skipped"  # ok | failed | skipped
    seconds: float = 0.0
    summary: str = ""
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class StepFailed(Exception):
    """A step's own verdict that it failed; the message is the row's reason."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.details = details or {}


class Runner:
    """Runs commands for the steps: one environment, one log, one deadline."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, work: Path) -> None:
        self.args, self.sizes, self.work = args, sizes, work
        self.python = args.python
        self.site = work / "site"
        self.log_path = args.out / "run.log"
        self.deadline = time.monotonic() + args.budget
        self.step_deadline = self.deadline
        self.results: dict[str, dict[str, Any]] = {}
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(REPO), str(self.site)]
        if self.args.hide:
            paths.insert(0, str(hide_packages(self.work / "hidden", self.args.hide)))
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PYTHONDONTWRITEBYTECODE="1")
        if self.args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def log(self, text: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(text)

    def remaining(self) -> float:
        return self.step_deadline - time.monotonic()

    def command(self, args: list[str], *, extra_env: dict[str, str] | None = None) -> str:
        """Run one command under the step's deadline; its output goes to run.log. Returns the output."""
        timeout = self.remaining()
        if timeout < 5:
            raise StepFailed(f"out of time before `{shown(args)}`")
        self.log(f"\n$ {shown(args)}\n")
        start = time.monotonic()
        offset = self.log_path.stat().st_size
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(args, cwd=REPO, env={**self.env, **(extra_env or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the step's own process group: it and its workers
                proc.wait()
                code = None
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            output = log.read().decode("utf-8", errors="replace")
        self.log(f"[exit {code if code is not None else 'killed: timeout'} after {time.monotonic() - start:.1f} s]\n")
        if code is None:
            raise StepFailed(f"timed out after {timeout:.0f} s: {shown(args[:4])} …")
        if code != 0:
            raise StepFailed(last_line(output) or f"exit status {code}: {shown(args[:4])} …")
        return output

    def check(self, name: str, *args: str) -> dict[str, Any]:
        """``checks.py NAME ARGS``; its JSON result (a failed check raises with the check's own reason)."""
        result_path = self.work / "results" / f"{name}-{len(self.results)}.json"
        try:
            self.command([self.python, str(CHECKS), name, *args, "--result", str(result_path)])
        except StepFailed as exc:
            if not result_path.is_file():
                raise
            result = json.loads(result_path.read_text(encoding="utf-8"))
            raise StepFailed(result.get("reason") or str(exc), result) from None
        result = json.loads(result_path.read_text(encoding="utf-8"))
        self.results[f"{name}-{len(self.results)}"] = result
        return result

    def cli(self, tool: str, *args: str) -> str:
        """A ``phi3v-data`` / ``phi3v-train`` command exactly as a user types it (through its click group)."""
        module = {"phi3v-data": "phi3v_data.cli", "phi3v-train": "phi3v_train.cli"}[tool]
        code = f"import sys; sys.argv[0] = {tool!r}; from {module} import main; main()"
        return self.command([self.python, "-c", code, *args])


def shown(args: list[str]) -> str:
    return shlex.join(str(a) for a in args).replace(str(REPO) + "/", "")


PROGRESS = re.compile(r"^\s*$|\d+%\||\[(WARNING|INFO)\]")


def last_line(output: str) -> str:
    """The line that says why a command failed: the last one that is not blank or a progress bar."""
    lines = [line.strip() for line in output.replace("\r", "\n").splitlines() if not PROGRESS.search(line)]
    return lines[-1][:300] if lines else ""


def hide_packages(folder: Path, names: list[str]) -> Path:
    """A ``sitecustomize`` that makes ``names`` missing for every step: a rehearsal of a machine without them.

    ``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError and ``importlib.util.find_spec``
    return None, which is how transformers and peft decide that an optional package is absent.
    """
    folder.mkdir(parents=True, exist_ok=True)
    modules = sorted({name.replace("-", "_") for name in names})
    (folder / "sitecustomize.py").write_text(
        "import sys\n\n# written by benchmarks/device/run_device.py --hide\n"
        f"for _name in {modules!r}:\n    sys.modules[_name] = None\n", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# The steps. Each takes the runner and returns (summary, details), or raises StepFailed.


def step_install(run: Runner) -> tuple[str, dict]:
    wheels = sorted(Path(run.args.wheels).glob("*.whl")) if run.args.wheels else []
    pip = [run.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--target", str(run.site)]
    names = [w.name.split("-")[0] for w in wheels]
    try:
        run.command([*pip, "--no-build-isolation", *map(str, wheels), str(REPO)])
        how = "project built with --no-build-isolation"
    except StepFailed as exc:  # e.g. the machine's setuptools is older than pyproject's build requirement
        if wheels:
            run.command([*pip, "--upgrade", *map(str, wheels)])
        write_dist_info(run.site)
        how = f"project build failed ({exc}); source tree + entry points instead"
    summary = f"{len(wheels)} wheels ({', '.join(names) or 'none'}) + phi3v into {run.site}; {how}"
    return summary, {"wheels": [w.name for w in wheels], "site": str(run.site)}


def write_dist_info(site: Path) -> None:
    """phi3v's metadata and entry points (the converters register through them) without building: the code itself
    is imported from the checkout, which is on PYTHONPATH."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    info = site / f"{project['name']}-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
             for group, eps in {"console_scripts": project["scripts"], **project["entry-points"]}.items()]
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")


def step_env(run: Runner) -> tuple[str, dict]:
    details: dict[str, Any] = {"card": nvidia_smi()}
    details.update(run.check("env"))
    if run.args.device == "cuda" and not details.get("cuda_available"):
        raise StepFailed(f"torch sees no CUDA device ({details['summary']}); the full-size steps need one", details)
    return (f"{details['summary']}" + (f"; {details['card']}" if details["card"] else "")), details


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"nvidia-smi: {out.splitlines()[0]} (name, memory, driver)" if out else ""


def step_data(run: Runner) -> tuple[str, dict]:
    source, data = run.work / "docvqa-source", run.work / "data"
    made = run.check("sample", "--out", str(source), "--page", run.sizes.train_page)
    run.cli("phi3v-data", "convert", "docvqa", str(source), "--out", str(data), "--workers", "1")
    run.cli("phi3v-data", "validate", *(str(data / f"docvqa_{split}.jsonl") for split in ("train", "val")))
    counts = {split: len((data / f"docvqa_{split}.jsonl").read_text().splitlines()) for split in ("train", "val")}
    return f"{made['summary']} → converted and valid ({counts['train']} train, {counts['val']} val records)", counts


def step_tiny_model(run: Runner) -> tuple[str, dict]:
    run.cli("phi3v-train", "init-tiny", str(run.work / "tiny"))
    return "phi3v-train init-tiny", {}


def step_attention(model: str, *, full_size: bool) -> Callable[[Runner], tuple[str, dict]]:
    def step(run: Runner) -> tuple[str, dict]:
        s = run.sizes
        shape = ["--num-crops", str(s.num_crops), "--seq-len", str(s.seq_len), "--page", s.page] if full_size else \
            ["--num-crops", str(s.train_crops), "--seq-len", "600", "--page", s.train_page]
        result = run.check("attention", "--model", str(run.work / model), "--dtype", s.precision, *shape)
        return result["summary"], result
    return step


def train_flags(run: Runner, strategy: str, output: Path) -> list[str]:
    lr = "5e-3" if strategy == "lora" else "1e-3"
    return ["run", "--data", str(run.work / "data"), "--model", str(run.work / "tiny"), "--strategy", strategy,
            "--output", str(output), "--precision", run.sizes.precision, "--num-crops", str(run.sizes.train_crops),
            "--batch-size", "4", "--global-batch-size", "4", "--max-steps", "4", "--save-every", "2",
            "--keep-last", "2", "--log-every", "1", "--lr", lr, "--warmup", "0", "--scheduler", "constant",
            "--workers", "0", "--seed", "0", "-q"]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return {row["step"]: row["loss"] for row in rows if "loss" in row and "step" in row}


def step_train(strategy: str) -> Callable[[Runner], tuple[str, dict]]:
    def step(run: Runner) -> tuple[str, dict]:
        output = run.work / f"run-{strategy}"
        run.cli("phi3v-train", *train_flags(run, strategy, output))
        seen = losses(output)
        final = output / "final"
        expected = "adapter_config.json" if strategy == "lora" else "config.json"
        details = {"losses": seen, "final": sorted(p.name for p in final.iterdir()) if final.is_dir() else []}
        if not (final / "COMPLETE").is_file() or not (final / expected).is_file():
            raise StepFailed(f"final/ lacks COMPLETE or {expected}: {details['final']}", details)
        first, last = seen[min(seen)], seen[max(seen)]
        summary = f"{run.sizes.precision}, {len(seen)} steps: loss {first:.4f} → {last:.4f}; final/ has {expected}"
        if not last < first:
            raise StepFailed(f"the loss did not fall: {summary}", details)
        return summary, details
    return step


def step_export(run: Runner) -> tuple[str, dict]:
    adapter, merged = run.work / "run-lora" / "final", run.work / "merged"
    run.cli("phi3v-train", "export", "--adapter", str(adapter), "--out", str(merged))
    result = run.check("export", "--merged", str(merged), "--adapter", str(adapter),
                       "--num-crops", str(run.sizes.train_crops),
                       "--data", str(run.work / "data" / "docvqa_train.jsonl"))
    return result["summary"], result


def step_resume(run: Runner) -> tuple[str, dict]:
    """Drop the last checkpoint and final/ of the LoRA run, resume from checkpoint-2, compare steps 3-4."""
    output = run.work / "run-lora"
    before = losses(output)
    for name in ("checkpoint-4", "final"):
        shutil.rmtree(output / name, ignore_errors=True)
    out = run.cli("phi3v-train", *train_flags(run, "lora", output), "--resume", "latest")
    after = losses(output)
    resumed = sorted(step for step in after if step > 2)
    diffs = {step: abs(after[step] - before.get(step, float("nan"))) for step in resumed}
    worst = max(diffs.values(), default=float("nan"))
    details = {"before": before, "after": after, "max_abs_diff": worst, "bitwise": worst == 0.0}
    if "resuming from checkpoint-2" not in out or resumed != [3, 4]:
        raise StepFailed(f"did not resume from checkpoint-2 and train steps 3-4 (steps after: {resumed})", details)
    if not (output / "final" / "COMPLETE").is_file():
        raise StepFailed("the resumed run wrote no final/", details)
    # fp32 on CPU repeats bit for bit; bf16 kernels on a GPU may add in another order (atomics), so allow 1e-3
    tolerance = 0.0 if run.sizes.precision == "fp32" else 1e-3 * max(before.values())
    summary = (f"resumed at checkpoint-2: steps 3-4 losses {'identical' if worst == 0 else f'max |Δ| {worst:.2e}'} "
               f"(allowed {tolerance:.1e})")
    if not worst <= tolerance:
        raise StepFailed(summary, details)
    return summary, details


def step_model_full_size(run: Runner) -> tuple[str, dict]:
    preset = run.sizes.full_size_preset
    device = "cpu" if run.args.device == "cpu" else "cuda"
    result = run.check("build", "--preset", preset, "--out", str(run.work / "full-size"), "--device", device)
    if run.args.device == "cpu":
        result["summary"] += " (DEVICE=cpu: the tiny preset stands in for the full size)"
    return result["summary"], result


def step_bench(strategy: str) -> Callable[[Runner], tuple[str, dict]]:
    def step(run: Runner) -> tuple[str, dict]:
        s = run.sizes
        result = run.check("bench", "--model", str(run.work / "full-size"), "--strategy", strategy,
                           "--attention", "sdpa", "flash_attention_2", "--num-crops", str(s.num_crops),
                           "--seq-len", str(s.seq_len), "--page", s.page, "--steps", str(s.bench_steps),
                           "--warmup", str(s.bench_warmup), "--batch", str(run.args.batch))
        return result["summary"], result
    return step


def bench_results(run: Runner) -> list[dict[str, Any]]:
    return [result for key, result in run.results.items() if key.startswith("bench-") and result.get("report")]


def step_memory(run: Runner) -> tuple[str, dict]:
    rows = []
    for result in bench_results(run):
        for bench_row in result["report"]["rows"]:
            if bench_row["peak_memory_gb"] is None:
                continue
            ratio = bench_row["peak_memory_gb"] / result["plan_estimate_gb"]
            rows.append({"strategy": bench_row["strategy"], "attention": bench_row["attention"],
                         "measured_gb": round(bench_row["peak_memory_gb"], 2),
                         "estimate_gb": round(result["plan_estimate_gb"], 2), "ratio": round(ratio, 3),
                         "within": abs(ratio - 1) <= MEMORY_BAND, "plan_command": result["plan_command"]})
    if not rows:
        raise StepFailed("no bench row measured peak memory", {"skip": True})
    details = {"rows": rows, "band": MEMORY_BAND}
    cells = ", ".join(f"{r['strategy']}/{r['attention']} {r['measured_gb']:.1f} vs {r['estimate_gb']:.1f} GB"
                      for r in rows)
    if run.args.device == "cpu" or not any(result.get("cuda") for result in bench_results(run)):
        raise StepFailed(f"not compared on CPU (peak memory is the process's RSS): {cells}", details | {"skip": True})
    off = [r for r in rows if not r["within"]]
    summary = f"{len(rows) - len(off)}/{len(rows)} within ±{MEMORY_BAND:.0%}: {cells}"
    if off:
        raise StepFailed(summary, details)
    return summary, details


def step_table(run: Runner) -> tuple[str, dict]:
    paths = sorted((run.work / "results").glob("bench-*.json"))
    if not paths:
        raise StepFailed("no bench step ran", {"skip": True})
    result = run.check("table", *map(str, paths))
    return result["summary"], result


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Runner], tuple[str, dict]]
    needs: tuple[str, ...] = ()
    cap_s: float = 120
    final: bool = False  # runs in the reserved time at the end


STEPS = [
    Step("install", "install wheels + phi3v (--no-deps, --target)", step_install, cap_s=120),
    Step("env", "versions and the card", step_env, cap_s=60),
    Step("data", "sample DocVQA → convert → validate", step_data, cap_s=120),
    Step("tiny-model", "tiny random checkpoint", step_tiny_model, cap_s=60),
    Step("attention-tiny", "sdpa vs eager logits, tiny model", step_attention("tiny", full_size=False),
         needs=("tiny-model",), cap_s=90),
    Step("train-lora", "phi3v-train run --strategy lora", step_train("lora"), needs=("data", "tiny-model"), cap_s=150),
    Step("train-full", "phi3v-train run --strategy full", step_train("full"), needs=("data", "tiny-model"), cap_s=150),
    Step("export", "phi3v-train export, then load it", step_export, needs=("train-lora",), cap_s=120),
    Step("resume", "--resume latest repeats the losses", step_resume, needs=("train-lora",), cap_s=150),
    Step("model-full-size", "random-weight Phi-3.5-vision, official config", step_model_full_size, needs=("env",),
         cap_s=240),
    Step("attention-full-size", "sdpa vs eager logits, DocVQA shape", step_attention("full-size", full_size=True),
         needs=("model-full-size",), cap_s=150),
    *[Step(f"bench-{s}", f"phi3v-train bench --strategy {s}", step_bench(s), needs=("model-full-size",), cap_s=180)
      for s in STRATEGIES],
    Step("memory-vs-plan", "peak memory vs phi3v-train plan (±20 %)", step_memory, final=True, cap_s=10),
    Step("speed-table", "the speed table", step_table, final=True, cap_s=60),
]
STEP_NAMES = [step.name for step in STEPS]


def run_steps(run: Runner, selected: set[str]) -> list[Row]:
    rows: list[Row] = []
    by_name: dict[str, Row] = {}
    for index, step in enumerate(STEPS, 1):
        row = Row(step.name, step.title)
        rows.append(row)
        by_name[step.name] = row
        blocked = [need for need in step.needs if by_name[need].status != "ok"]
        left = run.deadline - time.monotonic() - (0 if step.final else RESERVE_S)
        if step.name not in selected:
            row.reason = "not selected (--only)"
        elif blocked:
            row.reason = f"needs {', '.join(blocked)} (did not succeed)"
        elif left < 10:
            row.reason = f"out of time (budget {run.args.budget:.0f} s)"
        else:
            run.step_deadline = time.monotonic() + min(step.cap_s, left)
            run.log(f"\n{'=' * 30} {step.name}: {step.title}\n")
            start = time.monotonic()
            try:
                row.summary, row.details = step.run(run)
                row.status = "ok"
            except StepFailed as exc:
                row.reason, row.details = str(exc), exc.details
                row.status = "skipped" if exc.details.get("skip") else "failed"
            except Exception as exc:  # noqa: BLE001 - a bug in one step must not lose the report
                row.status, row.reason = "failed", f"{type(exc).__name__}: {exc}"[:300]
            row.seconds = round(time.monotonic() - start, 1)
        line = row.summary if row.status == "ok" else row.reason
        print(f"[{index:2d}/{len(STEPS)}] {step.name:<20} {row.status:<7} {row.seconds:6.1f} s  {line}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# The report.


def cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def render(report: dict[str, Any]) -> str:
    env = report["env"]
    versions = env.get("versions", {})
    lines = [
        "# phi3v on one GPU: correctness and the speed table",
        "",
        f"- date: {report['date']}; host: {report['host']}; mode: {report['mode']}; "
        f"wall: {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget",
        f"- device: {env.get('device', 'unknown')}" + (f"; {env['card']}" if env.get("card") else "")
        + (f"; compute capability {env['capability']}, {env['memory_gb']} GB" if env.get("capability") else ""),
        f"- python {env.get('python', '?')}; " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + (f"; not installed: {', '.join(k for k, v in versions.items() if not v)}" if versions else ""),
        f"- command: `{report['command']}`",
        f"- steps: {report['counts']['ok']} ok, {report['counts']['failed']} failed, "
        f"{report['counts']['skipped']} skipped",
        "",
        "| # | step | status | seconds | result |",
        "|---|---|---|---|---|",
    ]
    for index, row in enumerate(report["steps"], 1):
        text = row["summary"] if row["status"] == "ok" else row["reason"]
        lines.append(f"| {index} | {row['name']} | {row['status']} | {row['seconds']:.0f} | {cell(text)} |")
    lines += ["", "## Speed table", ""]
    table = next((r["details"].get("markdown") for r in report["steps"] if r["name"] == "speed-table"), None)
    lines += [table.replace("# Phi-3.5-vision training speed\n\n", "") if table else "(no speed table: see the steps)"]
    lines += ["", "The original guide's 8×A100-80GB rows (Phi-3-vision, DocVQA, effective batch 64), per GPU:", "",
              "| training method | flash attention | img/s (8 GPUs) | img/s per GPU | peak GB per GPU |",
              "|---|---|---|---|---|"]
    for method, flash, rate, peak in ORIGINAL_8XA100:
        lines.append(f"| {method} | {'yes' if flash else 'no'} | {rate:.3f} | {rate / 8:.2f} | ~{peak} |")
    lines += ["", "Goals per GPU at DocVQA shapes: " + ", ".join(f"{k} ≥ {v:g} img/s" for k, v in GOALS_IMG_S.items())]
    memory = next((r["details"].get("rows") for r in report["steps"] if r["name"] == "memory-vs-plan"), None)
    if memory:
        lines += ["", "## Peak memory vs `phi3v-train plan`", "",
                  f"`{memory[0]['plan_command']}` (strategy varies)", "",
                  "| strategy | attention | measured GB | plan GB | measured / plan | within ±20 % |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['strategy']} | {r['attention']} | {r['measured_gb']:.2f} | {r['estimate_gb']:.2f} | "
                  f"{r['ratio']:.2f} | {'yes' if r['within'] else 'no'} |" for r in memory]
    lines += ["", "Every command and its output: `run.log`; machine-readable: `gpu_report.json`."]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for gpu_report.md/.json and run.log.")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default=os.environ.get("DEVICE", "auto"))
    parser.add_argument("--budget", type=float, default=None, help="Seconds for all steps [450 on a GPU, 900 on CPU].")
    parser.add_argument("--work", type=Path, default=None,
                        help="Scratch folder (checkpoints: 8 GB on a GPU) [a temporary one, removed at the end].")
    parser.add_argument("--wheels", default=str(HERE / "wheels"), help="Folder of wheels from prepare.sh.")
    parser.add_argument("--only", default="", help=f"Comma-separated steps to run: {','.join(STEP_NAMES)}.")
    parser.add_argument("--hide", default="", help="Comma-separated packages made unimportable (a rehearsal).")
    parser.add_argument("--batch", type=int, default=1, help="Per-device batch of the bench.")
    parser.add_argument("--python", default=sys.executable, help="Interpreter for every step [this one].")
    args = parser.parse_args(argv)
    args.hide = [name for name in args.hide.split(",") if name]
    selected = {name for name in args.only.split(",") if name} or set(STEP_NAMES)
    unknown = selected - set(STEP_NAMES)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEP_NAMES)}")
    if args.device == "auto":
        args.device = "cuda" if nvidia_smi() else "cpu"
    sizes = GPU_SIZES if args.device == "cuda" else CPU_SIZES
    args.budget = args.budget or sizes.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run.log").write_text("", encoding="utf-8")
    keep = args.work is not None
    work = args.work or Path(tempfile.mkdtemp(prefix="phi3v-device-"))
    work.mkdir(parents=True, exist_ok=True)
    started, date = time.monotonic(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = shown([Path(args.python).name, *map(str, sys.argv)]) if argv is None else shown(["run_device.py", *argv])
    print(f"phi3v device run: {args.device}, budget {args.budget:.0f} s, results in {args.out}, scratch in {work}",
          flush=True)
    runner = Runner(args, sizes, work)
    try:
        rows = run_steps(runner, selected)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    env = next((row.details for row in rows if row.name == "env" and row.details), {})
    counts = {status: sum(row.status == status for row in rows) for status in ("ok", "failed", "skipped")}
    report = {
        "date": date, "host": platform.node(), "mode": args.device, "budget_s": args.budget,
        "elapsed_s": round(time.monotonic() - started, 1), "command": command, "counts": counts,
        "env": {key: env[key] for key in ("device", "card", "capability", "memory_gb", "python", "versions",
                                          "torch_cuda", "cudnn") if key in env},
        "sizes": asdict(sizes), "steps": [asdict(row) for row in rows],
        "original_8xa100": [dict(zip(("strategy", "flash", "img_s_8_gpus", "peak_gb"), r)) for r in ORIGINAL_8XA100],
        "goals_img_s_per_gpu": GOALS_IMG_S,
    }
    write_atomic(args.out / "gpu_report.json", json.dumps(report, indent=1, default=str))
    markdown = render(report)
    write_atomic(args.out / "gpu_report.md", markdown)
    print(f"\nwrote {args.out / 'gpu_report.md'} and gpu_report.json ({counts['ok']} ok, {counts['failed']} failed, "
          f"{counts['skipped']} skipped) in {report['elapsed_s']:.0f} s", flush=True)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
