"""
Connector recovery: playbooks for connectors that keep failing, and closing them.

A *recovery playbook* looks at every configured connector's failed attempts
within a lookback and, for each connector with at least ``min_failure_count``
of them, names what failed and what to do about it: steps from the
connector's plugin (:func:`cavra_core.hookspecs.cavra_recovery_steps`), or the
default policy's generic steps. Each connector of a playbook is an *item*
that people close with a *closure*: ``resolved``, ``mitigated``,
``deferred``, ``escalated`` or ``reopened``. The latest closure of an item is
its state; an item with none, or whose latest is ``deferred``, ``escalated``
or ``reopened``, is open.

A ``resolved`` closure must cite an execution that delivered to the
connector after the playbook was made: the word "resolved" is only as good
as a delivery that proves it.

Playbooks, their items and closures are stored with an evidence entry each,
in the same transaction. The recovery report counts open, closed and overdue
items against a service level, from index range queries.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import peewee

from cavra_core import evidence, health, redaction, validation
from cavra_core.decisions import format_time_precise
from cavra_core.errors import FieldProblem, NotFound, UnprocessableInput
from cavra_core.identity import Actor
from cavra_core.paging import newest_first
from cavra_core.plugins import PluginFailure
from cavra_core.store import (
    DeliveryAttempt,
    Execution,
    RecoveryClosure,
    RecoveryPlaybook,
    RecoveryPlaybookItem,
    from_micros,
    to_micros,
)
from cavra_core.types import AttemptFacts, Connector, FailureCount, RecoveryStep

if TYPE_CHECKING:
    from cavra_core.engine import Engine

log = logging.getLogger(__name__)

CLOSURE_STATES = ("resolved", "mitigated", "deferred", "escalated", "reopened")
#: Latest closure states that close an item; any other (or none) leaves it open.
CLOSED_STATES = ("resolved", "mitigated")
#: The open states; ``None`` is an item nobody has closed yet.
OPEN_STATES = (None, "deferred", "escalated", "reopened")
DEFAULT_SLO_MINUTES = 240
DEFAULT_REPORT_LIMIT = 100

#: An item's fields before its latest failure, in the documents' order.
_ITEM_FIELDS = (
    "connector_id",
    "connector_type",
    "category",
    "state",
    "failure_count",
    "failures_by_class",
    "failed_status_codes",
)
_STEP_TITLE_LENGTH = 120
_STEP_DETAIL_LENGTH = 1000
_NOTE_LENGTH = 500


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


class Recovery:
    """Recovery playbooks, closures and the recovery report of one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- playbooks --------------------------------------------------------------

    def create_playbook(
        self,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Make and store a playbook (``POST .../connector-recovery-playbook``).

        Items are the connectors with at least ``min_failure_count`` failed
        attempts started within the last ``lookback_hours`` before ``now``;
        none means every connector looked at was healthy.
        """
        engine = self.engine
        engine._check_request("recovery_playbook_request", request)
        now = engine.now(now)
        who = engine.actor_of(request, actor)
        min_failures = request.get("min_failure_count", 2)
        lookback = request.get("lookback_hours", 24)
        selected = request.get("connector_ids")
        if selected is not None:
            engine._require_connectors(list(selected), "/connector_ids")
        connector_ids = list(engine.connectors) if selected is None else selected
        since = now - timedelta(hours=lookback)

        states = health.load_health(connector_ids)
        items = []
        for connector_id in connector_ids:
            failures = _failure_counts(connector_id, since, now)
            total = sum(count for _, _, count, _, _ in failures)
            if total < min_failures:
                continue
            connector = engine.connectors.get(connector_id)
            connector = connector_with(connector, states[connector_id])
            items.append(self._item(connector, failures, since, now))
        items.sort(key=lambda item: (-item["failure_count"], item["connector_id"]))

        playbook_id = engine.new_id("pb")
        record = {
            "playbook_id": playbook_id,
            "generated_at": now,
            "generated_by": who.name,
            "actor_verified": who.verified,
            "min_failure_count": min_failures,
            "lookback_hours": lookback,
            "connector_ids": None if selected is None else list(selected),
            "item_count": len(items),
            "items": items,
        }
        document = _playbook_document(RecoveryPlaybook(**record), {}, [])
        validation.check_output("recovery_playbook", document)
        with engine.database.atomic():
            RecoveryPlaybook.insert(**record).execute()
            if items:
                RecoveryPlaybookItem.insert_many(
                    [
                        {
                            "playbook_id": playbook_id,
                            "connector_id": item["connector_id"],
                            "generated_at": now,
                        }
                        for item in items
                    ]
                ).execute()
            evidence.append(engine.database, "recovery_playbook", playbook_id, who, now)
        log.info(
            "recovery playbook made playbook_id=%s items=%d", playbook_id, len(items)
        )
        return document

    def _item(
        self,
        connector: Connector,
        counts: list[tuple[str | None, int | None, int, int, datetime | None]],
        since: datetime,
        now: datetime,
    ) -> dict[str, Any]:
        """One connector's item: what failed, and the steps to take."""
        notes: list[str] = []
        failures = self._failure_kinds(connector, counts, now, notes)
        try:
            steps = self.engine.hooks.recovery_steps(connector, failures)
        except PluginFailure as failure:
            plugin = failure.plugin or "a plugin"
            notes.append(
                f"The {plugin} plugin failed to give recovery steps "
                f"({failure.error_type}); cavra's generic steps are shown instead."
            )
            steps = self.engine.hooks.default_recovery_steps(connector, failures)
        steps = [*steps, _verification_step(connector.connector_id)]

        by_class: dict[str, int] = {}
        for failure in failures:
            by_class[failure.error_class] = (
                by_class.get(failure.error_class, 0) + failure.count
            )
        statuses = sorted({f.http_status for f in failures if f.http_status})
        state = connector.health.state if connector.health else health.ACTIVE
        return {
            "connector_id": connector.connector_id,
            "connector_type": connector.type,
            "category": connector.category,
            "state": state,
            "failure_count": sum(failure.count for failure in failures),
            "failures_by_class": dict(sorted(by_class.items())),
            "failed_status_codes": statuses,
            "latest_failure": _latest_failure(connector.connector_id, since, now),
            "steps": [_step_document(step) for step in steps],
            "notes": [redaction.scrub_text(note, _NOTE_LENGTH) for note in notes],
        }

    def _failure_kinds(
        self,
        connector: Connector,
        counts: list[tuple[str | None, int | None, int, int, datetime | None]],
        now: datetime,
        notes: list[str],
    ) -> list[FailureCount]:
        """
        The connector's kinds of failure, classified, most frequent first.

        A null error class is ``http_status`` when the attempt had a status,
        ``unknown`` when it had none; both spellings count as one kind.
        """
        merged: dict[tuple[str, int | None], list[Any]] = {}
        for error_class, status, count, with_retry_after, retry_after_at in counts:
            name = error_class or ("http_status" if status is not None else "unknown")
            entry = merged.setdefault((name, status), [error_class, 0, 0, None])
            entry[1] += count
            entry[2] += with_retry_after
            if retry_after_at is not None and (
                entry[3] is None or retry_after_at > entry[3]
            ):
                entry[3] = retry_after_at

        kinds = []
        for (name, status), (stored, count, with_retry_after, latest) in merged.items():
            # Classification depends on the error class and the status only.
            facts = AttemptFacts(1, "failed", stored, status, None, now)
            try:
                category = self.engine.hooks.classify_failure(connector, facts).category
            except PluginFailure as failure:
                category = "transient"
                notes.append(
                    f"A plugin failed to classify {name} ({failure.error_type}); "
                    "it is counted as transient."
                )
            kinds.append(
                FailureCount(name, status, category, count, with_retry_after, latest)
            )
        kinds.sort(
            key=lambda kind: (-kind.count, kind.error_class, kind.http_status or 0)
        )
        return kinds

    def get_playbook(self, playbook_id: str) -> dict[str, Any]:
        """One playbook with its items' closure states and every closure."""
        row = RecoveryPlaybook.get_or_none(RecoveryPlaybook.playbook_id == playbook_id)
        if row is None:
            raise NotFound(f"No recovery playbook {playbook_id}.")
        document = self._documents([row])[0]
        validation.check_output("recovery_playbook", document)
        return document

    def list_playbooks(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> dict[str, Any]:
        """Playbooks, newest first, one keyset page at a time."""
        rows, next_cursor = newest_first(
            RecoveryPlaybook.select(),
            RecoveryPlaybook.generated_at,
            RecoveryPlaybook.playbook_id,
            limit=limit,
            cursor=cursor,
        )
        page = {"items": self._documents(rows), "next_cursor": next_cursor}
        validation.check_output("recovery_playbook_page", page)
        return page

    def _documents(self, rows: list[RecoveryPlaybook]) -> list[dict[str, Any]]:
        """Playbook documents for ``rows``, their items and closures read at once."""
        ids = [row.playbook_id for row in rows]
        if not ids:
            return []
        states: dict[str, dict[str, RecoveryPlaybookItem]] = {}
        for item in RecoveryPlaybookItem.select().where(
            RecoveryPlaybookItem.playbook_id.in_(ids)
        ):
            states.setdefault(item.playbook_id, {})[item.connector_id] = item
        closures: dict[str, list[RecoveryClosure]] = {}
        for closure in (
            RecoveryClosure.select()
            .where(RecoveryClosure.playbook_id.in_(ids))
            .order_by(RecoveryClosure.closed_at, RecoveryClosure.closure_id)
        ):
            closures.setdefault(closure.playbook_id, []).append(closure)
        return [
            _playbook_document(
                row, states.get(row.playbook_id, {}), closures.get(row.playbook_id, [])
            )
            for row in rows
        ]

    # -- closures ---------------------------------------------------------------

    def close(
        self,
        playbook_id: str,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Record a person's word on one connector of a playbook
        (``POST .../connector-recovery-playbooks/{playbook_id}/closures``).

        The latest closure of an item is its state. A ``resolved`` closure
        must cite, in ``verification_refs``, an execution that delivered to
        the connector after the playbook was generated; every cited id must
        name an execution or attempt of that connector.
        """
        engine = self.engine
        engine._check_request("recovery_closure_request", request)
        now = engine.now(now)
        who = engine.actor_of(request, actor, "closed_by")
        playbook = RecoveryPlaybook.get_or_none(
            RecoveryPlaybook.playbook_id == playbook_id
        )
        if playbook is None:
            raise NotFound(f"No recovery playbook {playbook_id}.")
        connector_id = request["connector_id"]
        this_item = (RecoveryPlaybookItem.playbook_id == playbook_id) & (
            RecoveryPlaybookItem.connector_id == connector_id
        )
        if not RecoveryPlaybookItem.select().where(this_item).exists():
            raise NotFound(
                "The playbook has no item for this connector.",
                [
                    FieldProblem(
                        "/connector_id",
                        "names no connector of this playbook; close one of its "
                        "items (see the playbook's items)",
                        "not_in_playbook",
                    )
                ],
            )
        state = request["closure_state"]
        refs = list(request.get("verification_refs") or [])
        _check_references(refs, connector_id, state, playbook.generated_at)

        closure_id = engine.new_id("cl")
        row = {
            "closure_id": closure_id,
            "playbook_id": playbook_id,
            "connector_id": connector_id,
            "closure_state": state,
            "external_ref": request.get("external_ref"),
            "notes": request.get("notes"),
            "verification_refs": refs,
            "closed_by": who.name,
            "actor_verified": who.verified,
            "closed_at": now,
        }
        document = _closure_document(RecoveryClosure(**row))
        validation.check_output("recovery_closure", document)
        with engine.database.atomic():
            # Written first: the item's row lock (the write lock on SQLite)
            # orders concurrent closures, so the latest one read below is
            # the latest committed.
            RecoveryPlaybookItem.update(
                closure_state=RecoveryPlaybookItem.closure_state
            ).where(this_item).execute()
            RecoveryClosure.insert(**row).execute()
            latest = (
                RecoveryClosure.select(
                    RecoveryClosure.closure_state, RecoveryClosure.closed_at
                )
                .where(
                    (RecoveryClosure.playbook_id == playbook_id)
                    & (RecoveryClosure.connector_id == connector_id)
                )
                .order_by(
                    RecoveryClosure.closed_at.desc(), RecoveryClosure.closure_id.desc()
                )
                .first()
            )
            closed = latest.closure_state in CLOSED_STATES
            RecoveryPlaybookItem.update(
                closure_state=latest.closure_state,
                closed_at=latest.closed_at if closed else None,
            ).where(this_item).execute()
            evidence.append(engine.database, "recovery_closure", closure_id, who, now)
        log.info(
            "recovery item closed playbook_id=%s connector_id=%s state=%s "
            "closure_id=%s",
            playbook_id,
            connector_id,
            state,
            closure_id,
        )
        return document

    # -- the report -------------------------------------------------------------

    def report(
        self,
        *,
        slo_minutes: int = DEFAULT_SLO_MINUTES,
        limit: int = DEFAULT_REPORT_LIMIT,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Open, closed and overdue playbook items (``GET .../connector-recovery-report``).

        An item is overdue when it is open and its playbook was generated more
        than ``slo_minutes`` before ``now``. Counts are complete; each list
        holds at most ``limit`` items: open and overdue ones oldest first,
        closed ones newest first.
        """
        now = self.engine.now(now)
        slo = timedelta(minutes=slo_minutes)
        deadline = to_micros(now - slo)

        def count(states: Iterable[str | None], before: int | None = None) -> int:
            return sum(_in_state(state, before).count() for state in states)

        open_rows = _merged(OPEN_STATES, limit, oldest_first=True)
        overdue_rows = _merged(OPEN_STATES, limit, oldest_first=True, before=deadline)
        closed_rows = _merged(CLOSED_STATES, limit, oldest_first=False)
        document = {
            "generated_at": _iso(now),
            "slo_minutes": slo_minutes,
            "limit": limit,
            "open_count": count(OPEN_STATES),
            "closed_count": count(CLOSED_STATES),
            "overdue_count": count(OPEN_STATES, deadline),
            "open_items": [_report_item(row, slo, now) for row in open_rows],
            "closed_items": [_report_item(row, slo, now) for row in closed_rows],
            "overdue_items": [_report_item(row, slo, now) for row in overdue_rows],
        }
        validation.check_output("recovery_report", document)
        return document


# -- reading failures -------------------------------------------------------------


def _failed_attempts(connector_id: str, since: datetime, now: datetime) -> Any:
    """The condition for one connector's failed attempts started in [since, now]."""
    # The (connector_id, started_at, attempt_id) index bounds the scan.
    return (
        (DeliveryAttempt.connector_id == connector_id)
        & (DeliveryAttempt.started_at >= since)
        & (DeliveryAttempt.started_at <= now)
        & (DeliveryAttempt.outcome == "failed")
    )


def _failure_counts(
    connector_id: str, since: datetime, now: datetime
) -> list[tuple[str | None, int | None, int, int, datetime | None]]:
    """
    Failed attempts by (error class, status): count, how many with a
    ``Retry-After``, and the latest ``Retry-After`` time.
    """
    rows = (
        DeliveryAttempt.select(
            DeliveryAttempt.error_class,
            DeliveryAttempt.http_status,
            peewee.fn.COUNT(DeliveryAttempt.attempt_id),
            peewee.fn.COUNT(DeliveryAttempt.retry_after_at),
            peewee.fn.MAX(DeliveryAttempt.retry_after_at),
        )
        .where(_failed_attempts(connector_id, since, now))
        .group_by(DeliveryAttempt.error_class, DeliveryAttempt.http_status)
        .tuples()
    )
    return [
        (
            error_class,
            status,
            int(count),
            int(with_retry_after),
            _as_time(latest),
        )
        for error_class, status, count, with_retry_after, latest in rows
    ]


def _as_time(value: Any) -> datetime | None:
    """An aggregate of a time column: peewee converts it, unless it cannot."""
    if value is None or isinstance(value, datetime):
        return value
    return from_micros(value)


def _latest_failure(
    connector_id: str, since: datetime, now: datetime
) -> dict[str, Any]:
    row = (
        DeliveryAttempt.select(
            DeliveryAttempt.attempt_id,
            DeliveryAttempt.error_class,
            DeliveryAttempt.http_status,
            DeliveryAttempt.started_at,
        )
        .where(_failed_attempts(connector_id, since, now))
        .order_by(DeliveryAttempt.started_at.desc(), DeliveryAttempt.attempt_id.desc())
        .first()
    )
    error_class = row.error_class or (
        "http_status" if row.http_status is not None else "unknown"
    )
    return {
        "attempt_id": row.attempt_id,
        "error_class": error_class,
        "http_status": row.http_status,
        "started_at": _iso(row.started_at),
    }


def connector_with(connector: Connector, state: Any) -> Connector:
    """The connector carrying its health, as the hooks see it."""
    return dataclasses.replace(connector, health=state)


def _step_document(step: RecoveryStep) -> dict[str, str]:
    """A step as evidence: its texts scrubbed of anything secret."""
    return {
        "code": step.code,
        "title": redaction.scrub_text(step.title, _STEP_TITLE_LENGTH),
        "detail": redaction.scrub_text(step.detail, _STEP_DETAIL_LENGTH),
    }


def _verification_step(connector_id: str) -> RecoveryStep:
    """The step cavra adds to every item: how a recovery is proven and closed."""
    return RecoveryStep(
        "verify_recovery",
        "Prove the recovery with a delivery, then close the item",
        f"Once a live worker run has delivered an approved retry to {connector_id}, "
        "close this item as resolved, citing that execution's id (ex_...) in "
        "verification_refs. Without such a delivery, close it as mitigated, "
        "deferred or escalated instead.",
    )


# -- closures ---------------------------------------------------------------------


def _check_references(
    refs: list[str], connector_id: str, state: str, generated_at: datetime
) -> None:
    """
    Every cited id names an execution or attempt of the connector, and a
    ``resolved`` closure cites a delivery made after the playbook.
    """
    executions = {
        row.execution_id: row
        for row in Execution.select(
            Execution.execution_id,
            Execution.connector_id,
            Execution.outcome,
            Execution.started_at,
        ).where(Execution.execution_id.in_([r for r in refs if r.startswith("ex_")]))
    }
    attempts = {
        row.attempt_id: row.connector_id
        for row in DeliveryAttempt.select(
            DeliveryAttempt.attempt_id, DeliveryAttempt.connector_id
        ).where(
            DeliveryAttempt.attempt_id.in_([r for r in refs if r.startswith("att_")])
        )
    }
    problems = []
    for index, ref in enumerate(refs):
        if ref.startswith("ex_"):
            found = executions.get(ref)
            owner = None if found is None else found.connector_id
            what = "execution"
        else:
            owner = attempts.get(ref)
            what = "delivery attempt"
        if owner is None:
            problems.append(
                FieldProblem(
                    f"/verification_refs/{index}",
                    f"names no {what}; cite ids as the executions and attempts "
                    "lists show them",
                    "unknown_reference",
                )
            )
        elif owner != connector_id:
            problems.append(
                FieldProblem(
                    f"/verification_refs/{index}",
                    f"is a {what} of another connector; cite only this connector's",
                    "other_connector",
                )
            )
    if problems:
        raise UnprocessableInput(
            "Some verification references cannot be cited.", problems
        )

    proven = any(
        row.outcome == "delivered" and row.started_at > generated_at
        for row in executions.values()
    )
    if state == "resolved" and not proven:
        raise UnprocessableInput(
            "A resolved closure needs proof that the connector delivers again.",
            [
                FieldProblem(
                    "/verification_refs",
                    "must cite the id of an execution (ex_...) that delivered to "
                    f"{connector_id} after the playbook was generated "
                    f"({_iso(generated_at)}): approve a retry and run the worker "
                    "live, then cite its execution; or close as mitigated",
                    "verification_required",
                )
            ],
        )


# -- the report -------------------------------------------------------------------


def _in_state(state: str | None, before: int | None = None) -> peewee.ModelSelect:
    """Items in one closure state (generated before ``before``), by the index."""
    column = RecoveryPlaybookItem.closure_state
    query = RecoveryPlaybookItem.select().where(
        column.is_null() if state is None else column == state
    )
    if before is not None:
        query = query.where(RecoveryPlaybookItem.generated_at < before)
    return query


def _merged(
    states: Iterable[str | None],
    limit: int,
    *,
    oldest_first: bool,
    before: int | None = None,
) -> list[RecoveryPlaybookItem]:
    """
    The first ``limit`` items over several states, by generation time.

    One index range per state, each cut at ``limit``, merged: ordering one
    query over several states would sort every matching row.
    """
    generated_at = RecoveryPlaybookItem.generated_at
    playbook_id = RecoveryPlaybookItem.playbook_id
    connector_id = RecoveryPlaybookItem.connector_id
    order = (
        (generated_at, playbook_id, connector_id)
        if oldest_first
        else (generated_at.desc(), playbook_id.desc(), connector_id.desc())
    )

    def key(row: RecoveryPlaybookItem) -> tuple[int, str, str]:
        return (to_micros(row.generated_at), row.playbook_id, row.connector_id)

    runs: list[Iterator[RecoveryPlaybookItem]] = [
        iter(_in_state(state, before).order_by(*order).limit(limit)) for state in states
    ]
    merged = heapq.merge(*runs, key=key, reverse=not oldest_first)
    return list(itertools.islice(merged, limit))


def _report_item(
    row: RecoveryPlaybookItem, slo: timedelta, now: datetime
) -> dict[str, Any]:
    due_at = row.generated_at + slo
    open_ = row.closure_state not in CLOSED_STATES
    return {
        "playbook_id": row.playbook_id,
        "connector_id": row.connector_id,
        "generated_at": _iso(row.generated_at),
        "closure_state": row.closure_state,
        "closed_at": _iso(row.closed_at),
        "due_at": _iso(due_at),
        "overdue": open_ and now > due_at,
    }


# -- documents --------------------------------------------------------------------


def _playbook_document(
    row: RecoveryPlaybook,
    states: Mapping[str, RecoveryPlaybookItem],
    closures: list[RecoveryClosure],
) -> dict[str, Any]:
    items = []
    for item in row.items:
        stored = states.get(item["connector_id"])
        # Rebuilt field by field: the stored JSON has its keys sorted.
        items.append(
            {
                **{field: item[field] for field in _ITEM_FIELDS},
                "latest_failure": {
                    field: item["latest_failure"][field]
                    for field in (
                        "attempt_id",
                        "error_class",
                        "http_status",
                        "started_at",
                    )
                },
                "steps": [
                    {field: step[field] for field in ("code", "title", "detail")}
                    for step in item["steps"]
                ],
                "notes": item["notes"],
                "closure_state": None if stored is None else stored.closure_state,
                "closed_at": None if stored is None else _iso(stored.closed_at),
            }
        )
    return {
        "playbook_id": row.playbook_id,
        "generated_at": _iso(row.generated_at),
        "generated_by": row.generated_by,
        "actor_verified": bool(row.actor_verified),
        "min_failure_count": row.min_failure_count,
        "lookback_hours": row.lookback_hours,
        "lookback_start": _iso(row.generated_at - timedelta(hours=row.lookback_hours)),
        "connector_ids": row.connector_ids,
        "item_count": row.item_count,
        "items": items,
        "closures": [_closure_document(closure) for closure in closures],
    }


def _closure_document(row: RecoveryClosure) -> dict[str, Any]:
    return {
        "closure_id": row.closure_id,
        "playbook_id": row.playbook_id,
        "connector_id": row.connector_id,
        "closure_state": row.closure_state,
        "external_ref": row.external_ref,
        "notes": row.notes,
        "verification_refs": list(row.verification_refs or []),
        "closed_by": row.closed_by,
        "actor_verified": bool(row.actor_verified),
        "closed_at": _iso(row.closed_at),
    }


__all__ = [
    "CLOSED_STATES",
    "CLOSURE_STATES",
    "OPEN_STATES",
    "Recovery",
]
