"""
A worker's claims and records in a store process of its own, on both stores.

Live runs of an engine built from a URL and connectors (what ``cavra
worker serve`` builds) deliver to a loopback receiver with
``Leases(store_process=True)``: every retry once, the child process found
running beside the test and gone once the engine is closed, a child killed
in the middle of a run started again without a retry recorded twice.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import Counter

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
from cavra_core.executions import BATCH_SECONDS, Executions, Leases, claim_size
from cavra_core.store import Execution
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


def test_a_live_run_claims_and_records_in_a_store_process(database_url) -> None:
    with CountingReceiver() as receiver:
        connectors = connectors_table(receiver.url)
        lineages = seed_approved_retries(database_url, connectors, RETRIES)
        engine = Engine(database_url, connectors)
        try:
            before = set(store_children())
            leases = Leases(worker_id="proc-1", batch_size=7, store_process=True)
            with store.connected(engine.database):
                run = live_run(engine, leases)
                delivered = delivered_per_lineage()
            started = set(store_children()) - before
        finally:
            engine.close()

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
    with CountingReceiver(delay=0.01) as receiver:
        connectors = connectors_table(receiver.url)
        lineages = seed_approved_retries(database_url, connectors, RETRIES)
        engine = Engine(database_url, connectors)
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
        try:
            caplog.set_level(logging.INFO, logger="cavra_core.executions")
            with store.connected(engine.database):
                engine.executions.store_process(leases)
                killer.start()
                run = live_run(engine, leases)
                delivered = delivered_per_lineage()
                outcomes = Counter(
                    row.outcome for row in Execution.select(Execution.outcome)
                )
            replacement = store_children()
        finally:
            killer.join(timeout=60)
            engine.close()

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
    if handled < 5 or seconds == 0:
        assert size == min(current, most)


def test_claims_follow_the_pace_of_the_sends() -> None:
    # 100 sent in a second: a quarter of a second is 25.
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
    with CountingReceiver() as receiver:
        connectors = connectors_table(receiver.url)
        seed_approved_retries(database_url, connectors, RETRIES)
        engine = Engine(database_url, connectors)
        leases = Leases(
            worker_id="proc-1", batch_size=10, lease_seconds=1, store_process=True
        )

        def broken_sends(*args, **kwargs):
            raise RuntimeError("a bug in the middle of the sends")

        monkeypatch.setattr(Executions, "_send_claims", broken_sends)
        try:
            with store.connected(engine.database):
                with pytest.raises(RuntimeError, match="a bug"):
                    live_run(engine, leases)
                time.sleep(2.5)  # the heartbeat beats every third of a second
                claimed = list(Execution.select().where(Execution.outcome == "claimed"))
                now = engine.now()
        finally:
            engine.close()

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
