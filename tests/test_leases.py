"""Queued executions, leased claims, rescues and releases, on both stores."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from datetime import timedelta

import peewee
import psycopg2
import pytest
from playhouse.migrations import Runner
from plugins_fixtures import (
    DELIVERED,
    T0,
    Clock,
    FakePlugin,
    FakeType,
    failed,
    package,
    plan_request,
    record_failure,
)

from cavra_core import Engine, store
from cavra_core import executions as executions_module
from cavra_core.executions import (
    LEASE_RESCUES,
    RECHECK_SECONDS,
    WORKER_ID,
    Leases,
    claimable_query,
    default_worker_id,
    extend_leases,
    reconnect,
)
from cavra_core.identity import Actor
from cavra_core.store import DeliveryAttempt, Execution, WorkerRun
from cavra_server.worker_service import WorkerService, every

PLANNER = Actor("rm-alice", True, "release_manager")
APPROVER = Actor("po-bob", True, "platform_owner")
DUE = T0 + timedelta(minutes=20)


class Crash(BaseException):
    """Stands for a worker process dying in the middle of a delivery."""


class CrashingType(FakeType):
    """Delivers, except that the first ``crashes`` deliveries kill the worker."""

    def __init__(self, crashes: int = 0) -> None:
        super().__init__("fake")
        self.crashes = crashes
        self.on_deliver = None

    def deliver(self, connector, delivery):
        result = super().deliver(connector, delivery)
        if self.crashes:
            self.crashes -= 1
            raise Crash
        if self.on_deliver is not None:
            self.on_deliver(delivery)
        return result


@pytest.fixture
def fake() -> CrashingType:
    return CrashingType()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(make_engine, fake, clock):
    return make_engine(
        {"hook-a": {"type": "fake"}},
        plugins=[FakePlugin(fake)],
        load_entry_points=False,
        clock=clock,
    )


#: The test runs on the PostgreSQL store only (row locks, SKIP LOCKED).
on_postgres_only = pytest.mark.parametrize(
    "database_url",
    [pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


def approved_due(engine, count: int) -> list[str]:
    """``count`` lineages failed at T0, planned, approved; their retries are due."""
    lineages = [
        record_failure(engine, T0, evidence=package(f"drill-{n}")) for n in range(count)
    ]
    plan = engine.plan_retries(plan_request(), actor=PLANNER, now=DUE)
    engine.approvals.create(
        plan["retry_plan_id"],
        {"all_retry_decisions": True, "reason": "receiver is back"},
        actor=APPROVER,
        now=DUE,
    )
    return lineages


def queue_only(engine) -> None:
    """A live run stopped at once: its approved retries stay queued."""
    engine.run_worker({"dry_run": False}, actor=APPROVER, now=DUE, stop=lambda: True)


def deny_all(engine, at) -> None:
    """A newer word on every lineage: a denial of a fresh plan's retries."""
    plan = engine.plan_retries(plan_request(), actor=PLANNER, now=DUE)
    engine.approvals.create(
        plan["retry_plan_id"],
        {"all_retry_decisions": True, "verdict": "deny", "reason": "hold it"},
        actor=APPROVER,
        now=at,
    )


def live_run(engine, now, worker_id, **options):
    return engine.run_worker(
        {"dry_run": False, "max_retry_deliveries": 100},
        actor=APPROVER,
        now=now,
        leases=Leases(worker_id=worker_id, lease_seconds=30),
        **options,
    )


def executions():
    return list(Execution.select().order_by(Execution.lineage_id))


def send_batch(engine, claims, leases, actor, clock, stop):
    """
    Send claims and record them at once, as a worker does with each batch
    (there, the record runs on its store thread); the number sent and the
    database error that ended the sending early.
    """
    done, unsent, failure = engine.executions._send_claims(claims, leases, clock, stop)
    engine.executions._record_batch(done, unsent, leases, actor)
    return sum(1 for _, attempt, _ in done if attempt is not None), failure


def event_ids(fake) -> list[str]:
    return [delivery.event_id for delivery in fake.deliveries]


def test_a_live_run_queues_claims_and_releases_every_retry(engine, fake) -> None:
    lineages = approved_due(engine, 3)

    run = live_run(engine, DUE, "worker-a")

    assert run["summary"]["executed_count"] == 3
    rows = executions()
    assert [row.outcome for row in rows] == ["delivered"] * 3
    assert {row.worker_id for row in rows} == {"worker-a"}
    assert all(row.lease_owner is None and row.lease_expires_at is None for row in rows)
    assert all(row.rescue_count == 0 and row.due_at is not None for row in rows)
    assert sorted(event_ids(fake)) == sorted(lineages)
    assert WorkerRun.get_by_id(run["run_id"]).state == "finished"
    assert run["state"] == "finished"
    documents = engine.executions.list(run_id=run["run_id"])["items"]
    assert {d["worker_id"] for d in documents} == {"worker-a"}
    assert {d["rescue_count"] for d in documents} == {0}


def test_a_dead_workers_claims_are_rescued_after_their_lease(
    engine, fake, clock
) -> None:
    lineages = approved_due(engine, 3)
    fake.crashes = 1

    with pytest.raises(Crash):
        live_run(engine, DUE, "worker-a")

    # The worker died holding the whole batch: nothing recorded, all claimed,
    # and its run shows it never finished.
    (dead_run,) = engine.list_runs(dry_run=False)["items"]
    assert dead_run["state"] == "running"
    rows = executions()
    assert [row.outcome for row in rows] == ["claimed"] * 3
    assert {row.lease_owner for row in rows} == {"worker-a"}
    assert (
        DeliveryAttempt.select().where(DeliveryAttempt.source == "worker").count() == 0
    )

    # Within the lease nobody else takes them.
    rescuer = Leases(worker_id="worker-b", lease_seconds=30)
    assert (
        engine.executions.work(rescuer, APPROVER, lambda: DUE + timedelta(seconds=10))
        == 0
    )
    assert {row.lease_owner for row in executions()} == {"worker-a"}

    # Once it has run out, any worker rescues them.
    sent = engine.executions.work(
        rescuer, APPROVER, lambda: DUE + timedelta(seconds=31)
    )
    assert sent == 3
    rows = executions()
    assert [row.outcome for row in rows] == ["delivered"] * 3
    assert {row.worker_id for row in rows} == {"worker-b"}
    assert [row.rescue_count for row in rows] == [1, 1, 1]
    assert store.read_counters(f"{LEASE_RESCUES}hook-a") == {
        f"{LEASE_RESCUES}hook-a": 3
    }
    # One attempt recorded per lineage; the one in flight when the worker died
    # went out twice, with the same event id.
    for lineage_id in lineages:
        worker_attempts = DeliveryAttempt.select().where(
            (DeliveryAttempt.lineage == lineage_id)
            & (DeliveryAttempt.source == "worker")
        )
        assert worker_attempts.count() == 1
    sent_ids = event_ids(fake)
    assert sorted(set(sent_ids)) == sorted(lineages)
    assert len(sent_ids) == 4
    assert engine.evidence.verify()["intact"] is True


