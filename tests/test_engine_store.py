"""The engine's store: lineages, attempts, worker runs, lists and the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from plugins_fixtures import (
    DELIVERED,
    T0,
    Clock,
    FakePlugin,
    FakeType,
    attempt,
    failed,
    package,
    parse,
    plan_request,
    record_failure,
    record_success,
    rfc3339,
)

from cavra_core import Conflict, Engine, InvalidInput, UnprocessableInput
from cavra_core import engine as engine_module
from cavra_core.engine import package_hash
from cavra_core.store import (
    MODELS,
    AuditPackage,
    Counter,
    DeliveryAttempt,
    EvidenceEntry,
    Lineage,
    RetryDecision,
    RetryPlan,
    WorkerRun,
)
from cavra_core.types import Connector, Delivery, DeliveryResult

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
CONNECTORS = {
    "hook-a": {"type": "fake"},
    "hook-b": {"type": "fake"},
    "hook-once": {"type": "fake", "retry_policy": {"max_retry_attempts": 1}},
}


class PeekingType(FakeType):
    """Remembers the lineage's state as it was while each delivery was made."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.states_seen: list[str] = []

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        self.states_seen.append(Lineage.get_by_id(delivery.lineage_id).state)
        return super().deliver(connector, delivery)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> FakeType:
    return FakeType("fake")


@pytest.fixture
def open_engine(make_engine, fake, clock):
    def factory(connectors=None, connector_type=None):
        plugin = FakePlugin(connector_type or fake)
        return make_engine(
            connectors or CONNECTORS,
            plugins=[plugin],
            load_entry_points=False,
            clock=clock,
        )

    return factory


@pytest.fixture
def engine(open_engine):
    return open_engine()


def deliver(engine, evidence=None, connectors=("hook-a",)):
    return engine.deliver_package(
        {
            "package": evidence or package(),
            "connectors": list(connectors),
            "generated_by": "rm",
        }
    )


def lineage(lineage_id: str) -> Lineage:
    return Lineage.get_by_id(lineage_id)


def row_counts() -> dict[str, int]:
    return {model.__name__: model.select().count() for model in MODELS}


def lineage_rows() -> list[dict]:
    return list(Lineage.select().order_by(Lineage.lineage_id).dicts())


def lineage_counters() -> dict[str, int]:
    return {
        row.name: row.value
        for row in Counter.select().where(Counter.name.startswith("lineage:"))
    }


def worker(engine, now, **request):
    return engine.run_worker({"generated_by": "platform", **request}, now=now)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- lineage states ---------------------------------------------------------------


def test_lineage_is_pending_while_its_first_delivery_is_made(open_engine) -> None:
    """The lineage row exists, pending, before the connector is called."""
    peeking = PeekingType()
    engine = open_engine(connector_type=peeking)

    deliver(engine)

    assert peeking.states_seen == ["pending"]


def test_failed_first_delivery_leaves_the_lineage_failed(engine, fake) -> None:
    """A failure the policy can retry keeps the lineage open as failed."""
    fake.script(failed(503))

    report = deliver(engine)

    assert lineage(report["deliveries"][0]["lineage_id"]).state == "failed"


def test_delivered_retry_moves_the_lineage_to_recovered(engine) -> None:
    """A delivered attempt after failures recovers the lineage."""
    lineage_id = record_failure(engine, T0)

    record_success(engine, T0 + 20 * MINUTE)

    assert lineage(lineage_id).state == "recovered"
    assert lineage(lineage_id).latest_failed is False


def test_last_allowed_attempt_failing_exhausts_the_lineage(engine) -> None:
    """After 3 of 3 attempts failed the lineage is exhausted."""
    lineage_id = record_failure(engine, T0)
    record_failure(engine, T0 + 20 * MINUTE)

    record_failure(engine, T0 + HOUR)

    assert lineage(lineage_id).state == "exhausted"
    assert lineage(lineage_id).closing_reason == "max_attempts_reached"


def test_permanent_failure_suppresses_the_lineage(engine) -> None:
    """A 400 closes the lineage as suppressed with its reason."""
    lineage_id = record_failure(engine, T0, status=400)

    row = lineage(lineage_id)

    assert (row.state, row.closing_reason) == ("suppressed", "permanent_failure")


