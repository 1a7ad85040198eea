"""What the soak benchmark measures about its own process, and what it makes of it: the figures, the targets of
issue 13 and the verdict, as a table for people and as JSON for scripts."""

from __future__ import annotations

import gc
import json
import logging
import sqlite3
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RSS_GROWTH_TARGET_PCT = 5.0  # from the end of the warm-up to the end of the traffic
# RSS is compared as the median over this long at the end of the warm-up and at the end of the traffic, not as two
# single samples: a reload holds two models for a moment (spikes of 100 MB and more) and the glibc arenas breathe by
# tens of MB around it, so one sample lands high or low by chance. Two reload periods by default.
RSS_WINDOW_S = 120.0
FD_TOLERANCE = 2  # open files after the drain may exceed their warm-up level by this many
TABLES = ("messages", "conversations", "processed_events", "channel_settings", "audit_log", "checkpoint_loads")
DATABASE_NOTE = (
    "messages, conversations and processed events are bounded by retention and deletions; the audit log and "
    "checkpoint loads are kept by design (admins' actions stay accountable) and grow with each reload, settings "
    "change and purge; SQLite reuses freed pages but never shrinks its file, which follows the high-water mark of "
    "the live rows, and the WAL file stays at its largest size"
)


@dataclass(frozen=True)
class Sample:
    t_s: float  # since the traffic started
    rss_mb: float  # VmRSS
    fds: int  # open file descriptors
    threads: int
    tasks: int  # asyncio tasks, the soak's own workers included
    py_objects: int  # live objects the garbage collector tracks: flat while RSS grows means the growth is native
    db_mb: float  # the database file, its WAL and its shared-memory file
    done: int  # requests and events finished, every kind
    errors: int  # log records at ERROR or above so far


# The counts the table shows beside RSS: (label, Sample field).
COUNTED = (("open fds", "fds"), ("threads", "threads"), ("asyncio tasks", "tasks"), ("Python objects", "py_objects"))

SAMPLE_HEADER = (
    f"{'t s':>7} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'tasks':>5} {'objects':>9} {'DB MB':>7} {'done':>7} "
    f"{'errors':>6}"
)


def sample_line(s: Sample) -> str:
    process = f"{s.t_s:>7.0f} {s.rss_mb:>8.1f} {s.fds:>5} {s.threads:>7} {s.tasks:>5} {s.py_objects:>9}"
    return f"{process} {s.db_mb:>7.2f} {s.done:>7} {s.errors:>6}"


def live_objects() -> int:
    """Objects alive after a full collection (garbage waiting for the collector would look like a leak). The
    collection pauses the event loop for a fraction of a second, once a sample."""
    gc.collect()
    return len(gc.get_objects())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("/proc/self/status has no VmRSS; the soak measures a Linux process")


