"""
A worker's claims and records in a store process of its own, on both stores.

Live runs of an engine built from a URL and connectors (what ``cavra
worker serve`` builds) deliver to a loopback receiver with
``Leases(store_process=True)``: every retry once, the child process found
running beside the test and gone once the engine is closed, a child killed
in the middle of a run started again without a retry recorded twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
from hypothesis import given
from plugins_fixtures import FakePlugin, FakeType
from workers_support import (
    CountingReceiver,
    children,
    connectors_table,
    seed_approved_retries,
    wait_gone,
    write_connectors,
)

from cavra_core import Engine, store, store_child
from cavra_core.executions import (
    BATCH_SECONDS,
    FIRST_BATCH,
    Executions,
    Leases,
    _StoreInProcess,
    claim_size,
)
from cavra_core.identity import Actor
from cavra_core.store import Execution, WorkerRun
from cavra_server.cli import main

RETRIES = 60
#: The service's request of a live window's run.
LIVE = {"generated_by": "scheduler", "dry_run": False, "max_retry_deliveries": 100}


def live_run(engine: Engine, leases: Leases) -> dict:
    return engine.run_worker(LIVE, leases=leases, max_deliveries=RETRIES)


def delivered_per_lineage() -> Counter[str]:
    return Counter(
        lineage_id
        for (lineage_id,) in Execution.select(Execution.lineage_id)
        .where(Execution.outcome == "delivered")
        .tuples()
    )


def store_children() -> list[int]:
    """This process's store processes (spawned Python children)."""
    found = []
    for pid in children(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        if b"from cavra_core.store_child import main" in command:
            found.append(pid)
    return found


@contextlib.contextmanager
def seeded(
    url: str, count: int, **receiver_options: float
) -> Iterator[tuple[CountingReceiver, Engine, list[str]]]:
    """
    A loopback receiver, ``count`` approved due retries to it, and an engine
    on them as ``cavra worker serve`` builds one, connected; closed after.
    """
    with CountingReceiver(**receiver_options) as receiver:
        connectors = connectors_table(receiver.url)
        lineages = seed_approved_retries(url, connectors, count)
        with opened(url, connectors) as engine, store.connected(engine.database):
            yield receiver, engine, lineages


@contextlib.contextmanager
def opened(url: str, connectors: dict | None = None) -> Iterator[Engine]:
    """An engine that can be built again in a store process; closed after."""
    engine = Engine(url, connectors or {})
    try:
        yield engine
    finally:
        engine.close()


def _send(engine: Engine, batch) -> list:
    """Send a claimed batch as a worker does; its outcomes."""
    return [
        (
            claim,
            engine.send_attempt(
                claim.row.lineage_id,
                claim.row.attempt_number,
                lineage=claim.lineage,
                package=batch.packages[claim.row.package_id],
            ),
            "",
        )
        for claim in batch.claims
    ]


def _outcomes() -> Counter[str]:
    return Counter(row.outcome for row in Execution.select(Execution.outcome))


def _claimed(engine: Engine, leases: Leases, *, queue: int, claim: int):
    """Queue ``queue`` retries without sending them; claim ``claim`` of them."""
    engine.run_worker(LIVE, leases=leases, max_deliveries=queue, stop=lambda: True)
    process = engine.executions.store_process(leases)
    return process, process.submit("claim", Actor("t"), claim).result(timeout=30)


def _kill(process) -> None:
    pid = process.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, timeout=10)
    time.sleep(0.2)  # a zombie can be waited for a moment after it shows


def test_a_live_run_claims_and_records_in_a_store_process(database_url) -> None:
    with seeded(database_url, RETRIES) as (receiver, engine, lineages):
        before = set(store_children())
        leases = Leases(worker_id="proc-1", batch_size=7, store_process=True)
        run = live_run(engine, leases)
        delivered = delivered_per_lineage()
        started = set(store_children()) - before

    assert run["summary"]["executed_count"] == RETRIES
    assert receiver.counts() == Counter({lineage: 1 for lineage in lineages})
    assert delivered == Counter({lineage: 1 for lineage in lineages})
    assert len(started) == 1, started
    (child,) = started
    assert wait_gone(child, timeout=10), "the store process outlived its engine"


def test_the_store_process_needs_an_engine_another_process_can_build(
    make_engine,
) -> None:
    engine = make_engine(
        {"hook-a": {"type": "fake"}},
        plugins=[FakePlugin(FakeType())],
        load_entry_points=False,
    )
    assert engine.rebuild is None
    leases = Leases(worker_id="proc-1", store_process=True)

    with (
        pytest.raises(ValueError, match="store_process needs an engine"),
        store.connected(engine.database),
    ):
        engine.run_worker(LIVE, leases=leases)

    assert Execution.select().count() == 0  # refused before anything was queued


