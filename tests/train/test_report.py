"""``phi3v-train report``: the curves of log.jsonl as one self-contained page, checked in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi3v_train.cli import main
from phi3v_train.report import charts, read_log

# What `phi3v-train run --eval-every 2 --keep-best accuracy --log-every 1` writes (values rounded).
ROWS = [
    {"step": 1, "loss": 10.62, "grad_norm": 14.6, "learning_rate": 0.001, "images_per_s": 1.6, "epoch": 0.25},
    {"step": 2, "loss": 10.0, "grad_norm": 12.6, "learning_rate": 0.001, "images_per_s": 3.1, "epoch": 0.5},
    {"step": 2, "eval_loss": 9.51, "eval_accuracy": 0.25, "eval_auroc": 0.5, "best_step": 2, "epoch": 0.5},
    {"step": 3, "loss": 9.9, "grad_norm": 8.1, "learning_rate": 0.0005, "images_per_s": 0.1, "epoch": 0.75},
    {"step": 4, "loss": 9.84, "grad_norm": 10.9, "learning_rate": 0.0, "images_per_s": 2.4, "epoch": 1.0},
    {"step": 4, "eval_loss": 8.78, "eval_accuracy": 0.0, "eval_auroc": None, "best_step": 2, "epoch": 1.0},
]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return tmp_path / "run"


def test_charts_hold_the_logged_numbers(run_dir: Path) -> None:
    found = {chart.title: chart.series for chart in charts(read_log(run_dir))}
    assert list(found) == ["Loss", "Evaluation metrics", "Learning rate", "Gradient norm"]
    assert found["Loss"] == {"train loss": [(1, 10.62), (2, 10.0), (3, 9.9), (4, 9.84)],
                             "val loss": [(2, 9.51), (4, 8.78)]}
    assert found["Evaluation metrics"] == {"accuracy": [(2, 0.25), (4, 0.0)], "auroc": [(2, 0.5)]}  # None: no point


def test_cli_writes_a_self_contained_page(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    assert page.count("<svg") == 4 and "best (step 2)" in page
    assert not re.search(r"<script|<link|src=|href=|@import|url\(", page)  # nothing to fetch, nothing to run


def test_cli_names_the_bad_line(run_dir: Path) -> None:
    with (run_dir / "log.jsonl").open("a") as handle:
        handle.write("{not json\n")
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 1
    assert f"{run_dir / 'log.jsonl'}:7: invalid JSON: " in result.output and "Traceback" not in result.output
    empty = CliRunner().invoke(main, ["report", str(run_dir.parent)])
    assert empty.exit_code == 1 and "log.jsonl: no such file" in empty.output


_PROBE = """<pre id="probe"></pre><script>
const lines = [...document.querySelectorAll('polyline.series')];
document.getElementById('probe').textContent = JSON.stringify({
  svgs: document.querySelectorAll('svg').length,
  labels: lines.map(l => l.dataset.label),
  widths: lines.map(l => Math.round(l.getBBox().width)),
  best: document.querySelectorAll('line.best').length,
});
</script></body>"""


def test_curves_render_in_headless_chromium(run_dir: Path, tmp_path: Path, headless_probe) -> None:
    assert CliRunner().invoke(main, ["report", str(run_dir), "--out", str(tmp_path / "page.html")]).exit_code == 0
    probe = headless_probe(tmp_path / "page.html", _PROBE)
    assert probe["svgs"] == 4 and probe["best"] == 4
    assert probe["labels"] == ["train loss", "val loss", "accuracy", "auroc", "learning rate", "grad norm"]
    # every chart spans steps 1..4: a line over 1..4 is as wide as the plot, 2..4 two thirds of it, one point none
    plot = 760 - 64 - 16
    assert probe["widths"][0] == plot and probe["widths"][1] == round(plot * 2 / 3) and probe["widths"][3] == 0
