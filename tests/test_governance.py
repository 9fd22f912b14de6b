"""Approvals, live runs and execution records, through the engine on both stores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from plugins_fixtures import (
    T0,
    Clock,
    FakePlugin,
    FakeType,
    failed,
    package,
    plan_request,
    record_failure,
    rfc3339,
)

from cavra_core import Conflict, InvalidInput, NotFound, UnprocessableInput, evidence
from cavra_core.errors import Forbidden
from cavra_core.identity import Actor
from cavra_core.store import Execution, Lineage, WorkerRun

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
CONNECTORS = {
    "hook-a": {"type": "fake"},
    "hook-twice": {"type": "fake", "retry_policy": {"max_retry_attempts": 2}},
}
PLANNER = Actor("rm-alice", True, "release_manager")
APPROVER = Actor("po-bob", True, "platform_owner")


@pytest.fixture
def fake() -> FakeType:
    return FakeType("fake")


@pytest.fixture
def engine(make_engine, fake):
    return make_engine(
        CONNECTORS,
        plugins=[FakePlugin(fake)],
        load_entry_points=False,
        clock=Clock(),
    )


def plan(engine, now, actor=PLANNER, **policy):
    return engine.plan_retries(plan_request(**policy), actor=actor, now=now)


def decisions_of(engine, retry_plan_id):
    return list(engine.iter_plan_decisions(retry_plan_id))


def approve(engine, retry_plan, now, actor=APPROVER, **request):
    body = {"reason": "receiver is back after the incident", **request}
    if "decision_ids" not in body and "all_retry_decisions" not in body:
        body["all_retry_decisions"] = True
    return engine.approvals.create(
        retry_plan["retry_plan_id"], body, actor=actor, now=now
    )


def live_run(engine, now, actor=APPROVER, **request):
    body = {"dry_run": False, **request}
    return engine.run_worker(body, actor=actor, now=now)


def failed_and_due(engine, fake, *, connector_id="hook-a", drill="drill-1"):
    """A lineage whose first delivery failed at T0; its retry is due at T0+15m."""
    lineage_id = record_failure(
        engine, T0, connector_id=connector_id, evidence=package(drill)
    )
    return lineage_id


# -- approvals ---------------------------------------------------------------------


def test_plan_records_a_verified_actor_and_ignores_the_body_name(engine, fake) -> None:
    """With a token's actor, the body's generated_by is not what is recorded."""
    failed_and_due(engine, fake)

    made = engine.plan_retries(
        {"generated_by": "someone-else"}, actor=PLANNER, now=T0 + 20 * MINUTE
    )

    assert (made["generated_by"], made["actor_verified"]) == ("rm-alice", True)


def test_plan_without_token_records_the_name_as_given_unverified(engine) -> None:
    made = engine.plan_retries({"generated_by": "rm"}, now=T0)

    assert (made["generated_by"], made["actor_verified"]) == ("rm", False)


def test_plan_without_token_or_name_names_the_missing_field(engine) -> None:
    with pytest.raises(InvalidInput) as caught:
        engine.plan_retries({}, now=T0)

    assert caught.value.problems[0].pointer == "/generated_by"


def test_author_cannot_approve_their_own_plan(engine, fake) -> None:
    """Four-eyes: the plan's author is refused, whatever the case of the name."""
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)

    with pytest.raises(Forbidden):
        approve(engine, made, T0 + 21 * MINUTE, actor=Actor("RM-Alice", True))


@pytest.mark.parametrize("look_alike", ["RM-Alice", "ＲＭ-alice", "rm-alice\u200b"])
def test_a_look_alike_of_the_author_cannot_approve(engine, fake, look_alike) -> None:
    """
    Four-eyes compares names as people read them, not byte for byte (names
    padded with spaces are refused by the schema before that).
    """
    failed_and_due(engine, fake)
    made = engine.plan_retries({"generated_by": "rm-alice"}, now=T0 + 20 * MINUTE)

    with pytest.raises(Forbidden):
        approve(engine, made, T0 + 21 * MINUTE, actor=None, approved_by=look_alike)


def test_author_may_approve_when_four_eyes_is_off(make_engine, fake) -> None:
    engine = make_engine(
        CONNECTORS,
        plugins=[FakePlugin(fake)],
        load_entry_points=False,
        four_eyes=False,
    )
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)

    approval = approve(engine, made, T0 + 21 * MINUTE, actor=PLANNER)

    assert approval["state"] == "active"


