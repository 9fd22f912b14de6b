"""
The evidence log: an append-only chain of what cavra decided and did.

Every retry plan, worker run, approval, revocation, execution, recovery
playbook and closure appends one entry in the same transaction as the record
itself. An entry holds a public-safe summary of its record and the hash of the
entry before it::

    entry_hash = sha256(canonical JSON of sequence, kind, subject_id, actor,
                        actor_verified, recorded_at, document, previous_hash)

so changing, removing or reordering any entry breaks every hash from there
on. :func:`verify_store` also rebuilds the summary of every record from the
record itself and compares it with the latest entry that vouches for it,
which catches an edit to the record tables; and it compares the number of
entries with the number ever appended, which catches entries cut off the end.
:func:`verify_entries` checks an exported chain (JSON lines) offline, without
a database.

:class:`EvidenceLog` is the log of one engine's store (``engine.evidence``):
pages for the API, the verification report, the export.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

import peewee

from cavra_core import store, validation
from cavra_core.decisions import Decision, format_time_precise
from cavra_core.errors import FieldProblem, InvalidInput
from cavra_core.identity import Actor
from cavra_core.store import (
    Approval,
    ApprovalItem,
    DeliveryAttempt,
    EvidenceEntry,
    Execution,
    RecoveryClosure,
    RecoveryPlaybook,
    RecoveryPlaybookItem,
    RetryDecision,
    RetryPlan,
    WorkerRun,
)

if TYPE_CHECKING:
    from cavra_core.engine import Engine

#: The previous hash of the first entry.
GENESIS_HASH = "0" * 64
#: Keeps appends in one order on PostgreSQL (a transaction-scoped lock).
_APPEND_LOCK = 7260422
_BATCH = 1000
_COUNTER = "evidence_entries"

KINDS = (
    "retry_plan",
    "worker_run",
    "approval",
    "approval_revocation",
    "execution",
    "recovery_playbook",
    "recovery_closure",
)

#: The id prefix of the records each kind vouches for.
SUBJECT_PREFIXES = {
    "retry_plan": "rp",
    "worker_run": "wr",
    "approval": "apv",
    "approval_revocation": "apv",
    "execution": "ex",
    "recovery_playbook": "pb",
    "recovery_closure": "cl",
}
#: Any id an entry may vouch for.
SUBJECT_ID = re.compile(
    "(?:" + "|".join(sorted(set(SUBJECT_PREFIXES.values()))) + ")_[0-9a-f]{32}"
)


def _canonical(document: Any) -> str:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """The hash an entry must carry, from its content and its predecessor's hash."""
    content = {
        "sequence": entry["sequence"],
        "kind": entry["kind"],
        "subject_id": entry["subject_id"],
        "actor": entry["actor"],
        "actor_verified": entry["actor_verified"],
        "recorded_at": entry["recorded_at"],
        "document": entry["document"],
        "previous_hash": entry["previous_hash"],
    }
    return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


def chain_entry(
    previous: Mapping[str, Any] | None,
    *,
    kind: str,
    subject_id: str,
    actor: Actor,
    recorded_at: str,
    document: Any,
) -> dict[str, Any]:
    """
    The entry that follows ``previous`` (``None``: the first), hash included.

    Nothing is stored: :func:`append` stores what this returns.
    """
    entry = {
        "sequence": 1 if previous is None else previous["sequence"] + 1,
        "kind": kind,
        "subject_id": subject_id,
        "actor": actor.name,
        "actor_verified": bool(actor.verified),
        "recorded_at": recorded_at,
        "document": document,
        "previous_hash": GENESIS_HASH if previous is None else previous["entry_hash"],
    }
    entry["entry_hash"] = entry_hash(entry)
    return entry


# -- what each kind vouches for -------------------------------------------------


def _plan_summary(
    row: RetryPlan, decision_keys_hash: str | None = None
) -> dict[str, Any]:
    """
    The plan's summary; ``decision_keys_hash`` when the caller already has it
    (see :func:`append`), else read back from the stored decisions.
    """
    if decision_keys_hash is None:
        decision_keys_hash = _decision_keys_hash(row.retry_plan_id)
    return {
        "retry_plan_id": row.retry_plan_id,
        "plan_hash": row.plan_hash,
        "generated_at": _time(row.generated_at),
        "generated_by": row.generated_by,
        "policy": row.policy,
        "decision_count": row.decision_count,
        "retryable_count": row.retryable_count,
        "waiting_count": row.waiting_count,
        "suppressed_count": row.suppressed_count,
        "decision_keys_hash": decision_keys_hash,
    }


def _decision_keys_hash(plan_id: str) -> str:
    """
    SHA-256 of the plan's decision ids and lineage versions, in position order.

    The plan hash covers every decision's content but neither its id nor the
    lineage version an approval item copies; this covers both, one line
    ``position decision_id lineage_version`` per decision.
    """
    hasher = hashlib.sha256()
    # PERF(evidence): the plan's decisions are read back once more when its
    # entry is appended, three narrow columns through the (plan, position)
    # index: about a thirtieth of the time the plan itself takes.
    for batch in _decision_batches(
        plan_id,
        RetryDecision.decision_id,
        RetryDecision.lineage_version,
    ):
        hasher.update(decision_keys_text(batch).encode())
    return hasher.hexdigest()


