"""
Helpers for the tests that run several live ``cavra worker serve`` processes.

```python
with CountingReceiver(hang_seconds=5, hang_keys=some_lineages) as receiver:
    connectors = write_connectors(tmp_path, receiver.url, read_timeout=1)
    lineages = seed_approved_retries(database_url, connectors, 200)
    workers = start_workers(2, tmp_path, database_url, connectors, lease=3)
    receiver.wait_for_keys(len(lineages), timeout=60)
    stop_all(workers)
    assert receiver.duplicates() == {}
```

* :class:`CountingReceiver` is a :class:`~receivers.ScriptedReceiver` that
  answers every request itself: 204, after an optional delay, or after a
  long "hang" for chosen event ids (or all), and counts deliveries by their
  ``Idempotency-Key`` header (the lineage's event id, the same on every
  retry), so a second delivery of one event is seen at once.
* :func:`seed_approved_retries` puts failed lineages into a store through
  the embedded engine, plans them as one release manager and approves every
  retry as another person (four eyes), so that a live worker may send them.
  Recording attempts through the engine costs some milliseconds each, so
  PostgreSQL tests seed once into a template database and clone it
  (:func:`clone_database`) for each test.
* :class:`WorkerProcess` is one ``cavra worker serve --execute`` process,
  started with :func:`start_workers`, stopped with SIGTERM or killed with
  SIGKILL; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from plugins_fixtures import attempt, package
from receivers import Delay, ReceivedRequest, ScriptedReceiver, Status, status

from cavra_core import Engine
from cavra_core.engine import package_hash

#: The connector every helper here configures.
CONNECTOR_ID = "audit-webhook"
#: The default retry delay: a retry becomes due this long after its failure.
RETRY_DELAY = timedelta(minutes=15)
#: The most attempts (and packages) one ``record_attempts`` call takes, and
#: the most decisions one approval covers.
CHUNK = 1000
PLANNER = "rm-seeder"
APPROVER = "po-approver"
READY_LINE = "cavra worker serving"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


# -- the receiver ----------------------------------------------------------------


class CountingReceiver(ScriptedReceiver):
    """
    A loopback receiver that answers 204 and counts deliveries by event id.

    :param delay: seconds to wait before every answer (the receiver's own
        latency).
    :param hang_seconds: how long a "hanging" request waits before its 204;
        longer than a client's read timeout, the client gives up first.
    :param hang_keys: the ``Idempotency-Key`` values that hang; ``None``
        with ``hang_seconds`` set makes every request hang.

    A request is counted when it has been read, before it is answered, so a
    delivery the client gave up on (a hang) is counted too: the receiver did
    get it.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        hang_seconds: float = 0.0,
        hang_keys: Collection[str] | None = None,
    ) -> None:
        super().__init__(fallback=status(204))
        self.delay = delay
        self.hang_seconds = hang_seconds
        self.hang_keys = None if hang_keys is None else frozenset(hang_keys)
        self._counts: Counter[str] = Counter()
        #: Wall-clock arrival (``time.time()``) of each key's first delivery.
        self._first_seen: dict[str, float] = {}
        self._arrivals: list[float] = []

    def _record(self, request: ReceivedRequest) -> Delay | Status:
        super()._record(request)
        key = request.headers.get("idempotency-key", "")
        with self._arrived:
            self._counts[key] += 1
            self._first_seen.setdefault(key, time.time())
            self._arrivals.append(request.received_at)
        if self.hang_seconds and (self.hang_keys is None or key in self.hang_keys):
            return Delay(self.hang_seconds, status(204))
        if self.delay:
            return Delay(self.delay, status(204))
        return self.fallback

    def counts(self) -> Counter[str]:
        """Deliveries received so far, by ``Idempotency-Key``."""
        with self._lock:
            return Counter(self._counts)

    def duplicates(self) -> dict[str, int]:
        """Event ids received more than once, with how often."""
        return {key: n for key, n in self.counts().items() if n > 1}

    def first_seen(self) -> dict[str, float]:
        """The wall-clock time each event id first arrived."""
        with self._lock:
            return dict(self._first_seen)

    def arrival_span(self) -> tuple[float, float] | None:
        """``time.monotonic()`` of the first and the last request, or None."""
        with self._lock:
            if not self._arrivals:
                return None
            return self._arrivals[0], self._arrivals[-1]

    def reset_counts(self) -> None:
        """Forget every count (between two measurements on one receiver)."""
        with self._lock:
            self._counts.clear()
            self._first_seen.clear()
            self._arrivals.clear()
            self._requests.clear()

    def wait_for_keys(self, count: int, timeout: float) -> Counter[str]:
        """
        Wait until ``count`` distinct event ids arrived; return the counts.

        Raises :class:`TimeoutError` saying how many came.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._counts) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} event ids within {timeout}s, got "
                        f"{len(self._counts)} ({sum(self._counts.values())} "
                        "deliveries)"
                    )
                self._arrived.wait(min(remaining, 1.0))
            return Counter(self._counts)

    def summary(self) -> str:
        """One line for a failure message: how much arrived, and how often."""
        counts = self.counts()
        spread = Counter(counts.values())
        return (
            f"receiver: {len(counts)} event ids, {sum(counts.values())} deliveries, "
            f"received n times: {dict(sorted(spread.items()))}"
        )


# -- connectors and seeding ------------------------------------------------------


def connectors_table(
    url: str,
    *,
    read_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    connector_id: str = CONNECTOR_ID,
) -> dict[str, Any]:
    """The connectors mapping of one webhook connector posting to ``url``."""
    return {
        connector_id: {
            "type": "webhook",
            "url": url,
            "connect_timeout_seconds": connect_timeout,
            "read_timeout_seconds": read_timeout,
        }
    }


def write_connectors(
    directory: Path,
    receiver_url: str,
    *,
    read_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    connector_id: str = CONNECTOR_ID,
    retry_delay_minutes: float | None = None,
) -> Path:
    """
    Write a connectors file whose one webhook posts to ``receiver_url``/hook.

    ``retry_delay_minutes`` sets the connector's retry delay, and so the
    moment a seeded retry becomes due: its failure plus that delay.
    """
    path = directory / f"connectors-{uuid.uuid4().hex[:8]}.toml"
    text = textwrap.dedent(
        f"""
        [{connector_id}]
        type = "webhook"
        url = "{receiver_url}/hook"
        connect_timeout_seconds = {connect_timeout}
        read_timeout_seconds = {read_timeout}
        """
    )
    if retry_delay_minutes is not None:
        text += f"retry_policy = {{ retry_delay_minutes = {retry_delay_minutes} }}\n"
    path.write_text(text)
    return path


def seed_approved_retries(
    database_url: str,
    connectors: Path | dict[str, Any],
    count: int,
    *,
    failed_at: datetime | None = None,
    connector_id: str = CONNECTOR_ID,
) -> list[str]:
    """
    Store ``count`` failed lineages whose retries are approved; their ids.

    Each lineage's one attempt failed with HTTP 503 at ``failed_at`` (default:
    an hour ago, so the retry is due now; with a later ``failed_at`` the
    retries wait for their delay, which an approval covers too, and become
    due :data:`RETRY_DELAY` after it). The plan is made by
    :data:`PLANNER` and approved in parts of :data:`CHUNK` decisions by
    :data:`APPROVER`.
    """
    now = datetime.now(UTC)
    failed_at = failed_at or now - timedelta(hours=1)
    generated_at = failed_at - timedelta(minutes=5)
    salt = uuid.uuid4().hex[:8]
    lineages: list[str] = []
    with (
        Engine(database_url, connectors) as engine,
        engine.database.connection_context(),
    ):
        for start in range(0, count, CHUNK):
            packages = [
                package(f"drill-{salt}-{index}", generated_at=generated_at)
                for index in range(start, min(count, start + CHUNK))
            ]
            attempts = [
                attempt(
                    package_hash(item),
                    failed_at,
                    connector_id=connector_id,
                    status=503,
                )
                for item in packages
            ]
            recorded = engine.record_attempts(
                {"packages": packages, "attempts": attempts}, now=now
            )
            lineages.extend(a["lineage_id"] for a in recorded["attempts"])

        plan = engine.plan_retries({"generated_by": PLANNER}, now=now)
        approvable = [
            decision["decision_id"]
            for decision in engine.iter_plan_decisions(plan["retry_plan_id"])
            if decision["action"] == "retry"
            or decision["reason"] == "delay_not_elapsed"
        ]
        if len(approvable) != count:
            raise AssertionError(
                f"seeded {count} failures, but the plan has {len(approvable)} "
                f"approvable decisions: {plan}"
            )
        for start in range(0, len(approvable), CHUNK):
            engine.approvals.create(
                plan["retry_plan_id"],
                {
                    "approved_by": APPROVER,
                    "reason": "the receiver is back; send the evidence",
                    "decision_ids": approvable[start : start + CHUNK],
                    "plan_hash": plan["plan_hash"],
                },
                now=now,
            )
    return lineages


# -- PostgreSQL databases --------------------------------------------------------


def _admin_connection(url: str):
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=5)
    connection.autocommit = True
    return connection


def database_name(url: str) -> str:
    return urlparse(url).path.lstrip("/")


def sibling_url(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    return url.rsplit("/", 1)[0] + "/" + name


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (a copy of ``template``); its URL."""
    connection = _admin_connection(admin_url)
    try:
        with connection.cursor() as cursor:
            if template is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
            else:
                cursor.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        connection.close()
    return sibling_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, ending whatever is still connected to it."""
    connection = _admin_connection(admin_url)
    try:
        with connection.cursor() as cursor:
            terminate_sessions(cursor, name)
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        connection.close()


def terminate_sessions(cursor: Any, name: str) -> int:
    """End every session on database ``name`` but the caller's; how many."""
    cursor.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    return sum(1 for (ended,) in cursor.fetchall() if ended)