def test_author_may_deny_their_own_plan(engine, fake) -> None:
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)
    ids = [d["decision_id"] for d in decisions_of(engine, made["retry_plan_id"])]

    denial = approve(
        engine, made, T0 + 21 * MINUTE, actor=PLANNER, verdict="deny", decision_ids=ids
    )

    assert (denial["verdict"], denial["state"]) == ("deny", "active")


def test_approval_is_bound_to_the_plan_hash_and_lineage(engine, fake) -> None:
    lineage_id = failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)

    approval = approve(engine, made, T0 + 21 * MINUTE)

    assert approval["plan_hash"] == made["plan_hash"]
    assert approval["decisions"][0]["lineage_id"] == lineage_id
    assert approval["decisions"][0]["attempt_number"] == 2
    assert approval["expires_at"] == rfc3339(T0 + 21 * MINUTE + 24 * HOUR)


def test_approval_with_another_plan_hash_is_refused(engine, fake) -> None:
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)

    with pytest.raises(UnprocessableInput) as caught:
        approve(engine, made, T0 + 21 * MINUTE, plan_hash="0" * 64)

    assert caught.value.problems[0].pointer == "/plan_hash"


@pytest.mark.parametrize("delta", [timedelta(0), timedelta(days=7, seconds=1)])
def test_expiry_must_be_in_the_future_and_within_a_week(engine, fake, delta) -> None:
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)
    now = T0 + 21 * MINUTE

    with pytest.raises(UnprocessableInput) as caught:
        approve(engine, made, now, expires_at=rfc3339(now + delta))

    assert caught.value.problems[0].pointer == "/expires_at"


def test_suppressed_decision_cannot_be_approved(engine, fake) -> None:
    record_failure(engine, T0, status=400)
    made = plan(engine, T0 + 20 * MINUTE)
    decision = decisions_of(engine, made["retry_plan_id"])[0]

    with pytest.raises(UnprocessableInput) as caught:
        approve(engine, made, T0 + 21 * MINUTE, decision_ids=[decision["decision_id"]])

    assert caught.value.problems[0].pointer == "/decision_ids/0"
    assert caught.value.problems[0].reason == "not_approvable"


def test_decision_of_another_plan_is_refused(engine, fake) -> None:
    failed_and_due(engine, fake)
    first = plan(engine, T0 + 20 * MINUTE)
    second = plan(engine, T0 + 21 * MINUTE)
    foreign = decisions_of(engine, first["retry_plan_id"])[0]["decision_id"]

    with pytest.raises(UnprocessableInput) as caught:
        approve(engine, second, T0 + 22 * MINUTE, decision_ids=[foreign])

    assert caught.value.problems[0].reason == "unknown_decision"


def test_approving_a_plan_without_retries_says_so(engine, fake) -> None:
    record_failure(engine, T0)
    made = plan(engine, T0 + MINUTE)  # the delay has not passed: a wait

    with pytest.raises(UnprocessableInput) as caught:
        approve(engine, made, T0 + 2 * MINUTE)

    assert caught.value.problems[0].pointer == "/all_retry_decisions"


def test_unknown_plan_is_not_found(engine) -> None:
    with pytest.raises(NotFound):
        engine.approvals.create(
            "rp_" + "0" * 32,
            {"reason": "x", "all_retry_decisions": True},
            actor=APPROVER,
            now=T0,
        )


def test_revoking_twice_is_a_conflict(engine, fake) -> None:
    failed_and_due(engine, fake)
    approval = approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    engine.approvals.revoke(
        approval["approval_id"],
        {"reason": "wrong plan"},
        actor=APPROVER,
        now=T0 + 22 * MINUTE,
    )

    with pytest.raises(Conflict):
        engine.approvals.revoke(
            approval["approval_id"],
            {"reason": "again"},
            actor=APPROVER,
            now=T0 + 23 * MINUTE,
        )


# -- live runs -------------------------------------------------------------------


def test_live_run_delivers_an_approved_retry_and_recovers_the_lineage(
    engine, fake
) -> None:
    lineage_id = failed_and_due(engine, fake)
    approval = approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)

    run = live_run(engine, T0 + 22 * MINUTE)

    assert run["summary"]["executed_count"] == 1
    [selected] = run["selected_retries"]
    assert (selected["outcome"], selected["approval_id"]) == (
        "delivered",
        approval["approval_id"],
    )
    assert [d.event_id for d in fake.deliveries] == [lineage_id]
    assert Lineage.get_by_id(lineage_id).state == "recovered"
    execution = engine.executions.get(selected["execution_id"])
    assert execution["outcome"] == "delivered"
    assert execution["attempt_number"] == 2
    assert execution["evidence"]["attempt_id"].startswith("att_")
    assert engine.approvals.get(approval["approval_id"])["state"] == "used"


