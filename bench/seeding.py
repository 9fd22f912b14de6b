"""
Shared helpers for the benchmarks: machine facts, connectors and bulk seeding.

Seeding writes rows straight into cavra's tables with ``executemany`` in the
shape the engine itself would leave them (lineage facts copied from the
latest attempt, counters kept in step), because going through
``record_attempts`` for a million attempts would take longer than the
benchmark it prepares. Every generator is seeded, so a size always produces
the same store.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from cavra_core.engine import lineage_id_for
from cavra_core.store import to_micros

#: The evaluation time every benchmark uses, so runs are comparable.
NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
MICROS_PER_HOUR = 3_600_000_000

#: Five webhook connectors with different policies and calendars, so that
#: planning exercises backoff, jitter, age limits and delivery windows.
CONNECTORS: dict[str, dict[str, Any]] = {
    "siem-hec": {"type": "webhook", "url": "https://siem.example.com/hec"},
    "audit-webhook": {
        "type": "webhook",
        "url": "https://hooks.example.com/cavra",
        "retry_policy": {
            "max_retry_attempts": 5,
            "retry_delay_minutes": 5,
            "jitter": 0.2,
        },
    },
    "soc-webhook": {
        "type": "webhook",
        "url": "https://soc.example.net/intake",
        "retry_policy": {"max_retry_attempts": 4},
        "schedule": {
            "timezone": "Europe/Berlin",
            "allowed_hours": ["08:00-20:00"],
            "allowed_days": ["mon", "tue", "wed", "thu", "fri"],
        },
    },
    "archive-webhook": {
        "type": "webhook",
        "url": "https://archive.example.org/drop",
        "retry_policy": {
            "max_retry_attempts": 8,
            "backoff_multiplier": 3,
            "max_age_hours": 720,
            "retry_window_hours": 72,
        },
    },
    "night-webhook": {
        "type": "webhook",
        "url": "https://night.example.com/batch",
        "schedule": {"timezone": "UTC", "allowed_hours": ["22:00-06:00"]},
    },
}
#: Lineages of a connector removed from the connectors file since.
RETIRED_CONNECTOR = "legacy-webhook"

#: (http_status, error_class, weight) of a failed attempt.
FAILURES = (
    (503, "http_status", 30),
    (429, "http_status", 12),
    (500, "http_status", 10),
    (502, "http_status", 6),
    (None, "timeout", 12),
    (None, "connection_refused", 8),
    (None, "dns_error", 2),
    (401, "http_status", 5),
    (403, "http_status", 2),
    (None, "missing_secret", 2),
    (400, "http_status", 5),
    (404, "http_status", 3),
    (422, "http_status", 2),
    (408, "http_status", 1),
)


def machine_info() -> dict[str, str]:
    """CPU model, cores, Python and SQLite versions of this machine."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work sharing the machine."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def print_machine() -> None:
    info = machine_info()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}\n"
        f"python {info['python']}, SQLite {info['sqlite']}, "
        f"load average {load_average()}"
    )


def connector_fingerprints(engine) -> dict[str, str]:
    return {
        connector_id: engine.connectors.get(connector_id).fingerprint
        for connector_id in engine.connectors
    }


def connector_mix() -> list[tuple[str, int]]:
    """Connector ids with weights: most traffic to two, a trickle retired."""
    return [
        ("siem-hec", 30),
        ("audit-webhook", 25),
        ("soc-webhook", 18),
        ("archive-webhook", 14),
        ("night-webhook", 12),
        (RETIRED_CONNECTOR, 1),
    ]


def _weighted(rng: random.Random, choices: list[tuple[Any, int]]):
    values = [choice for choice, _ in choices]
    weights = [weight for _, weight in choices]
    return lambda: rng.choices(values, weights)[0]


