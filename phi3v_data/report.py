"""What ``phi3v-data validate`` found: findings, dataset statistics, the JSON report and the rich summary.

The validator (:mod:`phi3v_data.validate`) produces a :class:`ValidationReport`; this module only holds and shows it,
so the trainer's pre-flight and ``phi3v-data preview`` can reuse the same objects and rendering.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

MAX_DISTINCT = 1000
"""Distinct sources / labels counted per table; more fall into one "(other)" row so memory stays bounded."""
OTHER = "(other)"

CODES: dict[str, str] = {
    "not_utf8": "line is not valid UTF-8",
    "invalid_json": "line is not valid JSON",
    "schema": "record does not match the record format",
    "duplicate_id": "id already used by an earlier record",
    "empty_text": "user or assistant text is empty or whitespace",
    "binary_answer": "binary task answer is not 'yes' or 'no', or disagrees with its label",
    "image_tag_missing": "a turn places <|image_k|> tags but not one for each of its images",
    "image_tag_unknown": "<|image_k|> tag for an image the record does not have",
    "image_tag_wrong_turn": "<|image_k|> tag in a turn that does not own image k",
    "image_tag_duplicate": "the same <|image_k|> tag appears more than once",
    "image_tag_in_answer": "assistant text contains an <|image_k|> tag",
    "image_path_unsafe": "image path is absolute or leads outside the images directory",
    "image_missing": "image file does not exist",
    "image_undecodable": "image file does not decode",
    "image_too_large": "image is a decompression bomb (too many pixels); refused",
    "image_empty": "image has zero width or height",
    "image_aspect": "image too elongated for the HD transform at --num-crops (a 0-pixel side)",
    "too_long": "record is longer than --max-length tokens",
    "no_records": "file contains no records",
    "internal_error": "the validator itself failed on this line (please report it)",
}
"""Every stable finding code and what it means; reports and tests rely on these names."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where it is (file, 1-based line, record id, field path) and what is wrong, in plain English."""

    code: str
    line: int
    id: str | None
    field: str
    message: str
    file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "line": self.line, "id": self.id, "field": self.field,
                "message": self.message, "file": self.file}


def bounded_add(counter: Counter, key: Any, n: int = 1) -> None:
    """Count ``key`` unless the counter already holds MAX_DISTINCT other keys (then count it as OTHER)."""
    if key in counter or len(counter) < MAX_DISTINCT:
        counter[key] += n
    else:
        counter[OTHER] += n


def percentile(histogram: Counter, q: float) -> int | None:
    """Nearest-rank percentile of the values counted in ``histogram`` (value → count): smallest v with ≥ q% at or
    below."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


@dataclass
class Stats:
    """Counts over the records of one or more files. Everything is a bounded counter: memory does not grow with
    lines."""

    records: int = 0
    ok: int = 0
    with_problems: int = 0
    unlabeled: int = 0
    findings_by_code: Counter = field(default_factory=Counter)
    records_by_code: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    images_per_record: Counter = field(default_factory=Counter)
    labels: dict[str, Counter] = field(default_factory=dict)
    lengths: Counter = field(default_factory=Counter)
    max_length: int | None = None

    def add_label(self, task: str, label: str) -> None:
        bounded_add(self.labels.setdefault(task, Counter()), label)

    def merge(self, other: "Stats") -> None:
        """Add ``other``'s counts into this one (combining files)."""
        for name in ("records", "ok", "with_problems", "unlabeled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("findings_by_code", "records_by_code", "tasks", "images_per_record", "lengths"):
            getattr(self, name).update(getattr(other, name))
        for key, n in other.sources.items():
            bounded_add(self.sources, key, n)
        for task, counter in other.labels.items():
            for key, n in counter.items():
                bounded_add(self.labels.setdefault(task, Counter()), key, n)
        self.max_length = self.max_length or other.max_length

    def length_summary(self) -> dict[str, int] | None:
        if not self.lengths:
            return None
        summary = {f"p{q}": percentile(self.lengths, q) for q in (50, 90, 99)}
        summary["max"] = max(self.lengths)
        summary["count"] = sum(self.lengths.values())
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "ok": self.ok, "with_problems": self.with_problems, "unlabeled": self.unlabeled,
            "findings_by_code": dict(self.findings_by_code), "records_by_code": dict(self.records_by_code),
            "sources": {str(k): v for k, v in self.sources.items()}, "tasks": dict(self.tasks),
            "images_per_record": {str(k): v for k, v in sorted(self.images_per_record.items())},
            "labels": {task: dict(counter) for task, counter in self.labels.items()},
            "lengths": self.length_summary(), "max_length": self.max_length,
        }