def drop_connections(admin_url: str, database_url: str) -> int:
    """Cut every connection to ``database_url``'s database, as a failover would."""
    connection = _admin_connection(admin_url)
    try:
        with connection.cursor() as cursor:
            return terminate_sessions(cursor, database_name(database_url))
    finally:
        connection.close()


@contextlib.contextmanager
def cloned_database(admin_url: str, template: str) -> Iterator[str]:
    """A fresh copy of the ``template`` database for one test; dropped after."""
    name = f"{template[:40]}_{uuid.uuid4().hex[:8]}"
    url = create_database(admin_url, name, template=template)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


# -- what the store says ---------------------------------------------------------


def query(database_url: str, sql: str, *parameters: Any) -> list[tuple]:
    """Rows of one read-only statement, on a connection of its own."""
    if database_url.startswith("sqlite"):
        import sqlite3

        path = database_url[len("sqlite:///") :]
        connection = sqlite3.connect(path, timeout=30)
        try:
            return connection.execute(sql.replace("%s", "?"), parameters).fetchall()
        finally:
            connection.close()
    connection = _admin_connection(database_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, parameters)
            return cursor.fetchall()
    finally:
        connection.close()


def counted(database_url: str, table: str, column: str, where: str = "") -> Counter:
    """Rows of ``table`` counted by ``column`` (``where``: an SQL condition)."""
    condition = f" WHERE {where}" if where else ""
    rows = query(
        database_url,
        f'SELECT "{column}", count(*) FROM "{table}"{condition} GROUP BY "{column}"',
    )
    return Counter(dict(rows))


