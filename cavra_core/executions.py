"""
Live re-delivery of approved decisions, and the execution records it leaves.

A live worker run hands this module the retries that are due now. Each one
is sent only when the latest word on its lineage is a usable approval (see
:mod:`cavra_core.approvals`). The work goes through a queue in the database,
so that several workers can share it and a worker that dies loses nothing:

1. **queue**: the run inserts one ``queued`` :class:`Execution` per approved
   retry, whose ``claim_key`` (lineage and attempt number) is unique in the
   database, and marks the approval's item used by it, in one transaction.
   No second execution of that attempt can ever be recorded, however many
   workers run.
2. **claim**: any worker takes a batch of queued executions
   (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so workers never
   wait for one another's rows) under a lease: its worker id and an expiry.
   The latest word on each lineage is checked again in that transaction.
   While the deliveries are in hand a heartbeat extends the lease. A lease
   that expired (its worker died or lost the database) is rescued by the
   next worker that claims: the execution is claimed again and sent again.
3. **send**: before a batch's first delivery one statement checks every
   claim of the batch: that the worker still holds it (a worker frozen
   past its lease sends nothing another worker took over), that the
   lineage has not moved on, and the latest word. Every approval, denial
   and revocation is announced at its commit (a PostgreSQL notification
   the worker listens for, a counter on SQLite); before each later
   delivery the claims left are checked again when a word was announced,
   when the last check is over :data:`RECHECK_SECONDS` old, or when the
   lease or the approval it saw has run out. So a revocation or denial
   stops every retry not yet on the wire. The delivery carries the
   lineage's stable event id.
4. **record**: the outcomes of a batch, the attempts on their lineages
   (delivered: recovered; failed: one more attempt; the last allowed one
   failed: exhausted) and their evidence entries are written in the one
   transaction that releases the claims, and only while this worker still
   holds them.

The database work of a worker runs beside the sends, on a thread of its
own (:class:`_StoreWork`) or in a process of its own
(:class:`~cavra_core.store_child.StoreProcess`,
``Leases(store_process=True)``, what ``cavra
worker serve`` does): while one batch is sent, the next one is claimed and
the one before is recorded, so a delivery waits for no database round trip
but its batch's check. In a process, the claims and records do not share
the sending interpreter's lock either.

A worker killed between a send and its record has its lease rescued; the
rescuer sends again with the same event id. So the receiver gets every
retry, and a receiver that keeps event ids sees each once; at most the
two batches a dead worker had on the wire or unrecorded (the one being
sent and the one before it, while it is recorded) can reach a receiver
twice.

Approvals that do not hold (denied, revoked, expired, used, stale) give a
``skipped`` execution with the reason, so the run shows why it sent nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import (
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import peewee

from cavra_core import evidence, health, metrics, store, validation
from cavra_core.approvals import (
    SKIP_REASONS,
    WORDS_CHANNEL,
    WORDS_GIVEN,
    Word,
    lineage_versions,
    newest_words_first,
    skip_reason,
)
from cavra_core.decisions import Decision, format_time_precise
from cavra_core.errors import NotFound
from cavra_core.identity import Actor
from cavra_core.paging import newest_first
from cavra_core.store import (
    Approval,
    ApprovalItem,
    Execution,
    Lineage,
    RetryPlan,
)
from cavra_core.store_child import StoreProcess, StoreProcessEnded, uncount

if TYPE_CHECKING:
    from cavra_core.engine import Engine

log = logging.getLogger(__name__)

#: Counters the dashboard reads.
EXECUTION_COUNTERS = (
    "executions:delivered",
    "executions:failed",
    "executions:skipped",
)
#: Counter family of rescued leases, by connector.
LEASE_RESCUES = "lease_rescues:"
#: Outcomes of executions still to be sent.
PENDING = ("queued", "claimed")
#: How long a worker waiting for others' claims sleeps between looks.
POLL_SECONDS = 0.2
#: What the check before a send says when the claim is no longer this worker's.
LEASE_LOST = "lease_lost"
#: How old the check of a batch's claims may be when one of them is sent.
RECHECK_SECONDS = 1.0
#: A lineage's columns that change after its claim: its version moves with
#: every attempt, the assessment also when its connector's health changes.
_CHANGING = (
    Lineage.version,
    Lineage.assessment,
    Lineage.eligible_from,
    Lineage.eligible_until,
)
#: The columns a batch's record writes on each execution.
_OUTCOME_FIELDS = (
    "outcome",
    "skipped_reason",
    "claim_key",
    "error_class",
    "http_status",
    "attempt_id",
    "started_at",
    "finished_at",
    "duration_ms",
    "lease_owner",
    "lease_expires_at",
    "evidence_sequence",
)
#: What a lost connection or a busy store raises; a worker waits and goes on.
DATABASE_ERRORS = (peewee.OperationalError, peewee.InterfaceError)
#: What a claim or record may fail with: the database, or the store process
#: that ended (it is started again for the next job).
STORE_ERRORS = (*DATABASE_ERRORS, StoreProcessEnded)

T = TypeVar("T")
#: Queue writes go in chunks of this many executions.
_CHUNK = 500
#: How long the sends of one claimed batch should take, at the pace of the
#: batch before (see :attr:`Leases.batch_size`).
BATCH_SECONDS = 0.5
#: The most a worker claims before it knows its pace: a short queue is
#: spread over the workers, and a slow receiver does not get a big batch.
FIRST_BATCH = 100
#: Executions queued at once after which the planner's statistics of the
#: executions are brought up to date (PostgreSQL).
ANALYZE_AFTER = 1_000


#: What a worker id may be: it is shown in executions, logs and the API.
WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


def default_worker_id() -> str:
    """``host:pid``: which process holds a lease, readable in the executions."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:80] or "host"
    return f"{host.lstrip('._-') or 'host'}:{os.getpid()}"


@dataclass(frozen=True)
class Leases:
    """
    How a worker claims queued retries.

    Attributes:
        worker_id: names this worker in leases and executions.
        lease_seconds: how long a claim holds without a heartbeat; a worker
            that dies loses its claims to the others after this long.
        batch_size: the most executions claimed in one transaction. A
            worker claims about :data:`BATCH_SECONDS` of its recent sending
            at a time (at first :data:`FIRST_BATCH`), up to this: big
            batches to a fast receiver (less bookkeeping a delivery), small
            ones to a slow one (claims spread over the workers, little in
            hand if one dies).
        store_process: claim and record in a process of the worker's own
            (:class:`~cavra_core.store_child.StoreProcess`) rather than on a
            thread beside the sends. The engine must be one another
            process can build again (:attr:`Engine.rebuild`: no plugin
            objects, no clock of its own); the store process reads the
            real time.
    """

    worker_id: str = field(default_factory=default_worker_id)
    lease_seconds: float = 30.0
    batch_size: int = 1000
    store_process: bool = False

    def __post_init__(self) -> None:
        if not WORKER_ID.fullmatch(self.worker_id):
            raise ValueError(
                "worker_id must be 1 to 100 letters, digits, '.', '_', ':' or '-', "
                "starting with a letter or digit (a host name and a number, say)"
            )
        if not 1 <= self.lease_seconds <= 3600:
            raise ValueError("lease_seconds must be between 1 and 3600")
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be between 1 and 1000")


class LiveResult(NamedTuple):
    """What a live run did: the retries it sent or skipped, with counts."""

    selected: list[dict[str, Any]]
    #: Approved retries taken for delivery (within max_retry_deliveries).
    selected_count: int
    executed: int
    not_approved: int
    #: Due retries whose approval is in use: queued or being sent already.
    in_hand: int
    skipped_by_reason: dict[str, int]
    left_for_later: int
    #: Queued retries of this run still unsent when it was asked to stop.
    still_queued: int = 0
    #: Retries of other runs (left queued, or rescued) this run's worker sent.
    sent_for_others: int = 0