def test_lineage_counts_attempts_and_keeps_first_and_last_times(engine) -> None:
    """attempt_count counts every attempt; times span first start to last end."""
    lineage_id = record_failure(engine, T0)
    record_failure(engine, T0 + 20 * MINUTE)

    row = lineage(lineage_id)

    assert row.attempt_count == 2
    assert row.first_attempt_at == T0 - timedelta(seconds=1)
    assert row.last_attempt_at == T0 + 20 * MINUTE


def test_attempts_are_numbered_in_their_lineage(engine) -> None:
    """Each recorded attempt gets the lineage's next number."""
    record_failure(engine, T0)
    record_failure(engine, T0 + 20 * MINUTE)

    numbers = [item["attempt_number"] for item in engine.list_attempts()["items"]]

    assert numbers == [2, 1]


# -- the worker -------------------------------------------------------------------


def arrange_mixed_store(engine) -> None:
    """One due, one waiting, one paused, one suppressed, one recovered lineage.

    The 401 goes to its own connector: it pauses that connector, and every
    lineage of a paused connector waits.
    """
    record_failure(engine, T0, evidence=package("due"))
    record_failure(engine, T0 + 10 * MINUTE, evidence=package("waiting"))
    record_failure(
        engine, T0, status=401, connector_id="hook-b", evidence=package("paused")
    )
    record_failure(engine, T0, status=400, evidence=package("permanent"))
    record_failure(engine, T0, evidence=package("recovered"))
    record_success(engine, T0 + 5 * MINUTE, evidence=package("recovered"))


def test_dry_run_changes_nothing_but_its_own_run_record(engine, fake) -> None:
    """Row counts, lineage rows and lineage counters are as before the run."""
    arrange_mixed_store(engine)
    counts, lineages, counters = row_counts(), lineage_rows(), lineage_counters()

    run = worker(engine, T0 + 20 * MINUTE)

    after = row_counts()
    assert after.pop("WorkerRun") == counts.pop("WorkerRun") + 1
    # The run's record includes its entry in the evidence log.
    assert after.pop("EvidenceEntry") == counts.pop("EvidenceEntry") + 1
    assert EvidenceEntry.get(EvidenceEntry.subject_id == run["run_id"])
    after.pop("Counter"), counts.pop("Counter")
    assert after == counts
    assert lineage_rows() == lineages
    assert lineage_counters() == counters
    assert fake.deliveries == []
    assert run["dry_run"] is True


def test_dry_run_reports_what_it_would_deliver(engine) -> None:
    """The due lineage is selected as would_deliver with its next attempt."""
    due = record_failure(engine, T0)

    run = worker(engine, T0 + 20 * MINUTE)

    assert [(s["lineage_id"], s["outcome"]) for s in run["selected_retries"]] == [
        (due, "would_deliver")
    ]
    assert run["selected_retries"][0]["next_attempt_number"] == 2
    assert "Dry run" in run["notes"][0]


def test_worker_run_creates_no_retry_plan(engine) -> None:
    """The worker evaluates afresh and stores no plan or decisions."""
    record_failure(engine, T0)

    worker(engine, T0 + 20 * MINUTE)

    assert RetryPlan.select().count() == 0
    assert RetryDecision.select().count() == 0
    assert engine.list_plans()["items"] == []


@pytest.mark.parametrize(
    "request_flags", [{"dry_run": False}, {"execute": True}], ids=["dry_run", "execute"]
)
def test_live_run_without_approvals_selects_nothing(engine, request_flags) -> None:
    """A live run re-delivers only approved decisions; with none it selects none."""
    record_failure(engine, T0)

    run = worker(engine, T0 + 20 * MINUTE, **request_flags)

    assert run["dry_run"] is False
    assert run["selected_retries"] == []
    assert run["summary"]["selected_retry_count"] == 0
    assert "1 due retries have no usable approval" in " ".join(run["notes"])


def test_explicit_dry_run_beats_execute(engine, fake) -> None:
    """dry_run: true with execute: true is still a dry run."""
    record_failure(engine, T0)

    run = worker(engine, T0 + 20 * MINUTE, dry_run=True, execute=True)

    assert run["dry_run"] is True
    assert run["summary"]["selected_retry_count"] == 1
    assert fake.deliveries == []


