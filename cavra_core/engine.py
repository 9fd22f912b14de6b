"""
The engine: cavra's capabilities as plain Python calls.

Open one with :func:`open_engine` (or :class:`Engine`) on a database URL and a
connectors file, then deliver packages, record attempts observed elsewhere,
plan retries, run the worker, and read runs, plans, attempts and the
dashboard. Every call takes documents shaped like the HTTP API's bodies and
returns documents shaped like its responses, both checked against
``schemas/``. Every time-dependent call takes an optional aware ``now``.

Caveat: the models are bound to one module-level database proxy, so one
process holds one open engine at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any

import peewee

from cavra_core import (
    evidence,
    executions,
    health,
    metrics,
    redaction,
    store,
    validation,
)
from cavra_core.approvals import Approvals
from cavra_core.connectors import (
    ConnectorRegistry,
    build_registry,
    load_connectors_file,
)
from cavra_core.decisions import Decision, evaluate, format_time_precise, tuple_of
from cavra_core.errors import (
    CavraError,
    Conflict,
    FieldProblem,
    InvalidInput,
    NotFound,
    UnprocessableInput,
)
from cavra_core.identity import Actor, actor_for
from cavra_core.lineages import Lineages
from cavra_core.paging import decode_cursor, encode_cursor, newest_first
from cavra_core.plan_writer import (
    fewer_collections,
    open_plan_writer,
    read_lineage_rows,
)
from cavra_core.plugins import PluginFailure, PluginHost, build_plugin_manager
from cavra_core.policy import DEFAULT_POLICY, PolicyError, RetryPolicy
from cavra_core.recovery import Recovery
from cavra_core.store import (
    Acknowledgement,
    AuditPackage,
    DeliveryAttempt,
    Lineage,
    RetryDecision,
    RetryPlan,
    WorkerRun,
    from_micros,
    to_micros,
)
from cavra_core.types import (
    AttemptFacts,
    Connector,
    ConnectorHealth,
    Delivery,
    DeliveryResult,
    LineageFacts,
    ProbeCheck,
    ProbeResult,
)

log = logging.getLogger(__name__)

#: The most retries one live run of a scheduled service may queue.
MAX_SERVICE_DELIVERIES = 10_000

BATCH_SIZE = 1000
#: How far in the future an imported attempt may end, for clocks that differ.
IMPORT_CLOCK_SKEW = timedelta(minutes=5)
#: A lineage claimed for its first delivery but never recorded (a crash) may be
#: taken over after this long.
CLAIM_TIMEOUT = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_LINEAGE_FIELDS = (
    Lineage.lineage_id,
    Lineage.package,
    Lineage.connector_id,
    Lineage.connector_type,
    Lineage.state,
    Lineage.attempt_count,
    Lineage.first_attempt_at,
    Lineage.last_attempt_at,
    Lineage.package_generated_at,
    Lineage.last_outcome,
    Lineage.last_error_class,
    Lineage.last_http_status,
    Lineage.last_retry_after_at,
    Lineage.failed_status_codes,
    Lineage.config_fingerprint,
    Lineage.closing_reason,
    Lineage.version,
)


def new_id(prefix: str) -> str:
    """A random id with a type prefix: ``rp_`` plus 32 hex digits."""
    return f"{prefix}_{secrets.token_hex(16)}"


def lineage_id_for(package_id: str, connector_id: str) -> str:
    """Lineage ids are derived, so one package meets one connector once."""
    digest = hashlib.sha256(f"{package_id}\n{connector_id}".encode()).hexdigest()
    return f"lin_{digest[:32]}"


def canonical_json(document: Any) -> str:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


#: A Retry-After further away than this is read as this: already past every
#: retry window, and still a time every store can hold.
RETRY_AFTER_LIMIT = timedelta(days=366)


def parse_retry_after(raw: str | None, received_at: datetime) -> datetime | None:
    """
    ``Retry-After`` as delta-seconds or an HTTP-date; anything else is ignored.

    A value further away than :data:`RETRY_AFTER_LIMIT` is cut to it.
    """
    if not raw:
        return None
    text = raw.strip()
    latest = received_at + RETRY_AFTER_LIMIT
    if text.isdigit():
        if len(text) > 12:
            return latest
        return min(received_at + timedelta(seconds=int(text)), latest)
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    return min(parsed.astimezone(UTC), latest)


def _aware(now: datetime | None, clock) -> datetime:
    if now is None:
        return clock()
    if now.tzinfo is None or now.utcoffset() is None:
        raise InvalidInput(
            "now has no UTC offset; pass an aware datetime",
            [FieldProblem("", "must carry a UTC offset", "naive_time", "now")],
        )
    return now.astimezone(UTC)


def _require_aware(**times: datetime | None) -> None:
    for name, value in times.items():
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise InvalidInput(
                f"{name} has no UTC offset; pass an aware datetime",
                [FieldProblem("", "must carry a UTC offset", "naive_time", name)],
            )


class Engine:
    """
    One open cavra store with its connectors and plugins.

    :param database_url: ``sqlite:///PATH`` or ``postgresql://...``; default
        ``CAVRA_DATABASE_URL`` or ``sqlite:///.cavra/cavra.db``.
    :param connectors: a connectors file path, an already parsed mapping, or
        ``None`` for ``CAVRA_CONNECTORS`` (no connectors when unset).
    :param plugins: extra plugin objects, registered before the default policy.
    :param load_entry_points: load installed plugins of the group ``cavra``.
    :param apply_migrations: apply pending migrations on open.
    :param clock: returns the current aware time; for tests.
    :param four_eyes: refuse approvals by a plan's own author (default on;
        ``CAVRA_ALLOW_SELF_APPROVAL=true`` turns it off).
    """

    def __init__(
        self,
        database_url: str | None = None,
        connectors: str | Path | Mapping[str, Any] | None = None,
        *,
        plugins: tuple[object, ...] | list[object] = (),
        load_entry_points: bool = True,
        disabled_plugins: list[str] | None = None,
        apply_migrations: bool = True,
        clock=None,
        four_eyes: bool | None = None,
    ) -> None:
        self.database_url = store.database_url(database_url)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.plugin_manager = build_plugin_manager(
            plugins, load_entry_points=load_entry_points, disabled=disabled_plugins
        )
        self.hooks = PluginHost(self.plugin_manager)
        self.connector_types = self.hooks.connector_types()
        self.redaction_rules = tuple(self.hooks.redaction_rules())

        if connectors is None:
            connectors = os.environ.get("CAVRA_CONNECTORS") or None
        if isinstance(connectors, Mapping):
            document = connectors
        else:
            document = load_connectors_file(connectors)
        self.connectors: ConnectorRegistry = build_registry(
            document, self.connector_types
        )

        if four_eyes is None:
            allowed = os.environ.get("CAVRA_ALLOW_SELF_APPROVAL", "")
            four_eyes = allowed.strip().lower() not in ("1", "true", "yes")
        #: How to build this engine again in another process (a worker's
        #: store process), or None when it holds what a process cannot be
        #: handed: plugin objects or a clock of its own.
        self.rebuild: dict[str, Any] | None = None
        if not plugins and clock is None:
            self.rebuild = {
                "database_url": self.database_url,
                "connectors": copy.deepcopy(dict(document)),
                "load_entry_points": load_entry_points,
                "disabled_plugins": disabled_plugins,
                "four_eyes": four_eyes,
            }
        self.approvals = Approvals(self, four_eyes=four_eyes)
        self.executions = executions.Executions(self)
        #: How live runs of this engine claim queued retries.
        self.leases = executions.Leases()
        self.recovery = Recovery(self)
        self.evidence = evidence.EvidenceLog(self)
        self.lineages = Lineages(self)

        self.database = store.open_database(self.database_url)
        if apply_migrations:
            store.migrate(self.database)
            with self.database.connection_context(), self.database.atomic():
                lifted = health.lift_pauses_after_configuration_change(
                    {cid: self.connectors.get(cid) for cid in self.connectors},
                    self.clock(),
                )
                for connector_id in lifted:
                    self._reassess_connector(connector_id)

    @property
    def backend(self) -> str:
        if isinstance(self.database, peewee.PostgresqlDatabase):
            return "postgresql"
        return "sqlite"

    def close(self) -> None:
        self.executions.close()
        if not self.database.is_closed():
            self.database.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- input ------------------------------------------------------------------

    def now(self, now: datetime | None = None) -> datetime:
        """``now`` checked to carry a UTC offset, or the engine's clock."""
        return _aware(now, self.clock)

    @staticmethod
    def new_id(prefix: str) -> str:
        return new_id(prefix)

    def actor_of(
        self,
        request: Mapping[str, Any],
        actor: Actor | None,
        field: str = "generated_by",
    ) -> Actor:
        """
        Who to record: the token's name when the caller has one (the body's
        name is then ignored), else the name the body gives, unverified.
        """
        found = actor_for(request.get(field), actor)
        if found is None:
            raise InvalidInput(
                f"Say who is acting: {field} is required when the API runs "
                "without tokens.",
                [
                    FieldProblem(
                        f"/{field}",
                        "is required when the API runs without tokens",
                        "required",
                    )
                ],
            )
        return found

    def _check_request(self, name: str, request: Mapping[str, Any]) -> None:
        """
        Refuse a request that breaks its schema or carries what must never be
        stored: a credential, a private address, a payload body.
        """
        validation.check(name, request)
        redaction.check_inbound(request, rules=self.redaction_rules)

    # -- policies ---------------------------------------------------------------

    def policy_for(
        self, connector_id: str, overrides: Mapping[str, Any] | None
    ) -> RetryPolicy:
        """Defaults, then the connector's own defaults, then the request's values."""
        connector = self.connectors.get(connector_id)
        policy = DEFAULT_POLICY
        if connector is not None and connector.retry_policy:
            policy = policy.merged(connector.retry_policy)
        if overrides:
            policy = policy.merged(overrides)
        return policy

    def _request_policy(self, request: Mapping[str, Any]) -> tuple[RetryPolicy, dict]:
        overrides = dict(request.get("retry_policy") or {})
        try:
            policy = DEFAULT_POLICY.merged(overrides)
            for connector_id in self.connectors:
                self.policy_for(connector_id, overrides)
        except PolicyError as exc:
            raise InvalidInput(
                f"retry_policy.{exc.key} {exc.message}",
                [FieldProblem(f"/retry_policy/{exc.key}", exc.message, "policy")],
            ) from exc
        return policy, overrides

    # -- packages and deliveries ------------------------------------------------

    def deliver_package(
        self,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Deliver one package to configured connectors now (``POST ...``).

        A lineage that already has an attempt is not delivered again here: its
        retries go through the retry plan and the worker.
        """
        self._check_request("delivery_request", request)
        now = _aware(now, self.clock)
        who = self.actor_of(request, actor)
        connector_ids = list(request["connectors"])
        self._require_connectors(connector_ids, "/connectors")
        package = request["package"]
        package_id = self._store_packages([package], now)[0]
        source = request.get("source", "api")

        # Read once for every connector: the canonical document and health.
        document = self.load_package(package_id)
        states = health.load_health(connector_ids)
        deliveries = [
            self._deliver_first(
                package_id, document, connector_id, states[connector_id], source, now
            )
            for connector_id in connector_ids
        ]
        report = {
            "package_id": package_id,
            "drill_id": package["drill_id"],
            "generated_by": who.name,
            "deliveries": deliveries,
        }
        validation.check_output("delivery_report", report)
        return report

    def _require_connectors(self, connector_ids: list[str], base: str) -> None:
        problems = [
            FieldProblem(
                f"{base}/{index}",
                "is not a configured connector; add it to the connectors file "
                "or use one of: " + (", ".join(self.connectors) or "none configured"),
                "unknown_connector",
            )
            for index, connector_id in enumerate(connector_ids)
            if connector_id not in self.connectors
        ]
        if problems:
            raise UnprocessableInput("Unknown connector id.", problems)

    def _store_packages(
        self, packages: list[Mapping[str, Any]], now: datetime
    ) -> list[str]:
        """Store packages by content hash; a package already stored is kept as is."""
        ids = []
        with self.database.atomic():
            for package in packages:
                package_id = package_hash(package)
                ids.append(package_id)
                created = (
                    AuditPackage.insert(
                        package_id=package_id,
                        drill_id=package["drill_id"],
                        generated_at=validation.parse_time(package["generated_at"]),
                        generated_by=package["generated_by"],
                        received_at=now,
                    )
                    .on_conflict_ignore()
                    .as_rowcount()
                    .execute()
                )
                if created:
                    Acknowledgement.insert_many(
                        [
                            {
                                "package": package_id,
                                "position": position,
                                "notification_id": ack["notification_id"],
                                "role": ack["role"],
                                "state": ack["state"],
                                "acknowledged_at": validation.parse_time(
                                    ack["acknowledged_at"]
                                ),
                            }
                            for position, ack in enumerate(package["acknowledgements"])
                        ]
                    ).execute()
        return ids

    def load_package(self, package_id: str) -> dict[str, Any]:
        """The canonical package document, as hashed and as delivered."""
        found = self.load_packages([package_id])
        if package_id not in found:
            raise NotFound(f"No package {package_id}.")
        return found[package_id]

    def load_packages(self, package_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Several packages' documents by id, in two queries; unknown ids left out."""
        wanted = list(dict.fromkeys(package_ids))
        documents: dict[str, dict[str, Any]] = {}
        # Plain tuples of the fields used: a batch of claims reads hundreds.
        packages = AuditPackage.select(
            AuditPackage.package_id,
            AuditPackage.drill_id,
            AuditPackage.generated_at,
            AuditPackage.generated_by,
        ).where(store.among(AuditPackage.package_id, wanted))
        for package_id, drill_id, generated_at, generated_by in packages.tuples():
            documents[package_id] = {
                "drill_id": drill_id,
                "generated_at": iso(generated_at),
                "generated_by": generated_by,
                "acknowledgements": [],
            }
        acknowledgements = (
            Acknowledgement.select(
                Acknowledgement.package,
                Acknowledgement.notification_id,
                Acknowledgement.role,
                Acknowledgement.state,
                Acknowledgement.acknowledged_at,
            )
            .where(store.among(Acknowledgement.package, list(documents)))
            .order_by(Acknowledgement.package, Acknowledgement.position)
        )
        for package_id, notification_id, role, state, at in acknowledgements.tuples():
            documents[package_id]["acknowledgements"].append(
                {
                    "notification_id": notification_id,
                    "role": role,
                    "state": state,
                    "acknowledged_at": iso(at),
                }
            )
        return documents

    def _claim_first_attempt(
        self,
        package_id: str,
        generated_at: datetime,
        connector_id: str,
        now: datetime,
    ) -> tuple[str, str | None]:
        """
        Claim the lineage's first delivery, or say why it is not ours to make.

        The claim is a row insert (or a takeover of a stale claim) guarded by
        the database, so two concurrent requests never both deliver.
        """
        lineage_id = lineage_id_for(package_id, connector_id)
        connector = self.connectors.get(connector_id)
        with self.database.atomic():
            inserted = (
                Lineage.insert(
                    lineage_id=lineage_id,
                    package=package_id,
                    connector_id=connector_id,
                    connector_type=connector.type,
                    state="pending",
                    package_generated_at=generated_at,
                    config_fingerprint=connector.fingerprint,
                    claimed_at=now,
                )
                .on_conflict_ignore()
                .as_rowcount()
                .execute()
            )
            if inserted:
                store.bump_counters({"lineage:pending:": 1})
                return lineage_id, None
            row = Lineage.get_by_id(lineage_id)
            if row.state == "recovered":
                return lineage_id, "already_recovered"
            if row.attempt_count > 0:
                return lineage_id, "lineage_exists"
            stale = to_micros(now - CLAIM_TIMEOUT)
            taken = (
                Lineage.update(claimed_at=now, version=Lineage.version + 1)
                .where(
                    (Lineage.lineage_id == lineage_id)
                    & (Lineage.version == row.version)
                    & (Lineage.attempt_count == 0)
                    & (Lineage.claimed_at < stale)
                )
                .execute()
            )
            return lineage_id, None if taken else "lineage_exists"

    def _deliver_first(
        self,
        package_id: str,
        document: Mapping[str, Any],
        connector_id: str,
        connector_health: ConnectorHealth,
        source: str,
        now: datetime,
    ) -> dict[str, Any]:
        state = connector_health.state
        if state != health.ACTIVE:
            # Nothing is claimed: the package is delivered once the connector
            # is active again and it is sent once more.
            return _skipped(
                connector_id,
                lineage_id_for(package_id, connector_id),
                f"connector_{state}",
            )
        lineage_id, skipped = self._claim_first_attempt(
            package_id,
            validation.parse_time(document["generated_at"]),
            connector_id,
            now,
        )
        if skipped:
            return _skipped(connector_id, lineage_id, skipped)
        attempt = self.deliver_attempt(
            lineage_id,
            1,
            source=source,
            package=document,
            now=now,
        )
        return {
            "connector_id": connector_id,
            "lineage_id": lineage_id,
            "attempt_id": attempt["attempt_id"],
            "attempt_number": attempt["attempt_number"],
            "outcome": attempt["outcome"],
            "http_status": attempt["http_status"],
            "error_class": attempt["error_class"],
            "skipped_reason": None,
        }

    def deliver_attempt(
        self,
        lineage_id: str,
        attempt_number: int,
        *,
        source: str,
        package: Mapping[str, Any] | None = None,
        worker_run_id: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Send one attempt of a lineage through its connector and record it.

        ``now`` is when the attempt starts (default: the clock); its finish is
        that plus the time the connector took.
        """
        attempt = self.send_attempt(
            lineage_id, attempt_number, package=package, now=now
        )
        recorded = self._record_sent_attempt(attempt, source, worker_run_id)
        log.info(
            "delivery attempt recorded connector_id=%s lineage_id=%s attempt=%d "
            "outcome=%s status=%s error_class=%s",
            attempt["connector_id"],
            lineage_id,
            attempt_number,
            attempt["outcome"],
            attempt["http_status"],
            attempt["error_class"],
        )
        return recorded

    def send_attempt(
        self,
        lineage_id: str,
        attempt_number: int,
        *,
        package: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        lineage: Lineage | None = None,
    ) -> dict[str, Any]:
        """
        Send one attempt of a lineage through its connector; record nothing.

        Returns the attempt as :meth:`_record_attempt` takes it. The event id
        is the lineage's, the same for every attempt, so a receiver can tell
        a repeated delivery from a new one. ``lineage`` and ``package`` save
        reading them when the caller has them already.
        """
        row = lineage or Lineage.get_by_id(lineage_id)
        connector = self.connectors.get(row.connector_id)
        connector_type = self.connectors.type_of(row.connector_id)
        if package is None:
            package = self.load_package(row.package_id)
        delivery = Delivery(
            package_id=row.package_id,
            package=dict(package),
            lineage_id=lineage_id,
            attempt_number=attempt_number,
            event_id=lineage_id,
        )

        started_at = _aware(now, self.clock)
        started = time.perf_counter()
        try:
            result = connector_type.deliver(connector, delivery)
        except Exception as exc:  # a connector must report, never raise
            log.warning(
                "connector raised connector_id=%s lineage_id=%s error=%s",
                row.connector_id,
                lineage_id,
                type(exc).__name__,
            )
            result = DeliveryResult(outcome="failed", error_class="connector_error")
        result = _normal_result(result, row.connector_id)
        elapsed = time.perf_counter() - started
        finished_at = started_at + timedelta(seconds=elapsed)

        return {
            "package_id": row.package_id,
            "connector_id": row.connector_id,
            "outcome": result.outcome,
            "error_class": result.error_class,
            "http_status": result.http_status,
            "retry_after": result.retry_after,
            "started_at": started_at,
            "finished_at": finished_at,
            "attempt_number": attempt_number,
        }

    def _record_sent_attempt(
        self, attempt: Mapping[str, Any], source: str, worker_run_id: str | None
    ) -> dict[str, Any]:
        """
        Record an attempt that was sent: it happened, so it must not be lost to
        a busy store. The write is tried again a few times before giving up.
        """
        tries = 0
        while True:
            tries += 1
            try:
                with self.database.atomic():
                    return self._record_attempt(
                        attempt, source, worker_run_id, pointer=""
                    )
            except peewee.OperationalError as error:
                if not store.is_busy(error) or tries >= 5:
                    log.error(
                        "sent attempt not recorded lineage_id=%s attempt=%s",
                        lineage_id_for(attempt["package_id"], attempt["connector_id"]),
                        attempt.get("attempt_number"),
                    )
                    raise
                time.sleep(0.25 * tries)

    # -- recording attempts -----------------------------------------------------

    def record_attempts(
        self, request: Mapping[str, Any], *, now: datetime | None = None
    ) -> dict[str, Any]:
        """
        Record attempts observed elsewhere (``POST .../attempts``): all or nothing.

        Packages an attempt refers to must be stored already or come in the
        same request under ``packages``.
        """
        self._check_request("attempt_import_request", request)
        now = _aware(now, self.clock)
        attempts = request["attempts"]
        self._check_import_connectors(attempts, now)

        recorded = []
        with self.database.atomic():
            self._store_packages(request.get("packages") or [], now)
            known = {
                row.package_id
                for row in AuditPackage.select(AuditPackage.package_id).where(
                    AuditPackage.package_id.in_(
                        list({a["package_id"] for a in attempts})
                    )
                )
            }
            for index, item in enumerate(attempts):
                if item["package_id"] not in known:
                    raise UnprocessableInput(
                        "An attempt refers to a package cavra has not stored.",
                        [
                            FieldProblem(
                                f"/attempts/{index}/package_id",
                                "names no stored package; send the package under "
                                "packages in the same request",
                                "unknown_package",
                            )
                        ],
                    )
                attempt = dict(item)
                attempt["started_at"] = validation.parse_time(item["started_at"])
                attempt["finished_at"] = validation.parse_time(item["finished_at"])
                recorded.append(
                    self._record_attempt(
                        attempt, "import", None, pointer=f"/attempts/{index}"
                    )
                )
            result = {"recorded_count": len(recorded), "attempts": recorded}
            # Inside the transaction: a document that cannot be answered is
            # a bug, and must not leave its attempts stored.
            validation.check_output("attempt_import_result", result)
        log.info("attempts imported count=%d", len(recorded))
        return result

    def _check_import_connectors(
        self, attempts: list[Mapping[str, Any]], now: datetime
    ) -> None:
        problems = []
        latest_allowed = now + IMPORT_CLOCK_SKEW
        for index, item in enumerate(attempts):
            connector = self.connectors.get(item["connector_id"])
            if connector is None:
                problems.append(
                    FieldProblem(
                        f"/attempts/{index}/connector_id",
                        "is not a configured connector; add it to the connectors "
                        "file first",
                        "unknown_connector",
                    )
                )
            elif item.get("connector_type") not in (None, connector.type):
                problems.append(
                    FieldProblem(
                        f"/attempts/{index}/connector_type",
                        f"does not match the configured type {connector.type!r}",
                        "connector_type_mismatch",
                    )
                )
            if item["finished_at"] and item["started_at"]:
                start = validation.parse_time(item["started_at"])
                end = validation.parse_time(item["finished_at"])
                if end < start:
                    problems.append(
                        FieldProblem(
                            f"/attempts/{index}/finished_at",
                            "is before started_at",
                            "time_order",
                        )
                    )
                if end > latest_allowed:
                    problems.append(
                        FieldProblem(
                            f"/attempts/{index}/finished_at",
                            "lies in the future; record attempts once they happened",
                            "future_time",
                        )
                    )
            status = item.get("http_status")
            succeeded = status is not None and 200 <= status < 300
            if item["outcome"] == "delivered" and (
                item.get("error_class") or (status is not None and not succeeded)
            ):
                problems.append(
                    FieldProblem(
                        f"/attempts/{index}/outcome",
                        "is delivered, but error_class or a non-2xx http_status "
                        "says it failed",
                        "outcome_mismatch",
                    )
                )
            reported_error = item.get("error_class") not in (None, "http_status")
            if item["outcome"] == "failed" and succeeded and not reported_error:
                problems.append(
                    FieldProblem(
                        f"/attempts/{index}/outcome",
                        "is failed, but a 2xx http_status says it was delivered "
                        "(give the error_class that made it fail, e.g. ack_timeout)",
                        "outcome_mismatch",
                    )
                )
        if problems:
            raise UnprocessableInput("Some attempts cannot be recorded.", problems)

    def _record_attempt(
        self,
        attempt: Mapping[str, Any],
        source: str,
        worker_run_id: str | None,
        *,
        pointer: str,
        lineage: Lineage | None = None,
    ) -> dict[str, Any]:
        """
        Append one attempt to its lineage and move the lineage on.

        Runs inside the caller's transaction. The lineage row is updated with a
        compare-and-set on its version, so concurrent writers cannot both
        append attempt N. ``lineage`` is the lineage's row when the caller
        has just read it in this transaction.
        """
        connector_id = attempt["connector_id"]
        connector = self.connectors.get(connector_id)
        lineage_id = lineage_id_for(attempt["package_id"], connector_id)
        row = (
            lineage
            if lineage is not None
            else Lineage.get_or_none(Lineage.lineage_id == lineage_id)
        )
        if row is None:
            row = self._new_lineage(attempt, connector)
        stored, changes = self._checked_attempt(
            attempt, row, source, worker_run_id, pointer
        )
        DeliveryAttempt.insert(**stored).execute()
        metrics.count_delivery(source, attempt["outcome"], connector_id)

        failed = attempt["outcome"] != "delivered"
        facts = self._facts_from_row(row, changes) if failed else None
        category = self._failure_category(connector, facts) if facts else None
        health_changed = health.record_outcome(
            connector,
            delivered=not failed,
            error_class=attempt.get("error_class"),
            http_status=attempt.get("http_status"),
            category=category,
            at=stored["finished_at"],
        )
        if health_changed:
            self._reassess_connector(connector_id, exclude=lineage_id)
        changes.update(
            self._assessed(
                row, facts, self.connector_with_health(connector_id), changes
            )
        )
        updated = (
            Lineage.update(**changes)
            .where(
                (Lineage.lineage_id == lineage_id) & (Lineage.version == row.version)
            )
            .execute()
        )
        if updated != 1:
            raise Conflict(
                "The lineage changed while this attempt was being recorded; send "
                "the request again.",
                [FieldProblem(pointer, "lost a race with another writer", "race")],
            )
        _count_lineage_move(row, changes)
        return _attempt_document(stored, changes["state"])

    def record_sent_batch(
        self,
        sent: Sequence[tuple[Mapping[str, Any], Lineage | None, str | None]],
        states: Mapping[str, ConnectorHealth] | None = None,
    ) -> list[dict[str, Any] | None]:
        """
        Record a worker batch's attempts, each on its lineage (caller's transaction).

        ``sent`` holds each attempt with its lineage's row, read and locked
        in this transaction, and its worker run; ``states``, the health of
        its connectors as :func:`health.lock_states` locked it, when the
        caller took that lock first (before the lineages: the lock order).
        The answer holds, in the same order, each recorded attempt, or None
        where the lineage refused it (it moved on while the retry was out).

        The rules are those of one attempt at a time, and so are the results;
        the writing is batched: one insert for the attempts, one update for
        the lineages and one per connector for its health. A batch that
        would change a connector's state (a pause, a disable, or the first
        delivery to a paused connector) is recorded one attempt at a time,
        since each such change reassesses the connector's other lineages.
        """
        # PERF(workers): per-attempt statements made a worker spend ten times
        # longer in the database than on the wire.
        if not sent:
            return []
        lineage_ids = {row.lineage_id for _, row, _ in sent if row is not None}
        if states is None:
            states = health.lock_states(
                {attempt["connector_id"] for attempt, _, _ in sent}
            )
        prepared = None
        if len(lineage_ids) == len(sent):  # every lineage read, each one once
            prepared = self._prepared_batch(sent, states)
        if prepared is None:
            # Each lineage is read again: an earlier attempt of the batch may
            # have reassessed it (a pause lifted, say).
            return [self._one_sent(attempt, run_id) for attempt, _, run_id in sent]

        stored_rows, lineage_changes, folded = prepared
        rows = [row for _, row, _ in sent]
        store.insert_rows(DeliveryAttempt, [s for s in stored_rows if s is not None])
        recorded = [
            (row, changes)
            for row, changes in zip(rows, lineage_changes, strict=True)
            if changes is not None
        ]
        changed = store.update_rows(
            Lineage,
            [{"lineage_id": row.lineage_id, **changes} for row, changes in recorded],
            guards=[{"version": row.version} for row, _ in recorded],
        )
        expected = len(recorded)
        if changed != expected:
            # The rows were locked for this transaction; only a writer that
            # ignored the lock could get here. Write nothing, try again.
            raise peewee.OperationalError(
                f"{expected - changed} lineages changed while a batch was recorded"
            )
        for connector_id, outcome in folded.items():
            health.write_folded(connector_id, outcome)
        documents: list[dict[str, Any] | None] = []
        for row, stored, changes in zip(
            rows, stored_rows, lineage_changes, strict=True
        ):
            if stored is None:  # refused, and so without changes
                documents.append(None)
                continue
            metrics.count_delivery("worker", stored["outcome"], stored["connector_id"])
            _count_lineage_move(row, changes)
            documents.append(_attempt_document(stored, changes["state"]))
        return documents

    def _one_sent(
        self, attempt: Mapping[str, Any], run_id: str | None
    ) -> dict[str, Any] | None:
        """Record one sent attempt the slow way; None where the lineage refuses it."""
        try:
            return self._record_attempt(attempt, "worker", run_id, pointer="")
        except CavraError:
            return None

    def _prepared_batch(
        self,
        sent: Sequence[tuple[Mapping[str, Any], Lineage, str | None]],
        states: Mapping[str, ConnectorHealth],
    ) -> tuple[list[Any], list[Any], dict[str, Any]] | None:
        """
        A batch's attempt rows and lineage changes (None for one its lineage
        refuses) and folded connector health, computed without writing;
        None when the batch must go one at a time.
        """
        stored_rows: list[dict[str, Any] | None] = []
        lineage_changes: list[dict[str, Any] | None] = []
        folded: dict[str, health.Folded] = {}
        for attempt, row, run_id in sent:
            connector_id = attempt["connector_id"]
            connector = self.connectors.get(connector_id)
            state = states[connector_id]
            if state.state != health.ACTIVE:
                return None
            try:
                stored, changes = self._checked_attempt(
                    attempt, row, "worker", run_id, ""
                )
            except CavraError:
                stored_rows.append(None)
                lineage_changes.append(None)
                continue
            failed = stored["outcome"] != "delivered"
            facts = self._facts_from_row(row, changes) if failed else None
            category = self._failure_category(connector, facts) if facts else None
            if category in health.STATE_CHANGING:
                return None
            outcome = folded.setdefault(connector_id, health.Folded(state))
            outcome.add(
                delivered=not failed,
                error_class=stored["error_class"],
                category=category,
                at=stored["finished_at"],
            )
            # Only a failure is assessed under the connector's (new) health.
            with_health = (
                dataclasses.replace(connector, health=outcome.health) if facts else None
            )
            changes.update(self._assessed(row, facts, with_health, changes))
            stored_rows.append(stored)
            lineage_changes.append(changes)
        return stored_rows, lineage_changes, folded

    def _new_lineage(self, attempt: Mapping[str, Any], connector: Connector) -> Lineage:
        """Start the lineage of a package's first attempt to a connector."""
        package_id = attempt["package_id"]
        lineage_id = lineage_id_for(package_id, connector.connector_id)
        package = AuditPackage.get_by_id(package_id)
        Lineage.insert(
            lineage_id=lineage_id,
            package=package_id,
            connector_id=connector.connector_id,
            connector_type=connector.type,
            state="pending",
            package_generated_at=package.generated_at,
            config_fingerprint=connector.fingerprint,
            claimed_at=attempt["finished_at"],
        ).execute()
        store.bump_counters({"lineage:pending:": 1})
        return Lineage.get_by_id(lineage_id)

    def _checked_attempt(
        self,
        attempt: Mapping[str, Any],
        row: Lineage,
        source: str,
        worker_run_id: str | None,
        pointer: str,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """
        The attempt's stored row and its lineage's new values, before any write.

        Raises what refuses the attempt: a recovered lineage, a wrong attempt
        number, attempts out of order, a repeated import.
        """
        package_id = attempt["package_id"]
        connector_id = attempt["connector_id"]
        connector = self.connectors.get(connector_id)
        started_at: datetime = attempt["started_at"]
        finished_at: datetime = attempt["finished_at"]
        if row.state == "recovered":
            raise Conflict(
                "The lineage is already recovered; a recovered lineage takes no "
                "further attempts.",
                [FieldProblem(pointer, "belongs to a recovered lineage", "recovered")],
            )
        if source == "import":
            self._refuse_repeated_import(row, attempt, pointer)
        number = row.attempt_count + 1
        wanted = attempt.get("attempt_number")
        if wanted is not None and wanted != number:
            raise UnprocessableInput(
                f"The lineage's next attempt is number {number}.",
                [
                    FieldProblem(
                        f"{pointer}/attempt_number",
                        f"must be {number}, the lineage's next attempt number "
                        "(or leave it out)",
                        "attempt_number",
                    )
                ],
            )
        if row.last_attempt_at is not None and finished_at < row.last_attempt_at:
            raise UnprocessableInput(
                "Attempts must be recorded in the order they happened.",
                [
                    FieldProblem(
                        f"{pointer}/finished_at",
                        "is before the lineage's latest recorded attempt",
                        "time_order",
                    )
                ],
            )

        raw_retry_after = _clean_retry_after(attempt.get("retry_after"))
        retry_after_at = parse_retry_after(raw_retry_after, finished_at)
        failed = attempt["outcome"] != "delivered"
        codes = list(row.failed_status_codes or [])
        if failed and attempt.get("http_status") is not None:
            codes.append(attempt["http_status"])

        stored = {
            "attempt_id": new_id("att"),
            "lineage": row.lineage_id,
            "attempt_number": number,
            "package_id": package_id,
            "connector_id": connector_id,
            "connector_type": connector.type,
            "outcome": attempt["outcome"],
            "error_class": attempt.get("error_class"),
            "http_status": attempt.get("http_status"),
            "retry_after_raw": raw_retry_after,
            "retry_after_at": retry_after_at,
            "started_at": started_at,
            "finished_at": finished_at,
            "duration_ms": max(
                0, int((finished_at - started_at).total_seconds() * 1000)
            ),
            "source": source,
            "worker_run_id": worker_run_id,
        }
        changes: dict[str, Any] = {
            "attempt_count": number,
            "first_attempt_at": row.first_attempt_at or started_at,
            "last_attempt_at": finished_at,
            "last_outcome": attempt["outcome"],
            "last_error_class": attempt.get("error_class"),
            "last_http_status": attempt.get("http_status"),
            "last_retry_after_at": retry_after_at,
            "failed_status_codes": codes,
            "config_fingerprint": connector.fingerprint,
            "version": row.version + 1,
        }
        return stored, changes

    def _failure_category(
        self, connector: Connector, facts: LineageFacts
    ) -> str | None:
        """The classify hook's category of a lineage's latest failure, if any."""
        try:
            return self.hooks.classify_failure(connector, facts.latest).category
        except PluginFailure:
            return None

    def _assessed(
        self,
        row: Lineage,
        facts: LineageFacts | None,
        connector: Connector | None,
        changes: Mapping[str, Any],
    ) -> dict[str, Any]:
        """
        The lineage's state and assessment after its latest attempt: the
        decision under the connector's policy for a failure (``facts``),
        recovered for a delivery.
        """
        if facts is None:
            return {
                "state": "recovered",
                "latest_failed": False,
                "assessment": None,
                "eligible_from": None,
                "eligible_until": None,
                "closing_reason": None,
            }
        decision = evaluate(
            self.hooks,
            facts,
            connector,
            self.policy_for(row.connector_id, None),
            row.version + 1,
            changes["last_attempt_at"],
        )
        return {**assessment_of(decision, row.state), "latest_failed": True}

    def _refuse_repeated_import(
        self, row: Lineage, attempt: Mapping[str, Any], pointer: str
    ) -> None:
        """An import may not repeat an attempt, nor add failures to a closed lineage."""
        repeated = (
            DeliveryAttempt.select()
            .where(
                (DeliveryAttempt.lineage == row.lineage_id)
                & (DeliveryAttempt.started_at == attempt["started_at"])
            )
            .exists()
        )
        if repeated:
            raise Conflict(
                "This attempt is recorded already (same lineage and start time).",
                [FieldProblem(pointer, "repeats a recorded attempt", "duplicate")],
            )
        if row.state in ("exhausted", "suppressed") and attempt["outcome"] == "failed":
            raise Conflict(
                f"The lineage is closed ({row.state}); it takes no further failures.",
                [FieldProblem(pointer, f"belongs to a {row.state} lineage", "closed")],
            )

    def _facts_from_row(self, row: Lineage, changes: Mapping[str, Any]) -> LineageFacts:
        values = {field.name: getattr(row, field.name) for field in _LINEAGE_FIELDS}
        values["package"] = row.package_id
        values.update(changes)
        return _facts(values)

    # -- evaluation -------------------------------------------------------------

    def iter_failed_lineages(
        self, batches: Iterable[Iterable[tuple]] | None = None
    ) -> Iterator[tuple[LineageFacts, int]]:
        """
        Every lineage whose latest attempt failed, by lineage id, with its version.

        :param batches: raw row batches from :meth:`failed_lineage_rows` read
            elsewhere (by a plan writer); by default they are read here.
        """
        for rows in self.failed_lineage_rows() if batches is None else batches:
            for row in rows:
                yield _facts_from_tuple(row), row[-1]

    def failed_lineage_rows(self) -> Iterator[list[tuple]]:
        """The failed lineages as raw rows of ``_LINEAGE_FIELDS``, in batches."""
        # PERF(plan): raw rows and hand conversion; model rows cost 3x more.
        return read_lineage_rows(self.database, failed_lineage_batch)

    def iter_decisions(
        self,
        overrides: Mapping[str, Any] | None,
        now: datetime,
        batches: Iterable[Iterable[tuple]] | None = None,
    ) -> Iterator[Decision]:
        """One decision per failed lineage (see :meth:`iter_failed_lineages`)."""
        # Connector, its health and policy are looked up once per connector.
        known: dict[str, tuple[Any, RetryPolicy]] = {}
        hooks = self.hooks
        # PERF(plan): the rows are read here rather than through
        # iter_failed_lineages, one generator and one pair fewer per lineage.
        for rows in self.failed_lineage_rows() if batches is None else batches:
            for row in rows:
                facts = _facts_from_tuple(row)
                found = known.get(facts.connector_id)
                if found is None:
                    policy = self.policy_for(facts.connector_id, overrides)
                    found = known[facts.connector_id] = (
                        self.connector_with_health(facts.connector_id),
                        policy,
                    )
                yield evaluate(hooks, facts, found[0], found[1], row[-1], now)

    # -- retry plans ------------------------------------------------------------

    def plan_retries(
        self,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Make and store a retry plan over every failed lineage (``POST .../retry-plan``).

        Returns the plan's summary; its decisions are read with
        :meth:`iter_plan_decisions`, so memory stays bounded by the batch size
        however many lineages there are.
        """
        self._check_request("retry_plan_request", request)
        now = _aware(now, self.clock)
        who = self.actor_of(request, actor)
        policy, overrides = self._request_policy(request)
        plan_id = new_id("rp")
        hasher = hashlib.sha256(canonical_json(policy.as_document()).encode())
        keys_hasher = hashlib.sha256()
        reasons: Counter[tuple[str, str]] = Counter()

        plan = {
            "retry_plan_id": plan_id,
            "plan_hash": "",
            "generated_at": now,
            "generated_by": who.name,
            "actor_verified": who.verified,
            "policy": policy.as_document(),
            "decision_count": 0,
            "retryable_count": 0,
            "waiting_count": 0,
            "suppressed_count": 0,
            "alert_level": "healthy",
        }
        # The writer owns the plan's one transaction; see cavra_core.plan_writer.
        # PERF(plan): the garbage collector runs less often meanwhile.
        with (
            fewer_collections(),
            open_plan_writer(self.database, plan, failed_lineage_batch) as writer,
        ):
            position = 0
            decisions = self.iter_decisions(overrides, now, writer.lineage_batches())
            # PERF(plan): batches taken and counted in C, with no Python
            # step per decision here.
            while batch := list(islice(decisions, BATCH_SIZE)):
                reasons.update(map(_ACTION_AND_REASON, batch))
                writer.write(
                    _decision_rows(batch, plan_id, position, hasher, keys_hasher)
                )
                position += len(batch)
            counts = dict.fromkeys(("retry", "wait", "suppress"), 0)
            for (action, _), count in reasons.items():
                counts[action] += count
            plan_hash = hasher.hexdigest()
            writer.finish(
                {
                    "plan_hash": plan_hash,
                    "decision_count": position,
                    "retryable_count": counts["retry"],
                    "waiting_count": counts["wait"],
                    "suppressed_count": counts["suppress"],
                    "alert_level": alert_level(counts["retry"], counts["wait"]),
                },
                then=lambda: self._seal_plan(
                    plan_id, reasons, who, now, keys_hasher.hexdigest()
                ),
            )

        log.info(
            "retry plan made retry_plan_id=%s decisions=%d retry=%d wait=%d "
            "suppress=%d",
            plan_id,
            position,
            counts["retry"],
            counts["wait"],
            counts["suppress"],
        )
        return self.get_plan(plan_id, with_decisions=False)

    def _seal_plan(
        self,
        plan_id: str,
        reasons: Mapping[tuple[str, str], int],
        who: Actor,
        now: datetime,
        decision_keys_hash: str,
    ) -> None:
        """Count the plan's decisions and append its evidence (plan's transaction)."""
        metrics.count_decisions("plan", reasons)
        evidence.append(
            self.database,
            "retry_plan",
            plan_id,
            who,
            now,
            decision_keys_hash=decision_keys_hash,
        )

    def get_plan(
        self, retry_plan_id: str, *, with_decisions: bool = True
    ) -> dict[str, Any]:
        row = RetryPlan.get_or_none(RetryPlan.retry_plan_id == retry_plan_id)
        if row is None:
            raise NotFound(f"No retry plan {retry_plan_id}.")
        document = _plan_summary(row)
        if with_decisions:
            document["retry_decisions"] = list(self.iter_plan_decisions(retry_plan_id))
            validation.check_output("retry_plan", document)
        else:
            validation.check_output("retry_plan_summary", document)
        return document

    def iter_plan_decisions(self, retry_plan_id: str) -> Iterator[dict[str, Any]]:
        position = -1
        while True:
            rows = list(
                RetryDecision.select()
                .where(
                    (RetryDecision.plan == retry_plan_id)
                    & (RetryDecision.position > position)
                )
                .order_by(RetryDecision.position)
                .limit(BATCH_SIZE)
            )
            if not rows:
                return
            for row in rows:
                yield _decision_document(row)
            position = rows[-1].position

    def list_plans(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        rows, next_cursor = newest_first(
            RetryPlan.select(),
            RetryPlan.generated_at,
            RetryPlan.retry_plan_id,
            limit=limit,
            cursor=cursor,
        )
        items = [_plan_summary(row) for row in rows]
        page = {"items": items, "next_cursor": next_cursor}
        validation.check_output("retry_plan_page", page)
        return page

    # -- the worker -------------------------------------------------------------

    def run_worker(
        self,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
        window: tuple[datetime, datetime] | None = None,
        leases: executions.Leases | None = None,
        max_deliveries: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """
        Run the retry worker once (``POST .../worker-run``).

        The run evaluates every failed lineage afresh and selects ``retry``
        decisions whose window holds ``now``, oldest first. A dry run (the
        default) changes nothing but its own run record. A live run sends
        only decisions whose latest approval holds (see
        :mod:`cavra_core.executions`). Across every worker sharing the
        database, a schedule window gets at most one live run and at most one
        scheduled run (trigger ``schedule``).

        Args:
            window: the schedule window the run serves, for a scheduler whose
                windows are not ``interval_minutes`` aligned on the epoch
                (seconds, cron expressions); by default the aligned window
                holding ``now``.
            leases: how this worker claims the live run's queued retries
                (worker id, lease length, batch size); see
                :class:`cavra_core.executions.Leases`.
            max_deliveries: the most retries a live run queues, in place of
                the request's ``max_retry_deliveries`` (which the API caps at
                100); for a scheduled service, 1 to 10,000.
            stop: asked between deliveries; when true, a live run sends and
                records what is in hand, leaves the rest queued for other
                workers and finishes its record.

        Raises:
            Conflict: the schedule is disabled, or this window has its live
                run (reason ``live_run_exists``) or its scheduled run
                (``scheduled_run_exists``).
        """
        self._check_request("worker_run_request", request)
        started_at = _aware(now, self.clock)
        started = time.perf_counter()
        who = self.actor_of(request, actor)
        policy, overrides = self._request_policy(request)
        dry_run = request.get("dry_run", not request.get("execute", False))
        trigger = request.get("trigger", "manual")
        limit = request.get("max_retry_deliveries", 5)
        if max_deliveries is not None:
            if not 1 <= max_deliveries <= MAX_SERVICE_DELIVERIES:
                raise ValueError(
                    f"max_deliveries must be between 1 and {MAX_SERVICE_DELIVERIES}"
                )
            limit = max_deliveries
        schedule = dict(request.get("schedule") or {})
        interval = schedule.get("interval_minutes", 60)
        enabled = schedule.get("enabled", True)
        cadence = schedule.get("cadence") or f"every {interval} minutes"
        if not enabled:
            raise Conflict(
                "The worker schedule is disabled (schedule.enabled is false); "
                "enable it to run the worker.",
                [FieldProblem("/schedule/enabled", "is false", "schedule_disabled")],
            )
        window_start, window_end = window or aligned_window(started_at, interval)
        run_id = new_id("wr")
        record = {
            "run_id": run_id,
            "dry_run": dry_run,
            "trigger": trigger,
            "interval_minutes": interval,
            "window_start": window_start,
            "window_end": window_end,
            "cadence": cadence,
            "enabled": enabled,
            "started_at": started_at,
            "finished_at": started_at,
            "generated_by": who.name,
            "actor_verified": who.verified,
            "policy": policy.as_document(),
            "retryable_count": 0,
            "waiting_count": 0,
            "suppressed_count": 0,
            "selected_retry_count": 0,
            "executed_count": 0,
            "skipped_count": 0,
            "notes": [],
            "selected_retries": [],
            "state": "finished" if dry_run else "running",
        }
        if not dry_run:
            record["notes"] = [
                "Live run under way, or its worker stopped before finishing; "
                "its executions show what was sent."
            ]
        # Live and scheduled runs are recorded up front: the window's unique
        # keys decide, in the database, which worker runs it.
        claimed = not dry_run or trigger == "schedule"
        if not dry_run and (leases or self.leases).store_process:
            # Before the run is recorded: an engine no other process can
            # build, or a store process that cannot start, records nothing.
            self.executions.store_process(leases or self.leases)
        if claimed:
            self._claim_window(record, interval)

        # An approved retry may skip its delay when the request says so; a dry
        # run previews the same selection.
        immediate = policy.allow_immediate_retry
        covered = executions.lineages_with_words()
        counts = {"retry": 0, "wait": 0, "suppress": 0}
        reasons: dict[tuple[str, str], int] = {}
        oldest: list[tuple[int, str, Decision]] = []
        due: list[Decision] = []
        unapproved = 0
        for decision in self.iter_decisions(overrides, started_at):
            counts[decision.action] += 1
            key = (decision.action, decision.reason)
            reasons[key] = reasons.get(key, 0) + 1
            may_go = decision.action == "retry" or (
                immediate
                and decision.action == "wait"
                and decision.reason == "delay_not_elapsed"
            )
            if not may_go:
                continue
            if decision.action == "wait" and decision.lineage_id not in covered:
                continue  # an early send needs an approval
            if not dry_run:
                if decision.lineage_id in covered:
                    due.append(decision)
                else:
                    unapproved += 1
                continue
            entry = (
                -to_micros(decision.not_before),
                _invert(decision.lineage_id),
                decision,
            )
            if len(oldest) < limit:
                heapq.heappush(oldest, entry)
            elif entry > oldest[0]:
                heapq.heapreplace(oldest, entry)

        notes: list[str] = []
        if dry_run:
            candidates = [entry[2] for entry in sorted(oldest, reverse=True)]
            selected = [_selected(d, "would_deliver") for d in candidates]
            approved = self.executions.preview(candidates, started_at)
            for item in selected:
                item["approval_id"] = approved.get(item["lineage_id"])
            executed = 0
            skipped = counts["retry"] - len(selected)
            notes.append(
                "Dry run: nothing was delivered and no lineage changed; "
                f"{len(selected)} of {counts['retry']} due retries would be sent."
            )
            notes.append(
                f"{len(approved)} of the {len(selected)} selected have an approval "
                "that holds now (approval_id); a live run sends only those."
            )
            if skipped:
                notes.append(
                    f"{skipped} due retries were left for later runs by "
                    f"max_retry_deliveries={limit}."
                )
        else:

            def moment() -> datetime:
                return started_at + timedelta(seconds=time.perf_counter() - started)

            live = self.executions.run_live(
                run_id,
                due,
                limit,
                who,
                started_at,
                moment,
                leases=leases or self.leases,
                stop=stop,
            )
            selected = live.selected
            executed = live.executed
            skipped = len(due) + unapproved - executed
            unapproved += live.not_approved
            notes.append(
                f"Live run: {executed} approved retries were sent "
                f"({sum(1 for s in selected if s['outcome'] == 'delivered')} "
                "delivered)."
            )
            if live.in_hand:
                notes.append(
                    f"{live.in_hand} due retries were already queued or being "
                    "sent under their approval by an earlier run; any live "
                    "worker sends them."
                )
            if live.sent_for_others:
                notes.append(
                    f"This run's worker also sent {live.sent_for_others} retries "
                    "queued by earlier runs (left queued, or rescued from a "
                    "worker whose lease ran out); their executions name those "
                    "runs."
                )
            if unapproved:
                notes.append(
                    f"{unapproved} due retries have no usable approval; approve "
                    "their decisions in a retry plan to let a live run send them."
                )
            notes.extend(executions.describe_skips(live.skipped_by_reason))
            if live.left_for_later:
                notes.append(
                    f"{live.left_for_later} approved retries were left for later "
                    f"runs by max_retry_deliveries={limit}."
                )
            if live.still_queued:
                notes.append(
                    f"The run was stopped with {live.still_queued} approved "
                    "retries still queued; any live worker sends them."
                )

        elapsed = time.perf_counter() - started
        record.update(
            finished_at=started_at + timedelta(seconds=elapsed),
            retryable_count=counts["retry"],
            waiting_count=counts["wait"],
            suppressed_count=counts["suppress"],
            selected_retry_count=len(selected) if dry_run else live.selected_count,
            executed_count=executed,
            skipped_count=skipped,
            notes=notes,
            selected_retries=selected,
            state="finished",
        )
        document = _run_document_from(record)
        validation.check_output("worker_run", document)
        with self.database.atomic():
            if not claimed:
                WorkerRun.insert(**record).execute()
            else:
                WorkerRun.update(
                    **{k: v for k, v in record.items() if k != "run_id"}
                ).where(WorkerRun.run_id == run_id).execute()
            store.bump_counters(
                {
                    "worker_runs": 1,
                    "worker_dry_runs": 1 if dry_run else 0,
                    "worker_live_runs": 0 if dry_run else 1,
                    "selected_retries": len(selected),
                }
            )
            metrics.count_decisions("worker_run", reasons)
            metrics.WORKER_RUN_SECONDS.observe(elapsed, "dry" if dry_run else "live")
            evidence.append(self.database, "worker_run", run_id, who, started_at)
        log.info(
            "worker run finished run_id=%s trigger=%s dry_run=%s selected=%d "
            "executed=%d retryable=%d",
            run_id,
            trigger,
            dry_run,
            len(selected),
            executed,
            counts["retry"],
        )
        return document

    def _claim_window(self, record: dict[str, Any], interval: int) -> None:
        """
        Record a live or scheduled run up front; the window's unique keys
        refuse a second live run, and a second scheduled run, in one window.
        """
        keys = {}
        if not record["dry_run"]:
            keys["live_window_key"] = f"{to_micros(record['window_start'])}:{interval}"
        if record["trigger"] == "schedule":
            keys["schedule_window_key"] = schedule_window_key(
                record["window_start"], record["window_end"]
            )
        try:
            with self.database.atomic():
                WorkerRun.insert(**record, **keys).execute()
        except peewee.IntegrityError:
            for field, kind, reason in (
                ("live_window_key", "live", "live_run_exists"),
                ("schedule_window_key", "scheduled", "scheduled_run_exists"),
            ):
                if field not in keys:
                    continue
                first = WorkerRun.get_or_none(getattr(WorkerRun, field) == keys[field])
                if first is None:
                    continue
                raise Conflict(
                    f"This schedule window already has its {kind} run, "
                    f"{first.run_id}; the next window starts at "
                    f"{iso(record['window_end'])}.",
                    [
                        FieldProblem(
                            "/schedule",
                            f"window has {kind} run {first.run_id}",
                            reason,
                        )
                    ],
                ) from None
            raise

    def window_run_id(self, window: tuple[datetime, datetime]) -> str | None:
        """The scheduled run that claimed ``window``, if one did."""
        row = WorkerRun.get_or_none(
            WorkerRun.schedule_window_key == schedule_window_key(*window)
        )
        return None if row is None else row.run_id

    def run_state(self, run_id: str) -> str | None:
        """``running`` while a live run's queued retries are sent, else ``finished``."""
        row = (
            WorkerRun.select(WorkerRun.state)
            .where(WorkerRun.run_id == run_id)
            .tuples()
            .first()
        )
        return None if row is None else row[0]

    def get_run(self, run_id: str) -> dict[str, Any]:
        row = WorkerRun.get_or_none(WorkerRun.run_id == run_id)
        if row is None:
            raise NotFound(f"No worker run {run_id}.")
        return _run_document(row)

    def list_runs(
        self,
        *,
        dry_run: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        _require_aware(since=since, until=until)
        query = WorkerRun.select()
        if dry_run is not None:
            query = query.where(WorkerRun.dry_run == dry_run)
        if since is not None:
            query = query.where(WorkerRun.started_at >= since)
        if until is not None:
            query = query.where(WorkerRun.started_at < until)
        rows, next_cursor = newest_first(
            query, WorkerRun.started_at, WorkerRun.run_id, limit=limit, cursor=cursor
        )
        items = [_run_document(row, check=False) for row in rows]
        page = {"items": items, "next_cursor": next_cursor}
        validation.check_output("worker_run_page", page)
        return page

    # -- attempts ---------------------------------------------------------------

    def list_attempts(
        self,
        *,
        connector_id: str | None = None,
        outcome: str | None = None,
        lineage_state: str | None = None,
        error_class: str | None = None,
        lineage_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """
        One page of attempts, newest first, filtered (``GET .../attempts``).

        Each filter reads a range of an index on (filter, started_at,
        attempt_id); ``lineage_id`` reads the lineage's few attempts.
        """
        _require_aware(since=since, until=until)
        query = DeliveryAttempt.select(
            DeliveryAttempt, Lineage.state.alias("lineage_state")
        ).join(Lineage)
        if connector_id is not None:
            query = query.where(DeliveryAttempt.connector_id == connector_id)
        if outcome is not None:
            query = query.where(DeliveryAttempt.outcome == outcome)
        if lineage_state is not None:
            query = query.where(Lineage.state == lineage_state)
        if error_class is not None:
            query = query.where(DeliveryAttempt.error_class == error_class)
        if lineage_id is not None:
            query = query.where(DeliveryAttempt.lineage == lineage_id)
        if since is not None:
            query = query.where(DeliveryAttempt.started_at >= since)
        if until is not None:
            query = query.where(DeliveryAttempt.started_at < until)
        if cursor:
            micros, row_id = decode_cursor(cursor)
            query = query.where(
                _before_cursor(
                    DeliveryAttempt.started_at,
                    DeliveryAttempt.attempt_id,
                    micros,
                    row_id,
                )
            )
        rows = list(
            query.order_by(
                DeliveryAttempt.started_at.desc(), DeliveryAttempt.attempt_id.desc()
            )
            .limit(limit + 1)
            .objects()
        )
        items = [
            _attempt_document(row.__data__, row.lineage_state) for row in rows[:limit]
        ]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(to_micros(last.started_at), last.attempt_id)
        page = {"items": items, "next_cursor": next_cursor}
        validation.check_output("attempt_page", page)
        return page

    # -- dashboard --------------------------------------------------------------

    def dashboard(self, *, now: datetime | None = None) -> dict[str, Any]:
        """
        The worker dashboard, from running counters and index range counts.

        ``retryable_count``, ``waiting_count`` and ``suppressed_count`` count
        lineages now, under each connector's configured policy, as assessed
        when their latest attempt was recorded.
        """
        now = _aware(now, self.clock)
        micros = to_micros(now)
        counters = store.read_counters(
            "worker_runs",
            "worker_dry_runs",
            "worker_live_runs",
            "selected_retries",
            "lineage:failed:retryable",
            "lineage:failed:paused",
            "lineage:failed:suppressed",
            "lineage:suppressed:suppressed",
            "lineage:exhausted:suppressed",
        )
        retryable_base = (Lineage.state == "failed") & (
            Lineage.assessment == "retryable"
        )
        open_now = (
            Lineage.select()
            .where(retryable_base & (Lineage.eligible_until > micros))
            .where(Lineage.eligible_from <= micros)
            .count()
        )
        not_yet = (
            Lineage.select()
            .where(retryable_base & (Lineage.eligible_from > micros))
            .count()
        )
        expired = counters["lineage:failed:retryable"] - open_now - not_yet
        waiting = not_yet + counters["lineage:failed:paused"]
        suppressed = (
            counters["lineage:suppressed:suppressed"]
            + counters["lineage:exhausted:suppressed"]
            + counters["lineage:failed:suppressed"]
            + max(expired, 0)
        )
        latest = (
            WorkerRun.select()
            .order_by(WorkerRun.started_at.desc(), WorkerRun.run_id.desc())
            .limit(10)
        )
        execution_counts = self.executions.counts()
        document = {
            "generated_at": iso(now),
            "run_count": counters["worker_runs"],
            "dry_run_count": counters["worker_dry_runs"],
            "executed_count": counters["worker_live_runs"],
            "retryable_count": open_now,
            "selected_retry_count": counters["selected_retries"],
            "waiting_count": waiting,
            "suppressed_count": suppressed,
            "alert_level": alert_level(open_now, waiting),
            "paused_connector_count": self.paused_connector_count(),
            "executed_retry_count": execution_counts["delivered"]
            + execution_counts["failed"],
            "delivered_retry_count": execution_counts["delivered"],
            "failed_retry_count": execution_counts["failed"],
            "skipped_retry_count": execution_counts["skipped"],
            "latest_runs": [_run_document(row, check=False) for row in latest],
        }
        validation.check_output("dashboard", document)
        return document

    # -- connectors -------------------------------------------------------------

    def list_connectors(self) -> dict[str, Any]:
        """Every configured connector with its health; never a secret or a path."""
        states = health.load_health(list(self.connectors))
        items = [
            self._connector_document(connector_id, states[connector_id])
            for connector_id in self.connectors
        ]
        document = {"items": items}
        validation.check_output("connector_list", document)
        return document

    def get_connector(self, connector_id: str) -> dict[str, Any]:
        if connector_id not in self.connectors:
            raise NotFound("No connector with that id is configured.")
        state = health.load_health([connector_id])[connector_id]
        document = self._connector_document(connector_id, state)
        validation.check_output("connector", document)
        return document

    def resume_connector(
        self,
        connector_id: str,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Make a paused or disabled connector active again (``POST .../resume``)."""
        self._check_request("connector_resume_request", request)
        now = _aware(now, self.clock)
        who = self.actor_of(request, actor)
        connector = self.connectors.get(connector_id)
        if connector is None:
            raise NotFound("No connector with that id is configured.")
        with self.database.atomic():
            state = health.resume(connector, who.name, now)
            # Its lineages waiting on the pause are assessed afresh.
            self._reassess_connector(connector_id)
        document = self._connector_document(connector_id, state)
        validation.check_output("connector", document)
        return document

    def connector_with_health(self, connector_id: str) -> Connector | None:
        """The configured connector carrying its current health, for decisions."""
        connector = self.connectors.get(connector_id)
        if connector is None:
            return None
        state = health.load_health([connector_id])[connector_id]
        return dataclasses.replace(connector, health=state)

    def probe_connector(self, connector_id: str) -> dict[str, Any]:
        """
        Check a connector's reachability and credentials without delivering.

        Uses the connector type's ``probe``; a type without one says so.
        """
        connector = self.connectors.get(connector_id)
        if connector is None:
            raise NotFound("No connector with that id is configured.")
        connector_type = self.connectors.type_of(connector_id)
        probe = getattr(connector_type, "probe", None)
        if probe is None:
            result = ProbeResult(
                False,
                (ProbeCheck("probe", False, "this connector type offers no probe"),),
            )
        else:
            try:
                result = probe(connector)
            except Exception as exc:  # a probe must report, never raise
                log.warning(
                    "probe raised connector_id=%s error=%s",
                    connector_id,
                    type(exc).__name__,
                )
                result = ProbeResult(
                    False,
                    (
                        ProbeCheck(
                            "probe", False, f"the probe failed ({type(exc).__name__})"
                        ),
                    ),
                )
        return {
            "connector_id": connector_id,
            "ok": bool(result.ok),
            "checks": [
                {
                    "name": redaction.scrub_text(str(check.name), max_length=50),
                    "ok": bool(check.ok),
                    "detail": redaction.scrub_text(str(check.detail)),
                }
                for check in result.checks
            ],
        }

    def paused_connector_count(self) -> int:
        states = health.load_health(list(self.connectors))
        return sum(1 for state in states.values() if state.state != health.ACTIVE)

    def _reassess_connector(self, connector_id: str, exclude: str | None = None) -> int:
        """
        Assess a connector's open lineages afresh after its health changed.

        The dashboard counts from each lineage's assessment; a pause, disable
        or resume changes what its other lineages may do. Each is decided
        again as at its latest attempt, under the connector's health now.
        Runs inside the caller's transaction; returns how many changed.
        """
        connector = self.connector_with_health(connector_id)
        if connector is None:
            return 0
        policy = self.policy_for(connector_id, None)
        query = Lineage.select().where(
            (Lineage.connector_id == connector_id) & (Lineage.state == "failed")
        )
        if exclude:
            query = query.where(Lineage.lineage_id != exclude)
        changed = 0
        for row in query:
            facts = self._facts_from_row(row, {})
            decision = evaluate(
                self.hooks, facts, connector, policy, row.version, row.last_attempt_at
            )
            fresh = assessment_of(decision, row.state)
            if fresh["state"] != "failed":
                continue  # closing a lineage is for a new attempt to do
            same = (
                fresh["assessment"] == row.assessment
                and fresh["eligible_from"] == row.eligible_from
                and fresh["eligible_until"] == row.eligible_until
            )
            if same:
                continue
            updated = (
                Lineage.update(
                    assessment=fresh["assessment"],
                    eligible_from=fresh["eligible_from"],
                    eligible_until=fresh["eligible_until"],
                )
                .where(
                    (Lineage.lineage_id == row.lineage_id)
                    & (Lineage.version == row.version)
                )
                .execute()
            )
            if updated and fresh["assessment"] != row.assessment:
                store.bump_counters(
                    {
                        f"lineage:failed:{row.assessment or ''}": -1,
                        f"lineage:failed:{fresh['assessment']}": 1,
                    }
                )
            changed += bool(updated)
        return changed

    def _connector_document(
        self, connector_id: str, state: health.ConnectorHealth
    ) -> dict[str, Any]:
        connector = self.connectors.get(connector_id)
        connector_type = self.connectors.type_of(connector_id)
        return {
            "connector_id": connector_id,
            "type": connector.type,
            "category": connector.category,
            "endpoint": health.endpoint_of(connector),
            "acknowledgement": str(
                getattr(connector_type, "acknowledgement", "response") or "response"
            ),
            "honours_retry_after": connector.honours_retry_after,
            "state": state.state,
            "state_reason": state.reason,
            "state_error_class": state.error_class,
            "state_http_status": state.http_status,
            "state_changed_at": iso(state.changed_at),
            "state_changed_by": state.changed_by,
            "consecutive_failures": state.consecutive_failures,
            "last_failure_class": state.last_failure_class,
            "last_failure_category": state.last_failure_category,
            "last_failure_at": iso(state.last_failure_at),
            "last_success_at": iso(state.last_success_at),
        }

    def health(self) -> dict[str, Any]:
        self.database.execute_sql("SELECT 1")
        from cavra_core import __version__

        return {
            "status": "ok",
            "version": __version__,
            "database": self.backend,
            "connector_count": len(self.connectors),
        }


def open_engine(
    database_url: str | None = None,
    connectors: str | Path | Mapping[str, Any] | None = None,
    **options: Any,
) -> Engine:
    """Open an engine; see :class:`Engine` for the options."""
    return Engine(database_url, connectors, **options)


# -- helpers ----------------------------------------------------------------------


_ERROR_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,49}$")


def _normal_result(result: Any, connector_id: str) -> DeliveryResult:
    """
    A connector's result as cavra can store it: a malformed one is a
    ``connector_error`` failure, never stored as given.
    """
    outcome = getattr(result, "outcome", None)
    error_class = getattr(result, "error_class", None)
    status = getattr(result, "http_status", None)
    retry_after = getattr(result, "retry_after", None)
    well_formed = (
        outcome in ("delivered", "failed")
        and (
            error_class is None
            or (isinstance(error_class, str) and _ERROR_CLASS.match(error_class))
        )
        and (status is None or (type(status) is int and 100 <= status <= 599))
        and (retry_after is None or isinstance(retry_after, str))
        and not (outcome == "delivered" and error_class)
    )
    if well_formed:
        return result
    log.warning("connector returned a malformed result connector_id=%s", connector_id)
    return DeliveryResult(outcome="failed", error_class="connector_error")


def _before_cursor(time_field: Any, id_field: Any, micros: int, row_id: str) -> Any:
    """
    Rows after a keyset cursor in (time, id) descending order.

    PERF(lists): written with a bound on the time column first, so the index
    on (time, id) is entered at the cursor; the plain "time < t OR (time = t
    AND id < i)" made SQLite walk the index from the newest row down.
    """
    return (time_field <= micros) & ((time_field < micros) | (id_field < row_id))


def _skipped(connector_id: str, lineage_id: str, reason: str) -> dict[str, Any]:
    return {
        "connector_id": connector_id,
        "lineage_id": lineage_id,
        "attempt_id": None,
        "attempt_number": None,
        "outcome": "skipped",
        "http_status": None,
        "error_class": None,
        "skipped_reason": reason,
    }


def package_hash(package: Mapping[str, Any]) -> str:
    """
    The package id: sha256 of the canonical package document.

    Canonical means sorted keys, no insignificant white space, and every time
    normalised to UTC, so the same evidence always gets the same id.
    """
    normal = {
        "drill_id": package["drill_id"],
        "generated_at": iso(validation.parse_time(package["generated_at"])),
        "generated_by": package["generated_by"],
        "acknowledgements": [
            {
                "notification_id": ack["notification_id"],
                "role": ack["role"],
                "state": ack["state"],
                "acknowledged_at": iso(validation.parse_time(ack["acknowledged_at"])),
            }
            for ack in package["acknowledgements"]
        ],
    }
    return hashlib.sha256(canonical_json(normal).encode()).hexdigest()


def alert_level(retryable: int, waiting: int) -> str:
    if retryable:
        return "critical"
    if waiting:
        return "warning"
    return "healthy"


def schedule_window_key(start: datetime, end: datetime) -> str:
    """The unique key of a scheduled run's window: its bounds in microseconds."""
    return f"{to_micros(start)}:{to_micros(end)}"


def aligned_window(
    moment: datetime, interval_minutes: int
) -> tuple[datetime, datetime]:
    """The schedule window holding ``moment``: epoch-aligned interval multiples."""
    width = interval_minutes * 60 * 1_000_000
    micros = to_micros(moment)
    start = micros - micros % width
    return from_micros(start), from_micros(start + width)


def assessment_of(decision: Decision, previous_state: str) -> dict[str, Any]:
    """The lineage state and assessment that follow from a decision at record time."""
    closing = {
        "permanent_failure": "suppressed",
        "receiver_stop": "suppressed",
        "max_age_exceeded": "suppressed",
        "retry_after_beyond_window": "suppressed",
        "max_attempts_reached": "exhausted",
    }
    if decision.action == "suppress" and decision.reason in closing:
        return {
            "state": closing[decision.reason],
            "closing_reason": decision.reason,
            "assessment": "suppressed",
            "eligible_from": None,
            "eligible_until": None,
        }
    if decision.action == "suppress":
        return {
            "state": "failed",
            "closing_reason": None,
            "assessment": "suppressed",
            "eligible_from": None,
            "eligible_until": None,
        }
    if decision.reason in (
        "connector_paused",
        "connector_disabled",
        "connector_not_configured",
    ):
        return {
            "state": "failed",
            "closing_reason": None,
            "assessment": "paused",
            "eligible_from": None,
            "eligible_until": None,
        }
    return {
        "state": "failed",
        "closing_reason": None,
        "assessment": "retryable",
        "eligible_from": decision.not_before,
        "eligible_until": decision.not_after,
    }


def _facts(values: Mapping[str, Any]) -> LineageFacts:
    latest = AttemptFacts(
        attempt_number=values["attempt_count"],
        outcome=values["last_outcome"],
        error_class=values["last_error_class"],
        http_status=values["last_http_status"],
        retry_after_at=values["last_retry_after_at"],
        finished_at=values["last_attempt_at"],
    )
    return LineageFacts(
        lineage_id=values["lineage_id"],
        package_id=values["package"],
        connector_id=values["connector_id"],
        connector_type=values["connector_type"],
        state=values["state"],
        attempt_count=values["attempt_count"],
        first_attempt_at=values["first_attempt_at"],
        last_attempt_at=values["last_attempt_at"],
        package_generated_at=values["package_generated_at"],
        failed_status_codes=tuple(values["failed_status_codes"] or ()),
        latest=latest,
        config_fingerprint=values["config_fingerprint"],
        closing_reason=values["closing_reason"],
    )


_MICROSECOND = timedelta(microseconds=1)


def _micros(value: datetime) -> int:
    """:func:`store.to_micros`, with a shortcut for times already in UTC."""
    if value.tzinfo is UTC:
        return (value - _EPOCH) // _MICROSECOND
    return to_micros(value)


#: Stored failed-status lists (JSON text) and their tuples, both ways. A store
#: holds few distinct lists (a handful of statuses, one to a few attempts),
#: and parsing or printing one costs more than evaluating the lineage.
_CODES_BY_TEXT: dict[str, tuple[int, ...]] = {"[]": ()}
_TEXT_BY_CODES: dict[tuple[int, ...], str] = {(): "[]"}
_CODES_CACHE_LIMIT = 4096


def _status_codes(text: str) -> tuple[int, ...]:
    codes = _CODES_BY_TEXT.get(text)
    if codes is None:
        codes = tuple(json.loads(text))
        if len(_CODES_BY_TEXT) < _CODES_CACHE_LIMIT:
            _CODES_BY_TEXT[text] = codes
    return codes


def _status_codes_json(codes: tuple[int, ...]) -> str:
    text = _TEXT_BY_CODES.get(codes)
    if text is None:
        text = json.dumps(list(codes), separators=(",", ":"))
        if len(_TEXT_BY_CODES) < _CODES_CACHE_LIMIT:
            _TEXT_BY_CODES[codes] = text
    return text


def failed_lineage_batch(
    after: str, *, aliased: bool = False, batches: int = 1
) -> peewee.ModelSelect:
    """
    The next ``batches`` batches of failed lineages after the lineage id ``after``.

    Rows hold ``_LINEAGE_FIELDS``, named ``c0``, ``c1``... when ``aliased``,
    in lineage id order.
    """
    fields = _LINEAGE_FIELDS
    if aliased:
        fields = tuple(field.alias(f"c{index}") for index, field in enumerate(fields))
    return (
        Lineage.select(*fields)
        .where((Lineage.latest_failed == True) & (Lineage.lineage_id > after))  # noqa: E712
        .order_by(Lineage.latest_failed, Lineage.lineage_id)
        .limit(BATCH_SIZE * batches)
    )


def _facts_from_tuple(row: tuple) -> LineageFacts:
    """LineageFacts from a raw row of ``_LINEAGE_FIELDS`` (times as microseconds)."""
    (
        lineage_id,
        package_id,
        connector_id,
        connector_type,
        state,
        attempt_count,
        first_attempt_at,
        last_attempt_at,
        package_generated_at,
        last_outcome,
        last_error_class,
        last_http_status,
        last_retry_after_at,
        failed_status_codes,
        config_fingerprint,
        closing_reason,
        _version,
    ) = row
    # PERF(plan): microseconds to aware times inline, four per lineage;
    # timedelta(0, 0, n) is timedelta(microseconds=n) without keyword handling.
    epoch = _EPOCH
    last = None if last_attempt_at is None else epoch + timedelta(0, 0, last_attempt_at)
    # PERF(plan): both tuples made as a NamedTuple's own __new__ makes them,
    # without calling it: two Python calls fewer per lineage.
    latest = tuple_of(
        AttemptFacts,
        (
            attempt_count,
            last_outcome,
            last_error_class,
            last_http_status,
            None
            if last_retry_after_at is None
            else epoch + timedelta(0, 0, last_retry_after_at),
            last,
        ),
    )
    return tuple_of(
        LineageFacts,
        (
            lineage_id,
            package_id,
            connector_id,
            connector_type,
            state,
            attempt_count,
            None
            if first_attempt_at is None
            else epoch + timedelta(0, 0, first_attempt_at),
            last,
            None
            if package_generated_at is None
            else epoch + timedelta(0, 0, package_generated_at),
            _status_codes(failed_status_codes),
            latest,
            config_fingerprint,
            closing_reason,
        ),
    )


def _decision_rows(
    decisions: list[Decision],
    plan_id: str,
    first_position: int,
    hasher: Any,
    keys_hasher: Any,
) -> list[tuple]:
    """
    A batch of a plan's decisions as rows, each with a new random id.

    Feeds the plan hash on the way: a newline and the canonical JSON of each
    decision, in order (see :meth:`Decision.canonical_json`); and the decision
    keys hash of the plan's evidence entry (see
    :func:`cavra_core.evidence.decision_keys_text`).
    """
    if not decisions:
        return []
    # PERF(plan): one call to the system's random source for the whole batch
    # instead of one per id; every id still gets 16 random bytes of its own.
    random_hex = secrets.token_bytes(16 * len(decisions)).hex()
    # One row per decision in database form, in the order of the plan
    # writer's DECISION_COLUMNS (times as microseconds). PERF(plan): built in
    # place, not by a function called for each decision.
    # A decision's fields up to its retry delay are stored as they are.
    rows = [
        (
            f"rd_{random_hex[32 * offset : 32 * offset + 32]}",
            plan_id,
            first_position + offset,
            *as_they_are,
            None if not_before is None else _micros(not_before),
            None if not_after is None else _micros(not_after),
            _status_codes_json(failed_status_codes),
        )
        for offset, (*as_they_are, not_before, not_after, failed_status_codes) in (
            enumerate(decisions)
        )
    ]
    # PERF(plan): hashing one joined text per batch equals hashing "\n" and
    # each decision's JSON in turn, with far fewer calls.
    canonical = "\n".join([decision.canonical_json() for decision in decisions])
    hasher.update(("\n" + canonical).encode())
    # PERF(plan): zip hands out one reused tuple, not a tuple per row.
    keys = zip(
        map(_POSITION, rows), map(_DECISION_ID, rows), map(_VERSION, rows), strict=True
    )
    keys_hasher.update(evidence.decision_keys_text(keys).encode())
    return rows


#: The columns of a decision row that the decision keys hash covers.
_DECISION_ID, _POSITION, _VERSION = itemgetter(0), itemgetter(2), itemgetter(4)
#: A decision's (action, reason), what a plan counts.
_ACTION_AND_REASON = itemgetter(4, 5)


def _decision_document(row: RetryDecision) -> dict[str, Any]:
    return {
        "decision_id": row.decision_id,
        "lineage_id": row.lineage_id,
        "package_id": row.package_id,
        "connector_id": row.connector_id,
        "action": row.action,
        "reason": row.reason,
        "explanation": row.explanation,
        "retry_count": row.retry_count,
        "max_retry_attempts": row.max_retry_attempts,
        "retry_delay_seconds": row.retry_delay_seconds,
        "not_before": iso(row.not_before),
        "not_after": iso(row.not_after),
        "failed_status_codes": list(row.failed_status_codes),
    }


def _plan_summary(row: RetryPlan) -> dict[str, Any]:
    return {
        "retry_plan_id": row.retry_plan_id,
        "plan_hash": row.plan_hash,
        "generated_at": iso(row.generated_at),
        "generated_by": row.generated_by,
        "actor_verified": bool(row.actor_verified),
        "policy": row.policy,
        "decision_count": row.decision_count,
        "retryable_count": row.retryable_count,
        "waiting_count": row.waiting_count,
        "suppressed_count": row.suppressed_count,
        "alert_level": row.alert_level,
    }


def _invert(text: str) -> str:
    """A string that sorts in the opposite order, for a max-heap on ids."""
    return "".join(chr(0x10FFFF - ord(char)) for char in text)


def _selected(decision: Decision, outcome: str) -> dict[str, Any]:
    document = decision.as_document(new_id("rd"))
    document["next_attempt_number"] = decision.retry_count + 1
    document["outcome"] = outcome
    return document


def _run_document_from(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "run_id": record["run_id"],
        "dry_run": record["dry_run"],
        "trigger": record["trigger"],
        "state": record.get("state") or "finished",
        "schedule": {
            "interval_minutes": record["interval_minutes"],
            "window_start": iso(record["window_start"]),
            "window_end": iso(record["window_end"]),
            "cadence": record["cadence"],
            "enabled": record["enabled"],
        },
        "started_at": iso(record["started_at"]),
        "finished_at": iso(record["finished_at"]),
        "generated_by": record["generated_by"],
        "actor_verified": bool(record["actor_verified"]),
        "policy": record["policy"],
        "summary": {
            "retryable_count": record["retryable_count"],
            "waiting_count": record["waiting_count"],
            "suppressed_count": record["suppressed_count"],
            "selected_retry_count": record["selected_retry_count"],
            "executed_count": record["executed_count"],
            "skipped_count": record["skipped_count"],
        },
        "notes": list(record["notes"]),
        "selected_retries": list(record["selected_retries"]),
    }


def _run_document(row: WorkerRun, *, check: bool = True) -> dict[str, Any]:
    record = {field: getattr(row, field) for field in row._meta.fields}
    document = _run_document_from(record)
    if check:
        validation.check_output("worker_run", document)
    return document


def _count_lineage_move(row: Lineage, changes: Mapping[str, Any]) -> None:
    """Move the dashboard's lineage counters from the old state to the new."""
    before = f"lineage:{row.state}:{row.assessment or ''}"
    after = f"lineage:{changes['state']}:{changes.get('assessment') or ''}"
    if before != after:
        store.bump_counters({before: -1, after: 1})


def _attempt_document(stored: Mapping[str, Any], lineage_state: str) -> dict[str, Any]:
    """An attempt's API document from its stored column values."""
    return {
        "attempt_id": stored["attempt_id"],
        "lineage_id": stored["lineage"],
        "attempt_number": stored["attempt_number"],
        "package_id": stored["package_id"],
        "connector_id": stored["connector_id"],
        "connector_type": stored["connector_type"],
        "outcome": stored["outcome"],
        "error_class": stored["error_class"],
        "http_status": stored["http_status"],
        "retry_after": stored["retry_after_raw"],
        "retry_after_at": iso(stored["retry_after_at"]),
        "started_at": iso(stored["started_at"]),
        "finished_at": iso(stored["finished_at"]),
        "duration_ms": stored["duration_ms"],
        "source": stored["source"],
        "worker_run_id": stored["worker_run_id"],
        "lineage_state": lineage_state,
    }


def _clean_retry_after(raw: str | None) -> str | None:
    """
    A receiver's ``Retry-After`` as cavra may keep it: delta-seconds, or an
    HTTP-date rewritten in the standard form. Anything else is dropped, so a
    receiver cannot write arbitrary text (a token, say) into the evidence.
    """
    if raw is None:
        return None
    text = raw.strip()
    if re.fullmatch(r"[0-9]{1,12}", text):
        return text
    if len(text) > 64:
        return None
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None or parsed.tzinfo is None:
        return None
    return format_datetime(parsed.astimezone(UTC), usegmt=True)