class _Verdict(NamedTuple):
    """The check of one claim before its send."""

    #: ``""`` (send it), :data:`LEASE_LOST` or the reason to skip it.
    reason: str
    #: Until when (microseconds) the lease and the approval seen hold.
    holds_until: int


class _Claim(NamedTuple):
    """An execution this worker holds, with its lineage as claimed."""

    row: Execution | _SendableRow
    lineage: Lineage | _SendableLineage


class _SendableRow(NamedTuple):
    """What sending a claim reads of its execution (from a store process)."""

    execution_id: str
    lineage_id: str
    attempt_number: int
    package_id: str
    approval_id: str | None
    connector_id: str


class _SendableLineage(NamedTuple):
    """What sending a claim reads of its lineage (from a store process)."""

    lineage_id: str
    connector_id: str
    package_id: str


def sendable(batch: _Batch) -> _Batch:
    """
    A claimed batch as its sender needs it: what the sends read of each
    execution and lineage, not the rows (a store process hands batches to
    the worker pickled, and keeps the rows for their record).
    """
    return _Batch(
        [
            _Claim(
                _SendableRow(
                    row.execution_id,
                    row.lineage_id,
                    row.attempt_number,
                    row.package_id,
                    row.approval_id,
                    row.connector_id,
                ),
                _SendableLineage(
                    lineage.lineage_id, lineage.connector_id, lineage.package_id
                ),
            )
            for row, lineage in batch.claims
        ],
        batch.packages,
    )


class _Batch(NamedTuple):
    """Claims taken together, with their packages' documents by id."""

    claims: list[_Claim]
    #: None when they could not be read with the claims.
    packages: dict[str, dict[str, Any]] | None


#: A checked claim: the attempt sent (None when it was not) and the reason
#: it was not sent (``""`` when it was).
_Outcome = tuple[_Claim, dict[str, Any] | None, str]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