def test_a_claim_rescued_from_a_worker_is_not_recorded_by_that_worker(
    engine, fake
) -> None:
    (lineage_id,) = approved_due(engine, 1)
    slow = Leases(worker_id="worker-slow", lease_seconds=30)
    rescuer = Leases(worker_id="worker-b", lease_seconds=30)
    engine.run_worker(
        {"dry_run": False}, actor=APPROVER, now=DUE, leases=slow, stop=lambda: True
    )
    # The run was stopped before sending: its retry stays queued.
    assert [row.outcome for row in executions()] == ["queued"]

    claims = engine.executions._claim_batch(slow, APPROVER, DUE)
    later = DUE + timedelta(seconds=31)
    taken = engine.executions._claim_batch(rescuer, APPROVER, later)
    assert len(claims) == len(taken) == 1

    # The slow worker wakes up and sends; its lease is gone, so it records nothing.
    send_batch(engine, claims, slow, APPROVER, lambda: later, lambda: False)
    row = executions()[0]
    assert (row.outcome, row.lease_owner) == ("claimed", "worker-b")

    send_batch(engine, taken, rescuer, APPROVER, lambda: later, lambda: False)
    row = executions()[0]
    assert (row.outcome, row.worker_id, row.rescue_count) == (
        "delivered",
        "worker-b",
        1,
    )
    assert (
        DeliveryAttempt.select()
        .where(
            (DeliveryAttempt.lineage == lineage_id)
            & (DeliveryAttempt.source == "worker")
        )
        .count()
        == 1
    )


def test_a_stopped_run_puts_the_rest_of_its_batch_back_in_the_queue(
    engine, fake
) -> None:
    approved_due(engine, 3)

    run = live_run(engine, DUE, "worker-a", stop=lambda: len(fake.deliveries) >= 1)

    assert run["summary"]["executed_count"] == 1
    assert any("still queued" in note for note in run["notes"])
    outcomes = sorted(row.outcome for row in executions())
    assert outcomes == ["delivered", "queued", "queued"]
    assert all(
        row.lease_owner is None for row in executions() if row.outcome == "queued"
    )

    sent = engine.executions.work(Leases(worker_id="worker-b"), APPROVER, lambda: DUE)
    assert sent == 2
    assert sorted(row.outcome for row in executions()) == ["delivered"] * 3


def test_a_revocation_after_the_claim_stops_the_send(engine, fake) -> None:
    approved_due(engine, 2)
    leases = Leases(worker_id="worker-a")
    queue_only(engine)
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)
    assert len(claims) == 2

    approval_id = claims[0].row.approval_id
    engine.approvals.revoke(
        approval_id, {"reason": "receiver broke again"}, actor=APPROVER, now=DUE
    )
    send_batch(engine, claims, leases, APPROVER, lambda: DUE, lambda: False)

    assert fake.deliveries == []
    rows = executions()
    assert {(row.outcome, row.skipped_reason) for row in rows} == {
        ("skipped", "approval_revoked")
    }
    assert all(row.claim_key is None and row.lease_owner is None for row in rows)


def test_claims_see_a_denial_given_after_queueing(engine, fake) -> None:
    approved_due(engine, 1)
    queue_only(engine)
    deny_all(engine, DUE + timedelta(seconds=1))

    assert (
        engine.executions.work(
            Leases(worker_id="worker-a"), APPROVER, lambda: DUE + timedelta(seconds=2)
        )
        == 0
    )
    (row,) = executions()
    assert (row.outcome, row.skipped_reason) == ("skipped", "denied")


def test_the_heartbeat_extends_the_leases_of_a_long_delivery(engine, fake) -> None:
    approved_due(engine, 1)
    leases = Leases(worker_id="worker-a", lease_seconds=1)
    seen = []

    def long_delivery(delivery) -> None:
        # The delivery outlasts the lease; the heartbeat, every third of a
        # second, keeps the claim a full lease ahead of the run's clock.
        seen.append(Execution.get().lease_expires_at)
        time.sleep(1.2)
        seen.append(Execution.get().lease_expires_at)

    fake.on_deliver = long_delivery
    engine.run_worker({"dry_run": False}, actor=APPROVER, now=DUE, leases=leases)

    at_claim, after = seen
    assert after - at_claim >= timedelta(seconds=0.6)
    assert Execution.get().outcome == "delivered"