def decision_keys_text(keys: Iterable[tuple[int, str, int]]) -> str:
    """
    The lines the decision keys hash covers, for ``(position, decision_id,
    lineage_version)`` triples in position order.
    """
    return "".join(
        f"{position} {decision_id} {version}\n"
        for position, decision_id, version in keys
    )


def _decision_batches(plan_id: str, *columns: Any) -> Iterator[list[tuple]]:
    """
    A plan's decisions in position order, as raw ``(position, *columns)`` rows.

    Raw: times as stored microseconds, JSON as text. PERF(evidence): a plan
    may hold hundreds of thousands of decisions; the driver's rows are three
    times quicker to read than peewee's, and keyset batches keep memory flat.
    """
    database = RetryDecision._meta.database
    after = -1
    while True:
        query = (
            RetryDecision.select(RetryDecision.position, *columns)
            .where((RetryDecision.plan == plan_id) & (RetryDecision.position > after))
            .order_by(RetryDecision.position)
            .limit(_BATCH * 10)
        )
        batch = list(database.execute_sql(*query.sql()))
        if not batch:
            return
        yield batch
        after = batch[-1][0]


def _run_summary(row: WorkerRun) -> dict[str, Any]:
    return {
        "run_id": row.run_id,
        "dry_run": row.dry_run,
        "trigger": row.trigger,
        "window_start": _time(row.window_start),
        "window_end": _time(row.window_end),
        "started_at": _time(row.started_at),
        "finished_at": _time(row.finished_at),
        "generated_by": row.generated_by,
        "retryable_count": row.retryable_count,
        "selected_retry_count": row.selected_retry_count,
        "executed_count": row.executed_count,
        "skipped_count": row.skipped_count,
        "selected_lineages": [item["lineage_id"] for item in row.selected_retries],
        "notes": list(row.notes),
    }


def _approval_summary(row: Approval) -> dict[str, Any]:
    items = (
        ApprovalItem.select(ApprovalItem.decision_id)
        .where(ApprovalItem.approval_id == row.approval_id)
        .order_by(ApprovalItem.position)
    )
    return {
        "approval_id": row.approval_id,
        "retry_plan_id": row.retry_plan_id,
        "plan_hash": row.plan_hash,
        "verdict": row.verdict,
        "approved_by": row.approved_by,
        "reason": row.reason,
        "created_at": _time(row.created_at),
        "expires_at": _time(row.expires_at),
        "decision_ids": [item.decision_id for item in items],
    }


def _revocation_summary(row: Approval) -> dict[str, Any] | None:
    if row.revoked_at is None:
        return None
    return {
        "approval_id": row.approval_id,
        "revoked_at": _time(row.revoked_at),
        "revoked_by": row.revoked_by,
        "reason": row.revoke_reason,
    }


def _execution_summary(row: Execution) -> dict[str, Any]:
    return {
        "execution_id": row.execution_id,
        "run_id": row.run_id,
        "decision_id": row.decision_id,
        "approval_id": row.approval_id,
        "lineage_id": row.lineage_id,
        "connector_id": row.connector_id,
        "attempt_number": row.attempt_number,
        "outcome": row.outcome,
        "skipped_reason": row.skipped_reason,
        "error_class": row.error_class,
        "http_status": row.http_status,
        "attempt_id": row.attempt_id,
        "started_at": _time(row.started_at),
    }


def _playbook_summary(row: RecoveryPlaybook) -> dict[str, Any]:
    return {
        "playbook_id": row.playbook_id,
        "generated_at": _time(row.generated_at),
        "generated_by": row.generated_by,
        "min_failure_count": row.min_failure_count,
        "lookback_hours": row.lookback_hours,
        "connector_ids": [item["connector_id"] for item in row.items],
    }


def _closure_summary(row: RecoveryClosure) -> dict[str, Any]:
    return {
        "closure_id": row.closure_id,
        "playbook_id": row.playbook_id,
        "connector_id": row.connector_id,
        "closure_state": row.closure_state,
        "external_ref": row.external_ref,
        "notes": row.notes,
        "verification_refs": row.verification_refs,
        "closed_by": row.closed_by,
        "closed_at": _time(row.closed_at),
    }


class _Subject(NamedTuple):
    model: type[peewee.Model]
    summary: Callable[[Any], dict[str, Any] | None]


_SUBJECTS: dict[str, _Subject] = {
    "retry_plan": _Subject(RetryPlan, _plan_summary),
    "worker_run": _Subject(WorkerRun, _run_summary),
    "approval": _Subject(Approval, _approval_summary),
    "approval_revocation": _Subject(Approval, _revocation_summary),
    "execution": _Subject(Execution, _execution_summary),
    "recovery_playbook": _Subject(RecoveryPlaybook, _playbook_summary),
    "recovery_closure": _Subject(RecoveryClosure, _closure_summary),
}