def test_max_retry_deliveries_caps_selection_oldest_first(engine) -> None:
    """With 4 due and a cap of 2, the two oldest not_before are selected."""
    lineage_ids = [
        record_failure(engine, T0 + n * MINUTE, evidence=package(f"drill-{n}"))
        for n in (3, 0, 2, 1)
    ]
    oldest_first = [lineage_ids[1], lineage_ids[3]]

    run = worker(engine, T0 + HOUR, max_retry_deliveries=2)

    assert [s["lineage_id"] for s in run["selected_retries"]] == oldest_first
    assert run["summary"]["skipped_count"] == 2
    assert "max_retry_deliveries=2" in " ".join(run["notes"])


def test_equally_old_retries_are_selected_by_lineage_id(engine) -> None:
    """Ties on not_before are broken by lineage id, so runs agree."""
    lineage_ids = [
        record_failure(engine, T0, evidence=package(f"drill-{n}")) for n in range(4)
    ]

    run = worker(engine, T0 + HOUR, max_retry_deliveries=2)

    assert [s["lineage_id"] for s in run["selected_retries"]] == sorted(lineage_ids)[:2]


@pytest.mark.parametrize(
    ("interval", "now", "start", "end"),
    [
        (60, "2026-06-01T12:20:00Z", "2026-06-01T12:00:00Z", "2026-06-01T13:00:00Z"),
        (60, "2026-06-01T13:00:00Z", "2026-06-01T13:00:00Z", "2026-06-01T14:00:00Z"),
        (15, "2026-06-01T12:20:00Z", "2026-06-01T12:15:00Z", "2026-06-01T12:30:00Z"),
        (15, "2026-06-01T12:59:59Z", "2026-06-01T12:45:00Z", "2026-06-01T13:00:00Z"),
        (1440, "2026-06-01T12:20:00Z", "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z"),
    ],
)
def test_run_window_is_aligned_on_multiples_of_the_interval(
    engine, interval, now, start, end
) -> None:
    """The schedule window holding the run starts on a multiple of the interval."""
    run = worker(engine, at(now), schedule={"interval_minutes": interval})

    schedule = run["schedule"]
    assert (parse(schedule["window_start"]), parse(schedule["window_end"])) == (
        at(start),
        at(end),
    )
    assert schedule["cadence"] == f"every {interval} minutes"


def test_disabled_schedule_refuses_to_run(engine) -> None:
    """enabled: false raises Conflict and records no run."""
    with pytest.raises(Conflict) as caught:
        worker(engine, T0, schedule={"enabled": False})

    assert caught.value.problems[0].pointer == "/schedule/enabled"
    assert WorkerRun.select().count() == 0


def record_many_failures(engine, count: int, prefix: str = "drill") -> None:
    evidence = [package(f"{prefix}-{n}") for n in range(count)]
    engine.record_attempts(
        {
            "packages": evidence,
            "attempts": [attempt(package_hash(item), T0) for item in evidence],
        },
        now=T0,
    )


@pytest.mark.parametrize("count", [8, 9, 11])
def test_plan_decides_every_lineage_across_batches(engine, monkeypatch, count) -> None:
    """With a batch of 4, 8, 9 or 11 lineages all get one decision each."""
    monkeypatch.setattr(engine_module, "BATCH_SIZE", 4)
    record_many_failures(engine, count)

    plan = engine.plan_retries(plan_request(), now=T0 + 20 * MINUTE)

    decisions = list(engine.iter_plan_decisions(plan["retry_plan_id"]))
    assert plan["decision_count"] == len(decisions) == count
    assert len({d["lineage_id"] for d in decisions}) == count


def test_plan_decides_1200_lineages_beyond_the_real_batch_size(sqlite_url) -> None:
    """1,200 failed lineages (more than a batch of 1,000) all get decisions."""
    engine = Engine(
        sqlite_url,
        CONNECTORS,
        plugins=[FakePlugin()],
        load_entry_points=False,
        clock=Clock(),
    )
    with engine:
        record_many_failures(engine, 600, "first")
        record_many_failures(engine, 600, "second")

        plan = engine.plan_retries(plan_request(), now=T0 + 20 * MINUTE)

        decisions = list(engine.iter_plan_decisions(plan["retry_plan_id"]))
    assert plan["decision_count"] == plan["retryable_count"] == 1200
    assert len({d["lineage_id"] for d in decisions}) == 1200


# -- the dashboard ----------------------------------------------------------------


def arrange_dashboard_mix(engine) -> None:
    """Due, waiting, paused, permanent, exhausted, expired and recovered lineages."""
    arrange_mixed_store(engine)
    record_failure(engine, T0, connector_id="hook-once", evidence=package("once"))
    old = T0 - 48 * HOUR
    record_failure(engine, old, evidence=package("expired", generated_at=old))