def test_extend_leases_touches_only_the_given_claims_of_the_worker(
    engine, fake
) -> None:
    approved_due(engine, 3)
    queue_only(engine)
    mine = Leases(worker_id="worker-a", batch_size=2)
    theirs = Leases(worker_id="worker-b", batch_size=1)
    in_hand, left = engine.executions._claim_batch(mine, APPROVER, DUE)
    (other,) = engine.executions._claim_batch(theirs, APPROVER, DUE)

    later = DUE + timedelta(minutes=5)
    ids = [in_hand.row.execution_id, other.row.execution_id]
    assert extend_leases(mine, later, ids) == 1
    expiry = {row.execution_id: row.lease_expires_at for row in executions()}
    assert expiry[in_hand.row.execution_id] == later + timedelta(seconds=30)
    # Claims the worker no longer has in hand, and other workers' claims, run out.
    assert expiry[left.row.execution_id] == DUE + timedelta(seconds=30)
    assert expiry[other.row.execution_id] == DUE + timedelta(seconds=30)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("worker_id", ""),
        ("worker_id", "https://user:secret@host"),
        ("worker_id", "x" * 101),
        ("lease_seconds", 0.5),
        ("batch_size", 0),
        ("batch_size", 1001),
    ],
)
def test_lease_settings_out_of_range_are_refused(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        Leases(**{field: value})


def test_a_database_error_mid_batch_records_what_was_sent_and_requeues_the_rest(
    engine, fake, monkeypatch
) -> None:
    lineages = approved_due(engine, 3)
    queue_only(engine)
    executions_ = engine.executions
    checks = []
    still_holds = executions_._still_holds

    def flaky(claims, leases, now):
        checks.append([claim.row.execution_id for claim in claims])
        if len(checks) == 2:
            raise peewee.OperationalError("server closed the connection unexpectedly")
        return still_holds(claims, leases, now)

    # Every send comes more than the recheck interval after the one before,
    # so each one checks its claims again.
    ticks = itertools.count()
    step = timedelta(seconds=RECHECK_SECONDS + 0.5)

    def clock():
        return DUE + next(ticks) * step

    monkeypatch.setattr(executions_, "_still_holds", flaky)
    sent = executions_.work(Leases(worker_id="worker-a"), APPROVER, clock)

    assert sent == 3
    first, second = checks[:2]
    assert len(first) == 3 and second == first[1:]  # the claims still to send
    assert sorted(row.outcome for row in executions()) == ["delivered"] * 3
    assert sorted(event_ids(fake)) == sorted(lineages)  # each sent once
    assert all(row.rescue_count == 0 for row in executions())


def test_one_check_covers_the_sends_of_a_quick_batch(engine, fake, monkeypatch) -> None:
    approved_due(engine, 4)
    queue_only(engine)
    executions_ = engine.executions
    checks = []
    still_holds = executions_._still_holds

    def counted(claims, leases, now):
        checks.append(len(claims))
        return still_holds(claims, leases, now)

    monkeypatch.setattr(executions_, "_still_holds", counted)
    assert executions_.work(Leases(worker_id="worker-a"), APPROVER, lambda: DUE) == 4
    assert checks == [4]


def test_a_revocation_stops_the_sends_that_start_after_the_recheck(
    engine, fake, monkeypatch
) -> None:
    approved_due(engine, 3)
    queue_only(engine)
    leases = Leases(worker_id="worker-a")
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)
    moments = iter([DUE, DUE + timedelta(seconds=RECHECK_SECONDS + 1)] * 3)
    real_send = engine.send_attempt

    def send_then_deny(*args, **kwargs):
        attempt = real_send(*args, **kwargs)
        if len(fake.deliveries) == 1:
            deny_all(engine, DUE + timedelta(seconds=0.5))
        return attempt

    monkeypatch.setattr(engine, "send_attempt", send_then_deny)
    send_batch(engine, claims, leases, APPROVER, lambda: next(moments), lambda: False)

    assert len(fake.deliveries) == 1
    outcomes = sorted((row.outcome, row.skipped_reason) for row in executions())
    assert outcomes == [
        ("delivered", None),
        ("skipped", "denied"),
        ("skipped", "denied"),
    ]


def test_a_connection_held_by_connected_survives_a_reconnection(engine) -> None:
    database = engine.database
    database.close()
    with store.connected(database):
        reconnect(database)
        database.close()  # gone, as when the server went away
        assert Execution.select().count() == 0  # peewee connects again
    assert database.is_closed()


def test_a_denial_after_the_claim_stops_the_send(engine, fake) -> None:
    approved_due(engine, 1)
    leases = Leases(worker_id="worker-a")
    queue_only(engine)
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)
    deny_all(engine, DUE + timedelta(seconds=1))

    later = DUE + timedelta(seconds=2)
    send_batch(engine, claims, leases, APPROVER, lambda: later, lambda: False)

    assert fake.deliveries == []
    (row,) = executions()
    assert (row.outcome, row.skipped_reason) == ("skipped", "denied")


def test_an_expiry_after_the_claim_stops_the_send(engine, fake) -> None:
    approved_due(engine, 1)
    leases = Leases(worker_id="worker-a")
    queue_only(engine)
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)

    past_expiry = DUE + timedelta(days=2)
    # The heartbeat kept the claim all along.
    extend_leases(leases, past_expiry, [claims[0].row.execution_id])
    send_batch(engine, claims, leases, APPROVER, lambda: past_expiry, lambda: False)

    assert fake.deliveries == []
    (row,) = executions()
    assert (row.outcome, row.skipped_reason) == ("skipped", "approval_expired")


@pytest.mark.parametrize(
    "host", ["db-1.example.net", "höst name/with spaces", "", "..."]
)
def test_the_default_worker_id_is_a_valid_one_whatever_the_host_name(
    monkeypatch, host
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: host)

    worker_id = default_worker_id()

    assert WORKER_ID.fullmatch(worker_id)
    assert worker_id.endswith(f":{os.getpid()}")
    Leases(worker_id=worker_id)


def test_the_lease_migration_makes_claims_left_by_older_workers_rescuable(
    engine,
) -> None:
    database = engine.database
    runner = Runner(database, directory=str(store.MIGRATIONS_DIR))
    assert runner.down() == ["0007_queue_order_index"]
    assert runner.down() == ["0006_leases"]
    database.execute_sql(
        "INSERT INTO execution (execution_id, run_id, decision_id, lineage_id, "
        "package_id, connector_id, attempt_number, claim_key, outcome, started_at, "
        "duration_ms) VALUES ('ex_a', 'wr_a', 'rd_a', 'lin_a', 'p', "
        "'hook-a', 2, 'lin_a:2', 'claimed', 1, 0)"
    )

    assert store.migrate(database) == ["0006_leases", "0007_queue_order_index"]

    (row,) = executions()
    assert (row.outcome, row.lease_owner, row.rescue_count) == ("claimed", None, 0)
    assert store.to_micros(row.lease_expires_at) == 0
    assert WorkerRun.select().where(WorkerRun.state != "finished").count() == 0


def test_a_worker_whose_claim_was_taken_over_does_not_send_it(engine, fake) -> None:
    approved_due(engine, 2)
    queue_only(engine)
    paused = Leases(worker_id="worker-paused", lease_seconds=30)
    claims = engine.executions._claim_batch(paused, APPROVER, DUE)
    # The worker froze past its lease; another one rescued and sent the batch.
    later = DUE + timedelta(seconds=40)
    rescuer = Leases(worker_id="worker-b", lease_seconds=30)
    engine.executions.work(rescuer, APPROVER, lambda: later)
    assert len(fake.deliveries) == 2

    # Waking up, the frozen worker sends nothing of what it no longer holds.
    count, failure = send_batch(
        engine, claims, paused, APPROVER, lambda: later, lambda: False
    )

    assert (count, failure) == (0, None)
    assert len(fake.deliveries) == 2
    assert {row.worker_id for row in executions()} == {"worker-b"}


def test_an_expired_claim_is_not_sent_even_before_anyone_rescues_it(
    engine, fake
) -> None:
    approved_due(engine, 1)
    queue_only(engine)
    leases = Leases(worker_id="worker-a", lease_seconds=30)
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)

    late = DUE + timedelta(seconds=31)
    send_batch(engine, claims, leases, APPROVER, lambda: late, lambda: False)

    assert fake.deliveries == []
    (row,) = executions()
    assert row.outcome == "claimed"  # left for whoever rescues it


