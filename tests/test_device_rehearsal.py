"""The first GPU run's script (benchmarks/device/run.sh), rehearsed on CPU at tiny sizes so it cannot rot unseen.

The rehearsal is prepare-free: this venv already has every package the GPU machine lacks. What it installs as wheels
is the other way round: the GPU image's own older transformers & co. (requirements/gpu-image.txt), so the run meets
the versions it will meet there; the project itself goes through the same ``pip install --no-deps --target``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN_SH = REPO / "benchmarks" / "device" / "run.sh"
STEPS = ["install", "env", "data", "tiny-model", "attention-tiny", "train-lora", "train-full", "export", "resume",
         "model-full-size", "attention-full-size", "bench-full", "bench-frozen-vision", "bench-lora", "bench-qlora",
         "memory-vs-plan", "speed-table"]



def load_driver():
    """benchmarks/device/run_device.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("run_device", REPO / "benchmarks" / "device" / "run_device.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_device"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def gpu_image_wheels() -> Path:
    """The GPU image's transformers & co. as wheels (requirements/gpu-image.txt), which `make test` downloads."""
    wheels = Path(os.environ.get("PHI3V_GPU_IMAGE_WHEELS", REPO / ".venv" / "gpu-image" / "wheels"))
    if not any(wheels.glob("transformers-*.whl")):
        if "PHI3V_GPU_IMAGE_WHEELS" in os.environ:
            pytest.fail(f"PHI3V_GPU_IMAGE_WHEELS={wheels} holds no transformers wheel")
        pytest.skip(f"no GPU-image wheels in {wheels}: `make test` downloads them")
    return wheels


def rehearse(out: Path, *flags: str, wheels: Path | str = "") -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "DEVICE": "cpu", "PY": sys.executable, "OUT": str(out)}
    env.pop("WORK", None)
    proc = subprocess.run(["bash", str(RUN_SH), "--wheels", str(wheels), *flags], env=env, capture_output=True,
                          text=True, timeout=900)
    assert (out / "gpu_report.json").is_file(), proc.stdout + proc.stderr
    return proc, json.loads((out / "gpu_report.json").read_text(encoding="utf-8"))


@pytest.mark.slow  # about twenty processes that each import torch: a few minutes on 2 cores
def test_rehearsal_runs_every_step_and_writes_both_reports(tmp_path: Path) -> None:
    """Over the GPU image's transformers (its wheels installed as the GPU run installs carried ones), not the lock's."""
    wheels = gpu_image_wheels()
    proc, report = rehearse(tmp_path / "out", wheels=wheels)
    rows = {row["name"]: row for row in report["steps"]}
    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (REPO / "requirements" / "gpu-image.txt").read_text(), re.MULTILINE))
    assert {name: rows["env"]["details"]["versions"][name] for name in pins} == pins
    assert sorted(rows["install"]["details"]["wheels"]) == sorted(p.name for p in wheels.glob("*.whl"))
    assert [row["name"] for row in report["steps"]] == STEPS
    failed = {name: row["reason"] for name, row in rows.items() if row["status"] != "ok"}
    # the one step that cannot mean anything on CPU says so; everything else ran and passed
    assert list(failed) == ["memory-vs-plan"], failed
    assert rows["memory-vs-plan"]["status"] == "skipped"
    assert failed["memory-vs-plan"].startswith("not compared on CPU (peak memory is the process's RSS)")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["mode"] == "cpu" and report["counts"] == {"ok": 16, "failed": 0, "skipped": 1}

    for strategy in ("lora", "full"):
        losses = rows[f"train-{strategy}"]["details"]["losses"]
        assert list(losses) == ["1", "2", "3", "4"] and losses["4"] < losses["1"]
    assert rows["resume"]["details"]["bitwise"] is True  # fp32 on CPU: the resumed losses are the same numbers
    assert rows["attention-tiny"]["details"]["relative_l2"] <= 1e-4
    assert rows["export"]["details"]["relative_l2"] <= 1e-3

    markdown = (tmp_path / "out" / "gpu_report.md").read_text(encoding="utf-8")
    for index, name in enumerate(STEPS, 1):
        assert f"| {index} | {name} | {rows[name]['status']} |" in markdown
    for strategy in ("full", "frozen-vision", "lora", "qlora"):  # the bench's own table, one row per strategy
        assert f"| {strategy} | 0 (CPU) | no (sdpa) | 1 |" in markdown
    assert "skipped flash_attention_2: flash-attention needs a CUDA device" in markdown
    assert "| full | yes | 8.657 | 1.08 | ~36 |" in markdown  # the original guide's row, per GPU
    assert (tmp_path / "out" / "run.log").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_report.json", "gpu_report.md", "run.log"]


@pytest.mark.slow
def test_a_missing_package_fails_its_steps_as_rows_with_the_reason_and_the_rest_goes_on(tmp_path: Path) -> None:
    proc, report = rehearse(tmp_path / "out", "--only", "install,env,data,tiny-model,train-lora", "--hide", "pydantic")
    rows = {row["name"]: row for row in report["steps"]}
    assert proc.returncode == 1
    assert (rows["env"]["status"], rows["env"]["reason"]) == ("failed", "missing: pydantic")
    assert rows["data"]["status"] == "failed" and "pydantic" in rows["data"]["reason"]
    assert rows["install"]["status"] == "ok"
    # the step after a failed one still runs (and, needing pydantic too, says so); a step that needs them is skipped
    assert rows["tiny-model"]["status"] == "failed" and "pydantic is not installed" in rows["tiny-model"]["reason"]
    assert (rows["train-lora"]["status"], rows["train-lora"]["reason"]) == (
        "skipped", "needs data, tiny-model (did not succeed)")
    assert rows["bench-lora"]["reason"] == "not selected (--only)"
    markdown = (tmp_path / "out" / "gpu_report.md").read_text(encoding="utf-8")
    assert "| 2 | env | failed |" in markdown and "missing: pydantic" in markdown


def test_install_fallback_registers_the_converters_without_building(tmp_path: Path) -> None:
    load_driver().write_dist_info(tmp_path)  # used when the GPU machine cannot build the project
    (dist,) = importlib.metadata.distributions(path=[str(tmp_path)])
    assert (dist.metadata["Name"], dist.version) == ("phi3v", "0.1.0")
    points = {(ep.group, ep.name): ep.value for ep in dist.entry_points}
    assert points[("phi3v.converters", "docvqa")] == "converters.docvqa:DocVQAConverter"
    assert points[("console_scripts", "phi3v-train")] == "phi3v_train.cli:main"
    assert len([key for key in points if key[0] == "phi3v.converters"]) == 9


def test_the_reason_is_the_last_line_that_is_not_a_progress_bar() -> None:
    output = ("Loading weights:   0%|          | 0/60\rLoading weights: 100%|██████████| 60/60 [00:00<00:00, 9.1it/s]\n"
              "Error: --data x: no such dataset\n"
              "Writing model shards: 100%|██████████| 1/1 [00:00<00:00, 34.30it/s]\n"
              "[2026-12-02 14:48:17,119] [WARNING] [real_accelerator.py:213:get_accelerator] Setting accelerator to CPU.\n\n")  # noqa: E501
    assert load_driver().last_line(output) == "Error: --data x: no such dataset"