class Executions:
    """Execution records of live runs; ``engine.executions``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: The store processes of this engine's live workers, by worker id.
        self._processes: dict[str, StoreProcess] = {}
        self._process_lock = threading.Lock()

    def close(self) -> None:
        """End the store processes that were started."""
        with self._process_lock:
            processes = list(self._processes.values())
            self._processes.clear()
        for process in processes:
            process.close()

    def store_process(self, leases: Leases) -> StoreProcess:
        """
        The store process for workers with these leases, started at the
        first call and kept for the next ones until :meth:`close` (one for
        each worker id: runs under other worker ids get their own).

        Raises:
            ValueError: the engine cannot be built again in another process,
                or this worker id has a store process with other leases.
            cavra_core.store_child.StoreProcessFailed: the store process
                could not start.
        """
        recipe = self.engine.rebuild
        if recipe is None:
            raise ValueError(
                "store_process needs an engine another process can build again: "
                "one made from a database URL and connectors, without plugin "
                "objects or a clock of its own; leave store_process false"
            )
        with self._process_lock:
            process = self._processes.get(leases.worker_id)
            if process is not None and process.leases != leases:
                # Its heartbeat and its claims in hand serve one worker id,
                # with one lease length.
                raise ValueError(
                    f"worker id {leases.worker_id} has a store process with other "
                    "leases; give each lease setting a worker id of its own"
                )
            if process is None:
                process = StoreProcess(recipe, leases)
                self._processes[leases.worker_id] = process
            return process

    # -- the live run -------------------------------------------------------------

    def run_live(
        self,
        run_id: str,
        due: Sequence[Decision],
        limit: int,
        actor: Actor,
        now: datetime,
        clock: Callable[[], datetime],
        *,
        leases: Leases | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> LiveResult:
        """
        Send the approved ones of ``due`` (oldest first), at most ``limit``.

        ``due`` are this run's fresh decisions that may go now; ``clock``
        gives the moment each delivery starts. The approved ones are queued
        and then sent by this worker and by any other that helps (see
        :meth:`work`); the call returns once none of this run's executions
        is queued or claimed, or when ``stop`` says so.
        """
        leases = leases or Leases()
        judged = self._judge(due, now)

        approved: list[tuple[Decision, Word]] = []
        skipped_by_reason: Counter[str] = Counter()
        selected: list[dict[str, Any]] = []
        not_approved = 0
        in_use: list[str] = []
        for decision in due:
            if decision.lineage_id not in judged:
                not_approved += 1
                continue
            word, reason = judged[decision.lineage_id]
            if reason == "approval_used":
                # The approval is queued or being sent already, or it served
                # an earlier attempt (the next one needs a new word).
                in_use.append(word.item.execution_id or "")
                continue
            if reason:
                skipped_by_reason[reason] += 1
                if not _skip_recorded(word, reason):
                    execution = self._record_skip(
                        run_id, decision, word, reason, actor, now
                    )
                    selected.append(_selected(decision, execution))
                continue
            approved.append((decision, word))

        approved.sort(key=lambda pair: (pair[0].not_before, pair[0].lineage_id))
        taken = approved[:limit]
        by_execution = self._queue(run_id, taken, now)
        if len(by_execution) < len(taken):
            # Another run queued or sent these attempts first.
            skipped_by_reason["already_claimed"] = len(taken) - len(by_execution)
        # Counted before this worker sends anything: what other runs left.
        in_hand = _count_pending(in_use)
        sent = self.work(leases, actor, clock, run_id=run_id, stop=stop)

        executed = 0
        still_queued = 0
        for row in _executions(by_execution):
            document = execution_document(row)
            selected.append(_selected(by_execution[row.execution_id], document))
            executed += row.outcome in ("delivered", "failed")
            still_queued += row.outcome in PENDING
            if row.outcome == "skipped":
                skipped_by_reason[row.skipped_reason] += 1
        return LiveResult(
            selected=selected,
            selected_count=len(taken),
            executed=executed,
            not_approved=not_approved + len(in_use) - in_hand,
            in_hand=in_hand,
            skipped_by_reason=skipped_by_reason,
            left_for_later=max(0, len(approved) - limit),
            still_queued=still_queued,
            sent_for_others=max(0, sent - executed),
        )

    def preview(self, due: Sequence[Decision], now: datetime) -> dict[str, str]:
        """For a dry run: the lineages of ``due`` a live run would send, by approval."""
        return {
            lineage_id: word.approval.approval_id
            for lineage_id, (word, reason) in self._judge(due, now).items()
            if not reason
        }

    def _judge(
        self, due: Sequence[Decision], now: datetime
    ) -> dict[str, tuple[Word, str]]:
        """
        For each lineage of ``due`` that has a word: the latest word, and why
        it does not let a live run send the lineage now (``""`` when it does).
        """
        words = self.engine.approvals.latest_words(d.lineage_id for d in due)
        lineages = lineage_versions(words)
        plan_hashes = _plan_hashes(w.approval.retry_plan_id for w in words.values())
        judged = {}
        for lineage_id, word in words.items():
            lineage = lineages.get(lineage_id)
            if lineage is not None:
                plan_hash = plan_hashes.get(word.approval.retry_plan_id, "")
                judged[lineage_id] = (word, skip_reason(word, lineage, plan_hash, now))
        return judged

    def _queue(
        self, run_id: str, approved: Sequence[tuple[Decision, Word]], now: datetime
    ) -> dict[str, Decision]:
        """
        Queue ``approved`` as executions of the run; the queued ones by id.

        Each approval item is marked used by its execution in the same
        transaction (a compare-and-set: an item another run used is left
        out), and the execution's unique claim key leaves out an attempt
        already queued or made.
        """
        queued: dict[str, Decision] = {}
        for start in range(0, len(approved), _CHUNK):
            chunk = approved[start : start + _CHUNK]
            for tries in range(1, 4):
                try:
                    queued.update(self._queue_chunk(run_id, chunk, now))
                    break
                except peewee.IntegrityError:
                    # Another run queued one of these attempts between the
                    # look and the insert; look again.
                    if tries == 3:
                        raise
        if len(queued) >= ANALYZE_AFTER:
            # A claim reads the queue's head from an index only when the
            # planner knows the queue is long; statistics from before a bulk
            # queue say it is short, and every claim would sort it whole.
            store.refresh_statistics(self.engine.database, Execution)
        return queued

    def _queue_chunk(
        self, run_id: str, chunk: Sequence[tuple[Decision, Word]], now: datetime
    ) -> dict[str, Decision]:
        database = self.engine.database
        queued: dict[str, Decision] = {}
        with database.atomic():
            keys = {f"{d.lineage_id}:{d.retry_count + 1}": (d, w) for d, w in chunk}
            taken = set(
                Execution.select(Execution.claim_key)
                .where(store.among(Execution.claim_key, list(keys)))
                .tuples()
            )
            free = [pair for key, pair in keys.items() if (key,) not in taken]
            items = ApprovalItem.select(ApprovalItem.id).where(
                store.among(ApprovalItem.id, [w.item.id for _, w in free])
                & ApprovalItem.used_at.is_null()
            )
            if store.is_postgres(database):
                items = items.for_update()
            unused = {item_id for (item_id,) in items.tuples()}
            rows = []
            used_by: list[tuple[int, str]] = []
            for decision, word in free:
                if word.item.id not in unused:
                    continue
                execution_id = self.engine.new_id("ex")
                used_by.append((word.item.id, execution_id))
                rows.append(
                    {
                        "execution_id": execution_id,
                        "run_id": run_id,
                        "decision_id": word.item.decision_id,
                        "approval_id": word.approval.approval_id,
                        "lineage_id": decision.lineage_id,
                        "package_id": decision.package_id,
                        "connector_id": decision.connector_id,
                        "attempt_number": decision.retry_count + 1,
                        "claim_key": (
                            f"{decision.lineage_id}:{decision.retry_count + 1}"
                        ),
                        "outcome": "queued",
                        "started_at": now,
                        "due_at": decision.not_before,
                        "duration_ms": 0,
                        "rescue_count": 0,
                    }
                )
                queued[execution_id] = decision
            # One statement each for the chunk: every item gets its execution.
            store.update_rows(
                ApprovalItem,
                [
                    {"id": item_id, "used_at": now, "execution_id": execution_id}
                    for item_id, execution_id in used_by
                ],
            )
            for approval_id, count in Counter(
                row["approval_id"] for row in rows
            ).items():
                Approval.update(used_count=Approval.used_count + count).where(
                    Approval.approval_id == approval_id
                ).execute()
            store.insert_rows(Execution, rows)
        return queued

    # -- claiming and sending -----------------------------------------------------

    def work(
        self,
        leases: Leases,
        actor: Actor,
        clock: Callable[[], datetime] | None = None,
        *,
        run_id: str | None = None,
        until: Callable[[], bool] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> int:
        """
        Claim and send queued retries until none is left to claim; the number sent.

        Any run's queued executions are claimed, and any claim whose lease
        expired is rescued. With ``run_id``, the call goes on until none of
        that run's executions is queued or claimed (waiting for other
        workers' claims, rescuing them if their leases run out). With
        ``until``, it goes on, polling, until ``until()`` is true. ``stop``
        ends it early: what is in hand is sent and recorded first, the rest
        of the batch is put back in the queue.
        """
        clock = clock or self.engine.now
        stop = stop or (lambda: False)
        sent = 0
        failures = 0
        with _Pipeline(self, leases, actor, clock) as line:
            while not stop():
                try:
                    batch, claimed_ahead = line.next_batch(stop)
                    if batch.claims:
                        count, failure = line.send(batch, stop)
                        sent += count
                        if failure is not None:
                            raise failure
                        failures = 0
                        continue
                    line.wait_recorded()
                    if claimed_ahead:
                        # Claimed before the last batch put its unsent
                        # claims back: look again before concluding.
                        continue
                    more = run_id is not None and self.pending(run_id)
                    if until is not None:
                        more = more or not until()
                except STORE_ERRORS as error:
                    # A busy store or a lost connection (or a store process
                    # that ended). Claims this worker could not record or
                    # release are no longer in hand: the heartbeat leaves
                    # them, and once their lease runs out any worker (this
                    # one too) rescues them.
                    failures += 1
                    log.warning(
                        "claiming retries failed worker_id=%s error=%s tries=%d",
                        leases.worker_id,
                        type(error).__name__,
                        failures,
                    )
                    if isinstance(error, DATABASE_ERRORS):
                        reconnect(self.engine.database)
                    time.sleep(min(5.0, POLL_SECONDS * 2 ** min(failures, 5)))
                    continue
                if not more:
                    break
                time.sleep(POLL_SECONDS)
        return sent

    def pending(self, run_id: str) -> bool:
        """Whether some execution of the run is still queued or claimed."""
        return (
            Execution.select()
            .where((Execution.run_id == run_id) & Execution.outcome.in_(PENDING))
            .exists()
        )

    def _claim_batch(
        self,
        leases: Leases,
        actor: Actor,
        now: datetime,
        in_hand: Collection[str] = (),
        limit: int | None = None,
    ) -> list[_Claim]:
        """
        Lease a batch of queued (or expired) executions to this worker: up
        to ``limit``, by default ``leases.batch_size``.

        The latest word on each is checked in the same transaction; those
        whose approval no longer holds are finished as ``skipped`` there.
        ``in_hand`` are claims of this worker id still being sent or
        recorded in this process: even if their lease ran out, they are not
        taken again here (another worker may rescue them; the holder records
        them only if it still holds them). They are left out after the
        read, which rarely finds any, rather than in it: a condition with an
        id per claim in hand would cost every claim.
        """
        database = self.engine.database
        size = min(limit or leases.batch_size, leases.batch_size)
        with database.atomic(), store.counter_batch():
            # Expired claims first (rescues are few and overdue), then the
            # oldest queued: two index range reads rather than one sort of
            # the whole queue per batch.
            expired = self._claimable(
                (Execution.outcome == "claimed") & (Execution.lease_expires_at < now),
                size + len(in_hand),  # room for those left out
            )
            rows = [row for row in expired if row.execution_id not in in_hand][:size]
            if len(rows) < size:
                rows += self._claimable(Execution.outcome == "queued", size - len(rows))
            if not rows:
                return []
            rescued = [row for row in rows if row.outcome == "claimed"]
            expires = now + timedelta(seconds=leases.lease_seconds)
            Execution.update(
                outcome="claimed",
                worker_id=leases.worker_id,
                lease_owner=leases.worker_id,
                lease_expires_at=expires,
            ).where(
                store.among(Execution.execution_id, [r.execution_id for r in rows])
            ).execute()
            if rescued:
                Execution.update(rescue_count=Execution.rescue_count + 1).where(
                    store.among(
                        Execution.execution_id, [r.execution_id for r in rescued]
                    )
                ).execute()
                store.bump_counters(
                    {
                        f"{LEASE_RESCUES}{connector_id}": count
                        for connector_id, count in Counter(
                            r.connector_id for r in rescued
                        ).items()
                    }
                )
                for row in rescued:
                    log.warning(
                        "lease rescued execution_id=%s lineage_id=%s from=%s "
                        "worker_id=%s",
                        row.execution_id,
                        row.lineage_id,
                        row.lease_owner,
                        leases.worker_id,
                    )
            claims = []
            lineages = _lineages(row.lineage_id for row in rows)
            checked = zip(rows, self._skip_reasons(rows, lineages, now), strict=True)
            for row, reason in checked:
                row.lease_owner = leases.worker_id
                if reason:
                    self._finish_skipped(row, reason, actor, now)
                else:
                    claims.append(_Claim(row, lineages[row.lineage_id]))
            return claims

    def _claimable(self, condition: peewee.Expression, limit: int) -> list[Execution]:
        """Up to ``limit`` executions matching ``condition``, by due time, locked."""
        return store.fetch_rows(claimable_query(self.engine.database, condition, limit))

    def _skip_reasons(
        self, rows: Sequence[Execution], lineages: Mapping[str, Lineage], now: datetime
    ) -> list[str]:
        """
        For each execution, why its approval no longer holds, or ``""``.

        The approval rows are locked for share on PostgreSQL, so a
        revocation waits for the claim or the claim sees the revocation.
        """
        database = self.engine.database
        approval_ids = list({row.approval_id for row in rows})
        approvals = Approval.select().where(
            store.among(Approval.approval_id, approval_ids)
        )
        if store.is_postgres(database):
            approvals = approvals.for_update("FOR SHARE")
        approval_of = {a.approval_id: a for a in store.fetch_rows(approvals)}
        items = {
            (item.approval_id, item.lineage_id): item
            for item in store.fetch_rows(
                ApprovalItem.select().where(
                    store.among(ApprovalItem.approval_id, approval_ids)
                    & store.among(ApprovalItem.lineage_id, [r.lineage_id for r in rows])
                )
            )
        }
        latest = _latest_verdicts([row.lineage_id for row in rows])
        plan_hashes = _plan_hashes(a.retry_plan_id for a in approval_of.values())
        found: list[str] = []
        for row in rows:
            approval = approval_of.get(row.approval_id)
            item = items.get((row.approval_id, row.lineage_id))
            lineage = lineages.get(row.lineage_id)
            if approval is None or item is None or lineage is None:
                found.append("approval_stale")
                continue
            word = Word(approval, item)
            newest_id, newest_verdict = latest.get(row.lineage_id, (None, None))
            if (
                newest_id is not None
                and newest_id != row.approval_id
                and newest_verdict != "approve"
            ):
                found.append("denied")
                continue
            if lineage.attempt_count + 1 != row.attempt_number:
                found.append("approval_stale")
                continue
            reason = skip_reason(
                word,
                lineage,
                plan_hashes.get(approval.retry_plan_id, ""),
                now,
                claimed_by=row.execution_id,
            )
            found.append(reason)
        return found

    def _send_claims(
        self,
        claims: Sequence[_Claim],
        leases: Leases,
        clock: Callable[[], datetime],
        stop: Callable[[], bool],
        words: _WordsWatch | None = None,
        packages: Mapping[str, dict[str, Any]] | None = None,
    ) -> tuple[list[_Outcome], list[_Claim], Exception | None]:
        """
        Send the claims one after the other; record nothing.

        Returns what became of each claim that was checked (its attempt, or
        the reason it was not sent), the claims left unsent, and the
        database error that ended the sending early, if one did: an error
        before a send (the approval read again, say) stops the batch there;
        :meth:`_record_batch` then records what was sent and puts the rest
        back in the queue, and the caller waits before it claims again.
        """
        done: list[_Outcome] = []
        unsent: list[_Claim] = []
        failure: Exception | None = None
        if packages is None:
            try:
                packages = self.engine.load_packages(c.row.package_id for c in claims)
            except DATABASE_ERRORS as error:
                packages, failure = {}, error
        verdicts: dict[str, _Verdict] = {}
        checked_at: datetime | None = None
        words = words or _WordsWatch(self.engine.database)
        for index, claim in enumerate(claims):
            if failure is not None or stop():
                unsent.append(claim)
                continue
            execution_id = claim.row.execution_id
            started_at = clock()
            try:
                if checked_at is None or self._check_is_old(
                    verdicts[execution_id], checked_at, started_at, words
                ):
                    words.watch()
                    verdicts = self._still_holds(claims[index:], leases, started_at)
                    checked_at = started_at
                reason = verdicts[execution_id].reason
                if reason == LEASE_LOST:
                    # Another worker holds it now and sends it; nothing to do.
                    log.warning(
                        "lease lost before sending execution_id=%s lineage_id=%s "
                        "worker_id=%s",
                        execution_id,
                        claim.row.lineage_id,
                        leases.worker_id,
                    )
                    continue
                if reason:
                    done.append((claim, None, reason))
                    continue
                attempt = self.engine.send_attempt(
                    claim.row.lineage_id,
                    claim.row.attempt_number,
                    now=started_at,
                    lineage=claim.lineage,
                    package=packages.get(claim.row.package_id),
                )
            except DATABASE_ERRORS as error:
                # Nothing was sent for this claim: the connector is called
                # only after every read.
                failure = error
                unsent.append(claim)
                continue
            done.append((claim, attempt, ""))
        return done, unsent, failure

    def _record_batch(
        self,
        done: Sequence[_Outcome],
        unsent: Sequence[_Claim],
        leases: Leases,
        actor: Actor,
    ) -> None:
        """
        Record a sent batch's outcomes and put its unsent claims back in the
        queue, each tried again until the database answers (see
        :meth:`_with_retries`).
        """
        if done:
            self._with_retries(
                functools.partial(self._write_outcomes, done, leases, actor),
                leases,
                "outcomes not recorded",
                [claim.row.execution_id for claim, _, _ in done],
            )
        if unsent:
            self._with_retries(
                functools.partial(self._release, unsent, leases),
                leases,
                "claims not released",
                [claim.row.execution_id for claim in unsent],
            )

    def _check_is_old(
        self,
        verdict: _Verdict,
        checked_at: datetime,
        now: datetime,
        words: _WordsWatch,
    ) -> bool:
        """
        Whether a claim's check must be made again before it is sent: some
        word was given since, the check is older than :data:`RECHECK_SECONDS`,
        or the lease or the approval it saw ends.
        """
        return (
            store.to_micros(now) >= verdict.holds_until
            or (now - checked_at).total_seconds() > RECHECK_SECONDS
            or words.changed()
        )

    def _still_holds(
        self, claims: Sequence[_Claim], leases: Leases, now: datetime
    ) -> dict[str, _Verdict]:
        """
        Check claims once more before they are sent, in one statement.

        For each execution id, a verdict whose reason is ``""`` when it may
        go, :data:`LEASE_LOST` when the claim is no longer this worker's (it
        was paused past its lease and another worker took the claim over),
        else the reason to skip it: the lineage moved on (another writer
        recorded its attempt), or a revocation, a denial or an expiry came
        after the claim.
        """
        database = self.engine.database
        # PERF(workers): prepared statements; building them with the query
        # builder cost more than running them.
        found = {
            execution_id: rest
            for execution_id, *rest in database.execute_sql(
                _pre_send_sql(database.param, len(claims)),
                [claim.row.execution_id for claim in claims],
            )
        }
        now_micros = store.to_micros(now)
        verdicts: dict[str, _Verdict] = {}
        for claim in claims:
            row = claim.row
            owner, expires, attempt_count, state, *word = found.get(
                row.execution_id, (None, None, 0, "", None, None, None, None)
            )
            if owner != leases.worker_id or expires is None or expires <= now_micros:
                verdicts[row.execution_id] = _Verdict(LEASE_LOST, 0)
                continue
            reason, word_until = self._word_holds(
                row, attempt_count, state, word, now_micros
            )
            verdicts[row.execution_id] = _Verdict(reason, min(expires, word_until))
        return verdicts

    def _word_holds(
        self,
        row: Execution,
        attempt_count: int,
        state: str,
        word: list[Any],
        now_micros: int,
    ) -> tuple[str, int]:
        """
        Why a held claim may not be sent now (``""`` when it may), and until
        when the word that lets it go holds (microseconds).
        """
        forever = 2**62
        if attempt_count + 1 != row.attempt_number or state != "failed":
            return "approval_stale", forever
        if word[0] is None:
            return "approval_stale", forever
        if word[0] != row.approval_id:
            if word[1] != "approve":
                return "denied", forever
            database = self.engine.database
            mine = database.execute_sql(
                _approval_sql(database.param), (row.approval_id,)
            ).fetchone()
            if mine is None:
                return "approval_stale", forever
            word = list(mine)
        _, _, revoked_at, expires_at = word
        if revoked_at is not None:
            return "approval_revoked", forever
        if expires_at <= now_micros:
            return "approval_expired", forever
        return "", expires_at

    def _with_retries(
        self,
        write: Callable[[], None],
        leases: Leases,
        failed: str,
        execution_ids: Sequence[str],
    ) -> None:
        """
        Run ``write`` in one transaction, trying again while the store is
        busy or away, reconnecting, for as long as a lease would last (at
        least 10 s).

        What a batch did must not be lost to a short outage: an attempt that
        was sent is recorded once the database is back. Past the deadline
        the error is raised, logged with the executions concerned; their
        claims then run out and are rescued.
        """
        database = self.engine.database
        deadline = time.monotonic() + max(10.0, leases.lease_seconds)
        tries = 0
        while True:
            tries += 1
            try:
                with database.atomic(), store.counter_batch():
                    write()
                return
            except DATABASE_ERRORS as error:
                # At least three tries: on SQLite one try may wait out the
                # whole busy timeout for another writer's lock.
                if time.monotonic() >= deadline and tries >= 3:
                    log.error(
                        "%s worker_id=%s executions=%s error=%s",
                        failed,
                        leases.worker_id,
                        ",".join(execution_ids),
                        type(error).__name__,
                    )
                    raise
                log.warning(
                    "writing a batch failed worker_id=%s error=%s tries=%d",
                    leases.worker_id,
                    type(error).__name__,
                    tries,
                )
                reconnect(database)
                time.sleep(min(2.0, 0.1 * 2 ** min(tries, 5)))

    def _write_outcomes(
        self,
        done: Sequence[_Outcome],
        leases: Leases,
        actor: Actor,
    ) -> None:
        """
        Write the batch's outcomes and release its claims (caller's transaction).

        Only the claims this worker still holds are written: one whose lease
        ran out and was rescued belongs to its rescuer.

        The claims still held and their lineages are locked first (on
        PostgreSQL; SQLite's transaction holds the write lock), so nothing
        moves under the batch; then the attempts go on their lineages
        (:meth:`Engine.record_sent_batch`), and the executions get their
        evidence entries in one append and their outcomes in one update.
        """
        engine = self.engine
        database = engine.database
        ids = [claim.row.execution_id for claim, _, _ in done]
        # Connector health first, then the claims still held and their
        # lineages (one read): the order in which recording one attempt at a
        # time takes them (health, then the lineages a pause reassesses), so
        # workers and the API never wait for each other in a circle.
        states = health.lock_states({claim.row.connector_id for claim, _, _ in done})
        held = (
            Execution.select(Execution.execution_id, Lineage.lineage_id, *_CHANGING)
            .join(Lineage, on=(Lineage.lineage_id == Execution.lineage_id))
            .where(
                store.among(Execution.execution_id, ids)
                & (Execution.lease_owner == leases.worker_id)
                & (Execution.outcome == "claimed")
            )
        )
        if store.is_postgres(database):
            held = held.for_update()
        stored: dict[str, tuple[Any, ...]] = {}
        still_mine = set()
        for execution_id, lineage_id, *changing in held.tuples():
            still_mine.add(execution_id)
            stored[lineage_id] = tuple(changing)
        fresh = _fresh_lineages([claim.lineage for claim, _, _ in done], stored)
        now = engine.now()

        mine = []
        for claim, attempt, reason in done:
            row = claim.row
            if row.execution_id in still_mine:
                mine.append((row, attempt, reason))
                continue
            log.warning(
                "lease lost before recording execution_id=%s lineage_id=%s "
                "worker_id=%s",
                row.execution_id,
                row.lineage_id,
                leases.worker_id,
            )
        sent = [(row, attempt) for row, attempt, _ in mine if attempt is not None]
        recorded = iter(
            engine.record_sent_batch(
                [
                    (attempt, fresh.get(row.lineage_id), row.run_id)
                    for row, attempt in sent
                ],
                states,
            )
        )
        finished: list[Execution] = []
        for row, attempt, reason in mine:
            if attempt is None:
                changes = _skipped_changes(reason, now)
            else:
                changes = _attempt_changes(row, attempt, next(recorded))
            for name, value in changes.items():
                setattr(row, name, value)
            finished.append(row)

        entries = evidence.append_rows(database, "execution", finished, actor, now)
        for row, entry in zip(finished, entries, strict=True):
            row.evidence_sequence = entry["sequence"]
        store.update_rows(
            Execution,
            [
                {
                    "execution_id": row.execution_id,
                    **{name: getattr(row, name) for name in _OUTCOME_FIELDS},
                }
                for row in finished
            ],
        )
        store.bump_counters(
            {
                f"executions:{outcome}": count
                for outcome, count in Counter(row.outcome for row in finished).items()
            }
        )
        for row in finished:
            if row.outcome != "skipped":
                log.info(
                    "retry sent execution_id=%s connector_id=%s lineage_id=%s "
                    "attempt=%d outcome=%s status=%s error_class=%s",
                    row.execution_id,
                    row.connector_id,
                    row.lineage_id,
                    row.attempt_number,
                    row.outcome,
                    row.http_status,
                    row.error_class,
                )

    def _finish_skipped(
        self, row: Execution, reason: str, actor: Actor, now: datetime
    ) -> None:
        """End a claimed execution as skipped (caller's transaction)."""
        Execution.update(**_skipped_changes(reason, now)).where(
            Execution.execution_id == row.execution_id
        ).execute()
        self._seal(row.execution_id, "skipped", actor, now)

    def _release(self, claims: Sequence[_Claim], leases: Leases) -> None:
        """Put unsent claims back in the queue for any worker (caller's transaction)."""
        Execution.update(
            outcome="queued", lease_owner=None, lease_expires_at=None
        ).where(
            store.among(Execution.execution_id, [c.row.execution_id for c in claims])
            & (Execution.lease_owner == leases.worker_id)
            & (Execution.outcome == "claimed")
        ).execute()

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


class _WordsWatch:
    """
    Tells a sending worker whether an approval, a denial or a revocation was
    given since it last checked its claims.

    On PostgreSQL the worker's connection listens on
    :data:`~cavra_core.approvals.WORDS_CHANNEL`, which every such word
    notifies at its commit: asking costs no round trip (a word committed a
    moment before may still be on its way, for about as long as a
    round trip). On SQLite, in-process, the words counter is read.
    """

    def __init__(self, database: peewee.Database) -> None:
        self.database = database
        self.postgres = store.is_postgres(database)
        self._listening: Any = None
        #: SQLite: the words counter when the claims were last checked.
        self._seen = 0

    def watch(self) -> None:
        """Start watching afresh; call it just before the claims are checked."""
        if not self.postgres:
            self._seen = self._words_given()
            return
        connection = self.database.connection()
        if connection is not self._listening:
            self.database.execute_sql(f'LISTEN "{WORDS_CHANNEL}"')
            self._listening = connection
        self._poll(connection)
        connection.notifies.clear()  # what came before is in the check

    def changed(self) -> bool:
        """Whether some word was given since :meth:`watch`."""
        if not self.postgres:
            return self._words_given() != self._seen
        connection = self.database.connection()
        if connection is not self._listening:
            return True  # a new connection: it has not listened yet
        self._poll(connection)
        return bool(connection.notifies)

    def _words_given(self) -> int:
        found = self.database.execute_sql(
            _words_given_sql(self.database.param), (WORDS_GIVEN,)
        ).fetchone()
        return found[0] if found else 0

    def _poll(self, connection: Any) -> None:
        """Read what the server sent; a lost connection raises peewee's error."""
        with store.driver_errors():
            connection.poll()


class _Pipeline:
    """
    The batches of one :meth:`Executions.work` call, on their way from the
    queue to the record: while the caller sends one batch, the store (a
    thread or a process, :class:`_StoreThread` or :class:`_StoreInProcess`)
    claims the next one and records the one before. As a context manager it
    runs the store, and at its end it settles what is left in hand
    (:meth:`settle`).
    """

    def __init__(
        self,
        executions: Executions,
        leases: Leases,
        actor: Actor,
        clock: Callable[[], datetime],
    ) -> None:
        self.executions = executions
        self.store: _StoreThread | _StoreInProcess = (
            _StoreInProcess(executions.store_process(leases))
            if leases.store_process
            else _StoreThread(executions, leases, clock)
        )
        #: Listens once for the whole call, not once a batch.
        self.words = _WordsWatch(executions.engine.database)
        self.leases = leases
        self.actor = actor
        self.clock = clock
        #: How many to claim next: :data:`BATCH_SECONDS` at the last pace.
        self.size = min(leases.batch_size, FIRST_BATCH)
        #: The next batch, claimed while the last one was sent.
        self.ahead: Future[_Batch] | None = None
        #: The batch handed out to be sent, until its record is asked for.
        self.sending: _Batch | None = None
        #: The record of the last batch sent, with what it records.
        self.recording: tuple[Future[None], tuple[Any, ...]] | None = None

    def __enter__(self) -> _Pipeline:
        self.store.__enter__()
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            self.settle(unwinding=exc_type is not None)
        finally:
            self.store.__exit__()

    def next_batch(self, stop: Callable[[], bool]) -> tuple[_Batch, bool]:
        """
        The next batch to send, and whether it was claimed ahead. Unless
        ``stop()`` says to stop, the batch after it is claimed now.
        """
        claimed_ahead = self.ahead is not None
        if self.ahead is None:
            self.ahead = self.store.claim(self.actor, self.size)
        # Kept in ``ahead`` while waiting, so that whatever interrupts the
        # wait leaves the claim for :meth:`settle` to put back; a claim that
        # failed took nothing and is forgotten.
        claiming = self.ahead
        try:
            batch = claiming.result()
        except BaseException:
            if claiming.done() and claiming.exception() is not None:
                self.ahead = None
            raise
        self.ahead = None
        if batch.claims:
            self.sending = batch
            if not stop():
                self.ahead = self.store.claim(self.actor, self.size)
        return batch, claimed_ahead

    def send(
        self, batch: _Batch, stop: Callable[[], bool]
    ) -> tuple[int, Exception | None]:
        """
        Send a batch and hand it to the store to be recorded; the number
        sent, and the error that ended the sending early or that the record
        of the batch before ended with.
        """
        executions = self.executions
        started = time.perf_counter()
        done, unsent, failure = executions._send_claims(
            batch.claims, self.leases, self.clock, stop, self.words, batch.packages
        )
        self.size = claim_size(
            self.leases.batch_size, self.size, len(done), time.perf_counter() - started
        )
        ids = [claim.row.execution_id for claim in batch.claims]
        record = (done, unsent, ids, self.actor)
        previous, self.recording = (
            self.recording,
            (self.store.record(*record), record),
        )
        self.sending = None
        sent = sum(1 for _, attempt, _ in done if attempt is not None)
        if previous is not None:
            try:
                self._recorded(previous)
            except STORE_ERRORS as error:
                failure = failure or error
        return sent, failure

    def wait_recorded(self) -> None:
        """Wait for the last batch's record; raise its error."""
        recording, self.recording = self.recording, None
        if recording is not None:
            self._recorded(recording)

    def _recorded(self, recording: tuple[Future[None], tuple[Any, ...]]) -> None:
        """
        Wait for a record. One that a store process ending cut short is made
        again by the next store process: the first may or may not have
        committed, and a record writes only the claims still held, so what
        was recorded already is left alone (``lease lost before recording``).
        """
        future, record = recording
        try:
            future.result()
        except StoreProcessEnded:
            self.store.record(*record).result()

    def settle(self, *, unwinding: bool = False) -> None:
        """
        At the end: wait for the last record, and put a batch claimed ahead
        but not sent back in the queue. Database errors were logged where
        they were raised; claims left in hand run out and are rescued.

        ``unwinding``: the caller is raising already; an error of the store
        is logged, so that it does not hide the caller's.
        """
        quiet = Exception if unwinding else STORE_ERRORS
        self._forget_sending()
        try:
            self.wait_recorded()
        except quiet as error:
            self._log_unsettled("last record", error)
        finally:
            # Whatever the last record raised: a store process outlives the
            # call, and claims it was not told about would be kept alive.
            self._put_back_ahead(quiet)

    def _put_back_ahead(self, quiet: type[BaseException] | tuple[type, ...]) -> None:
        """Put a batch claimed ahead, and not sent, back in the queue."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return
        try:
            claims = ahead.result().claims
        except quiet as error:
            self._log_unsettled("claim ahead", error)
            return
        if not claims:
            return
        ids = [claim.row.execution_id for claim in claims]
        try:  # all of them unsent: back in the queue
            self.store.record((), claims, ids, self.actor).result()
        except quiet as error:
            self._log_unsettled("release", error)

    def _forget_sending(self) -> None:
        """
        A batch whose sending was cut short by an error is not recorded:
        what of it went out is unknown. Its claims are no longer extended,
        so they run out after one lease and are rescued, as a dead worker's.
        """
        batch, self.sending = self.sending, None
        if batch is None:
            return
        ids = [claim.row.execution_id for claim in batch.claims]
        log.warning(
            "claims left in hand worker_id=%s executions=%s",
            self.leases.worker_id,
            ",".join(ids),
        )
        with contextlib.suppress(*STORE_ERRORS):
            self.store.forget(ids).result()

    def _log_unsettled(self, what: str, error: BaseException) -> None:
        # A store error needs no line: a failed claim took nothing, a failed
        # record logged its executions, an ended store process was logged
        # when it was found.
        if not isinstance(error, STORE_ERRORS):
            log.error(
                "worker store failed worker_id=%s job=%s error=%s",
                self.leases.worker_id,
                what.replace(" ", "_"),
                type(error).__name__,
            )


class _StoreSide:
    """
    The store's share of a worker's pipeline: claim a batch with its
    packages, record a sent one. It runs wherever the store work runs: on
    the store thread, or in the store process.
    """

    def __init__(
        self,
        executions: Executions,
        leases: Leases,
        heartbeat: _Heartbeat,
        clock: Callable[[], datetime],
    ) -> None:
        self.executions = executions
        self.leases = leases
        self.heartbeat = heartbeat
        self.clock = clock

    def claim(self, actor: Actor, limit: int) -> _Batch:
        """
        Claim up to ``limit`` with their packages; the heartbeat extends
        the claims from the moment they are taken.

        The clock is read when the claim runs, not when it is asked for: it
        waits for the record before it, which may take long (a busy store),
        and a lease counted from the asking could be over at its birth.
        """
        executions = self.executions
        claims = executions._claim_batch(
            self.leases, actor, self.clock(), self.heartbeat.worker_in_hand(), limit
        )
        ids = [claim.row.execution_id for claim in claims]
        self.heartbeat.hold(ids)
        try:
            packages = executions.engine.load_packages(
                claim.row.package_id for claim in claims
            )
        except DATABASE_ERRORS:
            return _Batch(claims, None)  # the sender reads them, or fails
        except BaseException:
            # Nobody gets these claims: let them run out and be rescued.
            self.heartbeat.drop(ids)
            raise
        return _Batch(claims, packages)

    def record(
        self,
        done: Sequence[_Outcome],
        unsent: Sequence[_Claim],
        ids: Sequence[str],
        actor: Actor,
    ) -> None:
        """Record a sent batch, then stop extending its claims."""
        try:
            self.executions._record_batch(done, unsent, self.leases, actor)
        finally:
            self.heartbeat.drop(ids)

    def forget(self, ids: Sequence[str]) -> None:
        """Stop extending claims that will not be recorded."""
        self.heartbeat.drop(ids)


class _StoreThread:
    """
    The store of one :meth:`Executions.work` call on a thread of its own,
    with the heartbeat of its claims.
    """

    def __init__(
        self, executions: Executions, leases: Leases, clock: Callable[[], datetime]
    ) -> None:
        database = executions.engine.database
        self.heartbeat = _Heartbeat(database, leases, clock)
        self.side = _StoreSide(executions, leases, self.heartbeat, clock)
        self.behind = _StoreWork(database)

    def __enter__(self) -> _StoreThread:
        self.heartbeat.__enter__()
        self.behind.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.behind.__exit__()
        finally:
            self.heartbeat.__exit__()

    def claim(self, actor: Actor, limit: int) -> Future[_Batch]:
        return self.behind.submit(functools.partial(self.side.claim, actor, limit))

    def record(
        self,
        done: Sequence[_Outcome],
        unsent: Sequence[_Claim],
        ids: Sequence[str],
        actor: Actor,
    ) -> Future[None]:
        return self.behind.submit(
            functools.partial(self.side.record, done, unsent, ids, actor)
        )

    def forget(self, ids: Sequence[str]) -> Future[None]:
        return self.behind.submit(functools.partial(self.side.forget, ids))


class _StoreInProcess:
    """
    The store of one :meth:`Executions.work` call in the engine's store
    process, which outlives the call (and holds the heartbeat).
    """

    def __init__(self, process: StoreProcess) -> None:
        self.process = process

    def __enter__(self) -> _StoreInProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def claim(self, actor: Actor, limit: int) -> Future[_Batch]:
        return self.process.submit("claim", actor, limit)

    def record(
        self,
        done: Sequence[_Outcome],
        unsent: Sequence[_Claim],
        ids: Sequence[str],
        actor: Actor,
    ) -> Future[None]:
        # By execution id: the store process has the claims as it took them.
        return self.process.submit(
            "record",
            [
                (claim.row.execution_id, attempt, reason)
                for claim, attempt, reason in done
            ],
            [claim.row.execution_id for claim in unsent],
            ids,
            actor,
        )

    def forget(self, ids: Sequence[str]) -> Future[None]:
        return self.process.submit("forget", ids)


class _StoreWork:
    """
    A worker's claims and records, run one after the other on a thread with
    a database connection of its own, so that the sends of one batch do not
    wait for the database work around them: the next batch is claimed, and
    the last one recorded, while this one is on the wire.

    Jobs run in the order they were submitted (one thread), so a batch's
    record always comes after the claim it was sent from. A job's error is
    handed to whoever waits for its result; after a database error the
    thread's connection is dropped and opened again. The connection opens
    with the first job that needs it, so a database refusing connections
    fails that job, whose waiter tries again, not the thread.
    """

    def __init__(self, database: peewee.Database) -> None:
        self.database = database
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="worker-store"
        )

    def __enter__(self) -> _StoreWork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._executor.submit(self._close)
        self._executor.shutdown(wait=True)

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Run ``job`` after those submitted before it; its future result."""
        return self._executor.submit(run_store_job, self.database, job)

    def _close(self) -> None:
        if not self.database.is_closed():
            with contextlib.suppress(peewee.PeeweeException):
                self.database.close()


def run_store_job(database: peewee.Database, job: Callable[[], T]) -> T:
    """Run a store job; after a database error, connect again for the next."""
    try:
        return job()
    except DATABASE_ERRORS:
        reconnect(database)
        raise


class _Heartbeat:
    """
    Extend the leases a worker holds while it works, from a thread of its own.

    Every third of the lease, the expiry of the claims in hand (claimed
    ahead, being sent, being recorded) moves to a full lease from now, so a
    long delivery keeps its claim, and a dead worker's claims, or claims a
    worker could not record or release, run out after one lease.

    What every heartbeat of the process holds is also known by worker id
    (:meth:`worker_in_hand`): two :meth:`Executions.work` calls of one
    process (two live runs served by one API process) share its worker id,
    and one must not take over the other's claims whose lease ran out,
    which the other would still send as its own.
    """

    #: Claims in hand in this process by worker id, counted by holder.
    _in_process: ClassVar[dict[str, Counter[str]]] = {}
    _process_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        database: peewee.Database,
        leases: Leases,
        clock: Callable[[], datetime],
    ) -> None:
        self.database = database
        self.leases = leases
        self.clock = clock
        #: Claims in hand, each with the number of holders (a claim lost
        #: and taken again is held by two batches for a moment).
        self._in_hand: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._beat, name=f"lease-heartbeat-{leases.worker_id}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join()

    def hold(self, execution_ids: Iterable[str]) -> None:
        """Extend these claims from now on, until :meth:`drop`."""
        ids = list(execution_ids)
        with self._process_lock:
            self._in_hand.update(ids)
            self._in_process.setdefault(self.leases.worker_id, Counter()).update(ids)

    def drop(self, execution_ids: Iterable[str]) -> None:
        """Stop extending these claims, once each one's holders dropped them."""
        ids = list(execution_ids)
        with self._process_lock:
            uncount(self._in_hand, ids)
            held = self._in_process.get(self.leases.worker_id, Counter())
            uncount(held, ids)
            if not held:
                self._in_process.pop(self.leases.worker_id, None)

    @property
    def in_hand(self) -> tuple[str, ...]:
        """The claims this heartbeat extends."""
        with self._process_lock:
            return tuple(sorted(self._in_hand))

    def worker_in_hand(self) -> frozenset[str]:
        """The claims in hand under this worker id, in any call of the process."""
        with self._process_lock:
            return frozenset(self._in_process.get(self.leases.worker_id, ()))

    def _beat(self) -> None:
        every = self.leases.lease_seconds / 3
        while not self.stopping.wait(every):
            in_hand = self.in_hand
            if not in_hand:
                continue
            try:
                with store.connected(self.database):
                    extend_leases(self.leases, self.clock(), in_hand)
            except (peewee.OperationalError, peewee.InterfaceError) as error:
                # The next beat tries again; a lease that runs out meanwhile
                # is rescued by another worker, never sent twice by this one
                # unnoticed (the outcome is written only while it is held).
                log.warning(
                    "lease heartbeat failed worker_id=%s error=%s",
                    self.leases.worker_id,
                    type(error).__name__,
                )


def claims_of(execution_ids: Sequence[str]) -> dict[str, _Claim]:
    """
    Executions with their lineages as stored now, by id, as claims to be
    recorded (those of a store process that ended: their rows as claimed
    went with it).
    """
    rows = list(_executions(execution_ids))
    lineages = _lineages(row.lineage_id for row in rows)
    return {
        row.execution_id: _Claim(row, lineages[row.lineage_id])
        for row in rows
        if row.lineage_id in lineages
    }


def claimable_query(
    database: peewee.Database, condition: peewee.Expression, limit: int
) -> peewee.ModelSelect:
    """
    The claim's read: executions matching ``condition`` in the queue's
    order (due time, then id, the order of its index), at most ``limit``.
    """
    query = (
        Execution.select()
        .where(condition)
        .order_by(Execution.due_at, Execution.execution_id)
        .limit(limit)
    )
    if store.is_postgres(database):
        # Rows another worker holds are passed over, not waited for.
        query = query.for_update(skip_locked=True)
    return query


def claim_size(most: int, current: int, handled: int, seconds: float) -> int:
    """
    How many to claim next: :data:`BATCH_SECONDS` of sends at the pace of
    the batch just sent (``handled`` claims in ``seconds``), from 1 to
    ``most``. A batch of which nothing was handled keeps the ``current``
    size.
    """
    if handled <= 0 or seconds <= 0:
        return current
    wanted = BATCH_SECONDS * handled / seconds  # may be inf for a tiny time
    return most if wanted >= most else max(1, int(wanted))


def extend_leases(leases: Leases, now: datetime, execution_ids: Sequence[str]) -> int:
    """Move the expiry of these claims of the worker to a full lease from ``now``."""
    return (
        Execution.update(lease_expires_at=now + timedelta(seconds=leases.lease_seconds))
        .where(
            store.among(Execution.execution_id, list(execution_ids))
            & (Execution.lease_owner == leases.worker_id)
            & (Execution.outcome == "claimed")
        )
        .execute()
    )


def reconnect(database: peewee.Database) -> None:
    """
    Drop a connection that may be broken; open a new one if the server answers.

    Callers hold their connection with :func:`cavra_core.store.connected`,
    which a reconnection does not upset.
    """
    with contextlib.suppress(peewee.PeeweeException):
        database.close()  # it may be gone already
    with contextlib.suppress(peewee.PeeweeException):
        database.connect(reuse_if_open=True)  # still away: the caller tries later


@functools.lru_cache(maxsize=64)  # by row count, which varies
def _pre_send_sql(param: str, count: int) -> str:
    """
    Before sends: for each of ``count`` executions (the parameters, their
    ids), its id, the claim's lease, its lineage's progress and the
    lineage's latest word (approval id, verdict, revoked, expires), in one
    statement. The latest
    word is taken in the order :meth:`Approvals.latest_words` uses.

    ``param`` is the driver's placeholder (``?`` or ``%s``).
    """
    execution = Execution._meta.table_name
    lineage = Lineage._meta.table_name
    item = ApprovalItem._meta.table_name
    approval = Approval._meta.table_name
    ids = ", ".join([param] * count)
    return (
        f'SELECT e."execution_id", e."lease_owner", e."lease_expires_at", '
        f'l."attempt_count", l."state", a."approval_id", a."verdict", '
        f'a."revoked_at", a."expires_at" '
        f'FROM "{execution}" AS e '
        f'JOIN "{lineage}" AS l ON l."lineage_id" = e."lineage_id" '
        f'LEFT JOIN "{approval}" AS a ON a."approval_id" = ('
        f'SELECT i."approval_id" FROM "{item}" AS i '
        f'WHERE i."lineage_id" = e."lineage_id" '
        f'ORDER BY i."created_at" DESC, i."approval_id" DESC LIMIT 1) '
        f'WHERE e."execution_id" IN ({ids})'
    )


@functools.cache
def _words_given_sql(param: str) -> str:
    """The value of one counter (the parameter: its name)."""
    return (
        f'SELECT "value" FROM "{store.Counter._meta.table_name}" WHERE "name" = {param}'
    )


@functools.cache
def _approval_sql(param: str) -> str:
    """One approval's id, verdict, revocation and expiry."""
    return (
        f'SELECT "approval_id", "verdict", "revoked_at", "expires_at" '
        f'FROM "{Approval._meta.table_name}" WHERE "approval_id" = {param}'
    )


def _attempt_changes(
    row: Execution, attempt: Mapping[str, Any], recorded: Mapping[str, Any] | None
) -> dict[str, Any]:
    """
    A sent execution's new values, from its attempt as recorded on its
    lineage (None when the lineage moved on before it was recorded).
    """
    started_at: datetime = attempt["started_at"]
    finished_at: datetime = attempt["finished_at"]
    if row.due_at is not None:
        # An approved retry sent before its delay ran out (an immediate
        # retry) counts as no lag at all.
        lag = max(0.0, (started_at - row.due_at).total_seconds())
        metrics.CLAIM_LAG_SECONDS.observe(lag, row.connector_id)
    return {
        "outcome": recorded["outcome"] if recorded else "failed",
        "error_class": recorded["error_class"] if recorded else "not_recorded",
        "http_status": recorded["http_status"] if recorded else None,
        "attempt_id": recorded["attempt_id"] if recorded else None,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_ms": max(0, int((finished_at - started_at).total_seconds() * 1000)),
        "lease_owner": None,
        "lease_expires_at": None,
    }


def _skipped_changes(reason: str, now: datetime) -> dict[str, Any]:
    """A claimed execution's new values when its approval no longer holds."""
    return {
        "outcome": "skipped",
        "skipped_reason": reason,
        # Without its claim key, a later approval may queue the attempt again.
        "claim_key": None,
        "started_at": now,
        "finished_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
    }


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
        "worker_id": row.worker_id,
        "rescue_count": row.rescue_count or 0,
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


def _fresh_lineages(
    rows: Sequence[Lineage], stored: Mapping[str, tuple[Any, ...]]
) -> dict[str, Lineage]:
    """
    The lineages as stored now, by id: the rows read at the claim where the
    columns that change (just read and locked, ``_CHANGING``) are as they
    were, read again where not.
    """
    fresh = {
        row.lineage_id: row
        for row in rows
        if stored.get(row.lineage_id)
        == tuple(getattr(row, field.name) for field in _CHANGING)
    }
    moved = [lineage_id for lineage_id in stored if lineage_id not in fresh]
    if moved:
        fresh.update(_lineages(moved))
    return fresh


def _latest_verdicts(lineage_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """
    The latest word on each lineage as (approval id, verdict), without
    building model rows.
    """
    latest: dict[str, tuple[str, str]] = {}
    rows = newest_words_first(
        lineage_ids, ApprovalItem.lineage_id, Approval.approval_id, Approval.verdict
    ).tuples()
    for lineage_id, approval_id, verdict in rows:
        latest.setdefault(lineage_id, (approval_id, verdict))
    return latest


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


def _count_pending(execution_ids: Sequence[str]) -> int:
    """How many of these executions are still queued or claimed."""
    wanted = [execution_id for execution_id in execution_ids if execution_id]
    return sum(row.outcome in PENDING for row in _executions(wanted))


def _executions(execution_ids: Iterable[str]) -> Iterator[Execution]:
    wanted = list(execution_ids)
    for start in range(0, len(wanted), 500):
        yield from Execution.select().where(
            store.among(Execution.execution_id, wanted[start : start + 500])
        )


def _lineages(lineage_ids: Any) -> dict[str, Lineage]:
    wanted = list(dict.fromkeys(lineage_ids))
    found: dict[str, Lineage] = {}
    for start in range(0, len(wanted), 500):
        for row in store.fetch_rows(
            Lineage.select().where(
                store.among(Lineage.lineage_id, wanted[start : start + 500])
            )
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
