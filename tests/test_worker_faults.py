"""
Several live ``cavra worker serve`` processes on one store, and their faults.

Each test seeds approved retries that are due now (2,000 on PostgreSQL, 200
on SQLite), starts real worker processes against a loopback receiver that
counts deliveries by event id (the ``Idempotency-Key`` header), and checks
what the receiver and the store show afterwards:

* three workers share the work and every event arrives exactly once;
* a worker killed mid-run (SIGKILL) loses nothing: its leases expire, the
  others rescue its deliveries, and only those it had in hand may arrive
  twice, under their stable event ids;
* every database connection cut mid-run (a failover, say): the workers
  reconnect and finish, exactly once;
* a receiver that never answers some events: those deliveries fail with a
  timeout after the connector's read timeout, and nothing stays in hand;
* SQLite: two workers on one file, exactly once.

The PostgreSQL store is seeded once through the engine into a template
database and copied for each test (see :mod:`workers_support`). Every wait
is bounded; a failing assertion prints the receiver's counts, the
executions by outcome and the end of every worker's log.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from workers_support import (
    CountingReceiver,
    WorkerProcess,
    children,
    cloned_database,
    connectors_table,
    create_database,
    delivered_per_lineage,
    drop_connections,
    drop_database,
    execution_documents,
    execution_outcomes,
    kill_all,
    lineage_states,
    logs_of,
    seed_approved_retries,
    start_workers,
    stop_all,
    wait_gone,
    wait_until_settled,
    worker_arguments,
    worker_attempts_per_lineage,
    write_connectors,
)

#: Approved due retries of every PostgreSQL test, and of the SQLite one.
RETRIES = 2000
SQLITE_RETRIES = 200
#: Claims per batch; a killed worker has at most this many in hand.
BATCH = 20
#: Long enough for the slowest run on a loaded two-core machine.
DELIVERY_TIMEOUT = 120.0
#: A placeholder URL for seeding: only the connector's id is kept.
SEED_URL = "http://127.0.0.1:9/hook"


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_template(postgres_url: str) -> Iterator[tuple[str, list[str]]]:
    """A database holding RETRIES approved due retries, to copy; its lineages."""
    name = f"cavra_faults_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_url, name)
    try:
        lineages = seed_approved_retries(url, connectors_table(SEED_URL), RETRIES)
        yield name, lineages
    finally:
        drop_database(postgres_url, name)


@pytest.fixture
def store(postgres_url: str, seeded_template) -> Iterator[tuple[str, list[str]]]:
    """This test's copy of the seeded store: its URL and the lineages."""
    template, lineages = seeded_template
    with cloned_database(postgres_url, template) as url:
        yield url, lineages


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """The test's worker processes; whatever still runs is killed at the end."""
    started: list[WorkerProcess] = []
    yield started
    kill_all(started)


# -- reading the outcome -----------------------------------------------------------


class Report:
    """What a failure message shows: receiver, store and logs, read when needed."""

    def __init__(
        self,
        receiver: CountingReceiver,
        database_url: str,
        workers: Sequence[WorkerProcess],
    ) -> None:
        self.receiver = receiver
        self.database_url = database_url
        self.workers = workers

    def __str__(self) -> str:
        try:
            outcomes = dict(execution_outcomes(self.database_url))
            states = dict(lineage_states(self.database_url))
        except Exception as error:  # noqa: BLE001 - a report must not fail
            outcomes = states = {"unreadable": repr(error)}
        return (
            f"\n{self.receiver.summary()}\nexecutions by outcome: {outcomes}"
            f"\nlineages by state: {states}\n{logs_of(self.workers)}"
        )

    # pytest shows an assertion's message object through repr().
    __repr__ = __str__


def assert_exactly_once(
    receiver: CountingReceiver,
    database_url: str,
    lineages: list[str],
    report: Report,
) -> None:
    """Every lineage delivered once: at the receiver, in executions, in attempts."""
    counts = receiver.counts()
    assert set(counts) == set(lineages), report
    assert receiver.duplicates() == {}, report
    assert lineage_states(database_url) == Counter(recovered=len(lineages)), report
    outcomes = execution_outcomes(database_url)
    assert outcomes["delivered"] == len(lineages), report
    assert outcomes["queued"] == outcomes["claimed"] == outcomes["failed"] == 0, report
    assert set(delivered_per_lineage(database_url).values()) == {1}, report
    attempts = worker_attempts_per_lineage(database_url)
    assert len(attempts) == len(lineages), report
    assert set(attempts.values()) == {1}, report


def run_workers(
    workers: list[WorkerProcess],
    count: int,
    home: Path,
    database_url: str,
    connectors: Path,
    **options,
) -> list[WorkerProcess]:
    options.setdefault("max_retries", RETRIES)
    options.setdefault("batch", BATCH)
    started = start_workers(count, home, database_url, connectors, **options)
    workers.extend(started)
    return started


