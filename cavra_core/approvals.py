"""
Approvals: a person's word on the decisions of a retry plan.

An approval (or a denial) names decisions of one plan and is bound twice: to
the plan's hash, and to each lineage's version when the plan was made. The
live worker re-delivers a lineage only when the latest word on it is an
approval that is unexpired, unrevoked, unused and fresh (the lineage has not
moved on since planning). Each approval serves one attempt of each of its
lineages, once.

The author of a plan cannot approve it (the four-eyes rule, on by default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import peewee

from cavra_core import evidence, store, validation
from cavra_core.decisions import format_time_precise
from cavra_core.errors import (
    Conflict,
    FieldProblem,
    Forbidden,
    NotFound,
    UnprocessableInput,
)
from cavra_core.identity import Actor, normal_name
from cavra_core.paging import newest_first
from cavra_core.store import (
    Approval,
    ApprovalItem,
    Lineage,
    RetryDecision,
    RetryPlan,
    to_micros,
)

if TYPE_CHECKING:
    from cavra_core.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_EXPIRY = timedelta(hours=24)
MAX_EXPIRY = timedelta(days=7)
#: The most decisions one approval may cover; approve larger plans in parts.
MAX_ITEMS = 1000
#: Counter bumped with every approval, denial and revocation, so a worker
#: sending a batch sees with one small read that some word changed.
WORDS_GIVEN = "words_given"
#: On PostgreSQL the same words are announced on this channel at commit, so
#: a worker that listens learns of them without reading anything.
WORDS_CHANNEL = "cavra_words_given"
_CHUNK = 500

#: Decisions an approval may cover: due retries, and retries waiting only for
#: their delay (a live run with allow_immediate_retry may send those early).
APPROVABLE = {("retry", None), ("wait", "delay_not_elapsed")}

#: Why an approved-looking lineage is not re-delivered, in the order checked.
SKIP_REASONS = {
    "denied": "the latest word on the lineage is a denial",
    "approval_revoked": "the latest word on the lineage (an approval or a denial) "
    "was revoked",
    "approval_expired": "the approval covering the lineage has expired",
    "approval_used": "the approval already served an attempt of the lineage",
    "approval_stale": "the lineage moved on since the approved plan was made",
    "plan_changed": "the plan no longer has the hash the approval was bound to",
    "already_claimed": "another worker claimed the same attempt first",
}


class Word(NamedTuple):
    """The latest approval or denial covering one lineage, with its item."""

    approval: Approval
    item: ApprovalItem


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


class Approvals:
    """Approvals and denials of retry decisions; ``engine.approvals``."""

    def __init__(self, engine: Engine, *, four_eyes: bool = True) -> None:
        self.engine = engine
        self.four_eyes = four_eyes

    # -- giving one ---------------------------------------------------------------

    def create(
        self,
        retry_plan_id: str,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """
        Approve or deny decisions of a plan (``POST .../approvals``).

        Raises:
            NotFound: no such plan.
            Forbidden: the plan's author approves it under the four-eyes rule.
            UnprocessableInput: a decision is not the plan's, or cannot be
                approved; the expiry is past or too far; the hash differs.
        """
        engine = self.engine
        engine._check_request("approval_request", request)
        now = engine.now(now)
        who = engine.actor_of(request, actor, "approved_by")
        plan = RetryPlan.get_or_none(RetryPlan.retry_plan_id == retry_plan_id)
        if plan is None:
            raise NotFound(f"No retry plan {retry_plan_id}.")
        verdict = request.get("verdict", "approve")
        if "plan_hash" in request and request["plan_hash"] != plan.plan_hash:
            raise UnprocessableInput(
                "The plan's hash is not the one given: approve the plan you reviewed.",
                [
                    FieldProblem(
                        "/plan_hash",
                        "differs from the plan's hash; read the plan again",
                        "plan_hash_mismatch",
                    )
                ],
            )
        if (
            verdict == "approve"
            and self.four_eyes
            and normal_name(who.name) == normal_name(plan.generated_by)
        ):
            raise Forbidden(
                "The plan's author cannot approve it (four-eyes rule); ask "
                "another person to approve, or deny it yourself.",
                [
                    FieldProblem(
                        "/approved_by" if not who.verified else "",
                        "is the plan's author",
                        "four_eyes",
                    )
                ],
            )
        expires_at = self._expiry(request, now)
        decisions = self._decisions(plan, request, verdict)

        approval_id = engine.new_id("apv")
        with engine.database.atomic():
            Approval.insert(
                approval_id=approval_id,
                retry_plan_id=retry_plan_id,
                plan_hash=plan.plan_hash,
                verdict=verdict,
                approved_by=who.name,
                actor_verified=who.verified,
                reason=request["reason"],
                created_at=now,
                expires_at=expires_at,
                item_count=len(decisions),
            ).execute()
            rows = [
                {
                    "approval_id": approval_id,
                    "position": position,
                    "decision_id": decision.decision_id,
                    "lineage_id": decision.lineage_id,
                    "lineage_version": decision.lineage_version,
                    "attempt_number": decision.retry_count + 1,
                    "created_at": now,
                }
                for position, decision in enumerate(decisions)
            ]
            for start in range(0, len(rows), _CHUNK):
                ApprovalItem.insert_many(rows[start : start + _CHUNK]).execute()
            evidence.append(engine.database, "approval", approval_id, who, now)
            _word_given(engine.database)
        log.info(
            "approval recorded approval_id=%s retry_plan_id=%s verdict=%s items=%d",
            approval_id,
            retry_plan_id,
            verdict,
            len(decisions),
        )
        return self.get(approval_id, now=now)

    def _expiry(self, request: Mapping[str, Any], now: datetime) -> datetime:
        if "expires_at" not in request:
            return now + DEFAULT_EXPIRY
        expires_at = validation.parse_time(request["expires_at"])
        if expires_at <= now:
            detail = "is not in the future; give a later time"
        elif expires_at > now + MAX_EXPIRY:
            detail = "is more than 7 days away; an approval lasts at most 7 days"
        else:
            return expires_at
        raise UnprocessableInput(
            "The approval's expiry is out of range.",
            [FieldProblem("/expires_at", detail, "expiry")],
        )

    def _decisions(
        self, plan: RetryPlan, request: Mapping[str, Any], verdict: str
    ) -> list[RetryDecision]:
        """The decisions the request names, checked against the plan."""
        if request.get("all_retry_decisions") and request.get("decision_ids"):
            raise UnprocessableInput(
                "Name decisions or ask for all retry decisions, not both.",
                [
                    FieldProblem(
                        "/decision_ids",
                        "cannot be given with all_retry_decisions: true",
                        "conflicting_fields",
                    )
                ],
            )
        if request.get("all_retry_decisions"):
            decisions = list(
                RetryDecision.select()
                .where(
                    (RetryDecision.plan == plan.retry_plan_id)
                    & (RetryDecision.action == "retry")
                )
                .order_by(RetryDecision.position)
                .limit(MAX_ITEMS + 1)
            )
            if not decisions:
                raise UnprocessableInput(
                    "The plan has no retry decision to approve.",
                    [
                        FieldProblem(
                            "/all_retry_decisions",
                            "the plan has no retry decision",
                            "nothing_to_approve",
                        )
                    ],
                )
            if len(decisions) > MAX_ITEMS:
                raise UnprocessableInput(
                    f"The plan has more than {MAX_ITEMS} retry decisions.",
                    [
                        FieldProblem(
                            "/all_retry_decisions",
                            f"covers more than {MAX_ITEMS} decisions; name them "
                            "in parts under decision_ids instead",
                            "too_many",
                        )
                    ],
                )
            return decisions

        wanted = list(request.get("decision_ids") or [])
        if not wanted:
            raise UnprocessableInput(
                "Name the decisions to approve or deny.",
                [
                    FieldProblem(
                        "/decision_ids",
                        "give decision ids of the plan, or all_retry_decisions: true",
                        "required",
                    )
                ],
            )
        found: dict[str, RetryDecision] = {}
        for start in range(0, len(wanted), _CHUNK):
            for row in RetryDecision.select().where(
                (RetryDecision.plan == plan.retry_plan_id)
                & (RetryDecision.decision_id.in_(wanted[start : start + _CHUNK]))
            ):
                found[row.decision_id] = row
        problems = []
        for index, decision_id in enumerate(wanted):
            row = found.get(decision_id)
            pointer = f"/decision_ids/{index}"
            if row is None:
                problems.append(
                    FieldProblem(
                        pointer,
                        "is not a decision of this plan; read the plan for its ids",
                        "unknown_decision",
                    )
                )
            elif verdict == "approve" and not _approvable(row):
                problems.append(
                    FieldProblem(
                        pointer,
                        f"is a {row.action} decision ({row.reason}); only retry "
                        "decisions and waits for a delay can be approved",
                        "not_approvable",
                    )
                )
        if problems:
            raise UnprocessableInput("Some decisions cannot be covered.", problems)
        return [found[decision_id] for decision_id in wanted]

    # -- taking one back ------------------------------------------------------------

    def revoke(
        self,
        approval_id: str,
        request: Mapping[str, Any],
        *,
        actor: Actor | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Revoke an approval or a denial (``POST .../approvals/{id}/revoke``)."""
        engine = self.engine
        engine._check_request("approval_revoke_request", request)
        now = engine.now(now)
        who = engine.actor_of(request, actor, "revoked_by")
        with engine.database.atomic():
            row = Approval.get_or_none(Approval.approval_id == approval_id)
            if row is None:
                raise NotFound(f"No approval {approval_id}.")
            updated = (
                Approval.update(
                    revoked_at=now,
                    revoked_by=who.name,
                    revoked_by_verified=who.verified,
                    revoke_reason=request["reason"],
                )
                .where(
                    (Approval.approval_id == approval_id)
                    & (Approval.revoked_at.is_null())
                )
                .execute()
            )
            if not updated:
                raise Conflict(
                    "The approval is revoked already.",
                    [FieldProblem("", "is revoked already", "revoked")],
                )
            evidence.append(
                engine.database, "approval_revocation", approval_id, who, now
            )
            _word_given(engine.database)
        log.info("approval revoked approval_id=%s", approval_id)
        return self.get(approval_id, now=now)

    # -- reading ------------------------------------------------------------------

    def get(self, approval_id: str, *, now: datetime | None = None) -> dict[str, Any]:
        now = self.engine.now(now)
        row = Approval.get_or_none(Approval.approval_id == approval_id)
        if row is None:
            raise NotFound(f"No approval {approval_id}.")
        document = self._document(row, now, with_items=True)
        validation.check_output("approval", document)
        return document

    def list(
        self,
        *,
        retry_plan_id: str | None = None,
        lineage_id: str | None = None,
        state: str | None = None,
        verdict: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Approvals newest first, each with its state; filters narrow the page."""
        now = self.engine.now(now)
        query = Approval.select()
        if retry_plan_id is not None:
            query = query.where(Approval.retry_plan_id == retry_plan_id)
        if verdict is not None:
            query = query.where(Approval.verdict == verdict)
        if lineage_id is not None:
            covering = ApprovalItem.select(ApprovalItem.approval_id).where(
                ApprovalItem.lineage_id == lineage_id
            )
            query = query.where(Approval.approval_id.in_(covering))
        if since is not None:
            query = query.where(Approval.created_at >= since)
        if until is not None:
            query = query.where(Approval.created_at < until)
        if state is not None:
            query = query.where(_state_condition(state, to_micros(now)))
        rows, next_cursor = newest_first(
            query, Approval.created_at, Approval.approval_id, limit=limit, cursor=cursor
        )
        items = [self._document(row, now, with_items=False) for row in rows]
        page = {"items": items, "next_cursor": next_cursor}
        validation.check_output("approval_page", page)
        return page

    def _document(
        self, row: Approval, now: datetime, *, with_items: bool
    ) -> dict[str, Any]:
        items = list(
            ApprovalItem.select()
            .where(ApprovalItem.approval_id == row.approval_id)
            .order_by(ApprovalItem.position)
        )
        versions = lineage_versions(item.lineage_id for item in items)
        latest = _latest_items(item.lineage_id for item in items)
        item_states = [_item_state(row, item, versions, latest, now) for item in items]
        document = {
            "approval_id": row.approval_id,
            "retry_plan_id": row.retry_plan_id,
            "plan_hash": row.plan_hash,
            "verdict": row.verdict,
            "state": _approval_state(row, item_states, now),
            "approved_by": row.approved_by,
            "actor_verified": bool(row.actor_verified),
            "reason": row.reason,
            "created_at": _iso(row.created_at),
            "expires_at": _iso(row.expires_at),
            "decision_count": row.item_count,
            "used_count": row.used_count,
            "revoked_at": _iso(row.revoked_at),
            "revoked_by": row.revoked_by,
            "revoke_reason": row.revoke_reason,
        }
        if with_items:
            document["decisions"] = [
                {
                    "decision_id": item.decision_id,
                    "lineage_id": item.lineage_id,
                    "attempt_number": item.attempt_number,
                    "state": state,
                    "used_at": _iso(item.used_at),
                    "execution_id": item.execution_id,
                }
                for item, state in zip(items, item_states, strict=True)
            ]
        return document

    # -- what the live worker asks ------------------------------------------------

    def latest_words(self, lineage_ids: Iterable[str]) -> dict[str, Word]:
        """The latest approval or denial covering each lineage, if any."""
        latest: dict[str, ApprovalItem] = {}
        wanted = list(dict.fromkeys(lineage_ids))
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for item in store.fetch_rows(newest_words_first(chunk, ApprovalItem)):
                latest.setdefault(item.lineage_id, item)
        # An approval covers many lineages: each is read once, not per item.
        approval_ids = list({item.approval_id for item in latest.values()})
        approvals: dict[str, Approval] = {}
        for start in range(0, len(approval_ids), _CHUNK):
            for approval in store.fetch_rows(
                Approval.select().where(
                    store.among(
                        Approval.approval_id, approval_ids[start : start + _CHUNK]
                    )
                )
            ):
                approvals[approval.approval_id] = approval
        return {
            lineage_id: Word(approvals[item.approval_id], item)
            for lineage_id, item in latest.items()
        }


def newest_words_first(lineage_ids: Iterable[str], *columns: Any) -> peewee.Query:
    """
    ``columns`` of the items covering these lineages with their approvals,
    newest word first: the first row of a lineage is its latest word.
    """
    return (
        ApprovalItem.select(*columns)
        .join(
            Approval,
            on=(ApprovalItem.approval_id == Approval.approval_id),
            attr="approval",
        )
        .where(store.among(ApprovalItem.lineage_id, list(lineage_ids)))
        .order_by(ApprovalItem.created_at.desc(), ApprovalItem.approval_id.desc())
    )


def _word_given(database: peewee.Database) -> None:
    """Announce an approval, denial or revocation (caller's transaction)."""
    store.bump_counters({WORDS_GIVEN: 1})
    if store.is_postgres(database):
        database.execute_sql("SELECT pg_notify(%s, '')", (WORDS_CHANNEL,))


def _approvable(row: RetryDecision) -> bool:
    return (row.action, None) in APPROVABLE or (row.action, row.reason) in APPROVABLE


def skip_reason(
    word: Word,
    lineage: Lineage | LineageVersion,
    plan_hash: str,
    now: datetime,
    *,
    claimed_by: str | None = None,
) -> str:
    """
    Why the latest word does not let the worker send the lineage, or ``""``.

    Checked in this order: revocation, denial, expiry, use, freshness, plan hash.
    An item used by the execution ``claimed_by`` (the one about to send) is
    not counted as used.
    """
    approval, item = word
    if approval.revoked_at is not None:
        return "approval_revoked"
    if approval.verdict != "approve":
        return "denied"
    if approval.expires_at <= now:
        return "approval_expired"
    if item.used_at is not None and item.execution_id != claimed_by:
        return "approval_used"
    if lineage.version != item.lineage_version or lineage.state != "failed":
        return "approval_stale"
    if plan_hash != approval.plan_hash:
        return "plan_changed"
    return ""


class LineageVersion(NamedTuple):
    """What an approval's freshness depends on: a lineage's version and state."""

    version: int
    state: str


def lineage_versions(lineage_ids: Iterable[str]) -> dict[str, LineageVersion]:
    """The version and state of each of these lineages, by id."""
    wanted = list(dict.fromkeys(lineage_ids))
    found: dict[str, LineageVersion] = {}
    for start in range(0, len(wanted), _CHUNK):
        for lineage_id, version, state in (
            Lineage.select(Lineage.lineage_id, Lineage.version, Lineage.state)
            .where(store.among(Lineage.lineage_id, wanted[start : start + _CHUNK]))
            .tuples()
        ):
            found[lineage_id] = LineageVersion(version, state)
    return found


def _latest_items(lineage_ids: Iterable[str]) -> dict[str, tuple[int, str]]:
    """For each lineage, ``(created_at, approval_id)`` of the latest word on it."""
    wanted = list(dict.fromkeys(lineage_ids))
    latest: dict[str, tuple[int, str]] = {}
    for start in range(0, len(wanted), _CHUNK):
        rows = (
            ApprovalItem.select(
                ApprovalItem.lineage_id,
                ApprovalItem.created_at,
                ApprovalItem.approval_id,
            )
            .where(ApprovalItem.lineage_id.in_(wanted[start : start + _CHUNK]))
            .order_by(ApprovalItem.created_at.desc(), ApprovalItem.approval_id.desc())
        )
        for row in rows:
            latest.setdefault(
                row.lineage_id, (to_micros(row.created_at), row.approval_id)
            )
    return latest


def _item_state(
    approval: Approval,
    item: ApprovalItem,
    versions: Mapping[str, tuple[int, str]],
    latest: Mapping[str, tuple[int, str]],
    now: datetime,
) -> str:
    """One covered decision's state: used, stale, superseded or pending."""
    if item.used_at is not None:
        return "used"
    version, state = versions.get(item.lineage_id, (None, None))
    if version != item.lineage_version or state != "failed":
        return "stale"
    newest = latest.get(item.lineage_id)
    if newest is not None and newest != (to_micros(item.created_at), item.approval_id):
        return "superseded"
    return "pending"


def _approval_state(approval: Approval, item_states: list[str], now: datetime) -> str:
    """
    active, used, expired, revoked or stale, in that order of precedence:
    revoked, then used (every decision served), expired, stale (no decision
    left that could be served), else active.
    """
    if approval.revoked_at is not None:
        return "revoked"
    if item_states and all(state == "used" for state in item_states):
        return "used"
    if approval.expires_at <= now:
        return "expired"
    if not any(state == "pending" for state in item_states):
        return "stale"
    return "active"


def _state_condition(state: str, now: int) -> Any:
    """The SQL condition for an approval state (see :func:`_approval_state`)."""
    revoked = Approval.revoked_at.is_null(False)
    used = (Approval.used_count >= Approval.item_count) & ~revoked
    expired = (Approval.expires_at <= now) & ~revoked & ~used
    live = ~revoked & ~used & (Approval.expires_at > now)
    later = ApprovalItem.alias("later")
    superseded = later.select(later.approval_id).where(
        (later.lineage_id == ApprovalItem.lineage_id)
        & (
            (later.created_at > ApprovalItem.created_at)
            | (
                (later.created_at == ApprovalItem.created_at)
                & (later.approval_id > ApprovalItem.approval_id)
            )
        )
    )
    pending = (
        ApprovalItem.select(ApprovalItem.approval_id)
        .join(Lineage, on=(ApprovalItem.lineage_id == Lineage.lineage_id))
        .where(
            ApprovalItem.used_at.is_null()
            & (Lineage.version == ApprovalItem.lineage_version)
            & (Lineage.state == "failed")
            & ~peewee.fn.EXISTS(superseded)
        )
    )
    if state == "revoked":
        return revoked
    if state == "used":
        return used
    if state == "expired":
        return expired
    if state == "stale":
        return live & Approval.approval_id.not_in(pending)
    return live & Approval.approval_id.in_(pending)
