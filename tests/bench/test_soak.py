"""The soak benchmark (bench/soak.py) in a few seconds: a tiny random-weight model behind the real service stack
must see every kind of traffic, be sampled, drain without leaving a task behind, and report every figure; and the
verdict must turn to FAIL on each leak it exists to catch."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from bench.soak import KINDS, run_soak
from bench.soak_report import SoakReport, format_report, read_json, write_json
from llm.checkpoints.save import save_checkpoint
from llm.config import GPTConfig
from tests.llm.conftest import make_model


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> SoakReport:
    path = tmp_path_factory.mktemp("soak") / "tiny.safetensors"
    # Context 256: room for the prompt template, a little history and 8 new tokens.
    save_checkpoint(
        make_model(GPTConfig(vocab_size=50257, context_length=256, emb_dim=32, n_heads=4, n_layers=2)), path
    )
    # A grace period shorter than the run: the traffic must still run to its deadline, and only then drain.
    # Sampling every 0.5 s is as often as a loaded machine allows: each sample makes a full garbage collection.
    return run_soak(
        minutes=0.05,
        warmup_minutes=0.01,
        sample_s=0.5,
        checkpoint=path,
        max_new_tokens=8,
        reload_every_s=1.0,
        grace_s=2.0,
    )


def test_every_kind_of_traffic_runs_through_the_real_core_without_errors(soaked: SoakReport) -> None:
    assert set(soaked.done) == set(KINDS)
    assert all(count > 0 for count in soaked.done.values()), soaked.done
    assert soaked.errors == 0, soaked.error_examples
    assert soaked.rows_end["checkpoint_loads"] >= 1  # the admin reloads went through the core and were recorded
    assert soaked.rows_end["audit_log"] >= 1  # so were the purges


def test_the_process_is_sampled_and_nothing_is_left_after_the_drain(soaked: SoakReport) -> None:
    times = [s.t_s for s in soaked.samples]
    assert len(times) >= 3  # at the start, every 0.5 s (or as often as the machine allows), at the deadline
    assert times == sorted(times)
    assert times[0] < 1.5  # the first sample starts the run (its garbage collection may take a while)
    assert 3.0 <= soaked.end.t_s < 3.0 + 2.0
    assert soaked.warmup.t_s >= 0.6
    assert soaked.rows_warmup  # the tables were counted at the end of the warm-up too
    assert all(s.rss_mb > 0 and s.fds > 0 and s.py_objects > 0 and s.db_mb > 0 for s in soaked.samples)
    assert soaked.end.tasks > soaked.before.tasks  # the workers were running at the deadline ...
    assert soaked.drained.tasks == soaked.before.tasks  # ... and are gone, with everything they started
    assert soaked.checks["no asyncio task left after the drain"]


def test_the_report_has_every_figure_and_a_verdict(soaked: SoakReport, tmp_path: Path) -> None:
    text = format_report(soaked)
    for figure in ("RSS MB", "open fds", "threads", "asyncio tasks", "Python objects", "database MB", "slope"):
        assert figure in text
    assert text.endswith("PASS" if soaked.passed else "FAIL")
    write_json(soaked, tmp_path / "soak.json")
    document = json.loads((tmp_path / "soak.json").read_text(encoding="utf-8"))
    assert len(document["samples"]) == len(soaked.samples)
    assert document["summary"]["passed"] == soaked.passed
    assert {"rss_growth_pct", "rss_slope_mb_per_hour", "rss_max_mb", "db_growth_pct", "checks"} <= set(
        document["summary"]
    )


def failed(
    soaked: SoakReport, *, rss_end: float = 500.0, fds_drained: int = 30, tasks_left: int = 0, errors: int = 0
) -> list[str]:
    """The checks that fail once the soak's samples are made steady (500 MB, 30 files), then changed as given (RSS:
    over the whole end window)."""
    steady = replace(soaked, samples=[replace(s, rss_mb=500.0, fds=30) for s in soaked.samples])
    end_from = steady.end.t_s - steady.rss_window_s
    samples = [replace(s, rss_mb=rss_end) if s.t_s >= end_from else s for s in steady.samples]
    drained = replace(soaked.drained, fds=fds_drained, tasks=soaked.before.tasks + tasks_left)
    changed = replace(soaked, samples=samples, drained=drained, errors=errors)
    return [check for check, ok in changed.checks.items() if not ok]


def test_the_verdict_fails_on_rss_growth_a_leaked_file_or_task_and_errors(soaked: SoakReport) -> None:
    assert failed(soaked) == []
    assert failed(soaked, rss_end=524.0) == []  # +4.8%
    assert failed(soaked, rss_end=526.0) == ["RSS growth after the warm-up < 5%"]
    assert failed(soaked, fds_drained=32) == []
    assert failed(soaked, fds_drained=33) == ["open files after the drain <= warm-up level + 2"]
    assert failed(soaked, tasks_left=1) == ["no asyncio task left after the drain"]
    assert failed(soaked, errors=1) == ["no error logged"]
    assert failed(replace(soaked, done={**soaked.done, "reload": 0})) == ["every kind of traffic ran"]
    assert "never ran: reload" in format_report(replace(soaked, done={**soaked.done, "reload": 0}))


def test_the_slope_is_fitted_over_the_samples_after_the_warm_up(soaked: SoakReport) -> None:
    # RSS rising 1 MB per second after the warm-up is 3,600 MB an hour, whatever it did before.
    samples = [replace(s, rss_mb=900.0 if s.t_s < soaked.warmup_s else 500.0 + s.t_s) for s in soaked.samples]
    assert replace(soaked, samples=samples).rss_slope_mb_per_hour == pytest.approx(3600.0)


def test_rss_is_compared_as_medians_so_one_reload_spike_decides_nothing(soaked: SoakReport) -> None:
    # Ten minutes sampled every 10 s, warm-up 100 s, RSS steady at 500 MB...
    samples = [replace(soaked.samples[0], t_s=float(t), rss_mb=500.0) for t in range(0, 600, 10)]
    samples[-1] = replace(samples[-1], rss_mb=700.0)  # ... but the last sample lands while two models are loaded
    steady_with_a_spike = replace(soaked, samples=samples, warmup_s=100.0)
    assert steady_with_a_spike.rss_window_s == 120.0 and steady_with_a_spike.rss_growth_pct == 0.0


def test_a_run_written_to_json_is_judged_again_the_same(soaked: SoakReport, tmp_path: Path) -> None:
    write_json(soaked, tmp_path / "soak.json")
    again = read_json(tmp_path / "soak.json")
    assert again.summary() == soaked.summary() and format_report(again) == format_report(soaked)