# -- what the records must agree on ---------------------------------------------
#
# A summary holds what fits in an entry. These checks cover what the entry
# cannot hold (a plan's decisions) and the rows that change after the entry
# was appended (approval items marked used, playbook items closed), against
# what the chain vouches for. Each runs at the latest entry of its record,
# after that record's summary matched, and returns a problem code or None.


def _plan_problem(plan_id: str) -> str | None:
    """The plan's stored decisions must hash to its plan hash, as planning did."""
    plan = RetryPlan.get(RetryPlan.retry_plan_id == plan_id)
    # The same text plan_retries hashes: the canonical policy, then a newline
    # and Decision.canonical_json for each decision in position order.
    hasher = hashlib.sha256(_canonical(plan.policy).encode())
    count = 0
    for batch in _decision_batches(plan_id, *_HASHED_COLUMNS):
        for position, *values in batch:
            if position != count:
                return "record_modified"
            hasher.update(("\n" + _stored_decision(values).canonical_json()).encode())
            count += 1
    if count != plan.decision_count or hasher.hexdigest() != plan.plan_hash:
        return "record_modified"
    return None


#: The decision columns the plan hash covers, in :class:`Decision` order.
_HASHED_COLUMNS = (
    RetryDecision.lineage_id,
    RetryDecision.package_id,
    RetryDecision.connector_id,
    RetryDecision.action,
    RetryDecision.reason,
    RetryDecision.explanation,
    RetryDecision.retry_count,
    RetryDecision.max_retry_attempts,
    RetryDecision.retry_delay_seconds,
    RetryDecision.not_before,
    RetryDecision.not_after,
    RetryDecision.failed_status_codes,
)


def _stored_decision(values: list[Any]) -> Decision:
    """
    A decision rebuilt from its raw stored columns, as the model's fields
    would read them (its lineage version aside: the plan hash leaves it out).
    """
    *fields, not_before, not_after, codes = values
    failed_status_codes = json.loads(codes)
    if not isinstance(failed_status_codes, list):
        raise ValueError("failed_status_codes is not a list")
    return Decision(
        fields[0],
        0,
        *fields[1:],
        None if not_before is None else store.from_micros(not_before),
        None if not_after is None else store.from_micros(not_after),
        tuple(failed_status_codes),
    )


def _approval_problem(approval_id: str) -> str | None:
    """
    Its items must name their decisions' lineages and versions, and its use
    count the items marked used (each with the execution that used it).
    """
    approval = Approval.get(Approval.approval_id == approval_id)
    items = (
        ApprovalItem.select(
            ApprovalItem.lineage_id,
            ApprovalItem.lineage_version,
            ApprovalItem.attempt_number,
            ApprovalItem.used_at,
            ApprovalItem.execution_id,
            RetryDecision.plan,
            RetryDecision.lineage_id,
            RetryDecision.lineage_version,
            RetryDecision.retry_count,
        )
        .join(
            RetryDecision,
            peewee.JOIN.LEFT_OUTER,
            on=(ApprovalItem.decision_id == RetryDecision.decision_id),
        )
        .where(ApprovalItem.approval_id == approval_id)
        .tuples()
    )
    used = 0
    for lineage, version, attempt, used_at, execution_id, *decision in items:
        plan_id, decision_lineage, decision_version, retry_count = decision
        if (
            plan_id != approval.retry_plan_id
            or lineage != decision_lineage
            or version != decision_version
            or retry_count is None
            or attempt != retry_count + 1
        ):
            return "approval_item_mismatch"
        if (used_at is None) != (execution_id is None):
            return "approval_use_mismatch"
        used += used_at is not None
    if used != approval.used_count:
        return "approval_use_mismatch"
    return None


def _execution_problem(execution_id: str) -> str | None:
    """
    An execution that delivered or failed claimed its approval item, which
    must say so; the delivery attempt it cites must exist and agree with it.
    """
    execution = Execution.get(Execution.execution_id == execution_id)
    if execution.outcome in ("delivered", "failed") and execution.approval_id:
        item = ApprovalItem.get_or_none(
            (ApprovalItem.approval_id == execution.approval_id)
            & (ApprovalItem.decision_id == execution.decision_id)
        )
        if (
            item is None
            or item.execution_id != execution_id
            or item.used_at is None
            or item.lineage_id != execution.lineage_id
        ):
            return "approval_use_mismatch"
    if execution.attempt_id is not None:
        attempt = DeliveryAttempt.get_or_none(
            DeliveryAttempt.attempt_id == execution.attempt_id
        )
        if attempt is None:
            return "attempt_missing"
        if (
            attempt.lineage_id != execution.lineage_id
            or attempt.attempt_number != execution.attempt_number
            or attempt.outcome != execution.outcome
            or attempt.http_status != execution.http_status
            or attempt.error_class != execution.error_class
        ):
            return "attempt_mismatch"
    return None


