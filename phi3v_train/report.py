"""``RUN/report.html``: a run's curves (loss, learning rate, evaluation metrics) from ``RUN/log.jsonl``.

One self-contained page of inline SVG: no script, no stylesheet or font from anywhere, so it opens from a cluster's
file system, a mail attachment or an artifact store as it is, with no TensorBoard. The best evaluation step
(``--keep-best``) is marked on every chart.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3v_data.io import atomic_write
from schemas.errors import UserError, json_error

LOG_FILE = "log.jsonl"  # phi3v_train.trainer.LOG_FILE; not imported from there, which would import torch

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 760, 280, 64, 16, 16, 40
NAMES = {"loss": "train loss", "eval_loss": "val loss", "learning_rate": "learning rate", "grad_norm": "grad norm"}


class ReportError(UserError, ValueError):
    """The run has no readable log; the message names the file (and line)."""


@dataclass
class Chart:
    title: str
    series: dict[str, list[tuple[int, float]]]  # label → (step, value), in step order
    unit_range: bool = False  # metrics in [0, 1]: the y axis shows all of it


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``RUN/log.jsonl``; a line that is no JSON object is a ReportError naming it."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        raise ReportError(f"{path}: no such file (is {run_dir} a run directory of phi3v-train run?)")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}:{lineno}: {json_error(exc)}") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ReportError(f"{path}:{lineno}: expected an object with an integer 'step'")
        rows.append(row)
    if not rows:
        raise ReportError(f"{path}: empty; the run has not logged a step yet")
    return rows


def _series(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    out = {}
    for key in keys:
        points = sorted({row["step"]: float(row[key]) for row in rows if _number(row.get(key))}.items())
        if points:
            out[NAMES.get(key, key.removeprefix("eval_"))] = points
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def charts(rows: list[dict[str, Any]]) -> list[Chart]:
    """Loss (train and val), the task metrics, learning rate and grad norm: the ones the log has."""
    metrics = sorted({key for row in rows for key in row if key.startswith("eval_") and key != "eval_loss"})
    found = [Chart("Loss", _series(rows, ["loss", "eval_loss"])),
             Chart("Evaluation metrics", _series(rows, metrics), unit_range=True),
             Chart("Learning rate", _series(rows, ["learning_rate"])),
             Chart("Gradient norm", _series(rows, ["grad_norm"]))]
    return [chart for chart in found if chart.series]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 × 10^k apart)."""
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def svg(chart: Chart, *, steps: tuple[int, int], best_step: int | None = None) -> str:
    """One chart as an inline ``<svg>`` over the run's ``steps`` (every chart shares them): axes with round ticks,
    a line (and dots) per series, a legend."""
    values = [value for points in chart.series.values() for _, value in points]
    x_ticks = _ticks(*steps) if steps[1] > steps[0] else [steps[0] - 1, steps[0], steps[0] + 1]
    y_ticks = (_ticks(0.0, 1.0) if chart.unit_range and 0 <= min(values) and max(values) <= 1
               else _ticks(min(values), max(values)))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(step: float) -> float:
        return LEFT + (step - x0) / (x1 - x0) * plot_w

    def py(value: float) -> float:
        return TOP + plot_h - (value - y0) / (y1 - y0) * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{html.escape(chart.title)}">',
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#bbb"/>']
    for tick in y_ticks:
        parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#eee"/>'
                     f'<text x="{LEFT - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for tick in x_ticks:
        parts.append(f'<text x="{px(tick):.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_label(tick)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">step</text>')
    if best_step is not None and x0 <= best_step <= x1:
        parts.append(f'<line class="best" x1="{px(best_step):.1f}" x2="{px(best_step):.1f}" y1="{TOP}" '
                     f'y2="{TOP + plot_h}" stroke="#555" stroke-dasharray="4 3"/>'
                     f'<text x="{px(best_step) + 4:.1f}" y="{TOP + plot_h - 6}">best (step {best_step})</text>')
    for index, (label, points) in enumerate(chart.series.items()):
        color = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{px(step):.1f},{py(value):.1f}" for step, value in points)
        parts.append(f'<polyline class="series" data-label="{html.escape(label)}" points="{coords}" fill="none" '
                     f'stroke="{color}" stroke-width="1.8"/>')
        if len(points) <= 60:  # evaluations are few: show each one
            parts += [f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="2.6" fill="{color}"/>' for s, v in points]
        parts.append(f'<rect x="{LEFT + plot_w - 20}" y="{TOP + 8 + 16 * index}" width="12" height="3" fill="{color}"/>'
                     f'<text x="{LEFT + plot_w - 26}" y="{TOP + 13 + 16 * index}" text-anchor="end">'
                     f'{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


STYLE = ("body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;"
         "margin:24px 0 6px}svg text{font:11px system-ui,sans-serif;fill:#333}table{border-collapse:collapse}"
         "td,th{padding:2px 12px 2px 0;text-align:left}")


def build_report(run_dir: Path) -> str:
    """The page for one run: a summary table, then one chart per kind of number the log holds."""
    rows = read_log(run_dir)
    evals = [row for row in rows if any(key.startswith("eval_") for key in row)]
    best = next((row["best_step"] for row in reversed(evals) if isinstance(row.get("best_step"), int)), None)
    trained = [row for row in rows if _number(row.get("loss"))]
    summary = [("run", str(run_dir)), ("steps logged", str(max(row["step"] for row in rows)))]
    if trained:
        summary.append(("last train loss", f"{trained[-1]['loss']:.4f} (step {trained[-1]['step']})"))
    if evals:
        last = evals[-1]
        shown = ", ".join(f"{NAMES.get(k, k.removeprefix('eval_'))} {v:.4f}" for k, v in last.items()
                          if k.startswith("eval_") and _number(v))
        summary.append(("last evaluation", f"step {last['step']}: {shown}"))
    if best is not None:
        summary.append(("best checkpoint", f"step {best} ({run_dir / 'best'})"))
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    steps = (min(row["step"] for row in rows), max(row["step"] for row in rows))
    body = "".join(f"<h2>{html.escape(chart.title)}</h2>{svg(chart, steps=steps, best_step=best)}"
                   for chart in charts(rows))
    title = html.escape(f"{run_dir.name}: training report")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1><table>{table}</table>{body}</body></html>\n")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the page atomically (default ``RUN/report.html``) and return its path."""
    out = out or run_dir / "report.html"
    page = build_report(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w", encoding="utf-8") as handle:
        handle.write(page)
    return out