def package_id_for(index: int, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{index}".encode()).hexdigest()


def executemany_chunked(
    connection: sqlite3.Connection, sql: str, rows: Iterator[tuple], chunk: int = 20_000
) -> int:
    """Insert from an iterator in chunks, so seeding memory stays small."""
    count = 0
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            connection.executemany(sql, batch)
            count += len(batch)
            batch = []
    if batch:
        connection.executemany(sql, batch)
        count += len(batch)
    return count


def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(f'"{name}"' for name in columns)
    marks = ", ".join("?" for _ in columns)
    return f'INSERT INTO "{table}" ({names}) VALUES ({marks})'


PACKAGE_COLUMNS = (
    "package_id",
    "drill_id",
    "generated_at",
    "generated_by",
    "received_at",
)
LINEAGE_COLUMNS = (
    "lineage_id",
    "package_id",
    "connector_id",
    "connector_type",
    "state",
    "latest_failed",
    "attempt_count",
    "first_attempt_at",
    "last_attempt_at",
    "package_generated_at",
    "last_outcome",
    "last_error_class",
    "last_http_status",
    "last_retry_after_at",
    "failed_status_codes",
    "config_fingerprint",
    "closing_reason",
    "assessment",
    "eligible_from",
    "eligible_until",
    "claimed_at",
    "version",
)
ATTEMPT_COLUMNS = (
    "attempt_id",
    "lineage_id",
    "attempt_number",
    "package_id",
    "connector_id",
    "connector_type",
    "outcome",
    "error_class",
    "http_status",
    "retry_after_raw",
    "retry_after_at",
    "started_at",
    "finished_at",
    "duration_ms",
    "source",
    "worker_run_id",
)


class LineagePlan:
    """
    The shape of one seeded lineage: its attempts and where it ended.

    ``attempts`` is a list of (started, finished, http_status, error_class,
    retry_after_seconds, outcome); the last one decides the lineage's state.
    """

    __slots__ = (
        "lineage_id",
        "package_id",
        "connector_id",
        "generated",
        "attempts",
        "state",
        "closing",
    )

    def __init__(
        self, lineage_id, package_id, connector_id, generated, attempts, state, closing
    ):
        self.lineage_id = lineage_id
        self.package_id = package_id
        self.connector_id = connector_id
        self.generated = generated
        self.attempts = attempts
        self.state = state
        self.closing = closing


def plan_lineage(
    rng: random.Random,
    index: int,
    package_id: str,
    connector_id: str,
    generated: int,
    outcome_kind: str,
    next_failure,
) -> LineagePlan:
    """
    Shape one lineage ending ``failed`` (open), ``closed`` or ``recovered``.

    Attempts follow the default backoff loosely (minutes to hours apart); a
    closed lineage ended on a permanent failure or ran out of attempts.
    """
    lineage_id = lineage_id_for(package_id, connector_id)
    count = {
        "failed": rng.choice((1, 1, 1, 2, 2, 3, 4)),
        "closed": rng.choice((1, 3, 3, 4, 5)),
        "recovered": rng.choice((1, 1, 1, 1, 2, 2, 3)),
    }[outcome_kind]
    moment = generated + rng.randrange(1, 30 * 60_000_000)
    attempts = []
    for number in range(1, count + 1):
        last = number == count
        duration = rng.randrange(20_000, 4_000_000)
        if last and outcome_kind == "recovered":
            attempts.append((moment, moment + duration, 200, None, None, "delivered"))
        else:
            status, error_class = next_failure()
            if last and outcome_kind == "closed" and count == 1:
                status, error_class = rng.choice(
                    ((400, "http_status"), (404, "http_status"), (422, "http_status"))
                )
            retry_after = None
            if status in (429, 503) and rng.random() < 0.4:
                retry_after = rng.choice((30, 120, 600, 3600, 7200, 259_200))
            attempts.append(
                (moment, moment + duration, status, error_class, retry_after, "failed")
            )
        moment += duration + rng.randrange(5 * 60_000_000, 6 * MICROS_PER_HOUR)
    if outcome_kind == "recovered":
        state, closing = "recovered", None
    elif outcome_kind == "closed":
        status = attempts[-1][2]
        if (
            status is not None
            and 400 <= status < 500
            and status not in (401, 403, 407, 408, 425, 429)
        ):
            state, closing = "suppressed", "permanent_failure"
        else:
            state, closing = "exhausted", "max_attempts_reached"
    else:
        state, closing = "failed", None
    return LineagePlan(
        lineage_id, package_id, connector_id, generated, attempts, state, closing
    )


def lineage_row(
    plan: LineagePlan, fingerprints: dict[str, str], now_micros: int
) -> tuple:
    """The lineage row as the engine leaves it after its latest attempt."""
    first = plan.attempts[0]
    latest = plan.attempts[-1]
    failed = latest[5] == "failed"
    codes = [a[2] for a in plan.attempts if a[5] == "failed" and a[2] is not None]
    retry_after_at = None if latest[4] is None else latest[1] + latest[4] * 1_000_000
    # A sixth of the open config failures predate a configuration change.
    fingerprint = fingerprints.get(plan.connector_id, "0" * 64)
    if failed and plan.state == "failed" and int(plan.lineage_id[4:8], 16) % 6 == 0:
        fingerprint = "f" * 64
    if plan.state == "recovered":
        assessment, eligible_from, eligible_until = None, None, None
    elif plan.state in ("exhausted", "suppressed"):
        assessment, eligible_from, eligible_until = "suppressed", None, None
    elif latest[2] in (401, 403, 407) or latest[3] == "missing_secret":
        assessment, eligible_from, eligible_until = "paused", None, None
    else:
        delay = 15 * 60_000_000 * 2 ** (len(plan.attempts) - 1)
        eligible_from = max(latest[1] + delay, retry_after_at or 0)
        eligible_until = latest[1] + delay + 24 * MICROS_PER_HOUR
        assessment = "retryable"
    return (
        plan.lineage_id,
        plan.package_id,
        plan.connector_id,
        "webhook",
        plan.state,
        1 if failed else 0,
        len(plan.attempts),
        first[0],
        latest[1],
        plan.generated,
        latest[5],
        latest[3],
        latest[2],
        retry_after_at,
        json.dumps(codes, separators=(",", ":")),
        fingerprint,
        plan.closing,
        assessment,
        eligible_from,
        eligible_until,
        first[0],
        len(plan.attempts) * 2,
    )


def attempt_rows(plan: LineagePlan, rng: random.Random) -> Iterator[tuple]:
    """The lineage's attempt rows: the first sent by the API, retries by the worker."""
    for number, (
        started,
        finished,
        status,
        error_class,
        retry_after,
        outcome,
    ) in enumerate(plan.attempts, 1):
        yield (
            f"att_{rng.getrandbits(128):032x}",
            plan.lineage_id,
            number,
            plan.package_id,
            plan.connector_id,
            "webhook",
            outcome,
            error_class,
            status,
            None if retry_after is None else str(retry_after),
            None if retry_after is None else finished + retry_after * 1_000_000,
            started,
            finished,
            (finished - started) // 1000,
            "api" if number == 1 else "worker",
            None,
        )


def seed_store(
    database_path: str,
    fingerprints: dict[str, str],
    *,
    open_failed: int,
    closed: int,
    recovered: int,
    history_days: float,
    recent_hours: float = 72.0,
    with_attempts: bool,
    seed: int = 7,
    now: datetime = NOW,
) -> dict[str, int]:
    """
    Bulk-insert packages, lineages (and optionally their attempts) into a store.

    ``open_failed`` lineages are still failing and recent (within
    ``recent_hours``, the window in which a team would still retry), with a
    few old ones; ``closed`` and ``recovered`` ones are spread over
    ``history_days``. Counters are set to match, as the engine keeps them.
    Each package goes to one to three connectors.
    """
    rng = random.Random(seed)
    now_micros = to_micros(now)
    next_failure = _weighted(
        rng, [((status, error), weight) for status, error, weight in FAILURES]
    )
    next_connector = _weighted(rng, connector_mix())
    kinds = ["failed"] * open_failed + ["closed"] * closed + ["recovered"] * recovered
    rng.shuffle(kinds)

    connection = sqlite3.connect(database_path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=wal")
    connection.execute("PRAGMA synchronous=off")
    connection.execute("PRAGMA foreign_keys=off")
    connection.execute("BEGIN")
    counters: dict[str, int] = {}
    totals = {"packages": 0, "lineages": 0, "attempts": 0}
    started = time.perf_counter()

    lineage_sql = insert_sql("lineage", LINEAGE_COLUMNS)
    attempt_sql = insert_sql("delivery_attempt", ATTEMPT_COLUMNS)
    package_sql = insert_sql("audit_package", PACKAGE_COLUMNS)
    packages: list[tuple] = []
    lineages: list[tuple] = []
    attempts: list[tuple] = []

    def flush() -> None:
        connection.executemany(package_sql, packages)
        connection.executemany(lineage_sql, lineages)
        if attempts:
            connection.executemany(attempt_sql, attempts)
        totals["packages"] += len(packages)
        totals["lineages"] += len(lineages)
        totals["attempts"] += len(attempts)
        packages.clear()
        lineages.clear()
        attempts.clear()

    position = 0
    package_index = 0
    while position < len(kinds):
        package_id = package_id_for(package_index, f"bench{seed}")
        package_index += 1
        kind = kinds[position]
        if kind == "failed":
            # Open failures are recent; one in twenty is past its age limit.
            if rng.random() < 0.05:
                age = rng.uniform(8 * 24, 40 * 24)
            else:
                age = rng.uniform(0.5, recent_hours)
        else:
            age = rng.uniform(0.5, history_days * 24)
        generated = now_micros - int(age * MICROS_PER_HOUR)
        packages.append(
            (
                package_id,
                f"drill-{package_index % 997:04d}",
                generated,
                "release-bot",
                generated + 1_000_000,
            )
        )
        fan_out = rng.choice((1, 1, 2, 2, 3))
        used: set[str] = set()
        for _ in range(fan_out):
            if position >= len(kinds):
                break
            connector_id = next_connector()
            if connector_id in used:
                continue
            used.add(connector_id)
            plan = plan_lineage(
                rng,
                position,
                package_id,
                connector_id,
                generated,
                kinds[position],
                next_failure,
            )
            position += 1
            row = lineage_row(plan, fingerprints, now_micros)
            lineages.append(row)
            key = f"lineage:{row[4]}:{row[17] or ''}"
            counters[key] = counters.get(key, 0) + 1
            if with_attempts:
                attempts.extend(attempt_rows(plan, rng))
        if len(lineages) >= 20_000:
            flush()
    flush()

    connection.executemany(
        'INSERT INTO "counter" ("name", "value") VALUES (?, ?) '
        'ON CONFLICT ("name") DO UPDATE SET "value" = "value" + excluded."value"',
        sorted(counters.items()),
    )
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("ANALYZE")
    connection.close()
    totals["seconds"] = round(time.perf_counter() - started, 1)
    return totals


def seed_worker_runs(
    database_path: str,
    count: int,
    *,
    history_days: float,
    seed: int = 11,
    now: datetime = NOW,
) -> None:
    """Worker runs every few minutes over the history, mostly dry runs."""
    rng = random.Random(seed)
    now_micros = to_micros(now)
    span = int(history_days * 24 * MICROS_PER_HOUR)
    columns = (
        "run_id",
        "dry_run",
        "trigger",
        "interval_minutes",
        "window_start",
        "window_end",
        "cadence",
        "enabled",
        "started_at",
        "finished_at",
        "generated_by",
        "policy",
        "retryable_count",
        "waiting_count",
        "suppressed_count",
        "selected_retry_count",
        "executed_count",
        "skipped_count",
        "notes",
        "selected_retries",
        "actor_verified",
        "state",
    )
    policy = json.dumps(
        {
            "allow_immediate_retry": False,
            "backoff_multiplier": 2.0,
            "jitter": 0.0,
            "max_age_hours": 168,
            "max_delay_minutes": 1440,
            "max_retry_attempts": 3,
            "retry_delay_minutes": 15,
            "retry_window_hours": 24,
        },
        sort_keys=True,
        separators=(",", ":"),
    )

    def rows() -> Iterator[tuple]:
        for index in range(count):
            started = (
                now_micros
                - span
                + (span * index) // max(count, 1)
                + rng.randrange(0, 60_000_000)
            )
            interval = 60
            width = interval * 60_000_000
            window_start = started - started % width
            dry = rng.random() < 0.8
            selected = rng.randrange(0, 6)
            retryable = selected + rng.randrange(0, 40)
            selected_docs = [
                {
                    "decision_id": f"rd_{rng.getrandbits(128):032x}",
                    "lineage_id": f"lin_{rng.getrandbits(128):032x}",
                    "package_id": f"{rng.getrandbits(256):064x}",
                    "connector_id": "siem-hec",
                    "action": "retry",
                    "reason": "retry_due",
                    "explanation": "Attempt 1 of 3 failed with HTTP 503. The 15-minute "
                    "backoff delay ended; attempt 2 may be sent.",
                    "retry_count": 1,
                    "max_retry_attempts": 3,
                    "retry_delay_seconds": 900,
                    "not_before": "2025-05-01T10:15:00Z",
                    "not_after": "2025-05-02T10:15:00Z",
                    "failed_status_codes": [503],
                    "next_attempt_number": 2,
                    "outcome": "would_deliver",
                }
                for _ in range(selected if dry else 0)
            ]
            yield (
                f"wr_{rng.getrandbits(128):032x}",
                1 if dry else 0,
                rng.choice(("schedule", "schedule", "manual")),
                interval,
                window_start,
                window_start + width,
                f"every {interval} minutes",
                1,
                started,
                started + rng.randrange(5_000, 2_000_000),
                "scheduler",
                policy,
                retryable,
                rng.randrange(0, 200),
                rng.randrange(0, 500),
                len(selected_docs),
                0,
                retryable - len(selected_docs),
                json.dumps(
                    ["Dry run: nothing was delivered and no lineage changed."]
                    if dry
                    else ["Live run."]
                ),
                json.dumps(selected_docs, sort_keys=True, separators=(",", ":")),
                0,
                "finished",
            )

    connection = sqlite3.connect(database_path, isolation_level=None)
    connection.execute("PRAGMA synchronous=off")
    connection.execute("BEGIN")
    executemany_chunked(connection, insert_sql("worker_run", columns), rows())
    dry = sum(
        1 for (value,) in connection.execute("SELECT dry_run FROM worker_run") if value
    )
    total = connection.execute("SELECT count(*) FROM worker_run").fetchone()[0]
    selected = connection.execute(
        "SELECT coalesce(sum(selected_retry_count), 0) FROM worker_run"
    ).fetchone()[0]
    for name, value in (
        ("worker_runs", total),
        ("worker_dry_runs", dry),
        ("worker_live_runs", total - dry),
        ("selected_retries", selected),
    ):
        connection.execute(
            'INSERT INTO "counter" ("name", "value") VALUES (?, ?) '
            'ON CONFLICT ("name") DO UPDATE SET "value" = excluded."value"',
            (name, value),
        )
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("ANALYZE")
    connection.close()