def _playbook_problem(playbook_id: str) -> str | None:
    """One item per connector of the playbook; those never closed show no state."""
    playbook = RecoveryPlaybook.get(RecoveryPlaybook.playbook_id == playbook_id)
    items = list(
        RecoveryPlaybookItem.select().where(
            RecoveryPlaybookItem.playbook_id == playbook_id
        )
    )
    closed = {
        connector
        for (connector,) in RecoveryClosure.select(RecoveryClosure.connector_id)
        .where(RecoveryClosure.playbook_id == playbook_id)
        .distinct()
        .tuples()
    }
    expected = sorted(item["connector_id"] for item in playbook.items)
    if sorted(item.connector_id for item in items) != expected:
        return "playbook_item_mismatch"
    for item in items:
        if item.generated_at != playbook.generated_at:
            return "playbook_item_mismatch"
        if item.connector_id not in closed and (
            item.closure_state is not None or item.closed_at is not None
        ):
            return "playbook_item_mismatch"
    return None


def _closure_problem(closure_id: str) -> str | None:
    """The latest closure of a playbook's connector sets that item's state."""
    # Imported here: recovery appends to this log, so it imports this module.
    from cavra_core.recovery import CLOSED_STATES

    closure = RecoveryClosure.get(RecoveryClosure.closure_id == closure_id)
    same_item = (RecoveryClosure.playbook_id == closure.playbook_id) & (
        RecoveryClosure.connector_id == closure.connector_id
    )
    latest = (
        RecoveryClosure.select(
            RecoveryClosure.closure_id,
            RecoveryClosure.closure_state,
            RecoveryClosure.closed_at,
        )
        .where(same_item)
        .order_by(RecoveryClosure.closed_at.desc(), RecoveryClosure.closure_id.desc())
        .first()
    )
    if latest.closure_id != closure_id:
        return None  # the item follows a later closure, checked at its entry
    item = RecoveryPlaybookItem.get_or_none(
        (RecoveryPlaybookItem.playbook_id == closure.playbook_id)
        & (RecoveryPlaybookItem.connector_id == closure.connector_id)
    )
    closed_at = latest.closed_at if latest.closure_state in CLOSED_STATES else None
    if (
        item is None
        or item.closure_state != latest.closure_state
        or item.closed_at != closed_at
    ):
        return "playbook_item_mismatch"
    return None


_AGREEMENTS: dict[str, Callable[[str], str | None]] = {
    "retry_plan": _plan_problem,
    "approval": _approval_problem,
    "execution": _execution_problem,
    "recovery_playbook": _playbook_problem,
    "recovery_closure": _closure_problem,
}


def summary_of(kind: str, subject_id: str) -> dict[str, Any] | None:
    """The summary the record ``subject_id`` of ``kind`` shows now; None if gone."""
    subject = _SUBJECTS[kind]
    row = subject.model.get_or_none(subject.model._meta.primary_key == subject_id)
    return None if row is None else subject.summary(row)


# -- appending ------------------------------------------------------------------


def append(
    database: peewee.Database,
    kind: str,
    subject_id: str,
    actor: Actor,
    at: datetime,
    *,
    decision_keys_hash: str | None = None,
) -> dict[str, Any]:
    """
    Append the entry for record ``subject_id`` of ``kind``; return the entry.

    ``decision_keys_hash``, for a retry plan only: the hash of its decision
    keys, computed by the caller from the rows it has just written (the text
    of :func:`decision_keys_text`). PERF(plan): reading a large plan's
    decisions back takes a tenth of a second per 100,000; verification still
    reads them back.

    Call it inside the transaction that wrote the record, after the write:
    the entry and the record commit together or not at all. A record that
    changes later (an execution's outcome, say) gets a new entry in the
    transaction of the change; verification compares each record with the
    latest entry for it.

    Raises:
        ValueError: an unknown kind, an id of another kind, or no such record.
        RuntimeError: called outside a transaction.
    """
    database = _checked(database, kind, [subject_id])
    if decision_keys_hash is not None and kind != "retry_plan":
        raise ValueError("only a retry plan has a decision keys hash")
    _serialize_appends(database)
    if decision_keys_hash is not None:
        plan = RetryPlan.get_or_none(RetryPlan.retry_plan_id == subject_id)
        document = None if plan is None else _plan_summary(plan, decision_keys_hash)
    else:
        document = summary_of(kind, subject_id)
    if document is None:
        raise ValueError(f"no {kind} {subject_id} to vouch for")
    return _append_documents(kind, [(subject_id, document)], actor, at)[0]