def test_dashboard_counts_lineages_by_what_can_happen_now(engine) -> None:
    """1 retryable; 2 waiting (delay, paused); 3 suppressed (400, exhausted, old)."""
    arrange_dashboard_mix(engine)

    board = engine.dashboard(now=T0 + 20 * MINUTE)

    assert (
        board["retryable_count"],
        board["waiting_count"],
        board["suppressed_count"],
    ) == (1, 2, 3)
    assert board["alert_level"] == "critical"


def test_dashboard_counts_a_lineage_that_failed_twice_once(engine) -> None:
    """A retry that failed again is still one retryable lineage, nothing else."""
    record_failure(engine, T0)
    record_failure(engine, T0 + 20 * MINUTE)

    board = engine.dashboard(now=T0 + HOUR)

    assert (
        board["retryable_count"],
        board["waiting_count"],
        board["suppressed_count"],
    ) == (1, 0, 0)


def test_dashboard_counts_a_lineage_exhausted_by_retries_once(engine) -> None:
    """Three failed attempts make one exhausted lineage, counted as suppressed."""
    for offset in (0, 20, 60):
        record_failure(engine, T0 + offset * MINUTE)

    board = engine.dashboard(now=T0 + 2 * HOUR)

    assert board["suppressed_count"] == 1


def test_dashboard_counts_runs_and_selected_retries(engine) -> None:
    """Run counts split dry and live; selected retries add up over the runs."""
    arrange_dashboard_mix(engine)
    worker(engine, T0 + 20 * MINUTE)
    worker(engine, T0 + 21 * MINUTE)
    worker(engine, T0 + 22 * MINUTE, dry_run=False)

    board = engine.dashboard(now=T0 + 30 * MINUTE)

    assert (board["run_count"], board["dry_run_count"]) == (3, 2)
    assert board["selected_retry_count"] == 2


def test_dashboard_executed_count_counts_live_runs(engine) -> None:
    """executed_count is the number of live (not dry) runs."""
    record_failure(engine, T0)
    worker(engine, T0 + 20 * MINUTE, dry_run=True)
    worker(engine, T0 + 20 * MINUTE, dry_run=False)

    board = engine.dashboard(now=T0 + 30 * MINUTE)

    assert (board["run_count"], board["executed_count"]) == (2, 1)


def test_dashboard_with_only_waiting_lineages_is_a_warning(engine) -> None:
    """Waiting evidence and nothing due: warning."""
    record_failure(engine, T0)

    board = engine.dashboard(now=T0 + 5 * MINUTE)

    assert (board["waiting_count"], board["alert_level"]) == (1, "warning")


def test_dashboard_of_an_empty_store_is_healthy(engine) -> None:
    """Nothing failed, nothing run."""
    board = engine.dashboard(now=T0)

    assert board["alert_level"] == "healthy"
    assert board["run_count"] == board["retryable_count"] == 0
    assert board["latest_runs"] == []


def test_dashboard_lists_the_ten_latest_runs_newest_first(engine) -> None:
    """Of 12 runs, the 10 newest are listed, newest first."""
    runs = [worker(engine, T0 + n * MINUTE)["run_id"] for n in range(12)]

    board = engine.dashboard(now=T0 + HOUR)

    assert [run["run_id"] for run in board["latest_runs"]] == runs[::-1][:10]


# -- listing runs and attempts ----------------------------------------------------


def all_pages(list_page, **filters) -> list[dict]:
    items, cursor, pages = [], None, 0
    while True:
        page = list_page(cursor=cursor, **filters)
        items.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items
        assert pages < 50


def test_list_runs_filters_dry_and_live_runs(engine) -> None:
    """dry_run=True lists only dry runs, dry_run=False only live ones."""
    dry = worker(engine, T0)["run_id"]
    live = worker(engine, T0 + MINUTE, dry_run=False)["run_id"]

    dry_ids = [run["run_id"] for run in engine.list_runs(dry_run=True)["items"]]
    live_ids = [run["run_id"] for run in engine.list_runs(dry_run=False)["items"]]

    assert (dry_ids, live_ids) == ([dry], [live])


def test_list_runs_filters_by_start_time_half_open(engine) -> None:
    """since is inclusive, until exclusive."""
    runs = [worker(engine, T0 + n * HOUR)["run_id"] for n in range(4)]

    page = engine.list_runs(since=T0 + HOUR, until=T0 + 3 * HOUR)

    assert [run["run_id"] for run in page["items"]] == [runs[2], runs[1]]