def test_recovered_lineage_is_never_delivered_again(engine, fake) -> None:
    failed_and_due(engine, fake)
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    live_run(engine, T0 + 22 * MINUTE)

    later = live_run(engine, T0 + 2 * HOUR)

    assert len(fake.deliveries) == 1
    assert later["selected_retries"] == []
    assert later["summary"]["retryable_count"] == 0


def test_approval_serves_one_attempt_once(engine, fake) -> None:
    """A failed approved retry counts an attempt; the next needs a new approval."""
    lineage_id = failed_and_due(engine, fake)
    fake.script(failed(503))
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    first = live_run(engine, T0 + 22 * MINUTE)

    second = live_run(engine, T0 + 3 * HOUR)

    assert first["selected_retries"][0]["outcome"] == "failed"
    assert Lineage.get_by_id(lineage_id).attempt_count == 2
    assert second["summary"]["executed_count"] == 0
    assert len(fake.deliveries) == 1
    assert "no usable approval" in " ".join(second["notes"])


def test_last_allowed_attempt_failing_exhausts_the_lineage(engine, fake) -> None:
    lineage_id = failed_and_due(engine, fake, connector_id="hook-twice")
    fake.script(failed(503))
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)

    live_run(engine, T0 + 22 * MINUTE)

    assert Lineage.get_by_id(lineage_id).state == "exhausted"


def test_dry_run_never_uses_an_approval(engine, fake) -> None:
    failed_and_due(engine, fake)
    approval = approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)

    engine.run_worker({}, actor=APPROVER, now=T0 + 22 * MINUTE)

    assert fake.deliveries == []
    assert engine.approvals.get(approval["approval_id"])["state"] == "active"
    assert Execution.select().count() == 0


def test_stale_approval_is_not_used_and_the_run_says_so(engine, fake) -> None:
    """A new attempt after planning makes the approval stale."""
    lineage_id = failed_and_due(engine, fake)
    approval = approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    record_failure(engine, T0 + 25 * MINUTE)  # observed elsewhere: moves on

    run = live_run(engine, T0 + 3 * HOUR)

    assert fake.deliveries == []
    [selected] = run["selected_retries"]
    assert (selected["outcome"], selected["skipped_reason"]) == (
        "skipped",
        "approval_stale",
    )
    assert "moved on since the approved plan" in " ".join(run["notes"])
    assert engine.approvals.get(approval["approval_id"])["state"] == "stale"
    assert Lineage.get_by_id(lineage_id).attempt_count == 2


def test_expired_approval_is_not_used(engine, fake) -> None:
    failed_and_due(engine, fake)
    now = T0 + 21 * MINUTE
    approve(engine, plan(engine, T0 + 20 * MINUTE), now, expires_at=rfc3339(now + HOUR))

    run = live_run(engine, now + 2 * HOUR)

    assert fake.deliveries == []
    assert run["selected_retries"][0]["skipped_reason"] == "approval_expired"


def test_revoked_approval_is_not_used(engine, fake) -> None:
    failed_and_due(engine, fake)
    approval = approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    revoked = engine.approvals.revoke(
        approval["approval_id"],
        {"reason": "receiver still unstable"},
        actor=APPROVER,
        now=T0 + 22 * MINUTE,
    )

    run = live_run(engine, T0 + 23 * MINUTE)

    assert revoked["state"] == "revoked"
    assert fake.deliveries == []
    assert run["selected_retries"][0]["skipped_reason"] == "approval_revoked"


def test_later_denial_overrides_an_approval(engine, fake) -> None:
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)
    approval = approve(engine, made, T0 + 21 * MINUTE)
    ids = [d["decision_id"] for d in decisions_of(engine, made["retry_plan_id"])]
    approve(engine, made, T0 + 22 * MINUTE, verdict="deny", decision_ids=ids)

    run = live_run(engine, T0 + 23 * MINUTE)

    assert fake.deliveries == []
    assert run["selected_retries"][0]["skipped_reason"] == "denied"
    assert engine.approvals.get(approval["approval_id"])["state"] == "stale"
    assert (
        engine.approvals.get(approval["approval_id"])["decisions"][0]["state"]
        == "superseded"
    )


def test_later_approval_overrides_a_denial(engine, fake) -> None:
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)
    ids = [d["decision_id"] for d in decisions_of(engine, made["retry_plan_id"])]
    approve(engine, made, T0 + 21 * MINUTE, verdict="deny", decision_ids=ids)
    approve(engine, made, T0 + 22 * MINUTE, decision_ids=ids)

    run = live_run(engine, T0 + 23 * MINUTE)

    assert run["selected_retries"][0]["outcome"] == "delivered"