def append_rows(
    database: peewee.Database,
    kind: str,
    rows: Sequence[peewee.Model],
    actor: Actor,
    at: datetime,
) -> list[dict[str, Any]]:
    """
    Append entries for ``rows``, records of ``kind`` as the caller writes them.

    For a caller that writes many records in one transaction: each summary
    is made from the row object given, which must hold exactly the values
    the caller stores in that transaction (verification rebuilds every
    summary from the stored record and would report a difference). The
    entries are chained in the order of ``rows`` and inserted in one
    statement. Raises as :func:`append` does.
    """
    subject = _SUBJECTS.get(kind)
    if subject is None:
        raise ValueError(f"unknown evidence kind {kind!r}")
    key = subject.model._meta.primary_key.name
    ids = [getattr(row, key) for row in rows]
    database = _checked(database, kind, ids)
    if not rows:
        return []
    _serialize_appends(database)
    return _append_documents(
        kind,
        [
            (subject_id, subject.summary(row))
            for subject_id, row in zip(ids, rows, strict=True)
        ],
        actor,
        at,
    )


def _checked(
    database: peewee.Database, kind: str, subject_ids: Sequence[str]
) -> peewee.Database:
    if kind not in _SUBJECTS:
        raise ValueError(f"unknown evidence kind {kind!r}")
    for subject_id in subject_ids:
        if not subject_id.startswith(SUBJECT_PREFIXES[kind] + "_"):
            raise ValueError(f"{subject_id!r} is not the id of a {kind}")
    if isinstance(database, peewee.DatabaseProxy):
        database = database.obj
    if not database.in_transaction():
        raise RuntimeError(
            "evidence.append must run inside the transaction that wrote the record"
        )
    return database


def _serialize_appends(database: peewee.Database) -> None:
    """
    Let one transaction at a time append, before anything is read: an
    advisory lock on PostgreSQL; on SQLite the transaction holds the write
    lock from its start (``BEGIN IMMEDIATE``).
    """
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))


def _append_documents(
    kind: str,
    documents: Sequence[tuple[str, dict[str, Any]]],
    actor: Actor,
    at: datetime,
) -> list[dict[str, Any]]:
    """Chain and insert one entry per (subject id, summary), after the last one."""
    store.bump_counters({_COUNTER: len(documents)})
    last = (
        EvidenceEntry.select(EvidenceEntry.sequence, EvidenceEntry.entry_hash)
        .order_by(EvidenceEntry.sequence.desc())
        .limit(1)
        .first()
    )
    previous = (
        None
        if last is None
        else {"sequence": last.sequence, "entry_hash": last.entry_hash}
    )
    entries = []
    rows = []
    for subject_id, document in documents:
        entry = chain_entry(
            previous,
            kind=kind,
            subject_id=subject_id,
            actor=actor,
            recorded_at=_time(at),
            document=document,
        )
        entries.append(entry)
        rows.append(
            {
                "sequence": entry["sequence"],
                "kind": kind,
                "subject_id": subject_id,
                "actor": actor.name,
                "actor_verified": bool(actor.verified),
                "recorded_at": at,
                "document": _canonical(document),
                "previous_hash": entry["previous_hash"],
                "entry_hash": entry["entry_hash"],
            }
        )
        previous = entry
    store.insert_rows(EvidenceEntry, rows)
    return entries


# -- reading --------------------------------------------------------------------


def entry_document(row: EvidenceEntry) -> dict[str, Any]:
    """An entry as the API and the export show it."""
    return {
        "sequence": row.sequence,
        "kind": row.kind,
        "subject_id": row.subject_id,
        "actor": row.actor,
        "actor_verified": bool(row.actor_verified),
        "recorded_at": _time(row.recorded_at),
        "document": json.loads(row.document),
        "previous_hash": row.previous_hash,
        "entry_hash": row.entry_hash,
    }


_COLUMNS = (
    EvidenceEntry.sequence,
    EvidenceEntry.kind,
    EvidenceEntry.subject_id,
    EvidenceEntry.actor,
    EvidenceEntry.actor_verified,
    EvidenceEntry.recorded_at,
    EvidenceEntry.document,
    EvidenceEntry.previous_hash,
    EvidenceEntry.entry_hash,
)


def _stored_entry(row: tuple) -> dict[str, Any]:
    """
    An entry from its raw columns, whatever was done to them.

    A document that is no longer JSON, or a time out of range, is kept as it
    is stored, so that verification reports the entry rather than failing.
    """
    sequence, kind, subject_id, actor, verified, recorded_at, text, previous, own = row
    try:
        document = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        document = text
    try:
        recorded = _time(store.from_micros(recorded_at))
    except (TypeError, ValueError, OverflowError):
        recorded = recorded_at
    return {
        "sequence": sequence,
        "kind": kind,
        "subject_id": subject_id,
        "actor": actor,
        "actor_verified": bool(verified),
        "recorded_at": recorded,
        "document": document,
        "previous_hash": previous,
        "entry_hash": own,
    }


def _read_entries(condition: Any, limit: int) -> list[dict[str, Any]]:
    query = (
        EvidenceEntry.select(*_COLUMNS)
        .where(condition)
        .order_by(EvidenceEntry.sequence)
        .limit(limit)
    )
    database = EvidenceEntry._meta.database
    return [_stored_entry(row) for row in database.execute_sql(*query.sql())]


