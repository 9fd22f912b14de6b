"""
Lineages as people read them: one lineage in full, and attempts over time.

:meth:`Lineages.get` gathers what a reviewer needs to understand one
lineage: its facts, its latest attempts, the decision it would get now under
its connector's configured policy, and the decision the newest retry plan
gave it. :meth:`Lineages.activity` counts failed, delivered and recovered
attempts per connector in time buckets, for a chart; it reads one range of
the attempts' start-time index and aggregates in the database.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import peewee

from cavra_core import validation
from cavra_core.decisions import evaluate, format_time_precise
from cavra_core.errors import FieldProblem, InvalidInput, NotFound
from cavra_core.store import (
    AuditPackage,
    DeliveryAttempt,
    Lineage,
    RetryDecision,
    RetryPlan,
    from_micros,
    to_micros,
)

if TYPE_CHECKING:
    from cavra_core.engine import Engine

#: The most attempts :meth:`Lineages.get` returns; the newest are kept.
MAX_ATTEMPTS = 100
DEFAULT_BUCKET_MINUTES = 60
MAX_BUCKET_MINUTES = 1440
#: The most buckets one activity answer may hold.
MAX_BUCKETS = 500
#: How far back activity reaches when ``since`` is not given.
DEFAULT_SPAN = timedelta(hours=24)
_MINUTE_MICROS = 60_000_000


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


class Lineages:
    """Lineages for the console's views; ``engine.lineages``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- one lineage --------------------------------------------------------------

    def get(self, lineage_id: str, *, now: datetime | None = None) -> dict[str, Any]:
        """
        One lineage with its attempts and decisions (``GET .../lineages/{id}``).

        ``decision`` is evaluated at ``now`` under the connector's configured
        policy, exactly as a plan made then would decide (without a decision
        id, since nothing is stored); it is ``None`` while the lineage's
        latest attempt did not fail (pending or recovered).

        Raises:
            NotFound: no lineage has this id.
        """
        engine = self.engine
        now = engine.now(now)
        row = (
            Lineage.select(Lineage, AuditPackage.drill_id)
            .join(AuditPackage)
            .where(Lineage.lineage_id == lineage_id)
            .objects()
            .get_or_none()
        )
        if row is None:
            raise NotFound(f"No lineage {lineage_id}.")

        attempts, truncated = self._latest_attempts(row)
        decision = None
        if row.latest_failed:
            facts = engine._facts_from_row(row, {})
            evaluated = evaluate(
                engine.hooks,
                facts,
                engine.connector_with_health(row.connector_id),
                engine.policy_for(row.connector_id, None),
                row.version,
                now,
            )
            decision = evaluated.as_document("")
            del decision["decision_id"]

        document = {
            "lineage_id": row.lineage_id,
            "package_id": row.package_id,
            "drill_id": row.drill_id,
            "connector_id": row.connector_id,
            "connector_type": row.connector_type,
            "state": row.state,
            "attempt_count": row.attempt_count,
            "first_attempt_at": _iso(row.first_attempt_at),
            "last_attempt_at": _iso(row.last_attempt_at),
            "attempts": attempts,
            "attempts_truncated": truncated,
            "decision": decision,
            "latest_plan_decision": _latest_plan_decision(lineage_id),
        }
        validation.check_output("lineage", document)
        return document

    def _latest_attempts(self, row: Lineage) -> tuple[list[dict[str, Any]], bool]:
        # Imported here: the engine module imports this one.
        from cavra_core.engine import _attempt_document

        newest = list(
            DeliveryAttempt.select()
            .where(DeliveryAttempt.lineage == row.lineage_id)
            .order_by(DeliveryAttempt.attempt_number.desc())
            .limit(MAX_ATTEMPTS + 1)
        )
        kept = newest[:MAX_ATTEMPTS]
        kept.reverse()
        documents = [_attempt_document(found.__data__, row.state) for found in kept]
        return documents, len(newest) > MAX_ATTEMPTS

    # -- activity over time -------------------------------------------------------

    def activity(
        self,
        *,
        connector_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        bucket_minutes: int = DEFAULT_BUCKET_MINUTES,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Failed, delivered and recovered attempts per connector, in time buckets.

        Buckets are ``bucket_minutes`` wide and aligned on multiples of that
        width since the epoch. ``since`` (default: ``until`` less 24 hours) is
        widened down to the start of its bucket and ``until`` (default:
        ``now``) up to the end of its own, so every bucket is counted whole;
        the answer's ``since`` and ``until`` are the widened bounds. Attempts
        count by ``started_at``; ``recovered`` counts the delivered attempts
        that were retries (``attempt_number`` above 1), which ``delivered``
        counts too. Every configured connector is listed (or only
        ``connector_id``), and any other with attempts in the range; empty
        buckets hold zeros.

        Raises:
            InvalidInput: ``bucket_minutes`` is not 1 to 1440, the range
                holds more than 500 buckets, ``since`` is not before
                ``until``, or a time has no UTC offset.
        """
        engine = self.engine
        now = engine.now(now)
        for name, value in (("since", since), ("until", until)):
            if value is not None and (
                value.tzinfo is None or value.utcoffset() is None
            ):
                raise _parameter_problem(name, "must carry a UTC offset", "naive_time")
        if (
            isinstance(bucket_minutes, bool)
            or not isinstance(bucket_minutes, int)
            or not 1 <= bucket_minutes <= MAX_BUCKET_MINUTES
        ):
            raise _parameter_problem(
                "bucket_minutes",
                f"must be a whole number from 1 to {MAX_BUCKET_MINUTES}",
                "range",
            )
        until = now if until is None else until
        since = until - DEFAULT_SPAN if since is None else since
        if since >= until:
            raise _parameter_problem(
                "since", "must be earlier than until (default: now)", "time_order"
            )

        width = bucket_minutes * _MINUTE_MICROS
        first = to_micros(since)
        first -= first % width
        end = to_micros(until)
        end += -end % width
        count = (end - first) // width
        if count > MAX_BUCKETS:
            raise _parameter_problem(
                "bucket_minutes",
                f"makes {count} buckets between since and until, more than "
                f"{MAX_BUCKETS}; use wider buckets or a shorter range",
                "too_many_buckets",
            )

        counted = _bucket_counts(connector_id, first, end, width)
        if connector_id is not None:
            connector_ids = [connector_id]
        else:
            connector_ids = sorted(
                set(engine.connectors) | {found for found, _ in counted}
            )
        connectors = []
        for found_id in connector_ids:
            buckets = []
            for number in range(count):
                start = first + number * width
                failed, delivered, recovered = counted.get((found_id, start), (0, 0, 0))
                buckets.append(
                    {
                        "start": _iso(from_micros(start)),
                        "failed": failed,
                        "delivered": delivered,
                        "recovered": recovered,
                    }
                )
            connectors.append({"connector_id": found_id, "buckets": buckets})

        document = {
            "since": _iso(from_micros(first)),
            "until": _iso(from_micros(end)),
            "bucket_minutes": bucket_minutes,
            "connectors": connectors,
        }
        validation.check_output("attempt_activity", document)
        return document


def _latest_plan_decision(lineage_id: str) -> dict[str, Any] | None:
    """The decision of the newest plan that decided the lineage, or ``None``."""
    # Imported here: the engine module imports this one.
    from cavra_core.engine import _decision_document

    # PERF(lineages): the lineage_id index finds every plan's decision on the
    # lineage, one per plan made while it failed; they are sorted by plan time.
    found = (
        RetryDecision.select(RetryDecision, RetryPlan.generated_at)
        .join(RetryPlan)
        .where(RetryDecision.lineage_id == lineage_id)
        .order_by(RetryPlan.generated_at.desc(), RetryPlan.retry_plan_id.desc())
        .limit(1)
        .objects()
        .get_or_none()
    )
    if found is None:
        return None
    return {
        "retry_plan_id": found.plan_id,
        "generated_at": _iso(found.generated_at),
        "decision": _decision_document(found),
    }


def _bucket_counts(
    connector_id: str | None, first: int, end: int, width: int
) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(connector id, bucket start) -> (failed, delivered, recovered) attempts."""
    rows = bucket_query(connector_id, first, end, width).tuples()
    return {
        (found, int(start)): (int(failed), int(ok), int(recovered))
        for found, start, failed, ok, recovered in rows
    }


def bucket_query(
    connector_id: str | None, first: int, end: int, width: int
) -> peewee.ModelSelect:
    """
    The grouped query behind :meth:`Lineages.activity`.

    It reads the attempts started in ``[first, end)`` (microseconds) through
    a range of the (started_at, attempt_id) index, or of the (connector_id,
    started_at, attempt_id) one for a single connector, and yields rows of
    connector id, bucket start, failed, delivered and recovered counts.
    """
    started = DeliveryAttempt.started_at
    # Integer division of the stored microseconds (never negative) on both
    # backends; a bare column, so the result is not read back as a time.
    column = peewee.SQL(started.column_name)
    bucket = (column / width) * width
    delivered = DeliveryAttempt.outcome == "delivered"
    query = DeliveryAttempt.select(
        DeliveryAttempt.connector_id,
        bucket,
        peewee.fn.SUM(peewee.Case(None, [(~delivered, 1)], 0)),
        peewee.fn.SUM(peewee.Case(None, [(delivered, 1)], 0)),
        peewee.fn.SUM(
            peewee.Case(
                None, [(delivered & (DeliveryAttempt.attempt_number > 1), 1)], 0
            )
        ),
    ).where((started >= first) & (started < end))
    if connector_id is not None:
        query = query.where(DeliveryAttempt.connector_id == connector_id)
    return query.group_by(DeliveryAttempt.connector_id, bucket)


def _parameter_problem(name: str, detail: str, reason: str) -> InvalidInput:
    return InvalidInput(
        f"{name} {detail}.",
        [FieldProblem("", detail, reason, parameter=name)],
    )