# -- the tests ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.e2e
def test_three_workers_deliver_every_retry_exactly_once(
    store, workers, tmp_path
) -> None:
    url, lineages = store
    with CountingReceiver() as receiver:
        connectors = write_receiver_connectors(tmp_path, receiver)
        run_workers(workers, 3, tmp_path, url, connectors, lease=30)
        report = Report(receiver, url, workers)

        wait_for_every_event(receiver, len(lineages), report)
        settled = settle(url, len(lineages), 30, report)
        codes = stop_all(workers)

    assert codes == [0, 0, 0], report
    assert settled["delivered"] == len(lineages), report
    assert_exactly_once(receiver, url, lineages, report)
    shares = Counter(d["worker_id"] for d in execution_documents(url, connectors))
    assert len(shares) == 3, (shares, report)


@pytest.mark.postgres
@pytest.mark.e2e
def test_a_killed_workers_deliveries_are_rescued_and_sent_under_their_event_ids(
    store, workers, tmp_path
) -> None:
    """
    Only what the killed worker had in hand may reach the receiver twice: the
    batch it was sending and the one before it, not yet recorded, may have
    been sent; the batch it had claimed ahead is rescued but was not sent.
    """
    url, lineages = store
    lease = 3.0
    with CountingReceiver() as receiver:
        connectors = write_receiver_connectors(tmp_path, receiver)
        victim, *survivors = run_workers(
            workers, 3, tmp_path, url, connectors, lease=lease
        )
        report = Report(receiver, url, workers)

        receiver.wait_for_keys(len(lineages) // 4, timeout=DELIVERY_TIMEOUT)
        store_processes = children(victim.pid)
        killed_at = time.monotonic()
        assert victim.kill() == -9
        # Its store process goes too: no orphan heartbeat keeps its claims.
        assert store_processes, report
        for pid in store_processes:
            assert wait_gone(pid, timeout=5), (pid, report)
        wait_for_every_event(receiver, len(lineages), report)
        settled = settle(url, len(lineages), lease + 30, report)
        settled_after = time.monotonic() - killed_at
        codes = stop_all(survivors)

    assert codes == [0, 0], report
    assert settled["delivered"] == len(lineages), report
    assert set(receiver.counts()) == set(lineages), report
    duplicates = receiver.duplicates()
    assert set(duplicates.values()) <= {2}, report
    documents = execution_documents(url, connectors)
    rescued = {d["lineage_id"] for d in documents if d["rescue_count"] >= 1}
    assert set(duplicates) <= rescued, (sorted(set(duplicates) - rescued), report)
    assert len(duplicates) <= 2 * BATCH, (len(duplicates), report)
    assert len(rescued) <= 3 * BATCH, (len(rescued), report)
    assert set(delivered_per_lineage(url).values()) == {1}, report
    assert len(delivered_per_lineage(url)) == len(lineages), report
    attempts = worker_attempts_per_lineage(url)
    assert len(attempts) == len(lineages), report
    assert set(attempts.values()) == {1}, report
    assert lineage_states(url) == Counter(recovered=len(lineages)), report
    assert execution_outcomes(url)["claimed"] == 0, report
    rescuers = {d["worker_id"] for d in documents if d["lineage_id"] in rescued}
    assert victim.name not in rescuers, report
    print(
        f"killed worker: {len(rescued)} rescued, {len(duplicates)} delivered twice, "
        f"settled {settled_after:.1f}s after the kill"
    )


@pytest.mark.postgres
@pytest.mark.e2e
def test_workers_reconnect_after_the_database_drops_their_connections(
    store, workers, tmp_path, postgres_url
) -> None:
    """Every connection cut mid-run: the workers reconnect and finish, once each."""
    url, lineages = store
    lease = 5.0
    with CountingReceiver() as receiver:
        connectors = write_receiver_connectors(tmp_path, receiver)
        run_workers(workers, 2, tmp_path, url, connectors, lease=lease)
        report = Report(receiver, url, workers)

        receiver.wait_for_keys(len(lineages) // 3, timeout=DELIVERY_TIMEOUT)
        dropped = drop_connections(postgres_url, url)
        wait_for_every_event(receiver, len(lineages), report, timeout=60)
        settle(url, len(lineages), lease + 10, report)
        codes = stop_all(workers)

    assert dropped >= 2, report
    assert codes == [0, 0], report
    assert_exactly_once(receiver, url, lineages, report)


@pytest.mark.postgres
@pytest.mark.e2e
def test_a_receiver_that_never_answers_some_events_times_them_out(
    store, workers, tmp_path
) -> None:
    """Hung deliveries fail after the read timeout; nothing stays in hand."""
    url, lineages = store
    read_timeout, lease = 1.0, 3.0
    hung = set(lineages[100:2000:250])
    with CountingReceiver(hang_seconds=8, hang_keys=hung) as receiver:
        connectors = write_receiver_connectors(
            tmp_path, receiver, read_timeout=read_timeout
        )
        run_workers(workers, 2, tmp_path, url, connectors, lease=lease)
        report = Report(receiver, url, workers)

        wait_for_every_event(receiver, len(lineages), report)
        last_arrival = time.monotonic()
        settled = settle(url, len(lineages), read_timeout + lease + 10, report)
        held_after_last = time.monotonic() - last_arrival
        codes = stop_all(workers)

    assert codes == [0, 0], report
    assert receiver.duplicates() == {}, report
    assert (settled["delivered"], settled["failed"]) == (
        len(lineages) - len(hung),
        len(hung),
    ), report
    assert held_after_last <= read_timeout + lease + 2, (held_after_last, report)
    documents = execution_documents(url, connectors)
    failed = {d["lineage_id"]: d for d in documents if d["outcome"] == "failed"}
    assert set(failed) == hung, report
    for document in failed.values():
        assert document["error_class"] == "timeout", (document, report)
        took = document["duration_ms"] / 1000
        assert read_timeout * 0.9 <= took <= read_timeout + 2, (document, report)
        assert document["rescue_count"] == 0, (document, report)
    states = lineage_states(url)
    assert states["recovered"] == len(lineages) - len(hung), report


@pytest.mark.e2e
def test_two_workers_on_one_sqlite_file_deliver_exactly_once(
    sqlite_url, workers, tmp_path
) -> None:
    with CountingReceiver() as receiver:
        connectors = write_receiver_connectors(tmp_path, receiver)
        lineages = seed_approved_retries(sqlite_url, connectors, SQLITE_RETRIES)
        run_workers(
            workers,
            2,
            tmp_path,
            sqlite_url,
            connectors,
            lease=10,
            max_retries=SQLITE_RETRIES,
        )
        report = Report(receiver, sqlite_url, workers)

        wait_for_every_event(receiver, len(lineages), report)
        settle(sqlite_url, len(lineages), 30, report)
        codes = stop_all(workers)

    assert codes == [0, 0], report
    assert_exactly_once(receiver, sqlite_url, lineages, report)


@pytest.mark.e2e
def test_sigterm_to_the_whole_process_group_records_what_was_sent(
    sqlite_url, workers, tmp_path
) -> None:
    """
    A service manager stops the worker's process group (the worker and its
    store process) with SIGTERM: the store process stays to record what was
    sent, the worker exits 0, and nothing is left claimed or sent unrecorded.
    """
    with CountingReceiver(delay=0.02) as receiver:
        connectors = write_receiver_connectors(tmp_path, receiver)
        lineages = seed_approved_retries(sqlite_url, connectors, SQLITE_RETRIES)
        arguments = worker_arguments(
            sqlite_url,
            connectors,
            "grouped",
            max_retries=SQLITE_RETRIES,
            batch=10,
            lease=30,
        )
        worker = WorkerProcess(tmp_path, "grouped", arguments, own_session=True)
        workers.append(worker)
        worker.wait_ready()
        report = Report(receiver, sqlite_url, workers)

        receiver.wait_for_keys(len(lineages) // 4, timeout=DELIVERY_TIMEOUT)
        store_processes = children(worker.pid)
        os.killpg(worker.pid, signal.SIGTERM)
        code = worker.stop()

    assert code == 0, report
    assert store_processes, report
    for pid in store_processes:
        assert wait_gone(pid, timeout=5), (pid, report)
    assert receiver.duplicates() == {}, report
    outcomes = execution_outcomes(sqlite_url)
    assert outcomes["claimed"] == 0, report
    assert outcomes["delivered"] == len(receiver.counts()), report
    assert outcomes["delivered"] + outcomes["queued"] == len(lineages), report
    assert outcomes["queued"] > 0, report  # stopped before the end


# -- helpers -----------------------------------------------------------------------


def write_receiver_connectors(
    directory: Path, receiver: CountingReceiver, *, read_timeout: float = 5.0
) -> Path:
    return write_connectors(directory, receiver.url, read_timeout=read_timeout)


def wait_for_every_event(
    receiver: CountingReceiver,
    count: int,
    report: Report,
    timeout: float = DELIVERY_TIMEOUT,
) -> None:
    try:
        receiver.wait_for_keys(count, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}{report}") from None


def settle(url: str, count: int, timeout: float, report: Report) -> Counter[str]:
    try:
        return wait_until_settled(url, count, timeout=timeout)
    except TimeoutError as error:
        raise AssertionError(f"{error}{report}") from None
