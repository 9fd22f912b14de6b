"""
The evidence log: an append-only chain of what cavra decided and did.

Every retry plan, worker run, approval, revocation, execution, recovery
playbook and closure appends one entry in the same transaction as the record
itself. An entry holds a public-safe summary of its record and the hash of the
entry before it::

    entry_hash = sha256(canonical JSON of sequence, kind, subject_id, actor,
                        actor_verified, recorded_at, document, previous_hash)

so changing, removing or reordering any entry breaks every hash from there
on. :func:`verify_store` also rebuilds each summary from the record it names,
which catches an edit to the record tables themselves. :func:`verify_entries`
checks an exported chain (JSON lines) offline, without a database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from cavra_core import store
from cavra_core.decisions import format_time_precise
from cavra_core.identity import Actor
from cavra_core.store import (
    Approval,
    ApprovalItem,
    EvidenceEntry,
    Execution,
    RecoveryClosure,
    RecoveryPlaybook,
    RetryPlan,
    WorkerRun,
)

#: The previous hash of the first entry.
GENESIS_HASH = "0" * 64
#: Keeps appends in one order on PostgreSQL (a transaction-scoped lock).
_APPEND_LOCK = 7260422
_BATCH = 1000

KINDS = (
    "retry_plan",
    "worker_run",
    "approval",
    "approval_revocation",
    "execution",
    "recovery_playbook",
    "recovery_closure",
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


# -- what each kind vouches for -------------------------------------------------


def _plan_summary(row: RetryPlan) -> dict[str, Any]:
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
    }


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
) -> dict[str, Any]:
    """
    Append the entry for record ``subject_id`` of ``kind``; return the entry.

    Call it inside the transaction that wrote the record, after the write:
    the entry and the record commit together or not at all.
    """
    if kind not in _SUBJECTS:
        raise ValueError(f"unknown evidence kind {kind!r}")
    document = summary_of(kind, subject_id)
    if document is None:
        raise ValueError(f"no {kind} {subject_id} to vouch for")

    # Appends are serialized: an advisory lock on PostgreSQL; on SQLite the
    # counter update takes the write lock before the last entry is read.
    if isinstance(database, peewee.PostgresqlDatabase):
        database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
    store.bump_counters({"evidence_entries": 1})
    last = (
        EvidenceEntry.select(EvidenceEntry.sequence, EvidenceEntry.entry_hash)
        .order_by(EvidenceEntry.sequence.desc())
        .limit(1)
        .first()
    )
    entry = {
        "sequence": 1 if last is None else last.sequence + 1,
        "kind": kind,
        "subject_id": subject_id,
        "actor": actor.name,
        "actor_verified": bool(actor.verified),
        "recorded_at": _time(at),
        "document": document,
        "previous_hash": GENESIS_HASH if last is None else last.entry_hash,
    }
    entry["entry_hash"] = entry_hash(entry)
    EvidenceEntry.insert(
        sequence=entry["sequence"],
        kind=kind,
        subject_id=subject_id,
        actor=actor.name,
        actor_verified=bool(actor.verified),
        recorded_at=at,
        document=_canonical(document),
        previous_hash=entry["previous_hash"],
        entry_hash=entry["entry_hash"],
    ).execute()
    return entry


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


def iter_entries(after: int = 0) -> Iterator[dict[str, Any]]:
    """Every entry after sequence ``after``, in order, read in batches."""
    while True:
        rows = list(
            EvidenceEntry.select()
            .where(EvidenceEntry.sequence > after)
            .order_by(EvidenceEntry.sequence)
            .limit(_BATCH)
        )
        if not rows:
            return
        for row in rows:
            yield entry_document(row)
        after = rows[-1].sequence


def latest_entry(kind: str, subject_id: str) -> EvidenceEntry | None:
    return (
        EvidenceEntry.select()
        .where((EvidenceEntry.subject_id == subject_id) & (EvidenceEntry.kind == kind))
        .order_by(EvidenceEntry.sequence.desc())
        .first()
    )


# -- verifying ------------------------------------------------------------------

#: Why an entry breaks the chain, for people reading a report.
PROBLEMS = {
    "sequence_gap": "the entry's sequence does not follow the previous entry's",
    "previous_hash_mismatch": "the entry does not carry the previous entry's hash",
    "entry_hash_mismatch": "the entry's content does not match its hash",
    "record_modified": "the record the entry vouches for was changed since",
    "record_missing": "the record the entry vouches for is gone",
    "malformed_entry": "the entry lacks a field or has one of the wrong type",
}


def verify_entries(
    entries: Iterable[Mapping[str, Any]],
    *,
    check_record: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> dict[str, Any]:
    """
    Check a chain of entries in order; report it intact or name the first break.

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


def _entry_problem(
    entry: Mapping[str, Any], expected: int, previous_hash: str
) -> str | None:
    try:
        sequence = entry["sequence"]
        claimed = entry["entry_hash"]
        if not isinstance(sequence, int) or not isinstance(claimed, str):
            return "malformed_entry"
        if sequence != expected:
            return "sequence_gap"
        if entry["previous_hash"] != previous_hash:
            return "previous_hash_mismatch"
        if entry_hash(entry) != claimed:
            return "entry_hash_mismatch"
    except (KeyError, TypeError):
        return "malformed_entry"
    return None


def _report(
    count: int,
    last_hash: str,
    broken: Mapping[str, Any] | None,
    problem: str | None,
) -> dict[str, Any]:
    first_broken = None
    if broken is not None and problem is not None:
        sequence = broken.get("sequence") if isinstance(broken, Mapping) else None
        first_broken = {
            "sequence": sequence if isinstance(sequence, int) else None,
            "kind": _text_or_none(broken.get("kind")),
            "subject_id": _text_or_none(broken.get("subject_id")),
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


def _record_problem(entry: Mapping[str, Any]) -> str | None:
    kind = entry["kind"]
    if kind not in _SUBJECTS:
        return "malformed_entry"
    current = summary_of(kind, entry["subject_id"])
    if current is None:
        return "record_missing"
    if _canonical(current) != _canonical(entry["document"]):
        return "record_modified"
    return None


def verify_store() -> dict[str, Any]:
    """Verify the stored chain, and every record against the entry vouching for it."""
    return verify_entries(iter_entries(), check_record=_record_problem)


def entry_count() -> int:
    return store.read_counters("evidence_entries")["evidence_entries"]


__all__ = [
    "GENESIS_HASH",
    "KINDS",
    "PROBLEMS",
    "append",
    "entry_count",
    "entry_document",
    "entry_hash",
    "iter_entries",
    "latest_entry",
    "summary_of",
    "verify_entries",
    "verify_store",
]