def _entry_batches(after: int = 0) -> Iterator[list[dict[str, Any]]]:
    while True:
        batch = _read_entries(EvidenceEntry.sequence > after, _BATCH)
        if not batch:
            return
        yield batch
        after = batch[-1]["sequence"]


def iter_entries(after: int = 0) -> Iterator[dict[str, Any]]:
    """Every entry after sequence ``after``, in order, read in batches."""
    for batch in _entry_batches(after):
        yield from batch


def latest_entry(kind: str, subject_id: str) -> EvidenceEntry | None:
    return (
        EvidenceEntry.select()
        .where((EvidenceEntry.subject_id == subject_id) & (EvidenceEntry.kind == kind))
        .order_by(EvidenceEntry.sequence.desc())
        .first()
    )


# -- paging ---------------------------------------------------------------------

_CURSOR = re.compile(r"evidence:([1-9][0-9]{0,18})")


def encode_cursor(sequence: int) -> str:
    """The cursor of the page after the entry ``sequence``."""
    text = f"evidence:{sequence}".encode("ascii")
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, parameter: str = "cursor") -> int:
    """The sequence a cursor of the evidence list carries; others are refused."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    match = _CURSOR.fullmatch(text)
    # One spelling per cursor: base64 that decodes alike but reads otherwise
    # (padding bits set, say) was not issued here.
    issued = match is not None and encode_cursor(int(match.group(1))) == cursor
    if not issued or int(match.group(1)) >= 2**63:
        raise InvalidInput(
            f"{parameter} is not a cursor of the evidence list; pass next_cursor "
            "from the previous page unchanged",
            [FieldProblem("", "is not a valid cursor", "invalid_cursor", parameter)],
        )
    return int(match.group(1))


# -- verifying ------------------------------------------------------------------

#: Why an entry breaks the chain, for people reading a report.
PROBLEMS = {
    "sequence_gap": "the entry's sequence does not follow the previous entry's",
    "previous_hash_mismatch": "the entry does not carry the previous entry's hash",
    "entry_hash_mismatch": "the entry's content does not match its hash",
    "record_modified": "the record the entry vouches for was changed since",
    "record_missing": "the record the entry vouches for is gone",
    "malformed_entry": "the entry lacks a field or has one of the wrong type",
    "entries_missing": "the log holds fewer entries than were appended; "
    "this one and those after it are gone",
    "record_unreadable": "the record the entry vouches for holds a value that "
    "cannot be read",
    "approval_item_mismatch": "an item of the approval no longer names its "
    "decision's lineage, lineage version or attempt",
    "approval_use_mismatch": "the approval's record of use disagrees with the "
    "executions: an item marked used, or not, against what an execution did, "
    "or a use count that is not the number of items used",
    "attempt_missing": "the delivery attempt the execution cites is gone",
    "attempt_mismatch": "the delivery attempt the execution cites disagrees "
    "with it: lineage, attempt number, outcome, HTTP status or error class",
    "playbook_item_mismatch": "the playbook's items do not match its connectors, "
    "or an item's closure state is not that of its latest closure",
    "export_truncated": "the export ends before its closing line: lines were "
    "cut off the end",
    "export_mismatch": "the export's closing line does not match the entries "
    "before it, or lines follow it",
}


def verify_entries(
    entries: Iterable[Any],
    *,
    check_record: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> dict[str, Any]:
    """
    Check a chain of entries in order; report it intact or name the first break.

    :param entries: entry documents, oldest first (a value that is not an
        object is reported as ``malformed_entry``).
    :param check_record: called for each entry whose hash holds; returns a
        problem code (see :data:`PROBLEMS`) when the entry's record disagrees.
    """
    previous_hash = GENESIS_HASH
    expected = 1
    count = 0
    for entry in entries:
        problem = _entry_problem(entry, expected, previous_hash)
        if problem is None and check_record is not None:
            problem = check_record(entry)
        if problem is not None:
            return _report(count, previous_hash, entry, problem)
        count += 1
        expected += 1
        previous_hash = entry["entry_hash"]
    return _report(count, previous_hash, None, None)


#: The fields of an entry, no more and no fewer.
ENTRY_FIELDS = frozenset(
    (
        "sequence",
        "kind",
        "subject_id",
        "actor",
        "actor_verified",
        "recorded_at",
        "document",
        "previous_hash",
        "entry_hash",
    )
)


def _entry_problem(entry: Any, expected: int, previous_hash: str) -> str | None:
    # An extra field is not covered by the hash: refused, so that an entry
    # says nothing its hash does not vouch for.
    if not isinstance(entry, Mapping) or set(entry) != ENTRY_FIELDS:
        return "malformed_entry"
    try:
        sequence = entry["sequence"]
        claimed = entry["entry_hash"]
        if (
            not isinstance(sequence, int)
            or isinstance(sequence, bool)
            or not isinstance(claimed, str)
        ):
            return "malformed_entry"
        if sequence != expected:
            return "sequence_gap"
        if entry["previous_hash"] != previous_hash:
            return "previous_hash_mismatch"
        if entry_hash(entry) != claimed:
            return "entry_hash_mismatch"
    except (KeyError, TypeError, ValueError, RecursionError):
        return "malformed_entry"
    return None


def _report(
    count: int,
    last_hash: str,
    broken: Any,
    problem: str | None,
) -> dict[str, Any]:
    first_broken = None
    if problem is not None:
        fields = broken if isinstance(broken, Mapping) else {}
        sequence = fields.get("sequence")
        first_broken = {
            "sequence": sequence
            if isinstance(sequence, int) and not isinstance(sequence, bool)
            else None,
            "kind": _text_or_none(fields.get("kind")),
            "subject_id": _text_or_none(fields.get("subject_id")),
            "problem": problem,
            "detail": PROBLEMS[problem],
        }
    return {
        "intact": first_broken is None,
        "verified_entry_count": count,
        "last_entry_hash": last_hash if count else None,
        "first_broken_entry": first_broken,
    }


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def verify_export(documents: Iterable[Any]) -> tuple[dict[str, Any], int | None]:
    """
    Check an export: its entries as :func:`verify_entries` does, then its
    closing line (see :meth:`EvidenceLog.export`), which must come last and
    match them: an export cut short, or with entries cut off its end, is
    broken. Returns the report and the entry count the closing line gives
    (None without a readable one).

    :param documents: the export's lines, parsed, in order.
    """
    documents = iter(documents)
    closing: list[Any] = []

    def entries() -> Iterator[Any]:
        for document in documents:
            if isinstance(document, Mapping) and "export" in document:
                closing.append(document)
                return
            yield document

    report = verify_entries(entries())
    trailer = closing[0] if closing and _is_trailer(closing[0]) else None
    claimed = None if trailer is None else trailer["export"]["entry_count"]
    if not report["intact"]:
        return report, claimed

    count = report["verified_entry_count"]
    if not closing:
        problem = "export_truncated"
    elif trailer is None:
        problem = "malformed_entry"
    elif next(documents, _END) is not _END:
        problem = "export_mismatch"
    elif claimed > count:
        problem = "entries_missing"
    elif (
        claimed < count
        or trailer["export"]["last_entry_hash"] != (report["last_entry_hash"])
    ):
        problem = "export_mismatch"
    else:
        return report, claimed
    last_hash = report["last_entry_hash"] or GENESIS_HASH
    return _report(count, last_hash, {"sequence": count + 1}, problem), claimed


_END = object()


def _is_trailer(document: Mapping[str, Any]) -> bool:
    trailer = document.get("export")
    if set(document) != {"export"} or not isinstance(trailer, Mapping):
        return False
    count = trailer.get("entry_count")
    last = trailer.get("last_entry_hash")
    return (
        set(trailer) == {"entry_count", "last_entry_hash", "exported_at"}
        and isinstance(count, int)
        and not isinstance(count, bool)
        and count >= 0
        and (last is None or isinstance(last, str))
        and isinstance(trailer["exported_at"], str)
    )


class _StoreCheck:
    """
    The stored chain, batch by batch, with each record checked against the
    latest entry that vouches for it (older entries of a record that changed
    since, an execution claimed and then delivered, are vouched by the chain).
    """

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], int] = {}

    def entries(self) -> Iterator[dict[str, Any]]:
        for batch in _entry_batches():
            self._latest = _latest_sequences(batch)
            yield from batch

    def record_problem(self, entry: Mapping[str, Any]) -> str | None:
        kind = entry["kind"]
        if kind not in _SUBJECTS:
            return "malformed_entry"
        if self._latest.get((kind, entry["subject_id"])) != entry["sequence"]:
            return None
        try:
            current = summary_of(kind, entry["subject_id"])
            if current is None:
                return "record_missing"
            if _canonical(current) != _canonical(entry["document"]):
                return "record_modified"
            agreement = _AGREEMENTS.get(kind)
            return None if agreement is None else agreement(entry["subject_id"])
        except _UNREADABLE:
            # A stored value its column cannot hold (text that is not JSON, a
            # time that is not a number): a finding about the record.
            return "record_unreadable"


#: What reading a row whose stored values were corrupted raises.
_UNREADABLE = (ValueError, TypeError, OverflowError, RecursionError)


def _latest_sequences(batch: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(kind, subject id) -> the sequence of its latest entry, for a batch's records."""
    subjects = sorted({entry["subject_id"] for entry in batch})
    query = (
        EvidenceEntry.select(
            EvidenceEntry.kind,
            EvidenceEntry.subject_id,
            peewee.fn.MAX(EvidenceEntry.sequence),
        )
        .where(EvidenceEntry.subject_id.in_(subjects))
        .group_by(EvidenceEntry.kind, EvidenceEntry.subject_id)
        .tuples()
    )
    return {(kind, subject): latest for kind, subject, latest in query}


