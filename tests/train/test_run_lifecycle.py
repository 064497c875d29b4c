"""A finished run is data too: a second run, an --overwrite with a typo, a dry run, a copied run, a resume with other
settings or a damaged checkpoint never lose or mix a run. Each test builds the situation and compares the run's
files before and after (exit codes and one-line messages, as ``phi3v-train run`` prints them)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from phi3v_train.checkpointing import final_step, list_checkpoints
from phi3v_train.cli.run import run as run_command
from phi3v_train.config import load_config
from phi3v_train.run_dir import SETTINGS_FILE, RunError, changed_settings, refuse_existing, run_lock
from phi3v_train.train import run
from train_fixtures import cli_args, run_flags, write_dataset


def _files(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (the lock file aside: it holds the PID of whoever ran last)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != ".phi3v-train.lock"}


def _invoke(*args: str | Path):
    result = CliRunner().invoke(run_command, [str(a) for a in args])
    return result, " ".join(result.output.split())  # messages wrap at the terminal width


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    """(dataset, run): a LoRA run of 2 steps with checkpoints 1 and 2, made once under umask 022; tests copy it."""
    root = tmp_path_factory.mktemp("lifecycle")
    data = write_dataset(root / "data", count=4)
    flags = run_flags(data, tiny_model, root / "run", strategy="lora", max_steps=2, save_every=1, keep_last=2)
    old = os.umask(0o022)
    try:
        assert run(load_config(flags=flags)).status == "finished"
    finally:
        os.umask(old)
    return data, root / "run"


def _copy(finished: tuple[Path, Path], tmp_path: Path, name: str = "run") -> Path:
    shutil.copytree(finished[1], tmp_path / name)  # config.yaml still names the original as its output
    return tmp_path / name


# --- 1. one run at a time per run directory ----------------------------------------------------------------------


def test_a_second_run_is_refused_naming_the_holder_and_a_crashed_holders_lock_is_taken_over(
    tmp_path: Path, tiny_model: Path,
) -> None:
    data, out = write_dataset(tmp_path / "data", count=2), tmp_path / "run"
    holder = subprocess.Popen(  # a training run in progress, as far as the lock goes: our own lock code
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from phi3v_train.run_dir import run_lock
            with run_lock(Path({str(out)!r})):
                print("locked", flush=True)
                sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    args = cli_args(run_flags(data, tiny_model, out, max_steps=1))
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused, message = _invoke(*args)
        assert refused.exit_code == 1, refused.output
        assert f"Error: another training run (PID {holder.pid}) is writing to {out.resolve()}; wait for it to end " \
               "or choose another --out" in message
        assert sorted(p.name for p in out.iterdir()) == [".phi3v-train.lock"]  # nothing of a second run
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: no clean exit, the lock file stays behind
        holder.wait()
    assert (out / ".phi3v-train.lock").read_text().strip() == str(holder.pid)
    done, _ = _invoke(*args)
    assert done.exit_code == 0, done.output
    assert final_step(out) == 1
    with run_lock(out):  # released at the end of the run
        pass


# --- 2. a run never replaces an earlier one; --overwrite deletes only after every check --------------------------


def test_a_finished_run_is_not_replaced_and_overwrite_deletes_it_only_once_the_inputs_pass(
    finished: tuple[Path, Path], tmp_path: Path, tiny_model: Path,
) -> None:
    data, run_dir = finished[0], _copy(finished, tmp_path)
    (run_dir / "notes.txt").write_text("mine\n")  # a user's own file in the run directory
    (run_dir / "eval-before").mkdir()
    (run_dir / "eval-before" / "metrics.json").write_text("{}")
    before = _files(run_dir)
    flags = run_flags(data, tiny_model, run_dir, strategy="lora", max_steps=3, save_every=1, keep_last=2)

    again, message = _invoke(*cli_args(flags))
    assert again.exit_code == 1, again.output
    assert (f"Error: {run_dir.resolve()} already has checkpoints (checkpoint-2, …); continue it with --resume latest, "
            "or start afresh with --overwrite (deletes the old run's files once the new run's inputs are checked), "
            "or choose another --out") in message
    assert _files(run_dir) == before

    broken = write_dataset(tmp_path / "broken", count=4, extra=[
        {"id": "x", "conversations": [{"images": ["nope.png"], "user": "q", "assistant": "a"}]}])
    typos = [  # (flags, exit code, what the message says)
        ({**flags, "model": str(tmp_path / "no-such-model")}, 1, "--model"),
        ({**flags, "data": str(broken)}, 1, "colors_train.jsonl:5"),
        ({**flags, "train_split": "trian"}, 2, "no 'trian' split"),
        ({**flags, "data": str(tmp_path / "no-such-data")}, 2, "no such directory"),
    ]
    for changed, code, said in typos:
        result, message = _invoke(*cli_args(changed), "--overwrite")
        assert result.exit_code == code and said in message, result.output
        assert "unexpected error" not in message
        now = _files(run_dir)
        now.pop("preflight-train.json", None)  # the refused data's report; the old run had one too
        before.pop("preflight-train.json", None)
        assert now == before, f"{said}: the earlier run was touched"

    fresh, message = _invoke(*cli_args(flags), "--overwrite")
    assert fresh.exit_code == 0, fresh.output
    assert "--overwrite: deleted the earlier run's" in message
    assert [c.step for c in list_checkpoints(run_dir)] == [2, 3] and final_step(run_dir) == 3
    assert [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (run_dir / "notes.txt").read_text() == "mine\n" and not (run_dir / "eval-before").exists()


def test_a_run_without_checkpoints_is_still_a_run(tmp_path: Path) -> None:
    (tmp_path / "final").mkdir()
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(RunError) as caught:
        refuse_existing(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path} already holds a run (final/, log.jsonl); start afresh with "
                                        "--overwrite")
    (tmp_path / "config.yaml").write_text("data: d\n")  # a dry run's config alone is no run
    refuse_existing(tmp_path / "elsewhere")


# --- 3. a dry run leaves an existing run's config.yaml alone ----------------------------------------------------


def test_dry_run_on_an_existing_run_writes_beside_its_config(finished: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir = _copy(finished, tmp_path)
    before = _files(run_dir)
    result, message = _invoke("--config", run_dir / "config.yaml", "--lr", "5e-4", "--dry-run")
    assert result.exit_code == 0, result.output
    written = run_dir / "config.dry-run.yaml"
    assert (f"dry run: settings written to {written} ({run_dir} holds a run: its config.yaml is left as it is); "
            "nothing loaded or trained") in message
    assert _files(run_dir) == {**before, "config.dry-run.yaml": written.read_bytes()}
    assert yaml.safe_load(written.read_text())["lr"] == 5e-4


# --- 4. a copied run trains into the copy ---------------------------------------------------------------------------


def test_a_copied_run_resumes_into_the_copy_and_data_is_compared_by_content(
    finished: tuple[Path, Path], tmp_path: Path,
) -> None:
    original = _files(finished[1])
    copy = _copy(finished, tmp_path, "b")
    moved = tmp_path / "moved-data"
    shutil.copytree(finished[0], moved)  # the same records elsewhere: the same run
    result, message = _invoke("--config", copy / "config.yaml", "--resume", "latest", "--max-steps", "3",
                              "--log-every", "5", "--workers", "1", "--data", moved)
    assert result.exit_code == 0, result.output
    assert (f"--config {copy / 'config.yaml'}: the config.yaml of run directory {copy}, which names {finished[1]} as "
            f"its output (copied from there?); training into {copy}") in message
    assert "resuming from checkpoint-2" in message
    assert final_step(copy) == 3 and [c.step for c in list_checkpoints(copy)] == [2, 3]
    assert yaml.safe_load((copy / "config.yaml").read_text())["output"] == str(copy)
    assert _files(finished[1]) == original  # the original run untouched


# --- 5. a resume that would change the run is refused, naming each difference ------------------------------------


def test_resume_refuses_changed_settings_unless_allowed_and_then_logs_each(
    finished: tuple[Path, Path], tmp_path: Path,
) -> None:
    run_dir = _copy(finished, tmp_path)
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(
        str(finished[1]), str(run_dir)))  # a config naming its own directory (no copy rule involved)
    before = _files(run_dir)
    other = write_dataset(tmp_path / "other", count=3)  # other records
    refused, message = _invoke("--config", run_dir / "config.yaml", "--resume", "latest", "--max-steps", "3",
                               "--lr", "2e-3", "--num-crops", "2", "--lora.rank", "4", "--data", other)
    assert refused.exit_code == 1, refused.output
    assert "these settings differ from the run's (checkpoint-2), and resuming would mix two runs:" in message
    for change in ("--lr: 0.001 in the run, 0.002 now", "--num-crops: 1 in the run, 2 now",
                   "--lora.rank: 16 in the run, 4 now"):
        assert change in message
    assert "--data: records " in message and "(other records)" in message
    assert "--allow-changed-settings" in message and "--max-steps" not in message
    assert _files(run_dir) == before

    allowed, message = _invoke("--config", run_dir / "config.yaml", "--resume", "latest", "--max-steps", "3",
                               "--lr", "2e-3", "--allow-changed-settings")
    assert allowed.exit_code == 0, allowed.output
    assert "settings changed on resume: --lr: 0.001 in the run, 0.002 now" in message
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [row for row in rows if "event" in row] == [
        {"step": 2, "event": "settings changed on resume", "change": "--lr: 0.001 in the run, 0.002 now"}]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2, 3]
    saved = json.loads((run_dir / "checkpoint-3" / SETTINGS_FILE).read_text())
    assert saved["settings"]["lr"] == 2e-3  # the next resume compares against what step 3 was trained with


def test_changed_settings_names_only_what_changes_the_run() -> None:
    base = {"strategy": "full", "lr": 1e-4, "seed": 0, "global_batch_size": 8, "log_every": 10, "workers": 2,
            "max_steps": 10, "lora": {"rank": 16}}
    now = {**base, "log_every": 1, "workers": 0, "max_steps": 20, "lora": {"rank": 8}}  # lora: unused by full
    assert changed_settings({"settings": base, "data": None}, {"settings": now, "data": None}) == []
    now = {**base, "lr": 2e-4, "seed": 1, "global_batch_size": 16, "scheduler": "linear"}
    assert changed_settings({"settings": base, "data": [{"weight": 1.0, "sha256": "a" * 64}]},
                            {"settings": now, "data": [{"weight": 1.0, "sha256": "b" * 64}]}) == [
        "--global-batch-size: 8 in the run, 16 now", "--lr: 0.0001 in the run, 0.0002 now",
        "--scheduler: unset in the run, linear now", "--seed: 0 in the run, 1 now",
        f"--data: records {'a' * 12} in the run, records {'b' * 12} now (other records)"]


# --- 6. a damaged checkpoint is refused by name ---------------------------------------------------------------------


def test_resume_refuses_a_checkpoint_without_optimizer_state_or_adapter(
    finished: tuple[Path, Path], tmp_path: Path,
) -> None:
    run_dir = _copy(finished, tmp_path)
    resume = ["--config", run_dir / "config.yaml", "--out", run_dir, "--resume", "latest", "--max-steps", "3"]
    (run_dir / "checkpoint-2" / "optimizer.pt").unlink()
    before = _files(run_dir)
    refused, message = _invoke(*resume)
    assert refused.exit_code == 1, refused.output
    assert (f"Error: --resume latest: {run_dir / 'checkpoint-2'} has no optimizer.pt: resuming it would restart the "
            "optimizer and the learning-rate schedule, not continue the run; resume another checkpoint, or pass "
            "--fresh-optimizer") in message
    assert _files(run_dir) == before

    adapter = run_dir / "checkpoint-1" / "adapter_model.safetensors"
    adapter.unlink()
    refused, message = _invoke(*resume[:-4], "--resume", run_dir / "checkpoint-1", "--max-steps", "3")
    assert refused.exit_code == 1, refused.output
    assert (f"Error: --resume {run_dir / 'checkpoint-1'}: {run_dir / 'checkpoint-1'} has no adapter weights "
            "(adapter_model.safetensors), so it cannot be resumed") in message
    assert "unexpected error" not in message and "ValueError" not in message

    fresh, message = _invoke(*resume, "--fresh-optimizer")
    assert fresh.exit_code == 0, fresh.output
    assert "fresh optimizer and scheduler on resume: no optimizer.pt" in message
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [row for row in rows if "event" in row] == [
        {"step": 2, "event": "fresh optimizer and scheduler on resume", "checkpoint": str(run_dir / "checkpoint-2"),
         "missing": "no optimizer.pt"}]
    assert final_step(run_dir) == 3


# --- 7. smaller -----------------------------------------------------------------------------------------------------


def test_the_lora_adapter_is_readable_like_a_full_model(finished: tuple[Path, Path]) -> None:
    final = finished[1] / "final"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in final.iterdir()}
    assert modes["adapter_model.safetensors"] == "0o644"
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--epochs", "inf", "Error: --epochs: Input should be a finite number (got inf)"),
    ("--epochs", "nan", "Error: --epochs: Input should be a finite number (got nan)"),
    ("--epochs", "-1", "Error: --epochs: Input should be greater than 0 (got -1.0)"),
    ("--lr", "inf", "Error: --lr: Input should be a finite number (got inf)"),
    ("--num-train-epochs", "inf", "Error: No such option '--num-train-epochs'. (Did you mean one of: '--epochs'"),
])
def test_an_endless_or_negative_number_of_epochs_is_a_usage_error(tmp_path: Path, flag: str, value: str,
                                                                   message: str) -> None:
    result, output = _invoke("--data", tmp_path, "--model", "m", "--out", tmp_path / "run", flag, value)
    assert result.exit_code == 2 and message in output, result.output
    assert not (tmp_path / "run").exists()