def test_a_lineage_that_moved_on_after_the_claim_is_not_sent(engine, fake) -> None:
    approved_due(engine, 1)
    queue_only(engine)
    leases = Leases(worker_id="worker-a")
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)
    # Another writer records the lineage's next attempt meanwhile.
    record_failure(engine, DUE, evidence=package("drill-0"))

    send_batch(engine, claims, leases, APPROVER, lambda: DUE, lambda: False)

    assert fake.deliveries == []
    (row,) = executions()
    assert (row.outcome, row.skipped_reason) == ("skipped", "approval_stale")


def test_a_live_service_rescues_expired_claims_between_windows(
    engine, fake, clock
) -> None:
    approved_due(engine, 2)
    fake.crashes = 1
    with pytest.raises(Crash):
        live_run(engine, DUE, "worker-dead")
    assert {row.outcome for row in executions()} == {"claimed"}
    engine.database.close()

    # The engine's clock is past the claims' lease. A service whose next
    # window is an hour away (by its own clock), with a one-second lease,
    # does not wait for that window to take the dead worker's claims over.
    clock.now = DUE + timedelta(seconds=40)
    service = WorkerService(
        engine,
        every("1h"),
        {"dry_run": False, "generated_by": APPROVER.name},
        leases=Leases(worker_id="worker-b", lease_seconds=1),
    )
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with store.connected(engine.database):
                rows = executions()
            if all(row.outcome != "claimed" for row in rows):
                break
            time.sleep(0.2)
    finally:
        service.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()
    with store.connected(engine.database):
        rows = executions()
    assert [(row.outcome, row.rescue_count) for row in rows] == [("delivered", 1)] * 2
    assert {row.worker_id for row in rows} == {"worker-b"}
    assert WorkerRun.select().where(WorkerRun.trigger == "schedule").count() == 0


# -- a batch's record is the same as one attempt at a time ----------------------

#: What each retry of a batch met: outcome, error class, HTTP status.
MIXED = [
    ("delivered", None, 204),
    ("failed", "http_5xx", 503),
    ("failed", "timeout", None),
    ("delivered", None, 200),
    ("failed", "http_5xx", 502),
]


def _sent(engine, lineage_id, outcome, error_class, status, at):
    row = store.Lineage.get_by_id(lineage_id)
    return {
        "package_id": row.package_id,
        "connector_id": row.connector_id,
        "outcome": outcome,
        "error_class": error_class,
        "http_status": status,
        "retry_after": "120" if status == 503 else None,
        "started_at": at,
        "finished_at": at + timedelta(milliseconds=3),
        "attempt_number": row.attempt_count + 1,
    }


def _recorded_state(connector_id):
    """What recording left for one connector, without ids and the connector's name."""
    lineages = [
        {
            name: value
            for name, value in row.__data__.items()
            if name not in ("lineage_id", "package", "connector_id")
        }
        for row in store.Lineage.select()
        .where(store.Lineage.connector_id == connector_id)
        .order_by(store.Lineage.first_attempt_at)
    ]
    attempts = [
        {
            name: value
            for name, value in row.__data__.items()
            if name not in ("attempt_id", "lineage", "package_id", "connector_id")
        }
        for row in DeliveryAttempt.select()
        .where(DeliveryAttempt.connector_id == connector_id)
        .order_by(DeliveryAttempt.started_at)
    ]
    state = store.ConnectorState.get_by_id(connector_id).__data__
    state.pop("connector_id")
    deliveries = store.counters_with_prefix("deliveries:")
    counted = {
        name.rsplit(":", 1)[0]: value
        for name, value in deliveries.items()
        if name.endswith(f":{connector_id}")
    }
    return lineages, attempts, state, counted


def _without_ids(document):
    ids = ("attempt_id", "lineage_id", "package_id", "connector_id")
    return {name: value for name, value in document.items() if name not in ids}


@pytest.mark.parametrize(
    ("outcomes", "batched"),
    [
        (MIXED, True),
        (MIXED[:1] * 3, True),
        (MIXED[1:3], True),
        # A refused credential pauses the connector: one attempt at a time.
        ([*MIXED[:2], ("failed", "auth", 401)], False),
    ],
    ids=["mixed", "delivered", "failed", "pausing"],
)
def test_a_batch_is_recorded_as_one_attempt_at_a_time_would_be(
    make_engine, fake, monkeypatch, outcomes, batched
) -> None:
    engine = make_engine(
        {"hook-a": {"type": "fake"}, "hook-b": {"type": "fake"}},
        plugins=[FakePlugin(fake)],
        load_entry_points=False,
    )
    sent = {}
    for connector_id in ("hook-a", "hook-b"):
        lineages = [
            record_failure(
                engine,
                T0 + timedelta(seconds=n),
                connector_id=connector_id,
                evidence=package(f"drill-{connector_id}-{n}"),
            )
            for n in range(len(outcomes))
        ]
        sent[connector_id] = [
            (lineage, _sent(engine, lineage, *outcome, DUE + timedelta(seconds=n)))
            for n, (lineage, outcome) in enumerate(zip(lineages, outcomes, strict=True))
        ]

    one_at_a_time = engine._one_sent
    slow_calls = []
    monkeypatch.setattr(
        engine, "_one_sent", lambda *args: slow_calls.append(1) or one_at_a_time(*args)
    )
    with engine.database.atomic(), store.counter_batch():
        in_batch = engine.record_sent_batch(
            [
                (attempt, store.Lineage.get_by_id(lineage), "wr_1")
                for lineage, attempt in sent["hook-a"]
            ]
        )
    assert len(slow_calls) == (0 if batched else len(outcomes))
    single = []
    for _, attempt in sent["hook-b"]:
        with engine.database.atomic(), store.counter_batch():
            single.append(one_at_a_time(attempt, "wr_1"))

    assert [d["outcome"] for d in in_batch] == [o for o, _, _ in outcomes]
    assert [_without_ids(d) for d in in_batch] == [_without_ids(d) for d in single]
    assert _recorded_state("hook-a") == _recorded_state("hook-b")