def _snapshot() -> Any:
    """A read transaction that sees one moment of the log throughout."""
    database = EvidenceEntry._meta.database
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        return database.atomic(isolation_level="REPEATABLE READ")
    # SQLite in WAL mode: a deferred transaction reads one snapshot from its
    # first read on.
    return database.atomic()


def _verify_stored() -> tuple[dict[str, Any], int]:
    """The store's report and the number of entries ever appended; in a snapshot."""
    appended = entry_count()
    check = _StoreCheck()
    # PERF(evidence): every record is read back once, one query each; a log of
    # millions of entries takes minutes to verify.
    report = verify_entries(check.entries(), check_record=check.record_problem)
    if report["intact"] and report["verified_entry_count"] < appended:
        missing = {"sequence": report["verified_entry_count"] + 1}
        report = _report(
            report["verified_entry_count"],
            report["last_entry_hash"] or GENESIS_HASH,
            missing,
            "entries_missing",
        )
    return report, appended


def verify_store() -> dict[str, Any]:
    """Verify the stored chain, and every record against the entry vouching for it."""
    with _snapshot():
        report, _ = _verify_stored()
    return report


def entry_count() -> int:
    """Entries ever appended (a counter kept with the appends)."""
    return store.read_counters(_COUNTER)[_COUNTER]