def test_second_live_run_in_one_window_is_refused_naming_the_first(
    engine, fake
) -> None:
    first = live_run(engine, T0 + 10 * MINUTE)

    with pytest.raises(Conflict) as caught:
        live_run(engine, T0 + 50 * MINUTE)

    assert first["run_id"] in caught.value.detail
    assert WorkerRun.select().count() == 1


def test_live_runs_in_successive_windows_both_run(engine) -> None:
    live_run(engine, T0 + 10 * MINUTE)

    second = live_run(engine, T0 + 70 * MINUTE)

    assert second["dry_run"] is False


def test_dry_runs_are_not_limited_to_one_per_window(engine) -> None:
    live_run(engine, T0 + 10 * MINUTE)

    engine.run_worker({}, actor=APPROVER, now=T0 + 11 * MINUTE)
    engine.run_worker({}, actor=APPROVER, now=T0 + 12 * MINUTE)

    assert WorkerRun.select().count() == 3


def test_immediate_retry_sends_an_approved_wait_before_its_delay(engine, fake) -> None:
    """allow_immediate_retry lets an approved manual retry skip its delay."""
    failed_and_due(engine, fake)
    made = plan(engine, T0 + MINUTE)  # 14 minutes of delay left: a wait
    [decision] = decisions_of(engine, made["retry_plan_id"])
    approve(engine, made, T0 + 2 * MINUTE, decision_ids=[decision["decision_id"]])

    waiting = live_run(engine, T0 + 3 * MINUTE)
    assert fake.deliveries == []
    run = live_run(
        engine,
        T0 + 70 * MINUTE,
        retry_policy={"allow_immediate_retry": True, "retry_delay_minutes": 120},
    )

    assert decision["action"] == "wait"
    assert waiting["summary"]["executed_count"] == 0
    assert run["selected_retries"][0]["outcome"] == "delivered"


def test_max_retry_deliveries_caps_live_deliveries(engine, fake) -> None:
    for n in range(3):
        failed_and_due(engine, fake, drill=f"drill-{n}")
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)

    run = live_run(engine, T0 + 22 * MINUTE, max_retry_deliveries=2)

    assert run["summary"]["executed_count"] == 2
    assert len(fake.deliveries) == 2
    assert "max_retry_deliveries=2" in " ".join(run["notes"])


def test_a_claimed_attempt_cannot_be_claimed_twice(engine, fake) -> None:
    """The unique claim key refuses a second execution of one attempt."""
    lineage_id = failed_and_due(engine, fake)
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    run = live_run(engine, T0 + 22 * MINUTE)
    first = Execution.get_by_id(run["selected_retries"][0]["execution_id"])

    with pytest.raises(Exception) as caught:
        Execution.insert(
            **{**first.__data__, "execution_id": "ex_" + "1" * 32}
        ).execute()

    assert "unique" in str(caught.value).lower()
    assert first.claim_key == f"{lineage_id}:2"


def test_dashboard_counts_executions(engine, fake) -> None:
    for n in range(2):
        failed_and_due(engine, fake, drill=f"drill-{n}")
    fake.script(failed(503))
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    live_run(engine, T0 + 22 * MINUTE)

    board = engine.dashboard(now=T0 + 23 * MINUTE)

    assert board["executed_retry_count"] == 2
    assert (board["delivered_retry_count"], board["failed_retry_count"]) == (1, 1)
    assert board["executed_count"] == 1


def test_executions_list_filters_by_run_and_outcome(engine, fake) -> None:
    for n in range(2):
        failed_and_due(engine, fake, drill=f"drill-{n}")
    fake.script(failed(503))
    approve(engine, plan(engine, T0 + 20 * MINUTE), T0 + 21 * MINUTE)
    run = live_run(engine, T0 + 22 * MINUTE)

    failed_only = engine.executions.list(run_id=run["run_id"], outcome="failed")
    page = engine.executions.list(limit=1)

    assert [e["outcome"] for e in failed_only["items"]] == ["failed"]
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = engine.executions.list(limit=1, cursor=page["next_cursor"])
    assert rest["items"][0]["execution_id"] != page["items"][0]["execution_id"]
    assert rest["next_cursor"] is None