def execution_outcomes(database_url: str) -> Counter[str]:
    """Executions by outcome (``queued``, ``claimed``, ``delivered``...)."""
    return counted(database_url, "execution", "outcome")


def lineage_states(database_url: str) -> Counter[str]:
    return counted(database_url, "lineage", "state")


def delivered_per_lineage(database_url: str) -> Counter[str]:
    """Delivered executions, by lineage."""
    return counted(database_url, "execution", "lineage_id", "\"outcome\" = 'delivered'")


def worker_attempts_per_lineage(database_url: str) -> Counter[str]:
    """Attempts a worker recorded (``source = 'worker'``), by lineage."""
    return counted(
        database_url, "delivery_attempt", "lineage_id", "\"source\" = 'worker'"
    )


def execution_documents(database_url: str, connectors: Path) -> list[dict[str, Any]]:
    """Every execution document, read through the engine's paged list."""
    documents: list[dict[str, Any]] = []
    with (
        Engine(database_url, connectors) as engine,
        engine.database.connection_context(),
    ):
        cursor = None
        while True:
            page = engine.executions.list(limit=500, cursor=cursor)
            documents.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return documents


def wait_until_settled(
    database_url: str, expected: int, timeout: float, *, interval: float = 0.5
) -> Counter[str]:
    """
    Wait until ``expected`` executions have an outcome and none is in hand.

    Returns the outcome counts; raises :class:`TimeoutError` with the last
    counts when they do not settle in ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        counts = execution_outcomes(database_url)
        finished = counts["delivered"] + counts["failed"]
        if finished >= expected and not counts["queued"] and not counts["claimed"]:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"executions not settled within {timeout}s: {dict(counts)}"
            )
        time.sleep(interval)


# -- worker processes ------------------------------------------------------------


class WorkerProcess:
    """
    One ``cavra worker serve --execute`` process; its log goes to a file.

    Construct it with :func:`start_workers`, which starts several at once and
    then waits for each one's ready line.
    """

    def __init__(
        self,
        home: Path,
        name: str,
        arguments: Sequence[str],
        *,
        own_session: bool = False,
    ) -> None:
        self.name = name
        self.log_path = home / f"worker-{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in _reap
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("CAVRA_")
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "worker", "serve", *arguments],
            cwd=home,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            # A process group of its own, to be signalled as a whole.
            start_new_session=own_session,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(
            target=self._read_stdout, name=f"stdout-{name}", daemon=True
        ).start()
        self.exit_code: int | None = None
        self._terminated = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        """Wait for the ready line; fail with the log when it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(0.01, remaining))
            except queue.Empty:
                line = ""
            if line and line.startswith(READY_LINE):
                return line.strip()
            if line is None or remaining <= 0:
                self.kill()
                raise AssertionError(
                    f"worker {self.name} did not start within {timeout}s "
                    f"(exit status {self.exit_code}):\n{self.log()[-3000:]}"
                )

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """
        User and system CPU time the process and its children (the store
        process) used so far, children that ended included (Linux /proc).
        """
        # Fields 14 to 17 of stat(5), counted after the command's ")": own
        # user and system time, then those of the children waited for.
        own = _stat_fields(self.pid)
        ticks = sum(int(value) for value in own[11:15])
        for child in children(self.pid):
            fields = _stat_fields(child)
            if fields:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM once; a second one is never sent."""
        if self.running() and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then the exit status; SIGKILL if it does not exit in time."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker {self.name} did not stop within {timeout}s of SIGTERM:\n"
                f"{self.log()[-3000:]}"
            ) from None
        return self._reap()

    def kill(self) -> int:
        """SIGKILL: the process dies with whatever it holds."""
        if self.running():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)
        return self._reap()

    def _reap(self) -> int:
        self.exit_code = self.process.returncode
        with contextlib.suppress(OSError):
            self._log.close()
        return self.exit_code


def worker_arguments(
    database_url: str,
    connectors: Path,
    name: str,
    *,
    every: str = "1s",
    max_retries: int | None = None,
    lease: float | None = None,
    batch: int | None = None,
    actor: str = "scheduler",
    extra: Sequence[str] = (),
) -> list[str]:
    """The options of one live ``cavra worker serve``; None leaves a default."""
    arguments = ["--execute", "--every", every]
    options = (("--max", max_retries), ("--lease", lease), ("--batch", batch))
    for flag, value in options:
        if value is not None:
            text = f"{value:g}" if isinstance(value, float) else str(value)
            arguments += [flag, text]
    arguments += [
        "--worker-id",
        name,
        "--generated-by",
        actor,
        "--database",
        database_url,
        "--connectors",
        str(connectors),
        *extra,
    ]
    return arguments


def start_workers(
    count: int,
    home: Path,
    database_url: str,
    connectors: Path,
    *,
    prefix: str = "worker",
    **options: Any,
) -> list[WorkerProcess]:
    """
    Start ``count`` workers at once and wait until every one is ready.

    ``options`` go to :func:`worker_arguments`. A worker that does not start
    fails the call, after the others were killed.
    """
    workers = []
    for index in range(count):
        name = f"{prefix}-{index + 1}"
        arguments = worker_arguments(database_url, connectors, name, **options)
        workers.append(WorkerProcess(home, name, arguments))
    try:
        for worker in workers:
            worker.wait_ready()
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    return workers


def stop_all(workers: Sequence[WorkerProcess]) -> list[int]:
    """SIGTERM every worker at once, then their exit statuses."""
    for worker in workers:
        worker.terminate()
    return [worker.stop() for worker in workers]


def kill_all(workers: Sequence[WorkerProcess]) -> None:
    """SIGKILL whatever still runs (a test's clean-up after a failure)."""
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.kill()


def logs_of(workers: Sequence[WorkerProcess], tail: int = 2000) -> str:
    """The end of every worker's log, for a failure message."""
    return "\n".join(
        f"--- {worker.name} (exit {worker.exit_code}) ---\n{worker.log()[-tail:]}"
        for worker in workers
    )


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command; [] once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def children(pid: int) -> list[int]:
    """The running processes whose parent is ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            # Field 4 of stat(5), the parent's id.
            if fields and int(fields[1]) == pid:
                found.append(int(name))
    return found


def wait_gone(pid: int, timeout: float) -> bool:
    """Whether the process ``pid`` ended (or is a zombie) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = _stat_fields(pid)
        # Field 3 of stat(5), the state.
        if not fields or fields[0] == "Z":
            return True
        time.sleep(0.05)
    return False