def test_a_batch_leaves_a_lineage_that_moved_on_unrecorded(engine, fake) -> None:
    first, second = (
        record_failure(engine, T0, evidence=package(f"drill-{n}")) for n in range(2)
    )
    attempts = [
        _sent(engine, lineage, "delivered", None, 204, DUE)
        for lineage in (first, second)
    ]
    record_failure(engine, T0 + timedelta(minutes=1), evidence=package("drill-1"))

    with engine.database.atomic(), store.counter_batch():
        rows = [store.Lineage.get_by_id(lineage) for lineage in (first, second)]
        recorded = engine.record_sent_batch(
            [(attempt, row, None) for attempt, row in zip(attempts, rows, strict=True)]
        )

    assert recorded[0]["outcome"] == "delivered" and recorded[1] is None
    assert store.Lineage.get_by_id(first).state == "recovered"
    assert store.Lineage.get_by_id(second).attempt_count == 2  # the other writer's


def _counted_lineages():
    """The lineage counters, and the same counts made from the rows."""
    counters = {
        name: value
        for name, value in store.counters_with_prefix("lineage:").items()
        if value
    }
    rows = Counter(
        f"lineage:{row.state}:{row.assessment or ''}" for row in store.Lineage.select()
    )
    return counters, dict(rows)


def test_a_pause_between_claim_and_record_keeps_the_counters_true(engine, fake) -> None:
    approved_due(engine, 3)
    queue_only(engine)
    leases = Leases(worker_id="worker-a")
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)
    # Another lineage's refused credential pauses the connector meanwhile:
    # the claimed lineages are assessed again (paused), without a new version.
    record_failure(
        engine,
        DUE + timedelta(seconds=1),
        status=401,
        error_class="auth",
        evidence=package("drill-other"),
    )
    assert {store.Lineage.get_by_id(c.row.lineage_id).assessment for c in claims} == {
        "paused"
    }

    later = DUE + timedelta(seconds=2)
    send_batch(engine, claims, leases, APPROVER, lambda: later, lambda: False)

    counters, from_rows = _counted_lineages()
    assert counters == from_rows


@pytest.mark.parametrize("where", ["same connection", "another connection"])
def test_a_word_given_mid_batch_stops_the_sends_after_it(
    engine, fake, monkeypatch, where
) -> None:
    """The clock stands still: only the word makes the worker check again."""
    approved_due(engine, 3)
    queue_only(engine)
    leases = Leases(worker_id="worker-a")
    claims = engine.executions._claim_batch(leases, APPROVER, DUE)
    real_send = engine.send_attempt

    def deny_elsewhere():
        with store.connected(engine.database):
            deny_all(engine, DUE + timedelta(seconds=1))

    def send_then_deny(*args, **kwargs):
        attempt = real_send(*args, **kwargs)
        if len(fake.deliveries) == 1:
            if where == "same connection":
                deny_all(engine, DUE + timedelta(seconds=1))
            else:
                other = threading.Thread(target=deny_elsewhere)
                other.start()
                other.join()
                time.sleep(0.2)  # the notice travels as a round trip would
        return attempt

    monkeypatch.setattr(engine, "send_attempt", send_then_deny)
    send_batch(engine, claims, leases, APPROVER, lambda: DUE, lambda: False)

    assert len(fake.deliveries) == 1
    skipped = sorted(row.skipped_reason for row in executions() if row.skipped_reason)
    assert skipped == ["denied", "denied"]


@on_postgres_only
def test_a_connection_lost_mid_batch_still_records_what_was_sent(
    engine, fake, monkeypatch, database_url
) -> None:
    """The server drops the worker's session between two sends of a batch."""
    lineages = approved_due(engine, 3)
    queue_only(engine)
    real_send = engine.send_attempt

    def send_then_drop(*args, **kwargs):
        attempt = real_send(*args, **kwargs)
        if len(fake.deliveries) == 1:
            backend = engine.database.connection().get_backend_pid()
            admin = psycopg2.connect(database_url)
            admin.autocommit = True
            admin.cursor().execute("SELECT pg_terminate_backend(%s)", (backend,))
            admin.close()
            time.sleep(0.2)
        return attempt

    monkeypatch.setattr(engine, "send_attempt", send_then_drop)
    sent = engine.executions.work(Leases(worker_id="worker-a"), APPROVER, lambda: DUE)

    assert sent == 3
    assert sorted(row.outcome for row in executions()) == ["delivered"] * 3
    assert sorted(event_ids(fake)) == sorted(lineages)  # each sent once
    assert all(row.rescue_count == 0 for row in executions())


def test_a_failed_multi_row_update_raises_peewees_error(engine) -> None:
    lineage_id = record_failure(engine, T0)
    with pytest.raises(peewee.IntegrityError), engine.database.atomic():
        # No such package: the foreign key refuses the row.
        store.update_rows(
            store.Lineage, [{"lineage_id": lineage_id, "package": "no-such-package"}]
        )
    assert store.Lineage.get_by_id(lineage_id).package_id != "no-such-package"


def test_a_multi_row_update_refuses_rows_it_could_not_apply_one_way(engine) -> None:
    """
    A row named twice, or guards of different fields, would be applied in
    one way on SQLite and another on PostgreSQL; both are refused, and
    nothing is changed.
    """
    lineage_id = record_failure(engine, T0)
    before = store.Lineage.get_by_id(lineage_id).version
    twice = [
        {"lineage_id": lineage_id, "version": before + 1},
        {"lineage_id": lineage_id, "version": before + 2},
    ]
    with pytest.raises(ValueError, match="named only once"):
        store.update_rows(store.Lineage, twice)
    other = record_failure(engine, T0, evidence=package("drill-other"))
    rows = [
        {"lineage_id": lineage_id, "version": before + 1},
        {"lineage_id": other, "version": before + 1},
    ]
    uneven = [{"version": before}, {"version": before, "latest_failed": True}]
    with pytest.raises(ValueError, match="guard of the same fields"):
        store.update_rows(store.Lineage, rows, guards=uneven)
    with pytest.raises(ValueError, match="guard of the same fields"):
        store.update_rows(store.Lineage, rows, guards=uneven[:1])
    assert store.Lineage.get_by_id(lineage_id).version == before


#: Lineages the workers share in the deadlock test (and half as many imported).
LINEAGES = 150


class PausingType(FakeType):
    """Refuses some lineages' credentials (a pause), fails or delivers the rest."""

    def __init__(self) -> None:
        super().__init__("fake")

    def deliver(self, connector, delivery):
        self.deliveries.append(delivery)
        time.sleep(0.002)  # long enough for the workers to overlap
        kind = int(delivery.lineage_id[-6:], 16) % 7
        if kind == 0:
            return failed(401, error_class="auth")
        return DELIVERED if kind % 2 else failed(503)