def test_approvals_list_filters_by_state(engine, fake) -> None:
    failed_and_due(engine, fake, drill="drill-1")
    failed_and_due(engine, fake, drill="drill-2")
    made = plan(engine, T0 + 20 * MINUTE)
    ids = [d["decision_id"] for d in decisions_of(engine, made["retry_plan_id"])]
    kept = approve(engine, made, T0 + 21 * MINUTE, decision_ids=ids[:1])
    revoked = approve(engine, made, T0 + 21 * MINUTE, decision_ids=ids[1:])
    engine.approvals.revoke(
        revoked["approval_id"], {"reason": "no"}, actor=APPROVER, now=T0 + 22 * MINUTE
    )

    active = engine.approvals.list(state="active", now=T0 + 23 * MINUTE)
    gone = engine.approvals.list(state="revoked", now=T0 + 23 * MINUTE)
    expired = engine.approvals.list(state="expired", now=T0 + 30 * HOUR)

    assert [a["approval_id"] for a in active["items"]] == [kept["approval_id"]]
    assert [a["approval_id"] for a in gone["items"]] == [revoked["approval_id"]]
    assert [a["approval_id"] for a in expired["items"]] == [kept["approval_id"]]


# -- evidence --------------------------------------------------------------------


def test_every_governed_record_appends_to_an_intact_chain(engine, fake) -> None:
    failed_and_due(engine, fake)
    made = plan(engine, T0 + 20 * MINUTE)
    approval = approve(engine, made, T0 + 21 * MINUTE)
    run = live_run(engine, T0 + 22 * MINUTE)

    kinds = [(e["kind"], e["subject_id"]) for e in evidence.iter_entries()]
    report = evidence.verify_store()

    assert kinds == [
        ("retry_plan", made["retry_plan_id"]),
        ("approval", approval["approval_id"]),
        ("execution", run["selected_retries"][0]["execution_id"]),
        ("worker_run", run["run_id"]),
    ]
    assert report["intact"] is True
    assert report["verified_entry_count"] == 4


class RevokingType(FakeType):
    """While the first retry of a live run is sent, revokes another's approval."""

    def __init__(self) -> None:
        super().__init__("fake")
        self.revoke = None

    def deliver(self, connector, delivery):
        if self.revoke is not None:
            revoke, self.revoke = self.revoke, None
            revoke(delivery.lineage_id)
        return super().deliver(connector, delivery)


def test_revocation_during_a_live_run_stops_the_retries_not_yet_sent(
    make_engine,
) -> None:
    """The latest word is read again when each retry is claimed."""
    fake = RevokingType()
    engine = make_engine(
        CONNECTORS, plugins=[FakePlugin(fake)], load_entry_points=False
    )
    lineages = [
        failed_and_due(engine, fake, drill="drill-1"),
        failed_and_due(engine, fake, drill="drill-2"),
    ]
    made = plan(engine, T0 + 20 * MINUTE)
    approval_of = {
        d["lineage_id"]: approve(
            engine, made, T0 + 21 * MINUTE, decision_ids=[d["decision_id"]]
        )["approval_id"]
        for d in decisions_of(engine, made["retry_plan_id"])
    }
    sent_first = []

    def revoke_the_other(lineage_id: str) -> None:
        sent_first.append(lineage_id)
        [other] = [other for other in lineages if other != lineage_id]
        engine.approvals.revoke(
            approval_of[other],
            {"reason": "stop"},
            actor=APPROVER,
            now=T0 + 22 * MINUTE,
        )

    fake.revoke = revoke_the_other

    run = live_run(engine, T0 + 22 * MINUTE)

    outcomes = {s["lineage_id"]: s for s in run["selected_retries"]}
    [other] = [lineage for lineage in lineages if lineage != sent_first[0]]
    assert outcomes[sent_first[0]]["outcome"] == "delivered"
    assert outcomes[other]["skipped_reason"] == "approval_revoked"
    assert [d.lineage_id for d in fake.deliveries] == sent_first


def test_dry_run_shows_which_selected_retries_are_approved(engine, fake) -> None:
    first = failed_and_due(engine, fake, drill="drill-1")
    second = failed_and_due(engine, fake, drill="drill-2")
    made = plan(engine, T0 + 20 * MINUTE)
    by_lineage = {
        d["lineage_id"]: d["decision_id"]
        for d in decisions_of(engine, made["retry_plan_id"])
    }
    approval = approve(engine, made, T0 + 21 * MINUTE, decision_ids=[by_lineage[first]])

    run = engine.run_worker({}, actor=APPROVER, now=T0 + 22 * MINUTE)

    approvals = {s["lineage_id"]: s["approval_id"] for s in run["selected_retries"]}
    assert approvals == {first: approval["approval_id"], second: None}
    assert "1 of the 2 selected have an approval" in " ".join(run["notes"])