def test_list_runs_pages_without_duplicates_or_gaps(engine) -> None:
    """Keyset paging over runs sharing start times returns each run once, in order."""
    runs = [worker(engine, T0 + (n // 3) * MINUTE)["run_id"] for n in range(8)]

    items = all_pages(engine.list_runs, limit=3)

    listed = [run["run_id"] for run in items]
    assert sorted(listed) == sorted(runs)
    assert len(listed) == len(set(listed))
    keys = [(run["started_at"], run["run_id"]) for run in items]
    assert keys == sorted(keys, reverse=True)


def test_list_attempts_filters_by_connector_and_outcome(engine) -> None:
    """connector_id and outcome narrow the list."""
    record_failure(engine, T0, connector_id="hook-a")
    record_failure(engine, T0, connector_id="hook-b")
    record_success(engine, T0 + 20 * MINUTE, connector_id="hook-b")

    hook_b = engine.list_attempts(connector_id="hook-b")["items"]
    delivered = engine.list_attempts(outcome="delivered")["items"]

    assert [(a["connector_id"], a["outcome"]) for a in hook_b] == [
        ("hook-b", "delivered"),
        ("hook-b", "failed"),
    ]
    assert [(a["connector_id"], a["outcome"]) for a in delivered] == [
        ("hook-b", "delivered")
    ]


def test_list_attempts_filters_by_lineage_state(engine) -> None:
    """lineage_state selects every attempt of lineages in that state."""
    record_failure(engine, T0, connector_id="hook-a")
    recovered = record_failure(engine, T0, connector_id="hook-b")
    record_success(engine, T0 + 20 * MINUTE, connector_id="hook-b")

    items = engine.list_attempts(lineage_state="recovered")["items"]

    assert {a["lineage_id"] for a in items} == {recovered}
    assert [a["attempt_number"] for a in items] == [2, 1]
    assert {a["lineage_state"] for a in items} == {"recovered"}


def test_list_attempts_filters_by_start_time(engine) -> None:
    """since/until select attempts by when they started."""
    for n in range(3):
        record_failure(engine, T0 + n * HOUR, evidence=package(f"drill-{n}"))

    items = engine.list_attempts(since=T0, until=T0 + 2 * HOUR)["items"]

    # Each attempt started a second before it finished.
    assert [parse(a["finished_at"]) for a in items] == [T0 + 2 * HOUR, T0 + HOUR]


def test_list_attempts_pages_without_duplicates_or_gaps(engine) -> None:
    """Attempts sharing a start time are paged once each."""
    for n in range(7):
        record_failure(engine, T0, evidence=package(f"drill-{n}"))

    items = all_pages(engine.list_attempts, limit=2)

    ids = [a["attempt_id"] for a in items]
    assert len(ids) == len(set(ids)) == 7


# -- recording attempts -----------------------------------------------------------


def test_record_attempts_is_all_or_nothing(engine) -> None:
    """A bad third attempt leaves no package, lineage, attempt or counter behind."""
    evidence = package()
    package_id = package_hash(evidence)
    counts, counters = row_counts(), lineage_counters()
    attempts = [
        attempt(package_id, T0, attempt_number=1),
        attempt(package_id, T0 + 20 * MINUTE, attempt_number=2),
        attempt(package_id, T0 + HOUR, attempt_number=5),
    ]

    with pytest.raises(UnprocessableInput) as caught:
        engine.record_attempts(
            {"packages": [evidence], "attempts": attempts}, now=T0 + 2 * HOUR
        )

    assert caught.value.problems[0].pointer == "/attempts/2/attempt_number"
    assert row_counts() == counts
    assert lineage_counters() == counters


def test_attempt_on_a_recovered_lineage_is_refused(engine) -> None:
    """A recovered lineage takes no further attempts."""
    record_failure(engine, T0)
    record_success(engine, T0 + 20 * MINUTE)

    with pytest.raises(Conflict):
        record_failure(engine, T0 + HOUR)

    assert DeliveryAttempt.select().count() == 2


def test_attempt_number_that_is_not_next_is_refused(engine) -> None:
    """The first attempt of a lineage must be number 1."""
    evidence = package()

    with pytest.raises(UnprocessableInput) as caught:
        record_failure(engine, T0, evidence=evidence, attempt_number=2)

    assert caught.value.problems[0].pointer == "/attempts/0/attempt_number"
    assert "must be 1" in caught.value.problems[0].detail


def test_attempt_finished_before_the_latest_one_is_refused(engine) -> None:
    """Attempts are recorded in the order they happened."""
    record_failure(engine, T0 + HOUR)

    with pytest.raises(UnprocessableInput) as caught:
        record_failure(engine, T0)

    assert caught.value.problems[0].pointer == "/attempts/0/finished_at"
    assert lineage_rows()[0]["attempt_count"] == 1


@pytest.mark.parametrize("field", ["started_at", "finished_at"])
def test_attempt_time_without_offset_is_refused(engine, field) -> None:
    """Times are compared in UTC, so a time without offset is not guessed at."""
    evidence = package()
    item = attempt(package_hash(evidence), T0)
    item[field] = "2026-06-01T12:00:00"

    with pytest.raises(InvalidInput) as caught:
        engine.record_attempts(
            {"packages": [evidence], "attempts": [item]}, now=T0 + 2 * HOUR
        )

    assert f"/attempts/0/{field}" in [p.pointer for p in caught.value.problems]
    assert DeliveryAttempt.select().count() == 0


def test_naive_evaluation_time_is_refused(engine) -> None:
    """now must carry an offset too."""
    naive = datetime(2026, 6, 1, 12, 0)

    with pytest.raises(InvalidInput):
        engine.plan_retries(plan_request(), now=naive)


def test_same_package_content_gets_the_same_id_whatever_its_spelling(engine) -> None:
    """Key order and offset spelling do not change the package id."""
    first = package(generated_at=T0)
    respelt = {key: first[key] for key in reversed(list(first))}
    respelt["generated_at"] = "2026-06-01T14:00:00.000+02:00"
    respelt["acknowledgements"] = [
        {
            "acknowledged_at": "2026-06-01T11:55:00+00:00",
            "state": "accepted",
            "role": "release manager",
            "notification_id": "ntf-1",
        }
    ]

    one = deliver(engine, first, connectors=["hook-a"])
    two = deliver(engine, respelt, connectors=["hook-b"])

    assert one["package_id"] == two["package_id"] == package_hash(first)
    assert AuditPackage.select().count() == 1


def test_failed_lineage_is_not_delivered_again_by_deliver_package(engine, fake) -> None:
    """Its retries go through the plan and the worker: skipped, lineage_exists."""
    fake.script(failed(503))
    deliver(engine)

    again = deliver(engine)

    assert again["deliveries"][0]["outcome"] == "skipped"
    assert again["deliveries"][0]["skipped_reason"] == "lineage_exists"
    assert len(fake.deliveries) == 1


def test_recovered_lineage_is_not_delivered_again_by_deliver_package(
    engine, fake
) -> None:
    """A delivered package is skipped with already_recovered."""
    fake.script(DELIVERED)
    deliver(engine)

    again = deliver(engine)

    assert again["deliveries"][0]["skipped_reason"] == "already_recovered"
    assert len(fake.deliveries) == 1


def test_connector_that_raises_is_recorded_as_a_failed_attempt(open_engine) -> None:
    """A connector must report failures; if it raises, cavra records connector_error."""

    class RaisingType(FakeType):
        def deliver(self, connector, delivery):
            raise OSError("socket exploded")

    engine = open_engine(connector_type=RaisingType("fake"))

    report = deliver(engine)

    assert report["deliveries"][0]["outcome"] == "failed"
    assert report["deliveries"][0]["error_class"] == "connector_error"


def test_delivery_attempt_is_stamped_with_the_given_now(engine, fake, clock) -> None:
    """deliver_package(now=...) records the attempt at that time, like the package."""
    clock.now = T0 + 3 * HOUR
    fake.script(failed(503))

    engine.deliver_package(
        {"package": package(), "connectors": ["hook-a"], "generated_by": "rm"},
        now=T0,
    )

    started = parse(engine.list_attempts()["items"][0]["started_at"])
    assert abs(started - T0) < MINUTE


def test_delivery_attempt_times_come_from_the_engine_clock(engine, fake, clock) -> None:
    """Without now, the attempt is stamped with the engine's clock."""
    fake.script(failed(503))

    deliver(engine)

    item = engine.list_attempts()["items"][0]
    assert parse(item["started_at"]) == T0
    assert parse(item["finished_at"]) - T0 < MINUTE
    assert rfc3339(T0) == item["started_at"]
