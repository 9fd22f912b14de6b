"""
The store: peewee models bound to one database proxy, and how to open it.

The backend is chosen by URL. ``sqlite:///path`` (the default is
``./.cavra/cavra.db``) runs in WAL mode with a busy timeout; ``postgresql://``
is for several workers sharing the work. Times are stored as integer
microseconds since the epoch in UTC, so they sort and compare the same way on
both backends and no naive time can slip in.

Schema changes are numbered migrations in ``cavra_core/migrations``; the models
here always describe the newest schema.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.migrations import Runner

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///.cavra/cavra.db"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: The longest :func:`refresh_statistics` waits for its table.
STATISTICS_LOCK_TIMEOUT = "200ms"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

database_proxy = peewee.DatabaseProxy()


class StoreError(RuntimeError):
    """The database cannot be opened or migrated; the message says why."""


#: What the drivers say when a transaction lost to another writer and was
#: rolled back: SQLite's busy timeout, PostgreSQL's deadlock detector and
#: serialisation check. Sending the request again is the cure.
_BUSY_MESSAGES = (
    "database is locked",
    "database is busy",
    "deadlock detected",
    "could not serialize access",
)


def is_busy(error: BaseException) -> bool:
    """Whether a database error means the store was busy, not that a query is bad."""
    text = str(error).lower()
    return isinstance(error, peewee.OperationalError) and any(
        message in text for message in _BUSY_MESSAGES
    )


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch for an aware datetime; naive ones are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("time has no UTC offset; cavra stores only aware times")
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    """The aware UTC datetime for a number of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=int(value))