@dataclass
class ValidationReport:
    """The result of validating one file (or several, combined with :meth:`combine`).

    ``findings`` keeps at most the validator's ``max_findings``; ``findings_not_kept`` counts the rest (the per-code
    counts in ``stats`` always cover everything).
    """

    files: list[Path]
    stats: Stats = field(default_factory=Stats)
    findings: list[Finding] = field(default_factory=list)
    findings_not_kept: int = 0
    output: Path | None = None
    written: int = 0

    @property
    def valid(self) -> bool:
        return not self.stats.findings_by_code

    @property
    def findings_by_line(self) -> dict[int, list[Finding]]:
        """Findings grouped by line number (for a single-file report; lines of several files would collide)."""
        if len(self.files) > 1:
            raise ValueError("findings_by_line needs a single-file report; group .findings by (file, line) instead")
        grouped: dict[int, list[Finding]] = {}
        for finding in self.findings:
            grouped.setdefault(finding.line, []).append(finding)
        return grouped

    @classmethod
    def combine(cls, reports: list["ValidationReport"]) -> "ValidationReport":
        combined = cls(files=[f for r in reports for f in r.files])
        for report in reports:
            combined.stats.merge(report.stats)
            combined.findings += report.findings
            combined.findings_not_kept += report.findings_not_kept
            combined.written += report.written
            combined.output = combined.output or report.output
        return combined

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report (``--report`` / ``--json``)."""
        return {
            "valid": self.valid, "files": [str(f) for f in self.files], "stats": self.stats.to_dict(),
            "findings": [f.to_dict() for f in self.findings], "findings_not_kept": self.findings_not_kept,
        }


def _table(title: str, *columns: str) -> Table:
    """A titled table; columns named with a leading '#' hold numbers (right-aligned)."""
    table = Table(title=title, title_justify="left", title_style="bold", min_width=len(title) + 4)
    for name in columns:
        table.add_column(name.lstrip("#"), justify="right" if name.startswith("#") else "left")
    return table


def _headline(report: ValidationReport) -> Text:
    names = ", ".join(str(f) for f in report.files)
    s = report.stats
    if report.valid:
        return Text.assemble(("VALID", "bold green"), f"  {names}: {s.records:,} records, no problems")
    return Text.assemble(("INVALID", "bold red"),
                         f"  {names}: {s.with_problems:,} of {s.records:,} records have problems")


def _overview(stats: Stats) -> Table:
    table = _table("Records", "", "#count")
    table.add_row("records", f"{stats.records:,}")
    table.add_row("ok", f"{stats.ok:,}")
    table.add_row("with problems", f"{stats.with_problems:,}")
    table.add_row("unlabeled (no answers; fine for test sets)", f"{stats.unlabeled:,}")
    return table


def _problems(stats: Stats) -> Table:
    table = _table("Problems by kind", "code", "#records", "#findings", "meaning")
    for code, n in stats.findings_by_code.most_common():
        table.add_row(code, f"{stats.records_by_code[code]:,}", f"{n:,}", CODES.get(code, ""))
    return table


def _counts(title: str, column: str, counter: Counter, top: int = 20) -> Table:
    table = _table(title, column, "#records")
    items = counter.most_common()
    for key, n in items[:top]:
        table.add_row(str(key), f"{n:,}")
    if len(items) > top:
        table.add_row(f"… {len(items) - top} more", f"{sum(n for _, n in items[top:]):,}")
    return table


def _histogram(stats: Stats) -> Table:
    table = _table("Images per record", "#images", "#records", "")
    peak = max(stats.images_per_record.values(), default=1)
    for n_images, n in sorted(stats.images_per_record.items()):
        table.add_row(str(n_images), f"{n:,}", "█" * max(1, round(30 * n / peak)))
    return table


def _lengths(stats: Stats) -> Table:
    summary = stats.length_summary() or {}
    table = _table("Sequence length (tokens, with image tokens)", "#p50", "#p90", "#p99", "#max", "#records")
    table.add_row(*(f"{summary[k]:,}" for k in ("p50", "p90", "p99", "max", "count")))
    if stats.max_length is not None:
        table.caption = f"--max-length {stats.max_length}: {stats.findings_by_code.get('too_long', 0):,} records longer"
    return table


def finding_line(finding: Finding) -> Text:
    """One finding as ``file:line  id  field  code: message`` (a line wraps instead of squeezing a table column)."""
    where = f"{Path(finding.file).name}:{finding.line}" if finding.file else str(finding.line)
    return Text.assemble((where, "bold"), "  ", (finding.id or "-", "magenta"), "  ",
                         (finding.field or "(record)", "cyan"), "  ", (finding.code, "red"), ": ", finding.message)


def print_findings(console: Console, findings: list[Finding], *, limit: int, total: int) -> None:
    console.print(Text("Findings", style="bold"))
    for finding in findings[:limit]:
        console.print(finding_line(finding))
    if total > limit:
        console.print(f"… showing {min(limit, len(findings))} of {total:,} findings "
                      "(--limit-errors N; --report FILE for all)")


def render(report: ValidationReport, console: Console, *, limit: int = 50) -> None:
    """Print the rich summary: headline, tables, then the first ``limit`` findings."""
    stats = report.stats
    console.print(_headline(report))
    console.print(_overview(stats))
    if stats.findings_by_code:
        console.print(_problems(stats))
    if stats.sources:
        console.print(_counts("Sources", "source", stats.sources))
    if stats.tasks:
        console.print(_counts("Tasks", "task", stats.tasks))
    if stats.images_per_record:
        console.print(_histogram(stats))
    for task, counter in sorted(stats.labels.items()):
        console.print(_counts(f"Labels ({task})", "label", counter))
    if stats.lengths:
        console.print(_lengths(stats))
    if report.findings and limit > 0:
        total = sum(stats.findings_by_code.values())
        print_findings(console, report.findings, limit=limit, total=total)
    if report.output is not None:
        dropped = stats.records - report.written
        line = f"wrote {report.written:,} valid records to {report.output}; dropped {dropped:,}"
        if dropped:
            line += " (" + ", ".join(f"{code}: {n:,}" for code, n in stats.records_by_code.most_common()) + ")"
        console.print(Text(line))