def database_mb(path: Path) -> float:
    files = (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def table_rows(path: Path) -> dict[str, int]:
    """Rows per table, through a read-only connection of its own (WAL: it never blocks the service)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
    finally:
        connection.close()


class LogCount(logging.Handler):
    """Counts warnings and errors from every logger (the inference thread's too); keeps the first few errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings = self.errors = 0
        self.examples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR:
            self.warnings += 1
            return
        self.errors += 1
        if len(self.examples) < 5:
            self.examples.append(f"{record.name}: {record.getMessage()}")


@dataclass(frozen=True)
class SoakReport:
    """What one soak recorded; the figures and the verdict are derived from it."""

    config: dict[str, Any]
    warmup_s: float
    samples: list[Sample]  # during the traffic, the last one at the deadline
    before: Sample  # the service started, no traffic yet
    drained: Sample  # the traffic drained and the jobs stopped, the service still open
    done: dict[str, int]  # by kind
    refused: dict[str, int]  # turned away as the service would: rate limit, busy, timeout
    warnings: int
    errors: int
    error_examples: list[str]
    rows_warmup: dict[str, int]
    rows_end: dict[str, int]

    @property
    def warmup(self) -> Sample:
        """The first sample at or after the end of the warm-up."""
        return next((s for s in self.samples if s.t_s >= self.warmup_s), self.samples[-1])

    @property
    def end(self) -> Sample:
        return self.samples[-1]

    @property
    def after_warmup(self) -> list[Sample]:
        return [s for s in self.samples if s.t_s >= self.warmup.t_s]

    @property
    def rss_window_s(self) -> float:
        """`RSS_WINDOW_S`, or a third of what follows the warm-up in a shorter run (the windows never overlap)."""
        return min(RSS_WINDOW_S, (self.end.t_s - self.warmup.t_s) / 3)

    @property
    def rss_warmup_mb(self) -> float:
        """Median RSS over the window that starts at the end of the warm-up."""
        window = [s.rss_mb for s in self.after_warmup if s.t_s <= self.warmup.t_s + self.rss_window_s]
        return statistics.median(window)

    @property
    def rss_end_mb(self) -> float:
        """Median RSS over the window that ends with the traffic."""
        window = [s.rss_mb for s in self.after_warmup if s.t_s >= self.end.t_s - self.rss_window_s]
        return statistics.median(window)

    @property
    def rss_growth_pct(self) -> float:
        return (self.rss_end_mb - self.rss_warmup_mb) / self.rss_warmup_mb * 100

    @property
    def rss_slope_mb_per_hour(self) -> float:
        """The least-squares slope over the samples after the warm-up: less noisy than two end points."""
        post = self.after_warmup
        if len(post) < 2:
            return 0.0
        return statistics.linear_regression([s.t_s for s in post], [s.rss_mb for s in post]).slope * 3600

    @property
    def db_growth_pct(self) -> float:
        return (self.end.db_mb - self.warmup.db_mb) / self.warmup.db_mb * 100 if self.warmup.db_mb else 0.0

    @property
    def checks(self) -> dict[str, bool]:
        return {
            f"RSS growth after the warm-up < {RSS_GROWTH_TARGET_PCT:g}%": self.rss_growth_pct < RSS_GROWTH_TARGET_PCT,
            f"open files after the drain <= warm-up level + {FD_TOLERANCE}": (
                self.drained.fds <= self.warmup.fds + FD_TOLERANCE
            ),
            "no asyncio task left after the drain": self.drained.tasks <= self.before.tasks,
            "no error logged": self.errors == 0,
            "every kind of traffic ran": all(self.done.values()),
        }

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def summary(self) -> dict[str, Any]:
        return {
            "warmup": asdict(self.warmup),
            "end": asdict(self.end),
            "rss_max_mb": max(s.rss_mb for s in self.after_warmup),
            "rss_window_s": self.rss_window_s,
            "rss_warmup_median_mb": self.rss_warmup_mb,
            "rss_end_median_mb": self.rss_end_mb,
            "rss_growth_pct": self.rss_growth_pct,
            "rss_slope_mb_per_hour": self.rss_slope_mb_per_hour,
            "db_growth_pct": self.db_growth_pct,
            "checks": self.checks,
            "passed": self.passed,
        }


def format_report(r: SoakReport) -> str:
    elapsed, total = r.end.t_s or 1.0, sum(r.done.values())
    refused = ", ".join(f"{why} {count:,}" for why, count in sorted(r.refused.items())) or "none"
    post = r.after_warmup
    lines = [
        f"traffic: {total:,} requests and events in {elapsed / 60:.1f} min ({total / elapsed:.1f}/s); "
        f"errors logged {r.errors}, warnings {r.warnings}; refused as the service would: {refused}",
        "  " + ", ".join(f"{kind} {count:,}" for kind, count in r.done.items()),
        "",
        f"{'':<20}{'before':>9}{'warm-up end':>13}{'end':>9}{'max':>9}{'drained':>9}",
        f"{'RSS MB':<20}{r.before.rss_mb:>9.1f}{r.warmup.rss_mb:>13.1f}{r.end.rss_mb:>9.1f}"
        f"{max(s.rss_mb for s in post):>9.1f}{r.drained.rss_mb:>9.1f}   slope {r.rss_slope_mb_per_hour:+.1f} MB/h",
        f"{'RSS MB, median':<20}{'':>9}{r.rss_warmup_mb:>13.1f}{r.rss_end_mb:>9.1f}{'':>18}   growth "
        f"{r.rss_growth_pct:+.2f}% (medians over {r.rss_window_s:.0f} s)",
    ]
    for label, name in COUNTED:
        before, warmup, end, drained = (getattr(s, name) for s in (r.before, r.warmup, r.end, r.drained))
        top = max(getattr(s, name) for s in post)
        lines.append(f"{label:<20}{before:>9}{warmup:>13}{end:>9}{top:>9}{drained:>9}")
    lines.append(
        f"{'database MB (+WAL)':<20}{r.before.db_mb:>9.2f}{r.warmup.db_mb:>13.2f}{r.end.db_mb:>9.2f}"
        f"{max(s.db_mb for s in post):>9.2f}{r.drained.db_mb:>9.2f}   growth {r.db_growth_pct:+.1f}%"
    )
    rows = ", ".join(f"{table} {r.rows_warmup.get(table, 0):,} -> {r.rows_end[table]:,}" for table in TABLES)
    lines += [f"rows, warm-up end -> end: {rows}", f"  ({DATABASE_NOTE})"]
    lines += [f"  error: {example}" for example in r.error_examples]
    lines += ["", *(f"{'PASS' if ok else 'FAIL'}  {check}" for check, ok in r.checks.items())]
    if missing := [kind for kind, count in r.done.items() if not count]:
        lines.append(f"      never ran: {', '.join(missing)}")
    lines.append("PASS" if r.passed else "FAIL")
    return "\n".join(lines)


def read_json(path: Path) -> SoakReport:
    """A run written by `write_json`, to derive its figures and verdict again (the summary is recomputed)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    document.pop("summary", None)
    document["samples"] = [Sample(**sample) for sample in document["samples"]]
    for name in ("before", "drained"):
        document[name] = Sample(**document[name])
    return SoakReport(**document)


def write_json(report: SoakReport, path: Path) -> None:
    """The samples and everything else recorded, with the derived figures and the verdict under "summary"."""
    document = {**asdict(report), "summary": report.summary()}
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