# -- the log of one store -------------------------------------------------------


class EvidenceLog:
    """
    The evidence log of one engine's store (``engine.evidence``).

    :param engine: its database and its clock are used.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(
        self,
        kind: str,
        subject_id: str,
        actor: Actor,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """:func:`append` on this store; ``at`` defaults to the engine's clock."""
        moment = at if at is not None else self.engine.clock()
        return append(self.engine.database, kind, subject_id, actor, moment)

    def list_entries(
        self,
        *,
        kind: str | None = None,
        subject_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """
        One page of entries, oldest first (an auditor reads forward).

        :param kind: only entries of this kind (one of :data:`KINDS`).
        :param subject_id: only entries vouching for this record.
        :param cursor: ``next_cursor`` of the previous page.
        """
        condition = EvidenceEntry.sequence > (decode_cursor(cursor) if cursor else 0)
        if kind is not None:
            condition &= EvidenceEntry.kind == kind
        if subject_id is not None:
            condition &= EvidenceEntry.subject_id == subject_id
        entries = _read_entries(condition, limit + 1)
        items = entries[:limit]
        next_cursor = None
        if len(entries) > limit:
            next_cursor = encode_cursor(items[-1]["sequence"])
        page = {"items": items, "next_cursor": next_cursor}
        validation.check_output("evidence_page", page)
        return page

    def verify(self, *, now: datetime | None = None) -> dict[str, Any]:
        """
        Verify the stored log and the records (``GET .../evidence/verify``).

        A broken chain is a finding, reported in the document, not an error.
        """
        verified_at = now if now is not None else self.engine.clock()
        with _snapshot():
            report, appended = _verify_stored()
        counted = max(appended, report["verified_entry_count"])
        document = verification_document(report, counted, verified_at)
        validation.check_output("evidence_verification", document)
        return document

    def export(self, handle: TextIO, *, now: datetime | None = None) -> int:
        """
        Write every entry to ``handle``, one JSON object per line, in order,
        then the closing line ``{"export": {"entry_count": N,
        "last_entry_hash": H, "exported_at": T}}``.

        The entries are written as stored, altered ones too, so that an
        offline check (:func:`verify_export`) finds what the store's would;
        the closing line lets it tell a whole export from one cut short.
        Returns how many entries were written.
        """
        exported_at = now if now is not None else self.engine.clock()
        count = 0
        last_hash = None
        with _snapshot():
            for entry in iter_entries():
                handle.write(_export_line(entry))
                count += 1
                last_hash = entry["entry_hash"]
        closing = {
            "entry_count": count,
            "last_entry_hash": last_hash,
            "exported_at": _time(exported_at),
        }
        handle.write(_export_line({"export": closing}))
        return count

    def entry_count(self) -> int:
        return entry_count()


def _export_line(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"


def verification_document(
    report: Mapping[str, Any], entry_count: int, verified_at: datetime
) -> dict[str, Any]:
    """A :func:`verify_entries` report as the verification document shows it."""
    return {
        "intact": report["intact"],
        "verified_entry_count": report["verified_entry_count"],
        "entry_count": entry_count,
        "last_entry_hash": report["last_entry_hash"],
        "first_broken_entry": report["first_broken_entry"],
        "verified_at": _time(verified_at),
    }


__all__ = [
    "ENTRY_FIELDS",
    "GENESIS_HASH",
    "KINDS",
    "PROBLEMS",
    "SUBJECT_ID",
    "SUBJECT_PREFIXES",
    "EvidenceLog",
    "append",
    "chain_entry",
    "decision_keys_text",
    "decode_cursor",
    "encode_cursor",
    "entry_count",
    "entry_document",
    "entry_hash",
    "iter_entries",
    "latest_entry",
    "summary_of",
    "verification_document",
    "verify_entries",
    "verify_export",
    "verify_store",
]
