"""
Live re-delivery of approved decisions, and the execution records it leaves.

A live worker run hands this module the retries that are due now. Each one
is sent only when the latest word on its lineage is a usable approval (see
:mod:`cavra_core.approvals`). For each approved lineage the worker

1. claims the attempt: one transaction inserts an :class:`Execution` whose
   ``claim_key`` (lineage and attempt number) is unique in the database and
   marks the approval's decision used, so no second delivery of that attempt
   can ever be recorded, however many workers run;
2. delivers it through the connector, with the lineage's stable event id;
3. records the outcome on the execution, the attempt on the lineage
   (delivered: recovered; failed: one more attempt; the last allowed one
   failed: exhausted) and an evidence entry.

Approvals that do not hold (denied, revoked, expired, used, stale) give a
``skipped`` execution with the reason, so the run shows why it sent nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import peewee

from cavra_core import evidence, metrics, store, validation
from cavra_core.approvals import SKIP_REASONS, Word, skip_reason
from cavra_core.decisions import Decision, format_time_precise
from cavra_core.errors import CavraError, NotFound
from cavra_core.identity import Actor
from cavra_core.paging import newest_first
from cavra_core.store import (
    Approval,
    ApprovalItem,
    Execution,
    Lineage,
    RetryPlan,
)

if TYPE_CHECKING:
    from cavra_core.engine import Engine

log = logging.getLogger(__name__)

#: Counters the dashboard reads.
EXECUTION_COUNTERS = (
    "executions:delivered",
    "executions:failed",
    "executions:skipped",
)


class LiveResult(NamedTuple):
    """What a live run did: the retries it sent or skipped, with counts."""

    selected: list[dict[str, Any]]
    #: Approved retries taken for delivery (within max_retry_deliveries).
    selected_count: int
    executed: int
    not_approved: int
    skipped_by_reason: dict[str, int]
    left_for_later: int


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


class Executions:
    """Execution records of live runs; ``engine.executions``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- the live run -------------------------------------------------------------

    def run_live(
        self,
        run_id: str,
        due: Sequence[Decision],
        limit: int,
        actor: Actor,
        now: datetime,
        clock: Callable[[], datetime],
    ) -> LiveResult:
        """
        Send the approved ones of ``due`` (oldest first), at most ``limit``.

        ``due`` are this run's fresh decisions that may go now; ``clock``
        gives the moment each delivery starts. Runs outside
        any transaction: each claim and each outcome commits on its own, so a
        crash between them leaves a ``claimed`` execution, never a second send.
        """
        words = self.engine.approvals.latest_words(d.lineage_id for d in due)
        lineages = _lineages(d.lineage_id for d in due if d.lineage_id in words)
        plan_hashes = _plan_hashes(w.approval.retry_plan_id for w in words.values())

        approved: list[tuple[Decision, Word]] = []
        skipped_by_reason: dict[str, int] = {}
        selected: list[dict[str, Any]] = []
        not_approved = 0
        for decision in due:
            word = words.get(decision.lineage_id)
            lineage = lineages.get(decision.lineage_id)
            if word is None or lineage is None:
                not_approved += 1
                continue
            reason = skip_reason(
                word, lineage, plan_hashes.get(word.approval.retry_plan_id, ""), now
            )
            if reason == "approval_used":
                # The approval served its attempt; the next one needs a new word.
                not_approved += 1
                continue
            if reason:
                skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + 1
                if not _skip_recorded(word, reason):
                    execution = self._record_skip(
                        run_id, decision, word, reason, actor, now
                    )
                    selected.append(_selected(decision, execution))
                continue
            approved.append((decision, word))

        executed = 0
        approved.sort(key=lambda pair: (pair[0].not_before, pair[0].lineage_id))
        for decision, word in approved[:limit]:
            execution = self._execute(run_id, decision, word, actor, clock())
            selected.append(_selected(decision, execution))
            executed += execution["outcome"] in ("delivered", "failed")
            if execution["outcome"] == "skipped":
                reason = execution["skipped_reason"]
                skipped_by_reason[reason] = skipped_by_reason.get(reason, 0) + 1
        return LiveResult(
            selected=selected,
            selected_count=min(limit, len(approved)),
            executed=executed,
            not_approved=not_approved,
            skipped_by_reason=skipped_by_reason,
            left_for_later=max(0, len(approved) - limit),
        )

    def preview(self, due: Sequence[Decision], now: datetime) -> dict[str, str]:
        """For a dry run: the lineages of ``due`` a live run would send, by approval."""
        words = self.engine.approvals.latest_words(d.lineage_id for d in due)
        lineages = _lineages(words)
        plan_hashes = _plan_hashes(w.approval.retry_plan_id for w in words.values())
        found = {}
        for lineage_id, word in words.items():
            lineage = lineages.get(lineage_id)
            plan_hash = plan_hashes.get(word.approval.retry_plan_id, "")
            if lineage is not None and not skip_reason(word, lineage, plan_hash, now):
                found[lineage_id] = word.approval.approval_id
        return found

    def _record_skip(
        self,
        run_id: str,
        decision: Decision,
        word: Word,
        reason: str,
        actor: Actor,
        now: datetime,
    ) -> dict[str, Any]:
        engine = self.engine
        execution_id = engine.new_id("ex")
        with engine.database.atomic():
            Execution.insert(
                execution_id=execution_id,
                run_id=run_id,
                decision_id=word.item.decision_id,
                approval_id=word.approval.approval_id,
                lineage_id=decision.lineage_id,
                package_id=decision.package_id,
                connector_id=decision.connector_id,
                attempt_number=decision.retry_count + 1,
                outcome="skipped",
                skipped_reason=reason,
                started_at=now,
                finished_at=now,
            ).execute()
            self._seal(execution_id, "skipped", actor, now)
        return self.get(execution_id)

    def _execute(
        self,
        run_id: str,
        decision: Decision,
        word: Word,
        actor: Actor,
        started_at: datetime,
    ) -> dict[str, Any]:
        """Claim, deliver and record one approved attempt."""
        engine = self.engine
        attempt_number = decision.retry_count + 1
        execution_id = engine.new_id("ex")
        reason, word = self._claim(execution_id, run_id, decision, word, started_at)
        if reason:
            # The word changed since the run began (revoked, denied, expired),
            # or another worker or writer moved the lineage first.
            return self._record_skip(run_id, decision, word, reason, actor, started_at)

        started = time.perf_counter()
        try:
            attempt = engine.deliver_attempt(
                decision.lineage_id,
                attempt_number,
                source="worker",
                worker_run_id=run_id,
                now=started_at,
            )
        except CavraError:
            # Sent, but the lineage moved on before the attempt was recorded.
            attempt = None
        elapsed = time.perf_counter() - started
        finished_at = started_at + timedelta(seconds=elapsed)
        outcome = attempt["outcome"] if attempt else "failed"
        with engine.database.atomic():
            Execution.update(
                outcome=outcome,
                error_class=attempt["error_class"] if attempt else "not_recorded",
                http_status=attempt["http_status"] if attempt else None,
                attempt_id=attempt["attempt_id"] if attempt else None,
                finished_at=finished_at,
                duration_ms=int(elapsed * 1000),
            ).where(Execution.execution_id == execution_id).execute()
            self._seal(execution_id, outcome, actor, finished_at)
        log.info(
            "retry sent execution_id=%s lineage_id=%s attempt=%d outcome=%s",
            execution_id,
            decision.lineage_id,
            attempt_number,
            outcome,
        )
        return self.get(execution_id)

    def _claim(
        self,
        execution_id: str,
        run_id: str,
        decision: Decision,
        word: Word,
        now: datetime,
    ) -> tuple[str, Word]:
        """
        Take the attempt for this run: ``("", word)``, or why it was not taken.

        The latest word on the lineage is read again inside the claim's
        transaction (a revocation or denial made while the run was under way
        counts), with its approval row locked on PostgreSQL so a revocation
        waits for the claim or the claim sees the revocation. The unique
        ``claim_key`` makes a second claim of the same attempt fail in the
        database; the approval item is marked used in the same transaction
        with a compare-and-set, so it serves once.
        """
        attempt_number = decision.retry_count + 1
        database = self.engine.database
        try:
            with database.atomic():
                lineage_id = decision.lineage_id
                word = self.engine.approvals.latest_words([lineage_id]).get(
                    lineage_id, word
                )
                approval = Approval.select().where(
                    Approval.approval_id == word.approval.approval_id
                )
                if isinstance(database, peewee.PostgresqlDatabase):
                    approval = approval.for_update()
                word = Word(approval.get(), word.item)
                lineage = Lineage.get_or_none(Lineage.lineage_id == lineage_id)
                if lineage is None or lineage.attempt_count + 1 != attempt_number:
                    return "approval_stale", word
                plan_hash = _plan_hashes([word.approval.retry_plan_id]).get(
                    word.approval.retry_plan_id, ""
                )
                reason = skip_reason(word, lineage, plan_hash, now)
                if reason:
                    return reason, word
                used = (
                    ApprovalItem.update(used_at=now, execution_id=execution_id)
                    .where(
                        (ApprovalItem.id == word.item.id)
                        & ApprovalItem.used_at.is_null()
                    )
                    .execute()
                )
                if not used:
                    return "approval_used", word
                Approval.update(used_count=Approval.used_count + 1).where(
                    Approval.approval_id == word.approval.approval_id
                ).execute()
                Execution.insert(
                    execution_id=execution_id,
                    run_id=run_id,
                    decision_id=word.item.decision_id,
                    approval_id=word.approval.approval_id,
                    lineage_id=lineage_id,
                    package_id=decision.package_id,
                    connector_id=decision.connector_id,
                    attempt_number=attempt_number,
                    claim_key=f"{lineage_id}:{attempt_number}",
                    outcome="claimed",
                    started_at=now,
                ).execute()
                if decision.not_before is not None:
                    # An approved retry sent before its delay ran out (an
                    # immediate retry) counts as no lag at all.
                    lag = max(0.0, (now - decision.not_before).total_seconds())
                    metrics.CLAIM_LAG_SECONDS.observe(lag, decision.connector_id)
        except peewee.IntegrityError:
            return "already_claimed", word
        return "", word

    def _seal(
        self, execution_id: str, outcome: str, actor: Actor, at: datetime
    ) -> None:
        """Count the outcome and append its evidence entry (caller's transaction)."""
        store.bump_counters({f"executions:{outcome}": 1})
        entry = evidence.append(
            self.engine.database, "execution", execution_id, actor, at
        )
        Execution.update(evidence_sequence=entry["sequence"]).where(
            Execution.execution_id == execution_id
        ).execute()

    # -- reading ------------------------------------------------------------------

    def get(self, execution_id: str) -> dict[str, Any]:
        row = Execution.get_or_none(Execution.execution_id == execution_id)
        if row is None:
            raise NotFound(f"No execution {execution_id}.")
        document = execution_document(row)
        validation.check_output("execution", document)
        return document

    def list(
        self,
        *,
        run_id: str | None = None,
        lineage_id: str | None = None,
        connector_id: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Executions newest first; filters narrow the page."""
        query = Execution.select()
        if run_id is not None:
            query = query.where(Execution.run_id == run_id)
        if lineage_id is not None:
            query = query.where(Execution.lineage_id == lineage_id)
        if connector_id is not None:
            query = query.where(Execution.connector_id == connector_id)
        if outcome is not None:
            query = query.where(Execution.outcome == outcome)
        if since is not None:
            query = query.where(Execution.started_at >= since)
        if until is not None:
            query = query.where(Execution.started_at < until)
        rows, next_cursor = newest_first(
            query,
            Execution.started_at,
            Execution.execution_id,
            limit=limit,
            cursor=cursor,
        )
        items = [execution_document(row) for row in rows]
        page = {"items": items, "next_cursor": next_cursor}
        validation.check_output("execution_page", page)
        return page

    def counts(self) -> dict[str, int]:
        found = store.read_counters(*EXECUTION_COUNTERS)
        return {name.split(":", 1)[1]: value for name, value in found.items()}


def execution_document(row: Execution) -> dict[str, Any]:
    return {
        "execution_id": row.execution_id,
        "run_id": row.run_id,
        "decision_id": row.decision_id,
        "approval_id": row.approval_id,
        "lineage_id": row.lineage_id,
        "package_id": row.package_id,
        "connector_id": row.connector_id,
        "attempt_number": row.attempt_number,
        "outcome": row.outcome,
        "skipped_reason": row.skipped_reason,
        "error_class": row.error_class,
        "http_status": row.http_status,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
        "duration_ms": row.duration_ms,
        "evidence": {
            "attempt_id": row.attempt_id,
            "evidence_sequence": row.evidence_sequence,
        },
    }


def _selected(decision: Decision, execution: Mapping[str, Any]) -> dict[str, Any]:
    """A run's selected retry: the fresh decision and what became of it."""
    document = decision.as_document(execution["decision_id"])
    document["next_attempt_number"] = execution["attempt_number"]
    document["outcome"] = execution["outcome"]
    document["skipped_reason"] = execution["skipped_reason"]
    document["approval_id"] = execution["approval_id"]
    document["execution_id"] = execution["execution_id"]
    return document


def _skip_recorded(word: Word, reason: str) -> bool:
    """Whether an earlier run already recorded this skip; it is noted, not repeated."""
    return (
        Execution.select()
        .where(
            (Execution.approval_id == word.approval.approval_id)
            & (Execution.lineage_id == word.item.lineage_id)
            & (Execution.skipped_reason == reason)
        )
        .exists()
    )


def lineages_with_words() -> set[str]:
    """Every lineage some approval or denial covers."""
    # PERF(governance): read whole; it grows with approvals people give, not
    # with deliveries, and a live run needs it to pick candidates in one pass.
    return {
        lineage_id
        for (lineage_id,) in ApprovalItem.select(ApprovalItem.lineage_id)
        .distinct()
        .tuples()
    }


def _lineages(lineage_ids: Any) -> dict[str, Lineage]:
    wanted = list(dict.fromkeys(lineage_ids))
    found: dict[str, Lineage] = {}
    for start in range(0, len(wanted), 500):
        for row in Lineage.select().where(
            Lineage.lineage_id.in_(wanted[start : start + 500])
        ):
            found[row.lineage_id] = row
    return found


def _plan_hashes(plan_ids: Any) -> dict[str, str]:
    wanted = list(dict.fromkeys(plan_ids))
    if not wanted:
        return {}
    return dict(
        RetryPlan.select(RetryPlan.retry_plan_id, RetryPlan.plan_hash)
        .where(RetryPlan.retry_plan_id.in_(wanted))
        .tuples()
    )


def describe_skips(skipped_by_reason: Mapping[str, int]) -> list[str]:
    """One sentence per skip reason, for a run's notes."""
    return [
        f"{count} approved retries were not sent: {SKIP_REASONS.get(reason, reason)}."
        for reason, count in sorted(skipped_by_reason.items())
    ]
