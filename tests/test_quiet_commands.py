"""No command prints library noise unless ``-v``, on any CPU.

bitsandbytes warns at import time on CPUs with AVX512-BF16 (``backends/cpu/ops.py``: "Failed to load CPU
gemm_4bit_forward from kernels-community"), and peft imports bitsandbytes whenever it is installed. Whether a test
machine has that flag is luck, so each test here forces the answer: a ``sitecustomize`` hook replaces
``bitsandbytes.functional.has_avx512bf16`` before ``backends.cpu.ops`` reads it, in every process the command starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")

KERNELS_LINE = "Failed to load CPU gemm_4bit_forward from kernels-community"
# What libraries print that a user cannot act on: bitsandbytes' kernels line, Python warnings (UserWarning:,
# FutureWarning:, DeprecationWarning:), transformers' deprecations and loading/saving bars, tracebacks.
NOISE = re.compile(r"kernels-community|Warning:|deprecated|Loading weights|Writing model shards|it/s\]|Traceback"
                   r"|torch_dtype")
HOOK = '''
import importlib.abc, sys

class _ForceAvx512Bf16(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "bitsandbytes.backends.cpu.ops":
            import bitsandbytes.functional as functional
            functional.has_avx512bf16 = lambda: {flag}
        return None

sys.meta_path.insert(0, _ForceAvx512Bf16())
'''


def cpu_env(root: Path, *, avx512bf16: bool) -> dict[str, str]:
    """The environment of a process that believes its CPU has (or lacks) AVX512-BF16."""
    hook_dir = root / f"avx512bf16-{avx512bf16}"
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HOOK.format(flag=avx512bf16))
    path = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def tool(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOISE.search(line)]


@pytest.mark.parametrize("avx512bf16", [True, False])
def test_the_simulated_cpu_flag_decides_whether_bitsandbytes_warns(tmp_path: Path, avx512bf16: bool) -> None:
    """The hook is real: a plain ``import bitsandbytes`` warns exactly when the flag is forced on."""
    done = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, timeout=120,
                          env=cpu_env(tmp_path, avx512bf16=avx512bf16))
    assert done.returncode == 0, done.stderr
    assert (KERNELS_LINE in done.stderr) is avx512bf16


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """``make demo`` at a small size (sample, convert, validate, init-tiny, eval, LoRA run, eval) on an AVX512-BF16
    CPU."""
    root = tmp_path_factory.mktemp("quiet")
    out = root / "demo"
    done = subprocess.run([sys.executable, "-m", "phi3v_train.demo", "--out", str(out), "--steps", "2", "--classes",
                           "2", "--clips-per-class", "6"], capture_output=True, text=True, timeout=600,
                          env=cpu_env(root, avx512bf16=True))
    return out, done


def test_the_demo_and_every_step_it_runs_print_no_library_noise(demo) -> None:
    out, done = demo
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("phi3v-data sample video", "phi3v-data convert video", "phi3v-data validate", "phi3v-train init-tiny",
                 "phi3v-train eval", "phi3v-train run", "phi3v-train eval --model"):
        assert step in " ".join(done.stdout.split()).replace(str(Path(sys.executable).parent) + "/", "")
    assert "demo finished in" in done.stdout and (out / "run" / "final" / "adapter_config.json").is_file()
    assert noise(done.stdout + done.stderr) == []


@pytest.mark.parametrize("avx512bf16", [True, False])
def test_predict_on_an_adapter_prints_the_answer_only(demo, tmp_path: Path, avx512bf16: bool) -> None:
    """An adapter makes predict import peft, and so bitsandbytes: still one line, nothing on stderr."""
    out, _ = demo
    image = next((out / "data" / "images").rglob("*.jpg"))
    done = subprocess.run([tool("phi3v-train"), "predict", "--model", str(out / "run" / "final"), "--image", str(image),
                           "--num-crops", "1", "--max-new-tokens", "2", "Which action is this?"],
                          capture_output=True, text=True, timeout=300, env=cpu_env(tmp_path, avx512bf16=avx512bf16))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and len(done.stdout.splitlines()) == 1


def test_verbose_shows_what_the_quiet_default_hides(demo, tmp_path: Path) -> None:
    """-v lets the libraries speak: the kernels line the default hid is there (so the hiding is what removed it)."""
    out, _ = demo
    image = next((out / "data" / "images").rglob("*.jpg"))
    done = subprocess.run([tool("phi3v-train"), "-v", "predict", "--model", str(out / "run" / "final"), "--image",
                           str(image), "--num-crops", "1", "--max-new-tokens", "2", "Which action is this?"],
                          capture_output=True, text=True, timeout=300, env=cpu_env(tmp_path, avx512bf16=True))
    assert done.returncode == 0, done.stderr
    assert KERNELS_LINE in done.stderr


@pytest.mark.parametrize("avx512bf16", [True, False])
def test_export_of_the_demo_adapter_prints_no_library_noise(demo, tmp_path: Path, avx512bf16: bool) -> None:
    out, _ = demo
    merged = tmp_path / "merged"
    done = subprocess.run([tool("phi3v-train"), "export", "--adapter", str(out / "run" / "final"),
                           "--out", str(merged)],
                          capture_output=True, text=True, timeout=300, env=cpu_env(tmp_path, avx512bf16=avx512bf16))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (merged / "config.json").is_file()
    assert noise(done.stdout + done.stderr) == []


def test_the_demo_runs_again_over_its_own_output(tmp_path: Path) -> None:
    """`make demo` twice: the second run replaces the demo's own model and run instead of stopping at a step."""
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "phi3v_train.demo", "--out", str(out), "--steps", "1", "--classes", "2",
               "--clips-per-class", "6"]
    for attempt in ("first", "second"):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{attempt} run: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        assert "demo finished in" in done.stdout