class TimestampField(peewee.BigIntegerField):
    """An aware UTC datetime stored as microseconds since the epoch."""

    def db_value(self, value: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        return to_micros(value)

    def python_value(self, value: Any) -> datetime | None:
        return None if value is None else from_micros(value)


class JSONTextField(peewee.TextField):
    """A small JSON document stored as canonical text."""

    def db_value(self, value: Any) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def python_value(self, value: Any) -> Any:
        return None if value is None else json.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class AuditPackage(BaseModel):
    """An acknowledgement audit package, identified by its content hash."""

    package_id = peewee.CharField(max_length=64, primary_key=True)
    drill_id = peewee.CharField(max_length=200, index=True)
    generated_at = TimestampField()
    generated_by = peewee.CharField(max_length=200)
    received_at = TimestampField()


class Acknowledgement(BaseModel):
    """One acknowledgement inside a package, in the package's order."""

    package = peewee.ForeignKeyField(AuditPackage, backref="acknowledgements")
    position = peewee.IntegerField()
    notification_id = peewee.CharField(max_length=200)
    role = peewee.CharField(max_length=200)
    state = peewee.CharField(max_length=20)
    acknowledged_at = TimestampField()

    class Meta:
        indexes = ((("package", "position"), True),)


class Lineage(BaseModel):
    """
    One package on its way to one connector: the first attempt and every retry.

    The latest attempt's facts are copied here so that planning reads one row
    per lineage. ``assessment`` and the eligibility window are the decision
    under the connector's own policy when the latest attempt was recorded;
    the dashboard counts from them with index range queries.
    """

    lineage_id = peewee.CharField(max_length=40, primary_key=True)
    package = peewee.ForeignKeyField(AuditPackage, backref="lineages")
    connector_id = peewee.CharField(max_length=100)
    connector_type = peewee.CharField(max_length=50)
    state = peewee.CharField(max_length=20)
    #: True while the latest attempt failed (states failed, exhausted, suppressed).
    latest_failed = peewee.BooleanField(default=False)
    attempt_count = peewee.IntegerField(default=0)
    first_attempt_at = TimestampField(null=True)
    last_attempt_at = TimestampField(null=True)
    package_generated_at = TimestampField()
    last_outcome = peewee.CharField(max_length=20, null=True)
    last_error_class = peewee.CharField(max_length=50, null=True)
    last_http_status = peewee.IntegerField(null=True)
    last_retry_after_at = TimestampField(null=True)
    failed_status_codes = JSONTextField(default=list)
    config_fingerprint = peewee.CharField(max_length=64, default="")
    closing_reason = peewee.CharField(max_length=50, null=True)
    assessment = peewee.CharField(max_length=20, null=True)
    eligible_from = TimestampField(null=True)
    eligible_until = TimestampField(null=True)
    #: When the first delivery was claimed; a stale claim (a crash) is taken over.
    claimed_at = TimestampField(null=True)
    #: Bumped on every change, so decisions can tell whether a lineage moved on.
    version = peewee.IntegerField(default=0)

    class Meta:
        indexes = (
            (("latest_failed", "lineage_id"), False),
            (("state", "assessment", "eligible_from"), False),
            (("state", "assessment", "eligible_until"), False),
            (("package", "connector_id"), True),
            (("connector_id", "state"), False),
        )


class DeliveryAttempt(BaseModel):
    """One delivery attempt, kept as redacted metadata: no body, no URL, no secret."""

    attempt_id = peewee.CharField(max_length=40, primary_key=True)
    lineage = peewee.ForeignKeyField(Lineage, backref="attempts")
    attempt_number = peewee.IntegerField()
    package_id = peewee.CharField(max_length=64)
    connector_id = peewee.CharField(max_length=100)
    connector_type = peewee.CharField(max_length=50)
    outcome = peewee.CharField(max_length=20)
    error_class = peewee.CharField(max_length=50, null=True)
    http_status = peewee.IntegerField(null=True)
    retry_after_raw = peewee.CharField(max_length=64, null=True)
    retry_after_at = TimestampField(null=True)
    started_at = TimestampField()
    finished_at = TimestampField()
    duration_ms = peewee.IntegerField()
    source = peewee.CharField(max_length=20)
    worker_run_id = peewee.CharField(max_length=40, null=True)

    class Meta:
        indexes = (
            (("lineage", "attempt_number"), True),
            (("started_at", "attempt_id"), False),
            (("connector_id", "started_at", "attempt_id"), False),
            (("outcome", "started_at", "attempt_id"), False),
            (("error_class", "started_at", "attempt_id"), False),
        )


class RetryPlan(BaseModel):
    """One explained plan: a decision for every failed lineage at one moment."""

    retry_plan_id = peewee.CharField(max_length=40, primary_key=True)
    plan_hash = peewee.CharField(max_length=64)
    generated_at = TimestampField()
    generated_by = peewee.CharField(max_length=200)
    policy = JSONTextField()
    decision_count = peewee.IntegerField()
    retryable_count = peewee.IntegerField()
    waiting_count = peewee.IntegerField()
    suppressed_count = peewee.IntegerField()
    alert_level = peewee.CharField(max_length=20)
    #: True when ``generated_by`` is an API token's name, not a name as given.
    actor_verified = peewee.BooleanField(default=False)

    class Meta:
        indexes = ((("generated_at", "retry_plan_id"), False),)


class RetryDecision(BaseModel):
    """One decision of a plan, in the plan's order (by lineage id)."""

    decision_id = peewee.CharField(max_length=40, primary_key=True)
    plan = peewee.ForeignKeyField(RetryPlan, backref="decisions")
    position = peewee.IntegerField()
    lineage_id = peewee.CharField(max_length=40)
    lineage_version = peewee.IntegerField()
    package_id = peewee.CharField(max_length=64)
    connector_id = peewee.CharField(max_length=100)
    action = peewee.CharField(max_length=20)
    reason = peewee.CharField(max_length=50)
    explanation = peewee.TextField()
    retry_count = peewee.IntegerField()
    max_retry_attempts = peewee.IntegerField()
    retry_delay_seconds = peewee.IntegerField()
    not_before = TimestampField(null=True)
    not_after = TimestampField(null=True)
    failed_status_codes = JSONTextField()

    class Meta:
        indexes = (
            (("plan", "position"), True),
            (("lineage_id",), False),
        )


class WorkerRun(BaseModel):
    """One run of the retry worker, dry or live, with what it selected."""

    run_id = peewee.CharField(max_length=40, primary_key=True)
    dry_run = peewee.BooleanField()
    trigger = peewee.CharField(max_length=20)
    interval_minutes = peewee.IntegerField()
    window_start = TimestampField()
    window_end = TimestampField()
    cadence = peewee.CharField(max_length=64)
    enabled = peewee.BooleanField()
    started_at = TimestampField()
    finished_at = TimestampField()
    generated_by = peewee.CharField(max_length=200)
    policy = JSONTextField()
    retryable_count = peewee.IntegerField()
    waiting_count = peewee.IntegerField()
    suppressed_count = peewee.IntegerField()
    selected_retry_count = peewee.IntegerField()
    executed_count = peewee.IntegerField()
    skipped_count = peewee.IntegerField()
    notes = JSONTextField(default=list)
    selected_retries = JSONTextField(default=list)
    actor_verified = peewee.BooleanField(default=False)
    #: Set on live runs only: the schedule window, unique across all workers,
    #: so a second live run in one window cannot be recorded.
    live_window_key = peewee.CharField(max_length=80, null=True, unique=True)
    #: Set on scheduled runs only (trigger ``schedule``): the window's bounds,
    #: unique across all workers, so one window gets one scheduled run.
    schedule_window_key = peewee.CharField(max_length=80, null=True, unique=True)
    #: ``running`` while a live run's queued retries are being sent (workers
    #: that find the window taken help until then), else ``finished``.
    state = peewee.CharField(max_length=20, default="finished")

    class Meta:
        indexes = (
            (("started_at", "run_id"), False),
            (("dry_run", "started_at", "run_id"), False),
        )


class Counter(BaseModel):
    """Running totals kept in the same transaction as the rows they count."""

    name = peewee.CharField(max_length=200, primary_key=True)
    value = peewee.BigIntegerField(default=0)


class ConnectorState(BaseModel):
    """
    The health of one configured connector, kept across restarts.

    ``state`` is ``active``, ``paused`` (a configuration failure: lifted when
    the connector's configuration changes or by a resume) or ``disabled``
    (the receiver asked for no more: lifted only by a resume).
    """

    connector_id = peewee.CharField(max_length=100, primary_key=True)
    state = peewee.CharField(max_length=20, default="active")
    #: A reason code: ``connector_paused``, ``receiver_stop``, ``resumed``...
    state_reason = peewee.CharField(max_length=50, null=True)
    #: The error class that changed the state, e.g. ``hec_invalid_token``.
    state_error_class = peewee.CharField(max_length=50, null=True)
    state_http_status = peewee.IntegerField(null=True)
    state_changed_at = TimestampField(null=True)
    state_changed_by = peewee.CharField(max_length=200, null=True)
    #: The configuration fingerprint in force when the connector was paused.
    paused_fingerprint = peewee.CharField(max_length=64, null=True)
    consecutive_failures = peewee.IntegerField(default=0)
    last_failure_class = peewee.CharField(max_length=50, null=True)
    last_failure_category = peewee.CharField(max_length=20, null=True)
    last_failure_at = TimestampField(null=True)
    last_success_at = TimestampField(null=True)
    version = peewee.IntegerField(default=0)

    class Meta:
        indexes = ((("state",), False),)


class Approval(BaseModel):
    """
    A person's word on decisions of one retry plan: approve or deny.

    Bound to the plan's hash; each decision it covers is an :class:`ApprovalItem`
    bound to the lineage's version at planning time.
    """

    approval_id = peewee.CharField(max_length=40, primary_key=True)
    retry_plan_id = peewee.CharField(max_length=40)
    plan_hash = peewee.CharField(max_length=64)
    #: ``approve`` or ``deny``.
    verdict = peewee.CharField(max_length=10)
    approved_by = peewee.CharField(max_length=200)
    actor_verified = peewee.BooleanField(default=False)
    reason = peewee.TextField()
    created_at = TimestampField()
    expires_at = TimestampField()
    item_count = peewee.IntegerField()
    used_count = peewee.IntegerField(default=0)
    revoked_at = TimestampField(null=True)
    revoked_by = peewee.CharField(max_length=200, null=True)
    revoked_by_verified = peewee.BooleanField(null=True)
    revoke_reason = peewee.TextField(null=True)

    class Meta:
        indexes = (
            (("created_at", "approval_id"), False),
            (("retry_plan_id", "created_at"), False),
        )


class ApprovalItem(BaseModel):
    """One decision an approval covers; it serves one attempt of its lineage, once."""

    approval_id = peewee.CharField(max_length=40)
    position = peewee.IntegerField()
    decision_id = peewee.CharField(max_length=40)
    lineage_id = peewee.CharField(max_length=40)
    #: The lineage's version when the plan was made; another means it moved on.
    lineage_version = peewee.IntegerField()
    #: The attempt this approval lets the worker make.
    attempt_number = peewee.IntegerField()
    created_at = TimestampField()
    used_at = TimestampField(null=True)
    execution_id = peewee.CharField(max_length=40, null=True)

    class Meta:
        indexes = (
            (("approval_id", "position"), True),
            (("approval_id", "lineage_id"), True),
            (("lineage_id", "created_at"), False),
        )


class Execution(BaseModel):
    """
    What a live run did with one approved decision.

    ``claim_key`` is ``lineage_id:attempt_number`` from the moment the
    attempt is queued, and unique: a second delivery of one attempt cannot be
    recorded. Skipped executions have none.

    A ``queued`` execution waits for any worker; a ``claimed`` one is held by
    ``lease_owner`` until ``lease_expires_at``, after which any worker may
    rescue it (``rescue_count`` counts how often that happened).
    """

    execution_id = peewee.CharField(max_length=40, primary_key=True)
    run_id = peewee.CharField(max_length=40)
    decision_id = peewee.CharField(max_length=40)
    approval_id = peewee.CharField(max_length=40, null=True)
    lineage_id = peewee.CharField(max_length=40)
    package_id = peewee.CharField(max_length=64)
    connector_id = peewee.CharField(max_length=100)
    attempt_number = peewee.IntegerField()
    claim_key = peewee.CharField(max_length=60, null=True, unique=True)
    #: ``queued``, ``claimed`` (leased, no outcome yet), ``delivered``,
    #: ``failed``, ``skipped``.
    outcome = peewee.CharField(max_length=20)
    skipped_reason = peewee.CharField(max_length=50, null=True)
    error_class = peewee.CharField(max_length=50, null=True)
    http_status = peewee.IntegerField(null=True)
    attempt_id = peewee.CharField(max_length=40, null=True)
    started_at = TimestampField()
    finished_at = TimestampField(null=True)
    duration_ms = peewee.IntegerField(default=0)
    evidence_sequence = peewee.BigIntegerField(null=True)
    #: The worker that made the delivery (the last one to claim it).
    worker_id = peewee.CharField(max_length=100, null=True)
    lease_owner = peewee.CharField(max_length=100, null=True)
    lease_expires_at = TimestampField(null=True)
    #: When the retry became due (its decision's ``not_before``).
    due_at = TimestampField(null=True)
    rescue_count = peewee.IntegerField(default=0)

    class Meta:
        indexes = (
            (("outcome", "due_at", "execution_id"), False),
            (("started_at", "execution_id"), False),
            (("run_id", "started_at"), False),
            (("lineage_id", "started_at"), False),
            (("connector_id", "outcome", "started_at"), False),
        )


class EvidenceEntry(BaseModel):
    """
    One entry of the append-only evidence log.

    ``entry_hash`` is the SHA-256 of the previous entry's hash and this
    entry's canonical content, so changing any entry breaks every hash after it.
    """

    sequence = peewee.BigIntegerField(primary_key=True)
    kind = peewee.CharField(max_length=40)
    subject_id = peewee.CharField(max_length=64)
    actor = peewee.CharField(max_length=200)
    actor_verified = peewee.BooleanField(default=False)
    recorded_at = TimestampField()
    #: The public-safe document the entry vouches for, as canonical JSON.
    document = peewee.TextField()
    previous_hash = peewee.CharField(max_length=64)
    entry_hash = peewee.CharField(max_length=64)

    class Meta:
        indexes = (
            (("kind", "sequence"), False),
            (("subject_id",), False),
        )


class ApiToken(BaseModel):
    """An API token: only its SHA-256 is kept; the token is shown once."""

    token_id = peewee.CharField(max_length=40, primary_key=True)
    name = peewee.CharField(max_length=200, unique=True)
    role = peewee.CharField(max_length=30)
    token_hash = peewee.CharField(max_length=64, unique=True)
    created_at = TimestampField()
    revoked_at = TimestampField(null=True)

    class Meta:
        indexes = ((("revoked_at",), False),)


class IdempotencyRecord(BaseModel):
    """The first answer to a POST sent with an ``Idempotency-Key``."""

    #: SHA-256 of the caller, the method and path, and the key.
    scope_key = peewee.CharField(max_length=64, primary_key=True)
    #: SHA-256 of the request body: the same key with another body is refused.
    request_hash = peewee.CharField(max_length=64)
    #: ``in_progress`` while the first request runs, then ``done``.
    state = peewee.CharField(max_length=20)
    status = peewee.IntegerField(null=True)
    content_type = peewee.CharField(max_length=100, null=True)
    location = peewee.TextField(null=True)
    body = peewee.TextField(null=True)
    created_at = TimestampField()

    class Meta:
        indexes = ((("created_at",), False),)


class RecoveryPlaybook(BaseModel):
    """Recovery steps for connectors with repeated failures, at one moment."""

    playbook_id = peewee.CharField(max_length=40, primary_key=True)
    generated_at = TimestampField()
    generated_by = peewee.CharField(max_length=200)
    actor_verified = peewee.BooleanField(default=False)
    min_failure_count = peewee.IntegerField()
    lookback_hours = peewee.IntegerField()
    #: The request's connector filter; null when every connector was looked at.
    connector_ids = JSONTextField(null=True)
    item_count = peewee.IntegerField()
    items = JSONTextField()

    class Meta:
        indexes = ((("generated_at", "playbook_id"), False),)


class RecoveryPlaybookItem(BaseModel):
    """One connector of a playbook, with its latest closure state (null: open)."""

    playbook_id = peewee.CharField(max_length=40)
    connector_id = peewee.CharField(max_length=100)
    generated_at = TimestampField()
    closure_state = peewee.CharField(max_length=20, null=True)
    closed_at = TimestampField(null=True)

    class Meta:
        indexes = (
            (("playbook_id", "connector_id"), True),
            (("closure_state", "generated_at"), False),
        )


class RecoveryClosure(BaseModel):
    """A person's word on one connector of a playbook: resolved, deferred..."""

    closure_id = peewee.CharField(max_length=40, primary_key=True)
    playbook_id = peewee.CharField(max_length=40)
    connector_id = peewee.CharField(max_length=100)
    closure_state = peewee.CharField(max_length=20)
    external_ref = peewee.CharField(max_length=200, null=True)
    notes = peewee.TextField(null=True)
    verification_refs = JSONTextField(default=list)
    closed_by = peewee.CharField(max_length=200)
    actor_verified = peewee.BooleanField(default=False)
    closed_at = TimestampField()

    class Meta:
        indexes = ((("playbook_id", "connector_id", "closed_at"), False),)


MODELS = (
    AuditPackage,
    Acknowledgement,
    Lineage,
    DeliveryAttempt,
    RetryPlan,
    RetryDecision,
    WorkerRun,
    Counter,
    ConnectorState,
    Approval,
    ApprovalItem,
    Execution,
    EvidenceEntry,
    ApiToken,
    IdempotencyRecord,
    RecoveryPlaybook,
    RecoveryPlaybookItem,
    RecoveryClosure,
)


#: The counter changes collected by :func:`counter_batch`, per thread.
_batches = threading.local()


@contextlib.contextmanager
def counter_batch() -> Iterator[None]:
    """
    Collect :func:`bump_counters` calls and write them once, at the block's end.

    Use it inside the transaction that makes the counted changes: a block
    that records a hundred attempts writes each counter once, not a hundred
    times, and in the order of their names, so that writers on PostgreSQL
    always lock counter rows in the same order. A block that raises writes
    nothing; a nested block (a savepoint, say) hands its changes to the
    outer one only when it ends without an error.
    """
    outer = getattr(_batches, "current", None)
    changes: dict[str, int] = {}
    _batches.current = changes
    try:
        yield
    finally:
        _batches.current = outer
    if outer is not None:
        for name, delta in changes.items():
            outer[name] = outer.get(name, 0) + delta
    else:
        _write_counters(dict(sorted(changes.items())))


@contextlib.contextmanager
def connected(database: peewee.Database) -> Iterator[None]:
    """
    Hold a connection for the block; close whatever connection is open after.

    Unlike peewee's ``connection_context()``, it survives a reconnection in
    the block (a worker that lost its database opens a new connection, and
    peewee forgets the contexts it had).
    """
    database.connect(reuse_if_open=True)
    try:
        yield
    finally:
        if not database.is_closed():
            with contextlib.suppress(peewee.PeeweeException):
                database.close()


@contextlib.contextmanager
def driver_errors() -> Iterator[None]:
    """
    Raise a raw driver call's errors as peewee's, as ``execute_sql`` does,
    so callers catching ``peewee.OperationalError`` catch them too.
    """
    with peewee.__exception_wrapper__:
        yield


def is_postgres(database: peewee.Database | None = None) -> bool:
    """Whether ``database`` (by default the store's) is PostgreSQL."""
    return isinstance(database or database_proxy.obj, peewee.PostgresqlDatabase)


def fetch_rows(query: peewee.ModelSelect) -> list[Any]:
    """
    Run a select of its model's rows; the rows as model instances, every
    field read.

    The same instances iterating the query makes, built for less: each gets
    its converted values in one step, where peewee's iteration makes a dict
    of each row and then sets its fields one by one. A claim or a record
    reads hundreds of rows of several kinds at a time.
    """
    model = query.model
    fields = model._meta.sorted_fields
    names = [field.name for field in fields]
    rows = []
    for values in query.select(*fields).tuples():
        row = model(__no_default__=True)
        row.__data__ = dict(zip(names, values, strict=True))
        rows.append(row)
    return rows


def among(field: peewee.Field, values: Iterable[Any]) -> peewee.Expression:
    """
    ``field IN values`` for a long list of keys (ids), as the store's
    database reads it best.

    On PostgreSQL the keys travel as one array (``field = ANY(...)``): one
    parameter rather than one per key, for the query builder, the driver
    and the server's parser alike, and one statement shape whatever the
    count. Elsewhere it is a plain ``IN``. The keys are passed as they are:
    strings and integers, not values a field converts.
    """
    values = list(values)
    database = database_proxy.obj
    if is_postgres(database):
        # A parameter of plain SQL is passed as it is, not through the
        # field's converter (which would make the list one string).
        return field == peewee.SQL(f"ANY({database.param})", [values])
    return field.in_(values)


def refresh_statistics(database: peewee.Database, model: type[BaseModel]) -> bool:
    """
    Bring PostgreSQL's planner statistics of a model's table up to date
    after a bulk change, so that its plans fit the table as it is now;
    whether they were. Nothing on SQLite, whose plans here do not depend on
    them.

    Waits at most :data:`STATISTICS_LOCK_TIMEOUT` for the table (an
    autovacuum holding it): statistics a little old are no reason to hold
    up the caller.
    """
    if not is_postgres(database):
        return False
    try:
        with database.atomic():
            database.execute_sql(
                f"SET LOCAL lock_timeout = '{STATISTICS_LOCK_TIMEOUT}'"
            )
            database.execute_sql(f'ANALYZE "{model._meta.table_name}"')
    except peewee.OperationalError as error:
        log.info(
            "statistics not refreshed table=%s error=%s",
            model._meta.table_name,
            type(error).__name__,
        )
        return False
    return True


def insert_rows(model: type[BaseModel], rows: Sequence[Mapping[str, Any]]) -> None:
    """
    Insert rows of a model in one statement (caller's transaction).

    Every row names the same fields (model field names, a foreign key by
    its field name). The statement is plain SQL cached by shape; on
    PostgreSQL the rows go as one JSON parameter.
    """
    # PERF(workers): the query builder cost more than the insert itself.
    if not rows:
        return
    fields = [model._meta.fields[name] for name in rows[0]]
    database = model._meta.database.obj
    columns = tuple(f.column_name for f in fields)
    values = [[field.db_value(row[field.name]) for field in fields] for row in rows]
    if is_postgres(database):
        document = _json_rows(columns, values)
        database.execute_sql(_insert_from_json_sql(model, columns), [document])
        return
    sql = insert_sql(model._meta.table_name, columns, len(rows), database.param)
    database.execute_sql(sql, [value for row in values for value in row])


def update_rows(
    model: type[BaseModel],
    rows: Sequence[Mapping[str, Any]],
    *,
    guards: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """
    Give each row its own new values, in one statement on PostgreSQL (caller's
    transaction); the number of rows changed.

    Each row names its primary key, once in the call, and the same other
    fields. ``guards``, one per row and each naming the same fields, are the
    values the row must still hold to be changed (a version for a
    compare-and-set): a row whose guard no longer holds is not changed and
    not counted.
    """
    if not rows:
        return 0
    if any(row.keys() != rows[0].keys() for row in rows):
        raise ValueError("every row of one update must name the same fields")
    if guards and (
        len(guards) != len(rows)
        or any(guard.keys() != guards[0].keys() for guard in guards)
    ):
        raise ValueError("every row of one update needs a guard of the same fields")
    meta = model._meta
    key = meta.primary_key
    if len({row[key.name] for row in rows}) != len(rows):
        # One statement changes a row once: which repeat won would be
        # the database's choice.
        raise ValueError("a row may be named only once in one update")
    fields = [meta.fields[name] for name in rows[0] if name != key.name]
    guard_fields = [meta.fields[name] for name in guards[0]] if guards else []
    database = meta.database.obj
    shape = (
        tuple(f.column_name for f in fields),
        tuple(f.column_name for f in guard_fields),
    )
    guards = guards or [{}] * len(rows)
    values = [[field.db_value(row[field.name]) for field in fields] for row in rows]
    keys = [key.db_value(row[key.name]) for row in rows]
    expected = [
        [field.db_value(guard[field.name]) for field in guard_fields]
        for guard in guards
    ]
    if is_postgres(database):
        names = (key.column_name, *shape[0], *map(_guard, shape[1]))
        document = _json_rows(
            names,
            (
                (k, *new, *old)
                for k, new, old in zip(keys, values, expected, strict=True)
            ),
        )
        sql = _update_from_json_sql(model, *shape)
        return database.execute_sql(sql, [document]).rowcount
    # SQLite runs in-process: one prepared statement per row costs little.
    sql = _update_one_sql(model, *shape, database.param)
    cursor = database.cursor()
    with driver_errors():
        cursor.executemany(
            sql,
            [
                (*new, k, *old)
                for k, new, old in zip(keys, values, expected, strict=True)
            ],
        )
    return cursor.rowcount


#: Statements are cached by shape, rows included: a batch's row count varies,
#: so the caches are bounded.
_SHAPES = 64


@functools.lru_cache(maxsize=_SHAPES)
def insert_sql(table: str, columns: tuple[str, ...], count: int, param: str) -> str:
    """A plain ``INSERT`` of ``count`` rows of ``columns``; ``param``: ``?``/``%s``."""
    one = "(" + ", ".join([param] * len(columns)) + ")"
    names = ", ".join(f'"{c}"' for c in columns)
    return f'INSERT INTO "{table}" ({names}) VALUES ' + ", ".join([one] * count)


def _json_rows(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """
    Rows of column values as one JSON array of objects, for PostgreSQL's
    ``json_to_recordset``. The values are those a field stores (text,
    integers, booleans, nulls), so JSON keeps each exactly.
    """
    return json.dumps([dict(zip(names, row, strict=True)) for row in rows])


def _guard(column: str) -> str:
    """The name a guard's value of ``column`` goes by beside the new values."""
    return f"guard_{column}"


def _record_columns(
    model: type[BaseModel], columns: tuple[str, ...], guards: tuple[str, ...] = ()
) -> str:
    """
    The column list of ``json_to_recordset`` for these columns of the model,
    then each guard column's :func:`_guard` name, typed as the column.
    """
    by_column = {f.column_name: f for f in model._meta.sorted_fields}
    typed = [(c, by_column[c]) for c in columns]
    typed += [(_guard(g), by_column[g]) for g in guards]
    return ", ".join(f'"{name}" {_postgres_type(field)}' for name, field in typed)


@functools.lru_cache(maxsize=_SHAPES)
def _insert_from_json_sql(model: type[BaseModel], columns: tuple[str, ...]) -> str:
    """
    PostgreSQL: ``INSERT ... SELECT`` from the rows passed as one JSON
    parameter. One parameter rather than one per value: cheaper for the
    driver to quote and for the server to parse, and one statement shape
    whatever the count.
    """
    names = ", ".join(f'"{c}"' for c in columns)
    return (
        f'INSERT INTO "{model._meta.table_name}" ({names}) SELECT {names} '
        f"FROM json_to_recordset(%s::json) AS v({_record_columns(model, columns)})"
    )


@functools.lru_cache(maxsize=_SHAPES)
def _update_from_json_sql(
    model: type[BaseModel],
    columns: tuple[str, ...],
    guards: tuple[str, ...],
) -> str:
    """PostgreSQL: ``UPDATE ... FROM`` the rows passed as one JSON parameter."""
    meta = model._meta
    key = meta.primary_key.column_name
    record = _record_columns(model, (key, *columns), guards)
    assignments = ", ".join(f'"{c}" = v."{c}"' for c in columns)
    conditions = "".join(f' AND t."{g}" = v."{_guard(g)}"' for g in guards)
    return (
        f'UPDATE "{meta.table_name}" AS t SET {assignments} '
        f"FROM json_to_recordset(%s::json) AS v({record}) "
        f'WHERE t."{key}" = v."{key}"{conditions}'
    )


@functools.cache
def _update_one_sql(
    model: type[BaseModel],
    columns: tuple[str, ...],
    guards: tuple[str, ...],
    param: str,
) -> str:
    meta = model._meta
    assignments = ", ".join(f'"{c}" = {param}' for c in columns)
    conditions = "".join(f' AND "{g}" = {param}' for g in guards)
    return (
        f'UPDATE "{meta.table_name}" SET {assignments} '
        f'WHERE "{meta.primary_key.column_name}" = {param}{conditions}'
    )


#: PostgreSQL's names of peewee's field types, for casts (serials are integers).
_POSTGRES_TYPES = {
    **peewee.PostgresqlDatabase.field_types,
    "AUTO": "INTEGER",
    "BIGAUTO": "BIGINT",
    "INT": "INTEGER",
}


def _postgres_type(field: peewee.Field) -> str:
    """The SQL type of ``field``'s column, as a record column list names it."""
    return _POSTGRES_TYPES.get(field.field_type, field.field_type)


def bump_counters(changes: dict[str, int]) -> None:
    """Add to named counters inside the caller's transaction (or its batch)."""
    batch = getattr(_batches, "current", None)
    if batch is not None:
        for name, delta in changes.items():
            batch[name] = batch.get(name, 0) + delta
        return
    _write_counters(changes)


def _write_counters(changes: dict[str, int]) -> None:
    """Add every change in one upsert, in the order given (the lock order)."""
    rows = [(name, delta) for name, delta in changes.items() if delta]
    if not rows:
        return
    database = Counter._meta.database.obj
    database.execute_sql(
        _counter_upsert_sql(len(rows), database.param),
        [value for row in rows for value in row],
    )


@functools.lru_cache(maxsize=_SHAPES)
def _counter_upsert_sql(count: int, param: str) -> str:
    table = Counter._meta.table_name
    return (
        insert_sql(table, ("name", "value"), count, param)
        + f' ON CONFLICT ("name") DO UPDATE SET "value" = "{table}"."value" + '
        'excluded."value"'
    )


def read_counters(*names: str) -> dict[str, int]:
    found = {
        row.name: row.value for row in Counter.select().where(Counter.name.in_(names))
    }
    return {name: int(found.get(name, 0)) for name in names}


def counters_with_prefix(prefix: str) -> dict[str, int]:
    """
    Every counter whose name starts with ``prefix``, by name.

    The counter table holds one row per name (a few hundred at most), so
    reading a family of them is cheap however large the history is.
    """
    rows = Counter.select().where(Counter.name.startswith(prefix))
    return {row.name: int(row.value) for row in rows}


def database_url(given: str | None = None) -> str:
    """
    The store to open: ``given``, else ``CAVRA_DATABASE_URL``, else the default.

    An empty ``given`` is returned as it is: a URL given on purpose but empty
    (an unset variable in a script, say) is a mistake the store reports, not
    a reason to fall back on the default store.
    """
    if given is not None:
        return given
    return os.environ.get("CAVRA_DATABASE_URL") or DEFAULT_DATABASE_URL


def open_database(url: str | None = None) -> peewee.Database:
    """
    Open (without connecting) the database at ``url`` and bind the models to it.

    A SQLite file's folder is created on first use.
    """
    url = DEFAULT_DATABASE_URL if url is None else url
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite:///") :]
        if not path:
            raise StoreError("a SQLite URL needs a file: sqlite:///PATH")
        if path == ":memory:":
            # Each connection to ":memory:" is a database of its own, and
            # cavra opens several (per request, per worker thread, for
            # migrations): the tables would be gone at the first one.
            raise StoreError(
                "an in-memory SQLite store is not supported: cavra opens more "
                "than one connection; use a file, for example "
                "sqlite:////tmp/cavra-scratch.db"
            )
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        database = peewee.SqliteDatabase(
            path,
            pragmas={
                "journal_mode": "wal",
                "synchronous": "normal",
                "foreign_keys": 1,
                "busy_timeout": 10_000,
            },
            timeout=10,
            # Every transaction takes the write lock when it begins: a
            # transaction that read first and wrote later would be refused
            # at once ("database is locked") when another writer committed
            # in between, instead of waiting its turn for the busy timeout.
            lock_type="IMMEDIATE",
        )
    elif scheme in ("postgres", "postgresql"):
        try:
            database = connect_url(url.replace("postgres://", "postgresql://", 1))
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise StoreError(
                "PostgreSQL needs a driver: pip install 'cavra[postgres]'"
            ) from exc
    else:
        raise StoreError(
            f"unsupported database URL scheme {scheme!r}: use sqlite:///PATH "
            "or postgresql://USER@HOST:PORT/NAME"
        )
    database_proxy.initialize(database)
    return database


@contextlib.contextmanager
def _migration_lock(database: peewee.Database) -> Iterator[None]:
    """Let only one process migrate at a time."""
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("SELECT pg_advisory_lock(7260421)")
        try:
            yield
        finally:
            database.execute_sql("SELECT pg_advisory_unlock(7260421)")
        return
    name = database.database
    with open(f"{name}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(database: peewee.Database) -> list[str]:
    """Apply every pending numbered migration; return the names applied."""
    with database.connection_context(), _migration_lock(database):
        runner = Runner(database, directory=str(MIGRATIONS_DIR))
        applied = runner.up()
    for name in applied:
        log.info("migration applied name=%s", name)
    return applied


def pending_migrations(database: peewee.Database) -> list[str]:
    with database.connection_context():
        runner = Runner(database, directory=str(MIGRATIONS_DIR))
        return [m.name for m in runner.status() if not m.applied and m.path]


def describe_url(url: str) -> str:
    """The URL without user information or password, safe to log."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return url
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def sqlite_path(url: str) -> str | None:
    if urlparse(url).scheme != "sqlite":
        return None
    return os.path.abspath(url[len("sqlite:///") :])