@on_postgres_only
def test_workers_and_an_import_pausing_connectors_never_deadlock(
    make_engine, caplog, database_url
) -> None:
    """
    Pauses reassess other lineages while workers record theirs: every writer
    takes connector health before lineages, so none waits in a circle.
    """
    caplog.set_level(logging.WARNING)
    fake = PausingType()
    connectors = {f"hook-{name}": {"type": "fake"} for name in "abc"}
    engine = make_engine(
        connectors, plugins=[FakePlugin(fake)], load_entry_points=False
    )
    for n in range(LINEAGES):
        record_failure(
            engine,
            T0 + timedelta(seconds=n),
            connector_id=f"hook-{'abc'[n % 3]}",
            evidence=package(f"drill-{n}"),
        )
    approved_due(engine, 0)
    queue_only(engine)
    errors = []

    def worker(name):
        try:
            with store.connected(engine.database):
                engine.executions.work(
                    Leases(worker_id=name, batch_size=5),
                    APPROVER,
                    lambda: DUE + timedelta(seconds=1),
                )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    def importer():
        try:
            with store.connected(engine.database):
                for n in range(LINEAGES, LINEAGES + LINEAGES // 2):
                    record_failure(
                        engine,
                        DUE + timedelta(seconds=2 + n),
                        connector_id=f"hook-{'abc'[n % 3]}",
                        status=401,
                        error_class="auth",
                        evidence=package(f"drill-{n}"),
                    )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    threads.append(threading.Thread(target=importer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    failures = [
        r.getMessage()
        for r in caplog.records
        if "writing a batch failed" in r.getMessage()
    ]
    assert failures == []
    assert set(Counter(d.lineage_id for d in fake.deliveries).values()) == {1}
    counters, from_rows = _counted_lineages()
    assert counters == from_rows


# -- the store thread: claims ahead, records behind ---------------------------------


def wait_for(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` (a database read from the sending thread) until true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def outcomes_now() -> Counter:
    return Counter(
        outcome for (outcome,) in Execution.select(Execution.outcome).tuples()
    )


def work_in_pairs_watching(engine, fake, nth: int, condition) -> bool:
    """
    Four approved retries sent in batches of two; during the ``nth``
    delivery, wait for ``condition``. Whether it came true; every retry
    must have been delivered once.
    """
    approved_due(engine, 4)
    queue_only(engine)
    seen = []

    def watch(delivery) -> None:
        if len(fake.deliveries) == nth:
            seen.append(wait_for(condition))

    fake.on_deliver = watch
    sent = engine.executions.work(
        Leases(worker_id="worker-a", batch_size=2), APPROVER, lambda: DUE
    )
    assert sent == 4
    assert outcomes_now() == Counter(delivered=4)
    assert sorted(event_ids(fake)) == sorted(set(event_ids(fake)))
    return seen == [True]


def test_the_next_batch_is_claimed_while_one_is_sent(engine, fake) -> None:
    # During the first send: the batch on the wire and the one claimed ahead.
    assert work_in_pairs_watching(
        engine, fake, 1, lambda: outcomes_now()["claimed"] == 4
    )


def test_a_batch_is_recorded_while_the_next_one_is_sent(engine, fake) -> None:
    # During the third send: the first batch has its outcomes.
    assert work_in_pairs_watching(
        engine, fake, 3, lambda: outcomes_now()["delivered"] == 2
    )
    attempts = DeliveryAttempt.select().where(DeliveryAttempt.source == "worker")
    assert attempts.count() == 4


def test_a_stopped_worker_puts_the_batch_claimed_ahead_back(engine, fake) -> None:
    approved_due(engine, 5)
    queue_only(engine)
    assert outcomes_now() == Counter(queued=5)

    sent = engine.executions.work(
        Leases(worker_id="worker-a", batch_size=2),
        APPROVER,
        lambda: DUE,
        stop=lambda: len(fake.deliveries) >= 1,
    )

    # One sent; its batch's second claim and the two claimed ahead go back.
    assert sent == 1
    assert outcomes_now() == Counter(delivered=1, queued=4)
    assert all(
        row.lease_owner is None and row.lease_expires_at is None
        for row in executions()
        if row.outcome == "queued"
    )
    assert (
        engine.executions.work(Leases(worker_id="worker-b"), APPROVER, lambda: DUE) == 4
    )
    assert outcomes_now() == Counter(delivered=5)
    assert sorted(event_ids(fake)) == sorted(set(event_ids(fake)))


def test_the_heartbeat_extends_the_batch_claimed_ahead(engine, fake) -> None:
    approved_due(engine, 2)
    queue_only(engine)
    leases = Leases(worker_id="worker-a", lease_seconds=1, batch_size=1)
    seen = []

    def long_first_delivery(delivery) -> None:
        if seen:
            return
        # The batch claimed ahead waits for this one to end; its lease moves
        # on with the heartbeat, so nobody may rescue it meanwhile.
        assert wait_for(lambda: outcomes_now()["claimed"] == 2)
        ahead = Execution.get(Execution.lineage_id != delivery.lineage_id)
        seen.append(ahead.lease_expires_at)
        time.sleep(1.2)
        seen.append(Execution.get_by_id(ahead.execution_id).lease_expires_at)

    fake.on_deliver = long_first_delivery
    started = time.monotonic()
    engine.executions.work(
        leases, APPROVER, lambda: DUE + timedelta(seconds=time.monotonic() - started)
    )

    at_claim, after = seen
    assert after > at_claim
    assert outcomes_now() == Counter(delivered=2)
    assert all(row.rescue_count == 0 for row in executions())


@contextlib.contextmanager
def store_thread_refused(engine, refusing=lambda: True):
    """The database refuses the store threads new connections while ``refusing()``."""
    database = engine.database
    connect = database._connect

    def refused():
        if refusing() and threading.current_thread().name.startswith("worker-store"):
            raise peewee.OperationalError("connection refused")
        return connect()

    database._connect = refused
    try:
        yield
    finally:
        database._connect = connect


def test_a_store_thread_refused_a_connection_retries_and_delivers(engine, fake) -> None:
    """
    The database refuses new connections for a moment as a worker starts
    (a failover, max_connections reached): the worker's store thread cannot
    connect. It waits and tries again like any database error, and a stop
    is honoured meanwhile.
    """
    lineages = approved_due(engine, 2)
    queue_only(engine)
    refusing = threading.Event()
    refusing.set()
    threading.Timer(1.0, refusing.clear).start()
    with store_thread_refused(engine, refusing.is_set):
        sent = engine.executions.work(
            Leases(worker_id="worker-a"), APPROVER, lambda: DUE
        )
    assert sent == 2
    assert sorted(event_ids(fake)) == sorted(lineages)


def test_a_worker_whose_store_thread_cannot_connect_still_stops(engine, fake) -> None:
    approved_due(engine, 1)
    queue_only(engine)
    stopping = threading.Event()
    threading.Timer(1.0, stopping.set).start()
    started = time.monotonic()
    with store_thread_refused(engine):
        sent = engine.executions.work(
            Leases(worker_id="worker-a"), APPROVER, lambda: DUE, stop=stopping.is_set
        )
    assert sent == 0
    assert time.monotonic() - started < 8
    assert fake.deliveries == []
    assert outcomes_now() == Counter(queued=1)


def test_a_slow_record_leaves_the_next_claim_a_full_lease(
    engine, fake, monkeypatch
) -> None:
    """
    The claim ahead waits for the record before it; when that record is
    slow (a busy store), its lease still counts from when it runs, so the
    worker never finds its own claims run out and takes them over.
    """
    lineages = approved_due(engine, 5)
    queue_only(engine)
    write_outcomes = engine.executions._write_outcomes
    records = []

    def slow_first_record(*args, **kwargs):
        records.append(1)
        if len(records) == 1:
            time.sleep(2.5)  # two and a half leases
        return write_outcomes(*args, **kwargs)

    monkeypatch.setattr(engine.executions, "_write_outcomes", slow_first_record)
    started = time.monotonic()
    sent = engine.executions.work(
        Leases(worker_id="worker-a", lease_seconds=1, batch_size=2),
        APPROVER,
        lambda: DUE + timedelta(seconds=time.monotonic() - started),
    )

    assert sent == 5
    assert sorted(event_ids(fake)) == sorted(lineages)
    assert outcomes_now() == Counter(delivered=5)
    assert [row.rescue_count for row in executions()] == [0] * 5


def test_a_worker_never_takes_back_its_own_claims_still_in_hand(
    engine, fake, monkeypatch
) -> None:
    """
    Its heartbeat cannot write (a busy store) while a long first delivery is
    on the wire, so the lease of the batch claimed ahead runs out while it
    waits. The claim after it must not take that batch's claim again: both
    batches would send it.
    """
    lineages = approved_due(engine, 3)
    queue_only(engine)

    def busy(*args, **kwargs):
        raise peewee.OperationalError("database is locked")

    monkeypatch.setattr("cavra_core.executions.extend_leases", busy)
    started = time.monotonic()

    def long_first_delivery(delivery) -> None:
        if len(fake.deliveries) == 1:
            time.sleep(1.3)  # longer than the lease

    def claimed_after_the_first() -> bool:
        # The third retry taken, or (the mistake) the second one taken again.
        found = outcomes_now()
        taken_again = Execution.select().where(Execution.rescue_count > 0).exists()
        return found["delivered"] == 1 and (found["claimed"] == 2 or taken_again)

    waits = []

    def stop() -> bool:
        # Before the second send, let the claim after it run first (else
        # it is a race): it takes the third retry, not the second again.
        if len(fake.deliveries) == 1 and len(waits) < 3:
            waits.append(wait_for(claimed_after_the_first, timeout=1.0))
        return False

    fake.on_deliver = long_first_delivery
    engine.executions.work(
        Leases(worker_id="worker-a", lease_seconds=1, batch_size=1),
        APPROVER,
        lambda: DUE + timedelta(seconds=time.monotonic() - started),
        stop=stop,
    )

    assert sorted(event_ids(fake)) == sorted(lineages)  # each once
    assert outcomes_now() == Counter(delivered=3)


def test_the_heartbeat_counts_the_holders_of_a_claim(engine) -> None:
    from cavra_core.executions import _Heartbeat

    heartbeat = _Heartbeat(engine.database, Leases(worker_id="worker-a"), lambda: DUE)
    heartbeat.hold(["ex_1", "ex_2"])
    heartbeat.hold(["ex_2"])  # lost by one batch, taken again by the next
    heartbeat.drop(["ex_1", "ex_2"])
    assert heartbeat.in_hand == ("ex_2",)
    heartbeat.drop(["ex_2"])
    assert heartbeat.in_hand == ()


@on_postgres_only
def test_a_health_row_held_by_another_writer_makes_no_retry_go_twice(
    engine, fake, database_url
) -> None:
    """
    Another writer (an import pausing the connector, say) holds the
    connector's health row for longer than a lease while a worker records
    its first batch, and the worker goes on claiming behind that record. No
    claim is taken over while no worker died; were one taken over, a second
    worker polling while its slow delivery is on the wire would send it
    again.
    """
    lineages = approved_due(engine, 5)
    queue_only(engine)
    other = psycopg2.connect(database_url)
    started = time.monotonic()
    main = threading.current_thread()
    helpers = []

    def now():
        return DUE + timedelta(seconds=time.monotonic() - started)

    def on_deliver(delivery) -> None:
        if threading.current_thread() is not main:
            return
        if len(fake.deliveries) == 1:
            with other.cursor() as cursor:
                cursor.execute(
                    "SELECT * FROM connector_state WHERE connector_id = 'hook-a' "
                    "FOR UPDATE"
                )
            threading.Timer(2.5, other.commit).start()
            return
        row = Execution.get(Execution.lineage_id == delivery.lineage_id)
        if row.rescue_count and not helpers:
            helper = threading.Thread(
                target=engine.executions.work,
                args=(Leases(worker_id="worker-b", lease_seconds=1), APPROVER, now),
                kwargs={"until": lambda: time.monotonic() - started > 8},
            )
            helper.start()
            helpers.append(helper)
            time.sleep(1.6)  # a slow receiver: more than a lease

    fake.on_deliver = on_deliver
    try:
        engine.executions.work(
            Leases(worker_id="worker-a", lease_seconds=1, batch_size=2), APPROVER, now
        )
        for helper in helpers:
            helper.join(15)
    finally:
        other.close()
    assert sorted(event_ids(fake)) == sorted(lineages)  # each once
    assert outcomes_now() == Counter(delivered=5)
    assert [row.rescue_count for row in executions()] == [0] * 5


def test_a_long_outage_never_ends_the_worker_with_an_overflow(
    engine, fake, monkeypatch
) -> None:
    """The wait between tries is capped before it is computed, not after."""
    approved_due(engine, 1)
    queue_only(engine)
    waits = []
    monkeypatch.setattr("cavra_core.executions.time.sleep", waits.append)
    with store_thread_refused(engine):
        sent = engine.executions.work(
            Leases(worker_id="worker-a"),
            APPROVER,
            lambda: DUE,
            stop=lambda: len(waits) > 1100,
        )
    assert sent == 0
    assert max(waits) == 5.0
    assert outcomes_now() == Counter(queued=1)


def test_an_interrupted_wait_for_a_claim_puts_the_claim_back(
    engine, fake, monkeypatch
) -> None:
    """A signal whose handler raises arrives while the worker waits for a claim."""
    approved_due(engine, 2)
    queue_only(engine)
    claim_batch = engine.executions._claim_batch

    def claim_then_signal(*args, **kwargs):
        claims = claim_batch(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.3)  # the sending thread is waiting for this claim
        return claims

    def crash(*_):
        raise Crash

    previous = signal.signal(signal.SIGUSR1, crash)
    monkeypatch.setattr(engine.executions, "_claim_batch", claim_then_signal)
    try:
        with pytest.raises(Crash):
            engine.executions.work(Leases(worker_id="worker-a"), APPROVER, lambda: DUE)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert fake.deliveries == []
    assert outcomes_now() == Counter(queued=2)
    assert all(row.lease_owner is None for row in executions())


@pytest.mark.parametrize("second_id", ["worker-a", "worker-b"])
def test_two_calls_of_one_worker_id_never_both_send_a_claim(
    engine, fake, monkeypatch, second_id
) -> None:
    """
    One process runs two work() calls at once (an API process serving two
    live runs, both under its worker id). The first one's lease runs out
    while it sends (its heartbeat cannot write); the second must not take
    over the claim the first holds but has not sent yet.
    """
    approved_due(engine, 2)
    queue_only(engine)

    def busy(*args, **kwargs):
        raise peewee.OperationalError("database is locked")

    monkeypatch.setattr("cavra_core.executions.extend_leases", busy)
    started = time.monotonic()

    def now():
        return DUE + timedelta(seconds=time.monotonic() - started)

    main = threading.current_thread()
    helpers = []
    second_deliveries = []

    def on_deliver(delivery) -> None:
        if threading.current_thread() is not main:
            second_deliveries.append(delivery)
            if len(second_deliveries) == 1:
                time.sleep(0.5)  # the second call holds what it took
            return
        if helpers:
            return
        time.sleep(1.2)  # past the first call's lease
        helper = threading.Thread(
            target=engine.executions.work,
            args=(
                Leases(worker_id=second_id, lease_seconds=1, batch_size=2),
                APPROVER,
                now,
            ),
        )
        helpers.append(helper)
        helper.start()
        wait_for(
            lambda: Execution.select().where(Execution.rescue_count > 0).exists(),
            timeout=3,
        )

    fake.on_deliver = on_deliver
    engine.executions.work(
        Leases(worker_id="worker-a", lease_seconds=1, batch_size=2), APPROVER, now
    )
    for helper in helpers:
        helper.join(10)

    sent = Counter(delivery.event_id for delivery in fake.deliveries)
    # The retry on the wire when its lease ran out may go twice, as with any
    # rescue; the one not yet sent goes once.
    assert sorted(sent.values()) in ([1, 1], [1, 2]), sent
    assert outcomes_now() == Counter(delivered=2)


def test_claims_in_hand_do_not_crowd_out_the_rescue_of_others(engine, fake) -> None:
    """
    The rescue read leaves out this worker's claims still in hand; it reads
    enough rows that they do not take the place of another worker's.
    """
    approved_due(engine, 6)
    queue_only(engine)
    mine = engine.executions._claim_batch(
        Leases(worker_id="worker-a", lease_seconds=1, batch_size=6), APPROVER, DUE
    )
    ordered = sorted(mine, key=lambda c: (c.row.due_at, c.row.execution_id))
    theirs = ordered[-1].row.execution_id  # last in the rescue order
    Execution.update(lease_owner="worker-z", worker_id="worker-z").where(
        Execution.execution_id == theirs
    ).execute()
    in_hand = {claim.row.execution_id for claim in ordered[:-1]}

    taken = engine.executions._claim_batch(
        Leases(worker_id="worker-a", lease_seconds=1, batch_size=2),
        APPROVER,
        DUE + timedelta(seconds=5),
        in_hand,
    )

    assert [claim.row.execution_id for claim in taken] == [theirs]
    assert Execution.get_by_id(theirs).rescue_count == 1
    assert all(Execution.get_by_id(i).rescue_count == 0 for i in in_hand)


def _queued_rows(count: int) -> None:
    """``count`` queued executions all due at once, as a bulk re-delivery."""
    due = DUE
    rows = [
        {
            "execution_id": f"ex_{index:032x}",
            "run_id": "wr_bulk",
            "decision_id": f"rd_{index:032x}",
            "lineage_id": f"lin_{index:032x}",
            "package_id": "p" * 64,
            "connector_id": "hook-a",
            "attempt_number": 2,
            "claim_key": f"lin_{index:032x}:2",
            "outcome": "queued",
            "started_at": due,
            "due_at": due,
        }
        for index in range(count)
    ]
    for start in range(0, count, 500):
        Execution.insert_many(rows[start : start + 500]).execute()


def test_a_claim_reads_its_batch_from_the_queues_index(database_url) -> None:
    """
    No sort of the queue for each batch: SQLite walks the index; PostgreSQL
    does once its statistics know the queue is long (refreshed after a
    bulk queue).
    """
    with (
        Engine(database_url, {}, load_entry_points=False) as engine,
        store.connected(engine.database),
    ):
        postgres = store.is_postgres(engine.database)
        _queued_rows(3000 if postgres else 50)
        if postgres:
            assert store.refresh_statistics(engine.database, Execution)
        sql, params = claimable_query(
            engine.database, Execution.outcome == "queued", 100
        ).sql()
        explain = "EXPLAIN (FORMAT JSON) " if postgres else "EXPLAIN QUERY PLAN "
        plan = engine.database.execute_sql(explain + sql, params).fetchall()

    text = json.dumps(plan)
    assert "execution_outcome_due_at_execution_id" in text, plan
    if postgres:
        assert '"Node Type": "Sort"' not in text, plan
    else:
        assert "TEMP B-TREE" not in text, plan


def test_a_bulk_queue_refreshes_the_statistics_of_the_executions(
    engine, fake, monkeypatch
) -> None:
    refreshed = []
    monkeypatch.setattr(executions_module, "ANALYZE_AFTER", 2)
    monkeypatch.setattr(
        store, "refresh_statistics", lambda database, model: refreshed.append(model)
    )
    approved_due(engine, 3)
    queue_only(engine)

    assert refreshed == [Execution]
    assert Counter(row.outcome for row in executions()) == Counter(queued=3)
