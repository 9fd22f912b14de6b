"""
The fast planning path and the benchmarks that measure it.

A plan is written by a plan writer on a thread of its own (see
``cavra_core.plan_writer``), from raw rows converted by hand; these tests hold
it to a plan computed the slow, obvious way, and check that the writer keeps
the plan's one transaction whatever fails. The benchmark scripts are run at
tiny sizes so that they keep working.
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from plugins_fixtures import (
    T0,
    FakePlugin,
    FakeType,
    package,
    plan_request,
    record_failure,
)

from cavra_core import engine as engine_module
from cavra_core import evidence, hookimpl, plan_writer
from cavra_core.calendar import DeliveryCalendar
from cavra_core.decisions import evaluate
from cavra_core.default_policy import CalendarMemo
from cavra_core.engine import _LINEAGE_FIELDS, _facts, canonical_json
from cavra_core.store import Lineage, RetryDecision, RetryPlan

BENCH = Path(__file__).resolve().parents[1] / "bench"
NOW = T0 + timedelta(hours=1)
CONNECTORS = {
    "hook-a": {"type": "fake"},
    "hook-jitter": {
        "type": "fake",
        "retry_policy": {
            "max_retry_attempts": 5,
            "retry_delay_minutes": 5,
            "jitter": 0.3,
        },
    },
    "hook-office": {
        "type": "fake",
        "retry_policy": {"retry_window_hours": 72},
        "schedule": {
            "timezone": "Europe/Berlin",
            "allowed_hours": ["08:00-18:00"],
            "allowed_days": ["mon", "tue", "wed", "thu", "fri"],
        },
    },
}


class Interrupt(BaseException):
    """Not an Exception, so PluginHost lets it through: a crash mid-plan."""


class CrashOnLineage:
    """Raises Interrupt while deciding the n-th lineage; no opinion otherwise."""

    def __init__(self) -> None:
        self.crash_at: int | None = None
        self.seen = 0

    def arm(self, lineages: int) -> None:
        self.crash_at = self.seen + lineages

    @hookimpl
    def cavra_decide_eligibility(self, lineage):
        self.seen += 1
        if self.seen == self.crash_at:
            raise Interrupt
        return None


@pytest.fixture
def store(make_engine, monkeypatch):
    """
    An engine over 60 varied failed lineages, planned in batches of 7.

    Inserts take 4 rows per statement, so both kinds of insert are used.
    """
    monkeypatch.setattr(engine_module, "BATCH_SIZE", 7)
    monkeypatch.setattr(plan_writer, "ROWS_PER_STATEMENT", 4)

    def build(*plugins):
        engine = make_engine(
            CONNECTORS,
            plugins=[FakePlugin(FakeType("fake")), *plugins],
            load_entry_points=False,
        )
        rng = random.Random(11)
        for index in range(60):
            generated = T0 - timedelta(hours=rng.uniform(1, 200))
            evidence = package(f"drill-{index}", generated_at=generated)
            connector_id = rng.choice(list(CONNECTORS))
            at = T0 - timedelta(minutes=rng.uniform(1, 2000))
            status = rng.choice([503, 503, 429, 500, 400, 401, None])
            extra = {"retry_after": "600"} if status in (429, 503) and index % 3 else {}
            record_failure(
                engine,
                at,
                status=status,
                connector_id=connector_id,
                evidence=evidence,
                **extra,
            )
            if index % 4 == 0 and status in (503, 429, 500, None):
                record_failure(
                    engine,
                    at + timedelta(minutes=40),
                    status=503,
                    connector_id=connector_id,
                    evidence=evidence,
                )
        return engine

    return build


def reference_documents(engine) -> tuple[str, list[dict]]:
    """The plan's hash and decisions computed the obvious way: model rows, json."""
    policy = engine.policy_for("", None).as_document()
    hasher = hashlib.sha256(canonical_json(policy).encode())
    documents = []
    rows = (
        Lineage.select()
        .where(Lineage.latest_failed == True)  # noqa: E712
        .order_by(Lineage.lineage_id)
    )
    for row in rows:
        values = {field.name: getattr(row, field.name) for field in _LINEAGE_FIELDS}
        values["package"] = row.package_id
        decision = evaluate(
            engine.hooks,
            _facts(values),
            engine.connector_with_health(row.connector_id),
            engine.policy_for(row.connector_id, None),
            row.version,
            NOW,
        )
        document = decision.as_document("")
        del document["decision_id"]
        hasher.update(
            b"\n"
            + json.dumps(
                document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
        )
        documents.append(document)
    return hasher.hexdigest(), documents


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cavra-plan-writer"]


def test_plan_equals_the_plan_computed_the_obvious_way(store) -> None:
    """Hash and every stored decision match a plan made from model rows."""
    engine = store()
    expected_hash, expected = reference_documents(engine)

    summary = engine.plan_retries(plan_request(), now=NOW)

    plan = engine.get_plan(summary["retry_plan_id"])
    stored = [
        {k: v for k, v in d.items() if k != "decision_id"}
        for d in plan["retry_decisions"]
    ]
    assert stored == expected
    assert summary["plan_hash"] == expected_hash
    assert len({d["decision_id"] for d in plan["retry_decisions"]}) == len(expected)
    assert writer_threads() == []


def test_a_plans_evidence_entry_equals_its_summary_read_back(store) -> None:
    """The decision keys hash planning computed is the one the store gives."""
    engine = store()

    summary = engine.plan_retries(plan_request(), now=NOW)

    entry = evidence.latest_entry("retry_plan", summary["retry_plan_id"])
    read_back = evidence.summary_of("retry_plan", summary["retry_plan_id"])
    assert json.loads(entry.document) == read_back
    assert evidence.verify_store()["intact"] is True


def test_plan_inside_the_callers_transaction_rolls_back_with_it(store) -> None:
    """In an open transaction the plan is the caller's, so it is undone with it."""
    engine = store()

    with engine.database.atomic() as transaction:
        summary = engine.plan_retries(plan_request(), now=NOW)
        assert RetryPlan.get_by_id(summary["retry_plan_id"]).decision_count == len(
            reference_documents(engine)[1]
        )
        transaction.rollback()

    assert RetryPlan.select().count() == 0
    assert RetryDecision.select().count() == 0


def test_plan_inside_a_transaction_equals_the_plan_outside(store) -> None:
    """The inline writer and the writer thread store the same plan."""
    engine = store()

    outside = engine.plan_retries(plan_request(), now=NOW)
    with engine.database.atomic():
        inside = engine.plan_retries(plan_request(), now=NOW)

    assert inside["plan_hash"] == outside["plan_hash"]
    assert inside["decision_count"] == outside["decision_count"]


def test_a_crash_while_deciding_leaves_no_plan_behind(store) -> None:
    """An exception in the caller's thread rolls the writer's transaction back."""
    crash = CrashOnLineage()
    engine = store(crash)
    crash.arm(20)

    with pytest.raises(Interrupt):
        engine.plan_retries(plan_request(), now=NOW)

    assert RetryPlan.select().count() == 0
    assert RetryDecision.select().count() == 0
    assert writer_threads() == []


class ThresholdWatcher:
    """Notes the collector's young threshold while lineages are decided."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    @hookimpl
    def cavra_decide_eligibility(self, lineage):
        self.seen.add(gc.get_threshold()[0])
        return None


def test_a_plan_collects_less_often_and_restores_the_threshold(store) -> None:
    """The collector's threshold is raised during a plan and restored after."""
    watcher = ThresholdWatcher()
    engine = store(watcher)
    watcher.seen.clear()  # recording the failures decided some already
    before = gc.get_threshold()

    engine.plan_retries(plan_request(), now=NOW)

    assert watcher.seen == {plan_writer.PLANNING_GC_THRESHOLD}
    assert gc.get_threshold() == before


def test_a_failed_plan_restores_the_collector_threshold(store) -> None:
    """A plan that raises leaves the collector as it found it."""
    crash = CrashOnLineage()
    engine = store(crash)
    crash.arm(20)
    before = gc.get_threshold()

    with pytest.raises(Interrupt):
        engine.plan_retries(plan_request(), now=NOW)

    assert gc.get_threshold() == before


def test_a_failing_insert_reaches_the_caller_and_leaves_no_plan(
    store, monkeypatch
) -> None:
    """An error on the writer thread is raised to the caller; nothing is kept."""
    engine = store()
    calls = []
    original = plan_writer.insert_decisions

    def failing(rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise RuntimeError("disk full")
        original(rows)

    monkeypatch.setattr(plan_writer, "insert_decisions", failing)

    with pytest.raises(RuntimeError, match="disk full"):
        engine.plan_retries(plan_request(), now=NOW)

    assert RetryPlan.select().count() == 0
    assert RetryDecision.select().count() == 0
    assert writer_threads() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lineages_read_as_json_columns_equal_the_rows_read_plainly(store) -> None:
    """On SQLite every batch read as JSON is the batch a plain read gives."""
    engine = store()
    database = engine.database
    batch_query = engine_module.failed_lineage_batch

    decoded = [
        list(plan_writer._decode_json_rows(text))
        for text in plan_writer._read_lineage_json(database, batch_query, 2)
    ]

    plain = list(plan_writer.read_lineage_rows(database, batch_query, 2))
    assert decoded == plain
    assert len(decoded) > 1


def test_json_columns_out_of_order_come_back_by_lineage_id() -> None:
    """The aggregate's order is not promised; the rows are sorted by lineage id."""
    text = json.dumps([["ln_b", "ln_c", "ln_a"], [2, 3, 1], [None, "x", "y"]])

    rows = list(plan_writer._decode_json_rows(text))

    assert rows == [("ln_a", 1, "y"), ("ln_b", 2, None), ("ln_c", 3, "x")]


@pytest.mark.parametrize(
    "schedule",
    [
        CONNECTORS["hook-office"]["schedule"],
        {"timezone": "UTC", "allowed_hours": ["22:00-06:00"]},
        {
            "timezone": "America/New_York",
            "allowed_hours": ["01:30-03:30", "09:00-17:00"],
            "blackouts": [
                {"start": "2026-03-08T00:00:00Z", "end": "2026-03-09T12:34:56.789Z"},
                {"start": "22:00", "end": "23:30", "days": ["sat"]},
            ],
        },
    ],
)
def test_calendar_memo_answers_as_the_calendar_does(schedule) -> None:
    """Remembered answers equal the calendar's own, across DST and blackouts."""
    calendar = DeliveryCalendar.from_settings(schedule)
    memo = CalendarMemo(calendar)
    rng = random.Random(5)
    start = T0 - timedelta(days=120)
    anchors = [start + timedelta(hours=rng.uniform(0, 4000)) for _ in range(60)]
    moments = [
        rng.choice(anchors) + timedelta(minutes=rng.uniform(-300, 300))
        if rng.random() < 0.7
        else start + timedelta(hours=rng.uniform(0, 4000))
        for _ in range(1500)
    ]

    answers = [memo.next_open(moment) for moment in moments]

    expected = [
        None if calendar.is_open(moment) else calendar.next_open(moment)
        for moment in moments
    ]
    assert answers == expected


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_plan_benchmark_runs_and_reports_its_figures(tmp_path) -> None:
    """bench/plan.py prints the machine, the rates, the floor and the memory."""
    output = run_script(
        "plan.py",
        "--lineages",
        "400",
        "--repeat",
        "1",
        "--memory-sizes",
        "200,400",
        "--workdir",
        str(tmp_path),
    )

    for expected in ("SQLite", "decisions/s", "floor, executemany", "tracemalloc peak"):
        assert expected in output


def test_dashboard_benchmark_runs_and_reports_its_figures(tmp_path) -> None:
    """bench/dashboard.py measures every request at both sizes."""
    output = run_script(
        "dashboard.py",
        "--attempts",
        "3000",
        "--small",
        "1000",
        "--repeat",
        "3",
        "--follow",
        "3",
        "--workdir",
        str(tmp_path),
    )

    for expected in ("dashboard", "worker-runs, page at 90 %", "attempts, first page"):
        assert expected in output


@pytest.mark.postgres
def test_workers_benchmark_runs_and_reports_its_figures(postgres_url, tmp_path) -> None:
    """bench/workers.py seeds, runs one and two workers, and finds no double."""
    output = run_script(
        "workers.py",
        "--retries",
        "60",
        "--workers",
        "1,2",
        "--lease",
        "10",
        "--admin-url",
        postgres_url,
        "--workdir",
        str(tmp_path),
    )

    for expected in ("floor, webhook", "deliveries/s", "lag p99", "2 workers / 1"):
        assert expected in output
    assert "double deliveries: 0 (ok)" in output