def test_a_killed_store_process_is_started_again_and_nothing_is_recorded_twice(
    database_url, caplog
) -> None:
    """
    The worker goes on with a new store process; the claims the dead one
    held run out after their lease and are rescued; each retry is recorded
    delivered once (the receiver may get the batches in hand twice).
    """
    batch = 5
    with seeded(database_url, RETRIES, delay=0.01) as (receiver, engine, lineages):
        leases = Leases(
            worker_id="proc-1", batch_size=batch, lease_seconds=1, store_process=True
        )
        killed: list[int] = []

        def kill_the_store_process() -> None:
            receiver.wait_for_keys(RETRIES // 3, timeout=60)
            (child,) = store_children()
            os.kill(child, signal.SIGKILL)
            killed.append(child)

        killer = threading.Thread(target=kill_the_store_process, daemon=True)
        caplog.set_level(logging.INFO, logger="cavra_core.executions")
        engine.executions.store_process(leases)
        killer.start()
        try:
            run = live_run(engine, leases)
            delivered = delivered_per_lineage()
            outcomes = _outcomes()
            replacement = store_children()
        finally:
            killer.join(timeout=60)

    assert killed, "the store process was not killed"
    assert replacement and replacement != killed
    assert "worker store process ended worker_id=proc-1" in caplog.text
    assert run["summary"]["executed_count"] == RETRIES
    assert delivered == Counter({lineage: 1 for lineage in lineages})
    assert outcomes == Counter(delivered=RETRIES)
    assert set(receiver.counts()) == set(lineages)
    # What the dead process held: the batch being recorded and the one
    # whose record waited behind it.
    assert sum(receiver.counts().values()) - RETRIES <= 2 * batch


@given(
    most=st.integers(1, 1000),
    current=st.integers(1, 1000),
    handled=st.integers(0, 1000),
    seconds=st.floats(0, 3600, allow_nan=False),
)
def test_a_claim_size_is_between_one_and_the_batch_size(
    most, current, handled, seconds
) -> None:
    size = claim_size(most, min(current, most), handled, seconds)

    assert 1 <= size <= most
    if handled == 0 or seconds == 0:
        assert size == min(current, most)


def test_claims_follow_the_pace_of_the_sends() -> None:
    # 100 sent in a second: half a second of them is 50.
    assert claim_size(500, 500, 100, 1.0) == int(BATCH_SECONDS * 100)
    # A fast receiver: as many as the batch size allows.
    assert claim_size(500, 25, 500, 0.2) == 500
    # A receiver that takes seconds an answer: one at a time.
    assert claim_size(500, 500, 10, 30.0) == 1


def test_claims_of_a_batch_cut_short_are_left_to_run_out(database_url, monkeypatch):
    """
    An error in the middle of a batch's sends leaves it unrecorded; the
    store process, which outlives the run, stops extending its claims, so
    they run out after one lease and any worker rescues them.
    """
    with seeded(database_url, RETRIES) as (receiver, engine, _):
        leases = Leases(
            worker_id="proc-1", batch_size=10, lease_seconds=1, store_process=True
        )

        def broken_sends(*args, **kwargs):
            raise RuntimeError("a bug in the middle of the sends")

        monkeypatch.setattr(Executions, "_send_claims", broken_sends)
        with pytest.raises(RuntimeError, match="a bug"):
            live_run(engine, leases)
        time.sleep(2.5)  # the heartbeat beats every third of a second
        claimed = list(Execution.select().where(Execution.outcome == "claimed"))
        now = engine.now()

    assert claimed, "the batch was not claimed"
    assert all(row.lease_expires_at < now for row in claimed), [
        (row.execution_id, row.lease_expires_at) for row in claimed
    ]
    assert receiver.counts() == Counter()


def test_a_live_service_whose_store_process_cannot_start_stops_at_once(
    sqlite_url, tmp_path, monkeypatch, capsys
) -> None:
    connectors = write_connectors(tmp_path, "http://127.0.0.1:9")
    # A child that ends before it answers, as one that cannot import cavra.
    monkeypatch.setattr(store_child, "_CHILD_MAIN", "raise SystemExit(3)")

    status = main(
        ["worker", "serve", "--execute", "--every", "1h", "--database", sqlite_url]
        + ["--connectors", str(connectors)]
    )

    assert status == 2
    error = capsys.readouterr().err
    assert "the store process ended while starting" in error
    assert "--bookkeeping thread" in error


def test_runs_with_other_leases_get_store_processes_of_their_own(sqlite_url) -> None:
    with opened(sqlite_url) as engine:
        first = engine.executions.store_process(
            Leases(worker_id="run-a", store_process=True)
        )
        second = engine.executions.store_process(
            Leases(worker_id="run-b", store_process=True)
        )
        assert first is not second
        assert first.submit("forget", []).result(timeout=30) is None
        assert second.submit("forget", []).result(timeout=30) is None

    with pytest.raises(RuntimeError, match="store process was closed"):
        first.submit("forget", [])


def test_a_store_process_that_cannot_start_records_no_run(
    sqlite_url, monkeypatch
) -> None:
    """
    The service logs the window's failure and goes on to the next one; no
    run is left ``running`` for the other workers to wait on.
    """
    from cavra_server.worker_service import WorkerService, every

    with seeded(sqlite_url, 3) as (receiver, engine, _):
        monkeypatch.setattr(store_child, "START_SECONDS", 0.0)
        service = WorkerService(
            engine,
            every("1h"),
            LIVE,
            leases=Leases(worker_id="svc", store_process=True),
        )
        service.run_window(service.schedule.window_at(engine.now()))
        runs = WorkerRun.select().count()

    assert runs == 0
    assert receiver.counts() == Counter()


def test_claims_grow_again_once_the_receiver_is_fast() -> None:
    size = claim_size(500, 500, 10, 100.0)  # a tenth of a send a second
    assert size == 1
    for _ in range(3):
        size = claim_size(500, size, size, 0.001)
    assert size == 500


def test_the_first_claim_is_small_until_the_pace_is_known(
    sqlite_url, monkeypatch
) -> None:
    """
    However big its batches may grow, a worker takes at most FIRST_BATCH
    before it has sent anything: a short queue is left to the other
    workers too, and a slow receiver does not get a big batch at once.
    """
    from cavra_core.executions import _StoreSide

    asked: list[int] = []
    claim = _StoreSide.claim

    def counted(self, actor, limit):
        asked.append(limit)
        return claim(self, actor, limit)

    monkeypatch.setattr(_StoreSide, "claim", counted)
    count = FIRST_BATCH + 20
    with seeded(sqlite_url, count) as (receiver, engine, _):
        leases = Leases(worker_id="first", batch_size=1000)
        engine.run_worker(LIVE, leases=leases, max_deliveries=count)

    assert asked[0] == FIRST_BATCH
    assert len(receiver.counts()) == count
    assert set(receiver.counts().values()) == {1}


def test_claims_whose_packages_cannot_be_read_are_left_to_run_out(
    sqlite_url,
) -> None:
    with seeded(sqlite_url, 3) as (_, engine, _):
        # A timestamp no datetime can hold: reading the packages fails.
        engine.database.execute_sql("UPDATE audit_package SET generated_at = 9e18")
        leases = Leases(worker_id="p", lease_seconds=1, store_process=True)
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever it is
            live_run(engine, leases)
        time.sleep(2.5)
        claimed = list(Execution.select().where(Execution.outcome == "claimed"))
        now = engine.now()

    assert claimed
    assert all(row.lease_expires_at < now for row in claimed)


def test_a_store_process_killed_while_idle_is_replaced_before_the_next_job(
    sqlite_url,
) -> None:
    with opened(sqlite_url) as engine:
        process = engine.executions.store_process(
            Leases(worker_id="idle", store_process=True)
        )
        first = process.pid
        _kill(process)

        assert process.submit("forget", []).result(timeout=30) is None
        assert process.pid != first


def test_a_new_store_process_keeps_alive_the_claims_the_worker_still_sends(
    database_url,
) -> None:
    """
    The worker may still be sending a batch the dead process claimed: the
    new one extends those claims (and does not rescue them) until the
    worker says what became of them.
    """
    with seeded(database_url, 10) as (_, engine, _):
        leases = Leases(worker_id="held", lease_seconds=1, store_process=True)
        process, batch = _claimed(engine, leases, queue=10, claim=5)
        ids = [claim.row.execution_id for claim in batch.claims]
        _kill(process)
        again = process.submit("claim", Actor("t"), 10).result(timeout=30)
        time.sleep(2.5)  # past the lease: only a heartbeat keeps them
        kept = _expiries(ids)
        now = engine.now()
        process.submit("forget", ids).result(timeout=30)
        time.sleep(2.5)
        left = _expiries(ids)
        later = engine.now()

    assert len(ids) == 5
    assert not {claim.row.execution_id for claim in again.claims} & set(ids)
    assert all(expires > now for expires in kept.values()), kept
    assert all(expires < later for expires in left.values()), left


def _expiries(ids: list[str]) -> dict[str, object]:
    return {
        row.execution_id: row.lease_expires_at
        for row in Execution.select().where(Execution.execution_id.in_(ids))
    }


def test_a_stop_signalled_while_the_store_process_starts_does_not_end_it(
    sqlite_url,
) -> None:
    """SIGTERM sent to the child the moment it exists (a group stop) is ignored."""
    known = set(children(os.getpid()))
    signalled: list[int] = []
    stop = threading.Event()

    def signal_new_children() -> None:
        while not stop.is_set():
            for pid in set(children(os.getpid())) - known - set(signalled):
                os.kill(pid, signal.SIGTERM)
                signalled.append(pid)
            time.sleep(0.0005)

    watcher = threading.Thread(target=signal_new_children, daemon=True)
    with opened(sqlite_url) as engine:
        watcher.start()
        try:
            process = engine.executions.store_process(
                Leases(worker_id="started", store_process=True)
            )
            assert process.submit("forget", []).result(timeout=30) is None
        finally:
            stop.set()
            watcher.join()

    assert signalled, "no child was signalled"


def test_a_batch_sent_across_a_store_process_death_is_recorded(sqlite_url) -> None:
    """The new store process reads the claims the dead one took, and records."""
    with seeded(sqlite_url, 3) as (receiver, engine, _):
        leases = Leases(worker_id="across", store_process=True)
        process, batch = _claimed(engine, leases, queue=3, claim=3)
        side = _StoreInProcess(process)
        _kill(process)
        done = _send(engine, batch)
        ids = [claim.row.execution_id for claim in batch.claims]
        side.record(done, [], ids, Actor("t")).result(timeout=30)
        outcomes = _outcomes()

    assert sum(receiver.counts().values()) == 3
    assert outcomes == Counter(delivered=3), outcomes


def test_a_record_cut_short_by_the_store_process_ending_is_made_again(
    sqlite_url, monkeypatch
) -> None:
    """
    The store process dies in the middle of a record: the worker has the
    next one record the batch (it cannot know whether the first committed).
    """
    with seeded(sqlite_url, 12) as (receiver, engine, _):
        leases = Leases(worker_id="cut", batch_size=4, store_process=True)
        process = engine.executions.store_process(leases)
        submit = process.submit
        killed: list[int] = []

        def dying_record(job, *args):
            future = submit(job, *args)
            if job == "record" and not killed:
                killed.append(process.pid)
                os.kill(process.pid, signal.SIGKILL)
            return future

        monkeypatch.setattr(process, "submit", dying_record)
        run = live_run(engine, leases)
        outcomes = _outcomes()

    assert killed
    assert run["summary"]["executed_count"] == 12
    assert outcomes == Counter(delivered=12), outcomes
    assert receiver.duplicates() == {}


def test_a_replacement_that_cannot_start_leaves_no_claim_held(
    sqlite_url, monkeypatch
) -> None:
    with seeded(sqlite_url, 3) as (_, engine, _):
        leases = Leases(worker_id="stuck", lease_seconds=1, store_process=True)
        process, batch = _claimed(engine, leases, queue=3, claim=3)
        ids = [claim.row.execution_id for claim in batch.claims]
        _kill(process)
        start = store_child.START_SECONDS
        monkeypatch.setattr(store_child, "START_SECONDS", 0.0)
        with pytest.raises(store_child.StoreProcessEnded):
            process.submit("record", [], ids, ids, Actor("t")).result(30)
        monkeypatch.setattr(store_child, "START_SECONDS", start)
        process.submit("forget", []).result(timeout=30)  # a good one starts
        time.sleep(3.5)  # three leases
        left = _expiries(ids)
        now = engine.now()

    assert all(expires < now for expires in left.values()), left


def test_one_worker_id_gets_one_store_process(sqlite_url) -> None:
    with opened(sqlite_url) as engine:
        engine.executions.store_process(
            Leases(worker_id="w", batch_size=5, store_process=True)
        )
        with pytest.raises(ValueError, match="worker id w has a store process"):
            engine.executions.store_process(
                Leases(worker_id="w", batch_size=7, store_process=True)
            )
