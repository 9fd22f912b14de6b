"""The evidence log: its chain, its checks, its export, its API and command line."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from hypothesis import given, settings
from hypothesis import strategies as st
from plugins_fixtures import T0, Clock, FakePlugin, FakeType, package, record_failure

from cavra_core import Engine, evidence, validation
from cavra_core.engine import canonical_json, new_id
from cavra_core.errors import InvalidInput
from cavra_core.identity import Actor
from cavra_core.store import (
    EvidenceEntry,
    Execution,
    RecoveryClosure,
    RecoveryPlaybook,
    RecoveryPlaybookItem,
    RetryPlan,
)
from cavra_server import create_app
from cavra_server.app import P
from cavra_server.cli import main

PROBLEM_TYPE = "application/problem+json"
WHEN = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine({}, load_entry_points=False)


@pytest.fixture
def client(engine: Engine) -> testing.TestClient:
    return testing.TestClient(create_app(engine))


def make_plan(engine: Engine, by: str = "dana") -> str:
    """A retry plan made the way users make one; its entry comes with it."""
    return engine.plan_retries({"generated_by": by})["retry_plan_id"]


def make_run(engine: Engine, by: str = "ops") -> str:
    return engine.run_worker({"generated_by": by})["run_id"]


def insert_plan(by: str = "dana", at: datetime = WHEN) -> str:
    """A plan row written directly, inside the caller's transaction."""
    plan_id = new_id("rp")
    policy = {
        "allow_immediate_retry": False,
        "backoff_multiplier": 2.0,
        "jitter": 0.0,
        "max_age_hours": 168,
        "max_delay_minutes": 1440,
        "max_retry_attempts": 3,
        "retry_delay_minutes": 15,
        "retry_window_hours": 24,
    }
    RetryPlan.insert(
        retry_plan_id=plan_id,
        # A plan without decisions hashes its canonical policy alone.
        plan_hash=hashlib.sha256(canonical_json(policy).encode()).hexdigest(),
        generated_at=at,
        generated_by=by,
        policy=policy,
        decision_count=0,
        retryable_count=0,
        waiting_count=0,
        suppressed_count=0,
        alert_level="healthy",
    ).execute()
    return plan_id


def record_plan(engine: Engine, by: str = "dana") -> str:
    with engine.database.atomic():
        plan_id = insert_plan(by)
        engine.evidence.append("retry_plan", plan_id, Actor(by), WHEN)
    return plan_id


def record_closure(engine: Engine, by: str = "sam") -> str:
    """A recovery playbook and one closure of it, each with its entry."""
    playbook_id, closure_id = new_id("pb"), new_id("cl")
    with engine.database.atomic():
        RecoveryPlaybook.insert(
            playbook_id=playbook_id,
            generated_at=WHEN,
            generated_by=by,
            min_failure_count=3,
            lookback_hours=24,
            item_count=1,
            items=[{"connector_id": "hook-a"}],
        ).execute()
        RecoveryPlaybookItem.insert(
            playbook_id=playbook_id, connector_id="hook-a", generated_at=WHEN
        ).execute()
        engine.evidence.append("recovery_playbook", playbook_id, Actor(by), WHEN)
    with engine.database.atomic():
        RecoveryClosure.insert(
            closure_id=closure_id,
            playbook_id=playbook_id,
            connector_id="hook-a",
            closure_state="resolved",
            external_ref="CHG-1042",
            notes="token rotated",
            verification_refs=["att_" + "0" * 32],
            closed_by=by,
            closed_at=WHEN + timedelta(hours=1),
        ).execute()
        RecoveryPlaybookItem.update(
            closure_state="resolved", closed_at=WHEN + timedelta(hours=1)
        ).where(RecoveryPlaybookItem.playbook_id == playbook_id).execute()
        engine.evidence.append(
            "recovery_closure", closure_id, Actor(by, True), WHEN + timedelta(hours=1)
        )
    return closure_id


def raw_sql(engine: Engine, sql: str, *params: Any) -> None:
    """Change the database behind cavra's back, as someone with access could."""
    engine.database.execute_sql(sql.replace("?", engine.database.param), params)


def sequences(engine: Engine) -> list[int]:
    return [
        row.sequence for row in EvidenceEntry.select().order_by(EvidenceEntry.sequence)
    ]


def broken(report: dict[str, Any]) -> tuple[int | None, str]:
    entry = report["first_broken_entry"]
    return entry["sequence"], entry["problem"]


def problem_of(response: testing.Result, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    validation.check_output("problem", response.json)
    return response.json


def parameters(document: dict[str, Any]) -> list[str]:
    return [error["parameter"] for error in document["errors"]]


# -- the chain ---------------------------------------------------------------


def test_appended_entries_chain_and_verify_intact(engine) -> None:
    make_plan(engine)
    make_run(engine)
    record_plan(engine, "erin")
    record_closure(engine)

    report = engine.evidence.verify()

    entries = list(evidence.iter_entries())
    assert [entry["sequence"] for entry in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["previous_hash"] == evidence.GENESIS_HASH
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["previous_hash"] == before["entry_hash"]
    assert report["intact"] is True
    assert report["verified_entry_count"] == report["entry_count"] == 5
    assert report["last_entry_hash"] == entries[-1]["entry_hash"]
    assert report["first_broken_entry"] is None


def test_an_entry_names_its_kind_record_and_actor(engine) -> None:
    plan_id = make_plan(engine, "dana")
    closure_id = record_closure(engine, "sam")

    entries = engine.evidence.list_entries()["items"]

    assert [(e["kind"], e["subject_id"]) for e in entries] == [
        ("retry_plan", plan_id),
        ("recovery_playbook", entries[1]["subject_id"]),
        ("recovery_closure", closure_id),
    ]
    assert (entries[0]["actor"], entries[0]["actor_verified"]) == ("dana", False)
    assert (entries[2]["actor"], entries[2]["actor_verified"]) == ("sam", True)
    assert entries[0]["document"]["generated_by"] == "dana"
    assert entries[2]["document"]["external_ref"] == "CHG-1042"


def test_an_empty_log_is_intact(engine) -> None:
    report = engine.evidence.verify()

    assert report["intact"] is True
    assert report["verified_entry_count"] == report["entry_count"] == 0
    assert report["last_entry_hash"] is None


def test_an_edited_entry_document_breaks_the_chain_at_that_entry(engine) -> None:
    make_plan(engine, "dana")
    make_plan(engine, "erin")
    make_plan(engine, "fay")
    raw_sql(
        engine,
        "UPDATE evidence_entry SET document = REPLACE(document, 'erin', 'mallory') "
        "WHERE sequence = ?",
        2,
    )

    report = engine.evidence.verify()

    assert broken(report) == (2, "entry_hash_mismatch")
    assert report["intact"] is False
    assert report["verified_entry_count"] == 1
    assert report["first_broken_entry"]["kind"] == "retry_plan"


def test_an_edited_entry_actor_breaks_the_chain_at_that_entry(engine) -> None:
    make_plan(engine)
    make_run(engine)
    make_plan(engine)
    raw_sql(engine, "UPDATE evidence_entry SET actor = ? WHERE sequence = ?", "x", 2)

    report = engine.evidence.verify()

    assert broken(report) == (2, "entry_hash_mismatch")
    assert report["first_broken_entry"]["kind"] == "worker_run"


def test_an_entry_whose_document_is_no_longer_json_is_reported(engine) -> None:
    make_plan(engine)
    raw_sql(engine, "UPDATE evidence_entry SET document = ? WHERE sequence = 1", "{")

    report = engine.evidence.verify()

    assert broken(report) == (1, "entry_hash_mismatch")


def test_an_edited_plan_record_is_reported_at_the_entry_vouching_for_it(
    engine,
) -> None:
    make_plan(engine, "dana")
    plan_id = make_plan(engine, "erin")
    make_run(engine)
    raw_sql(
        engine,
        "UPDATE retry_plan SET generated_by = ? WHERE retry_plan_id = ?",
        "mallory",
        plan_id,
    )

    report = engine.evidence.verify()

    assert broken(report) == (2, "record_modified")
    assert report["first_broken_entry"]["subject_id"] == plan_id
    assert report["verified_entry_count"] == 1


def test_an_edited_closure_record_is_reported_at_the_entry_vouching_for_it(
    engine,
) -> None:
    make_plan(engine)
    closure_id = record_closure(engine)
    raw_sql(
        engine,
        "UPDATE recovery_closure SET closure_state = ? WHERE closure_id = ?",
        "deferred",
        closure_id,
    )

    report = engine.evidence.verify()

    assert broken(report) == (3, "record_modified")
    assert report["first_broken_entry"]["kind"] == "recovery_closure"


def test_a_deleted_record_is_reported_missing(engine) -> None:
    plan_id = record_plan(engine)
    raw_sql(engine, "DELETE FROM retry_plan WHERE retry_plan_id = ?", plan_id)

    report = engine.evidence.verify()

    assert broken(report) == (1, "record_missing")


def test_a_deleted_entry_is_a_sequence_gap_at_the_next_one(engine) -> None:
    for name in ("dana", "erin", "fay"):
        make_plan(engine, name)
    raw_sql(engine, "DELETE FROM evidence_entry WHERE sequence = ?", 2)

    report = engine.evidence.verify()

    assert broken(report) == (3, "sequence_gap")
    assert report["verified_entry_count"] == 1


def test_entries_cut_off_the_end_are_reported_missing(engine) -> None:
    make_plan(engine)
    make_plan(engine)
    raw_sql(engine, "DELETE FROM evidence_entry WHERE sequence = ?", 2)

    report = engine.evidence.verify()

    assert broken(report) == (2, "entries_missing")
    assert report["verified_entry_count"] == 1
    assert report["entry_count"] == 2


def test_a_record_is_checked_against_its_latest_entry(engine) -> None:
    plan_id = record_plan(engine, "dana")
    with engine.database.atomic():
        RetryPlan.update(generated_by="erin").where(
            RetryPlan.retry_plan_id == plan_id
        ).execute()
        engine.evidence.append("retry_plan", plan_id, Actor("erin"), WHEN)

    report = engine.evidence.verify()

    assert report["intact"] is True
    assert report["verified_entry_count"] == 2


def test_an_append_outside_a_transaction_is_refused(engine) -> None:
    with engine.database.atomic():
        plan_id = insert_plan()

    with pytest.raises(RuntimeError, match="inside the transaction"):
        engine.evidence.append("retry_plan", plan_id, Actor("dana"), WHEN)

    assert sequences(engine) == []


def test_an_append_for_no_record_is_refused_and_rolled_back(engine) -> None:
    with pytest.raises(ValueError, match="no retry_plan"), engine.database.atomic():
        engine.evidence.append("retry_plan", new_id("rp"), Actor("dana"), WHEN)

    assert sequences(engine) == []
    assert engine.evidence.entry_count() == 0


def test_an_entry_rolls_back_with_its_record(engine) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), engine.database.atomic():
        plan_id = insert_plan()
        engine.evidence.append("retry_plan", plan_id, Actor("dana"), WHEN)
        raise Abort

    assert sequences(engine) == []
    assert engine.evidence.verify()["intact"] is True


def test_concurrent_appends_keep_the_chain_intact_and_contiguous(
    engine, database_url
) -> None:
    threads, per_thread = 6, 5
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def appender(number: int) -> None:
        try:
            start.wait()
            with engine.database.connection_context():
                for _ in range(per_thread):
                    with engine.database.atomic():
                        plan_id = insert_plan(f"writer-{number}")
                        engine.evidence.append(
                            "retry_plan", plan_id, Actor(f"writer-{number}"), WHEN
                        )
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=appender, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    total = threads * per_thread
    assert sequences(engine) == list(range(1, total + 1))
    report = engine.evidence.verify()
    assert report["intact"] is True
    assert report["verified_entry_count"] == report["entry_count"] == total


def governed(make_engine: Callable[..., Engine]) -> tuple[Engine, dict[str, str]]:
    """
    A store holding every kind of governed record, made the way users make
    them: a plan approved and delivered by a live run, a second plan whose
    approval was revoked, a recovery playbook closed citing the delivery.
    """
    engine = make_engine(
        {"hook-a": {"type": "fake"}, "hook-b": {"type": "fake"}},
        plugins=[FakePlugin(FakeType("fake"))],
        load_entry_points=False,
        clock=Clock(),
    )
    planner = Actor("rm-alice", True, "release_manager")
    owner = Actor("po-bob", True, "platform_owner")
    analyst = Actor("soc-carol", True, "soc_analyst")
    minute = timedelta(minutes=1)
    record_failure(engine, T0, evidence=package("drill-1"))
    plan = engine.plan_retries({}, actor=planner, now=T0 + 20 * minute)
    word = {"reason": "receiver is back", "all_retry_decisions": True}
    approval = engine.approvals.create(
        plan["retry_plan_id"], word, actor=owner, now=T0 + 21 * minute
    )
    run = engine.run_worker({"dry_run": False}, actor=owner, now=T0 + 22 * minute)
    record_failure(engine, T0 + 30 * minute, evidence=package("drill-2"))
    for drill in ("drill-3", "drill-4", "drill-5"):
        record_failure(
            engine, T0 + 31 * minute, connector_id="hook-b", evidence=package(drill)
        )
    second = engine.plan_retries({}, actor=planner, now=T0 + 50 * minute)
    withdrawn = engine.approvals.create(
        second["retry_plan_id"], word, actor=owner, now=T0 + 51 * minute
    )
    engine.approvals.revoke(
        withdrawn["approval_id"],
        {"reason": "wrong plan"},
        actor=owner,
        now=T0 + 52 * minute,
    )
    playbook = engine.recovery.create_playbook(
        {"min_failure_count": 1}, actor=analyst, now=T0 + 60 * minute
    )
    execution_id = run["selected_retries"][0]["execution_id"]
    closure = engine.recovery.close(
        playbook["playbook_id"],
        {
            "connector_id": "hook-a",
            "closure_state": "mitigated",
            "notes": "Token rotated; watching the next deliveries.",
            "verification_refs": [execution_id],
        },
        actor=analyst,
        now=T0 + 61 * minute,
    )
    return engine, {
        "plan": plan["retry_plan_id"],
        "approval": approval["approval_id"],
        "run": run["run_id"],
        "execution": execution_id,
        "attempt": Execution.get_by_id(execution_id).attempt_id,
        "second_plan": second["retry_plan_id"],
        "playbook": playbook["playbook_id"],
        "closure": closure["closure_id"],
    }


def entry_of(kind: str, subject_id: str) -> int:
    """The sequence of the latest entry vouching for a record."""
    return evidence.latest_entry(kind, subject_id).sequence


def test_every_kind_of_governed_record_is_listed_and_verified(make_engine) -> None:
    """Plans, runs, approvals, revocations, executions, playbooks, closures."""
    engine, _ = governed(make_engine)

    page = engine.evidence.list_entries(limit=500)
    report = engine.evidence.verify()

    assert {entry["kind"] for entry in page["items"]} == set(evidence.KINDS)
    assert report["intact"] is True
    assert report["verified_entry_count"] == len(page["items"])


# -- the rows an entry cannot hold -------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("action", "suppress"),
        ("explanation", "Nothing to see."),
        ("not_after", 0),
        ("failed_status_codes", "[500]"),
        ("lineage_version", 99),
        ("decision_id", "rd_" + "0" * 32),
    ],
)
def test_an_edited_decision_is_reported_at_its_plans_entry(
    make_engine, column, value
) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        f"UPDATE retry_decision SET {column} = ? WHERE plan_id = ? AND position = 0",
        value,
        ids["second_plan"],
    )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("retry_plan", ids["second_plan"]),
        "record_modified",
    )


def test_decisions_swapped_in_position_are_reported_at_their_plans_entry(
    make_engine,
) -> None:
    engine, ids = governed(make_engine)
    for before, after in ((0, -1), (1, 0), (-1, 1)):
        raw_sql(
            engine,
            "UPDATE retry_decision SET position = ? WHERE plan_id = ? AND position = ?",
            after,
            ids["second_plan"],
            before,
        )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("retry_plan", ids["second_plan"]),
        "record_modified",
    )


def test_a_deleted_decision_is_reported_at_its_plans_entry(make_engine) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        "DELETE FROM retry_decision WHERE plan_id = ? AND position = 0",
        ids["second_plan"],
    )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("retry_plan", ids["second_plan"]),
        "record_modified",
    )


def test_the_plan_hash_is_recomputed_from_the_stored_decisions(make_engine) -> None:
    engine, ids = governed(make_engine)
    plan = RetryPlan.get_by_id(ids["second_plan"])

    problem = evidence._plan_problem(ids["second_plan"])

    assert plan.decision_count >= 2
    assert problem is None


def test_an_approval_item_freed_for_reuse_is_reported(make_engine) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        "UPDATE approval_item SET used_at = NULL, execution_id = NULL "
        "WHERE approval_id = ?",
        ids["approval"],
    )
    raw_sql(
        engine,
        "UPDATE approval SET used_count = 0 WHERE approval_id = ?",
        ids["approval"],
    )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("execution", ids["execution"]),
        "approval_use_mismatch",
    )


@pytest.mark.parametrize(
    ("sql", "value", "at"),
    [
        ("UPDATE approval SET used_count = ? WHERE approval_id = ?", 0, "approval"),
        (
            "UPDATE approval_item SET used_at = NULL WHERE approval_id = ?",
            None,
            "approval",
        ),
        (
            "UPDATE approval_item SET execution_id = ? WHERE approval_id = ?",
            "ex_" + "0" * 32,
            "execution",
        ),
    ],
)
def test_an_approvals_record_of_use_that_disagrees_is_reported(
    make_engine, sql, value, at
) -> None:
    """The approval's own rows disagree at its entry; with an execution, at that."""
    engine, ids = governed(make_engine)
    params = (ids["approval"],) if value is None else (value, ids["approval"])
    raw_sql(engine, sql, *params)

    report = engine.evidence.verify()

    assert broken(report) == (entry_of(at, ids[at]), "approval_use_mismatch")


@pytest.mark.parametrize("column", ["lineage_version", "attempt_number"])
def test_an_approval_item_that_no_longer_matches_its_decision_is_reported(
    make_engine, column
) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        f"UPDATE approval_item SET {column} = {column} + 1 WHERE approval_id = ?",
        ids["approval"],
    )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("approval", ids["approval"]),
        "approval_item_mismatch",
    )


def test_edited_run_notes_are_reported_at_the_runs_entry(make_engine) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine, "UPDATE worker_run SET notes = ? WHERE run_id = ?", "[]", ids["run"]
    )

    report = engine.evidence.verify()

    assert broken(report) == (entry_of("worker_run", ids["run"]), "record_modified")


@pytest.mark.parametrize(
    ("connector", "state", "kind"),
    [
        ("hook-a", "deferred", "recovery_closure"),
        ("hook-a", None, "recovery_closure"),
        ("hook-b", "resolved", "recovery_playbook"),
    ],
)
def test_a_playbook_item_not_in_its_latest_closures_state_is_reported(
    make_engine, connector, state, kind
) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        "UPDATE recovery_playbook_item SET closure_state = ? "
        "WHERE playbook_id = ? AND connector_id = ?",
        state,
        ids["playbook"],
        connector,
    )
    subject = ids["closure"] if kind == "recovery_closure" else ids["playbook"]

    report = engine.evidence.verify()

    assert broken(report) == (entry_of(kind, subject), "playbook_item_mismatch")


def test_a_playbook_item_closed_at_another_time_is_reported(make_engine) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        "UPDATE recovery_playbook_item SET closed_at = closed_at + 1 "
        "WHERE playbook_id = ?",
        ids["playbook"],
    )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("recovery_closure", ids["closure"]),
        "playbook_item_mismatch",
    )


def test_a_deleted_delivery_attempt_is_reported_at_its_execution(make_engine) -> None:
    engine, ids = governed(make_engine)
    raw_sql(engine, "DELETE FROM delivery_attempt WHERE attempt_id = ?", ids["attempt"])

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("execution", ids["execution"]),
        "attempt_missing",
    )


@pytest.mark.parametrize(
    ("column", "value"),
    [("outcome", "failed"), ("http_status", 500), ("error_class", "http_5xx")],
)
def test_a_delivery_attempt_that_disagrees_is_reported_at_its_execution(
    make_engine, column, value
) -> None:
    engine, ids = governed(make_engine)
    raw_sql(
        engine,
        f"UPDATE delivery_attempt SET {column} = ? WHERE attempt_id = ?",
        value,
        ids["attempt"],
    )

    report = engine.evidence.verify()

    assert broken(report) == (
        entry_of("execution", ids["execution"]),
        "attempt_mismatch",
    )


# -- corrupted records -------------------------------------------------------


def test_a_record_holding_text_that_is_not_json_is_reported_unreadable(
    client, engine, database_url, capsys
) -> None:
    make_plan(engine)
    plan_id = make_plan(engine)
    raw_sql(
        engine,
        "UPDATE retry_plan SET policy = ? WHERE retry_plan_id = ?",
        "{{",
        plan_id,
    )

    response = client.simulate_get(f"{P}/evidence/verify")
    status = main(["evidence", "verify", "--store", "--database", database_url])

    assert response.status_code == 200
    assert broken(response.json) == (2, "record_unreadable")
    assert status == 1
    captured = capsys.readouterr()
    assert "record_unreadable" in captured.out
    assert "Traceback" not in captured.err


def test_a_time_that_is_not_a_number_is_reported_unreadable(
    client, engine, database_url
) -> None:
    # SQLite keeps text in an integer column; PostgreSQL takes only numbers,
    # so there the time is one no calendar can hold.
    unreadable = "abc" if database_url.startswith("sqlite") else 2**62
    plan_id = make_plan(engine)
    raw_sql(
        engine,
        "UPDATE retry_plan SET generated_at = ? WHERE retry_plan_id = ?",
        unreadable,
        plan_id,
    )

    response = client.simulate_get(f"{P}/evidence/verify")

    assert response.status_code == 200
    assert broken(response.json) == (1, "record_unreadable")


def test_a_list_over_a_corrupted_record_answers_500_without_detail(
    client, engine, caplog
) -> None:
    plan_id = make_plan(engine)
    raw_sql(
        engine,
        "UPDATE retry_plan SET policy = ? WHERE retry_plan_id = ?",
        "{{",
        plan_id,
    )

    response = client.simulate_get(f"{P}/retry-plans")

    problem = problem_of(response, 500)
    assert "{{" not in response.text
    assert "JSON" not in problem.get("detail", "")
    assert any(record.exc_info for record in caplog.records)


# -- the page, the cursor ----------------------------------------------------


def test_entries_are_listed_oldest_first_one_page_at_a_time(engine) -> None:
    for name in ("a", "b", "c", "d", "e"):
        make_plan(engine, name)

    first = engine.evidence.list_entries(limit=2)
    second = engine.evidence.list_entries(limit=2, cursor=first["next_cursor"])
    last = engine.evidence.list_entries(limit=2, cursor=second["next_cursor"])

    pages = [first, second, last]
    assert [[e["sequence"] for e in page["items"]] for page in pages] == [
        [1, 2],
        [3, 4],
        [5],
    ]
    assert last["next_cursor"] is None


def test_entries_are_filtered_by_kind_and_by_record(engine) -> None:
    plan_id = make_plan(engine)
    make_run(engine)
    make_plan(engine)

    plans = engine.evidence.list_entries(kind="retry_plan")["items"]
    one = engine.evidence.list_entries(subject_id=plan_id)["items"]
    none = engine.evidence.list_entries(kind="worker_run", subject_id=plan_id)

    assert [e["sequence"] for e in plans] == [1, 3]
    assert [e["subject_id"] for e in one] == [plan_id]
    assert none == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("sequence", [1, 42, 2**63 - 1])
def test_a_cursor_carries_the_last_sequence_of_its_page(sequence) -> None:
    assert evidence.decode_cursor(evidence.encode_cursor(sequence)) == sequence


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "bm9wZQ",
        evidence.encode_cursor(1) + "A",
        "ZXZpZGVuY2U6MA",  # evidence:0
        "ZXZpZGVuY2U6OTIyMzM3MjAzNjg1NDc3NTgwOA",  # evidence:2**63
        "ZXZpZGVuY2U6MR",  # evidence:1 with padding bits set
    ],
)
def test_a_cursor_the_log_did_not_issue_is_refused(cursor) -> None:
    with pytest.raises(InvalidInput) as raised:
        evidence.decode_cursor(cursor)

    assert raised.value.problems[0].parameter == "cursor"


# -- the API -----------------------------------------------------------------


def test_the_api_lists_entries_oldest_first(client, engine) -> None:
    plan_id = make_plan(engine)
    run_id = make_run(engine)

    response = client.simulate_get(f"{P}/evidence")

    assert response.status_code == 200
    validation.check_output("evidence_page", response.json)
    items = response.json["items"]
    assert [(e["sequence"], e["subject_id"]) for e in items] == [
        (1, plan_id),
        (2, run_id),
    ]
    assert response.json["next_cursor"] is None


def test_the_api_pages_with_the_cursor_and_keeps_the_filters(client, engine) -> None:
    for _ in range(3):
        make_plan(engine)
        make_run(engine)

    seen: list[int] = []
    query: dict[str, str] = {"kind": "worker_run", "limit": "2"}
    while True:
        page = client.simulate_get(f"{P}/evidence", params=query).json
        seen += [entry["sequence"] for entry in page["items"]]
        if page["next_cursor"] is None:
            break
        query["cursor"] = page["next_cursor"]

    assert seen == [2, 4, 6]


def test_the_api_filters_by_record(client, engine) -> None:
    make_plan(engine)
    run_id = make_run(engine)

    response = client.simulate_get(f"{P}/evidence", params={"subject_id": run_id})

    assert [e["subject_id"] for e in response.json["items"]] == [run_id]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "501"),
        ("limit", "ten"),
        ("kind", "retry_decision"),
        ("subject_id", "lin_" + "0" * 32),
        ("subject_id", "rp_" + "0" * 31),
        ("cursor", "bm9wZQ"),
        (
            "cursor",
            "MTc2NDc4NDAwMDAwMDAwMDp3cl8wMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA",
        ),
        ("sequence", "1"),
    ],
)
def test_a_bad_query_value_is_refused_with_400_naming_it(client, name, value) -> None:
    response = client.simulate_get(f"{P}/evidence", params={name: value})

    document = problem_of(response, 400)
    assert parameters(document) == [name]
    if len(value) > 4:
        assert value not in response.text


def test_a_cursor_of_another_list_is_refused_by_the_evidence_list(
    client, engine
) -> None:
    make_run(engine)
    make_run(engine)
    cursor = client.simulate_get(f"{P}/worker-runs", params={"limit": "1"}).json[
        "next_cursor"
    ]

    response = client.simulate_get(f"{P}/evidence", params={"cursor": cursor})

    assert parameters(problem_of(response, 400)) == ["cursor"]


def test_an_evidence_cursor_is_refused_by_other_lists(client, engine) -> None:
    make_run(engine)
    make_run(engine)
    cursor = client.simulate_get(f"{P}/evidence", params={"limit": "1"}).json[
        "next_cursor"
    ]

    response = client.simulate_get(f"{P}/worker-runs", params={"cursor": cursor})

    assert parameters(problem_of(response, 400)) == ["cursor"]


def test_the_api_reports_an_intact_log(client, engine) -> None:
    make_plan(engine)
    make_run(engine)

    response = client.simulate_get(f"{P}/evidence/verify")

    assert response.status_code == 200
    report = response.json
    validation.check_output("evidence_verification", report)
    assert report["intact"] is True
    assert report["verified_entry_count"] == report["entry_count"] == 2
    assert report["first_broken_entry"] is None
    assert report["verified_at"].endswith("Z")


def test_the_api_reports_a_broken_log_with_200(client, engine) -> None:
    plan_id = make_plan(engine)
    make_run(engine)
    raw_sql(
        engine,
        "UPDATE retry_plan SET generated_by = ? WHERE retry_plan_id = ?",
        "mallory",
        plan_id,
    )

    response = client.simulate_get(f"{P}/evidence/verify")

    assert response.status_code == 200
    assert response.json["intact"] is False
    assert response.json["first_broken_entry"] == {
        "sequence": 1,
        "kind": "retry_plan",
        "subject_id": plan_id,
        "problem": "record_modified",
        "detail": evidence.PROBLEMS["record_modified"],
    }


def test_the_verification_takes_no_query_parameters(client) -> None:
    response = client.simulate_get(f"{P}/evidence/verify", params={"deep": "true"})

    assert parameters(problem_of(response, 400)) == ["deep"]


# -- the command line --------------------------------------------------------


def export(database_url: str, path: Path) -> int:
    return main(
        ["evidence", "export", "--database", database_url, "--output", str(path)]
    )


def test_an_export_verifies_offline(engine, database_url, tmp_path, capsys) -> None:
    make_plan(engine)
    make_run(engine)
    record_closure(engine)
    path = tmp_path / "evidence.jsonl"
    assert export(database_url, path) == 0
    capsys.readouterr()

    status = main(["evidence", "verify", str(path)])

    last = list(evidence.iter_entries())[-1]
    assert status == 0
    assert (
        capsys.readouterr().out
        == f"intact: 4 entries, last hash {last['entry_hash']}\n"
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines[:-1]] == list(evidence.iter_entries())
    assert json.loads(lines[-1])["export"]["entry_count"] == 4
    assert json.loads(lines[-1])["export"]["last_entry_hash"] == last["entry_hash"]
    assert not list(tmp_path.glob(".*partial"))


def test_an_export_with_one_line_edited_names_that_entry(
    engine, database_url, tmp_path, capsys
) -> None:
    for name in ("dana", "erin", "fay"):
        make_plan(engine, name)
    path = tmp_path / "evidence.jsonl"
    export(database_url, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    edited = json.loads(lines[1])
    edited["document"]["generated_by"] = "mallory"
    lines[1] = json.dumps(edited)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()

    status = main(["evidence", "verify", str(path)])

    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("broken at entry 2 (line 2) (retry_plan rp_")
    assert "entry_hash_mismatch" in out
    assert "the 1 entries before it are intact" in out


def test_an_export_verification_prints_the_report_as_json(
    engine, database_url, tmp_path, capsys
) -> None:
    make_plan(engine)
    make_plan(engine)
    path = tmp_path / "evidence.jsonl"
    export(database_url, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text(lines[1] + "\n", encoding="utf-8")
    capsys.readouterr()

    status = main(["evidence", "verify", "--json", str(path)])

    report = json.loads(capsys.readouterr().out)
    validation.check_output("evidence_verification", report)
    assert status == 1
    assert report["entry_count"] == 1
    assert broken(report) == (2, "sequence_gap")


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b'{"sequence": 1}\nnot json\n', 2),
        (b"\n", 1),
        (b'{"sequence": 1}\n{"a": "\xff"}\n', 2),
    ],
)
def test_an_export_line_that_is_not_json_exits_2_naming_it(
    tmp_path, capsys, content, line
) -> None:
    path = tmp_path / "evidence.jsonl"
    path.write_bytes(content)

    status = main(["evidence", "verify", str(path)])

    assert status == 2
    assert f"line {line} is not" in capsys.readouterr().err


def exported_lines(engine: Engine, database_url: str, tmp_path: Path) -> list[str]:
    """Three plans exported: three entry lines and the closing line."""
    for name in ("dana", "erin", "fay"):
        make_plan(engine, name)
    path = tmp_path / "evidence.jsonl"
    export(database_url, path)
    return path.read_text(encoding="utf-8").splitlines()


def verify_lines(tmp_path: Path, lines: list[str], *options: str) -> int:
    path = tmp_path / "checked.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return main(["evidence", "verify", *options, str(path)])


def test_an_export_ends_with_a_closing_line_counting_its_entries(
    engine, database_url, tmp_path
) -> None:
    lines = exported_lines(engine, database_url, tmp_path)

    closing = json.loads(lines[-1])

    assert len(lines) == 4
    assert closing["export"]["entry_count"] == 3
    assert closing["export"]["last_entry_hash"] == json.loads(lines[2])["entry_hash"]
    assert closing["export"]["exported_at"].endswith("Z")


def test_an_export_of_an_empty_log_is_its_closing_line_and_verifies(
    engine, database_url, tmp_path, capsys
) -> None:
    path = tmp_path / "evidence.jsonl"
    export(database_url, path)
    capsys.readouterr()

    status = main(["evidence", "verify", str(path)])

    assert json.loads(path.read_text(encoding="utf-8"))["export"]["entry_count"] == 0
    assert status == 0
    assert capsys.readouterr().out == "intact: 0 entries, last hash none\n"


@pytest.mark.parametrize(
    ("keep", "problem", "sequence"),
    [
        (slice(0, 3), "export_truncated", 4),
        (slice(0, 2), "export_truncated", 3),
        ([0, 1, 3], "entries_missing", 3),
    ],
)
def test_an_export_cut_short_is_broken(
    engine, database_url, tmp_path, capsys, keep, problem, sequence
) -> None:
    lines = exported_lines(engine, database_url, tmp_path)
    kept = lines[keep] if isinstance(keep, slice) else [lines[i] for i in keep]
    capsys.readouterr()

    status = verify_lines(tmp_path, kept, "--json")

    report = json.loads(capsys.readouterr().out)
    validation.check_output("evidence_verification", report)
    assert status == 1
    assert broken(report) == (sequence, problem)
    assert report["entry_count"] == (3 if problem == "entries_missing" else len(kept))


@pytest.mark.parametrize(
    "change",
    [
        lambda closing: closing.update(entry_count=2),
        lambda closing: closing.update(last_entry_hash="0" * 64),
    ],
)
def test_a_closing_line_that_does_not_match_the_entries_is_broken(
    engine, database_url, tmp_path, capsys, change
) -> None:
    lines = exported_lines(engine, database_url, tmp_path)
    closing = json.loads(lines[-1])
    change(closing["export"])
    capsys.readouterr()

    status = verify_lines(tmp_path, [*lines[:-1], json.dumps(closing)])

    assert status == 1
    assert "export_mismatch" in capsys.readouterr().out


def test_a_line_after_the_closing_line_is_broken(
    engine, database_url, tmp_path, capsys
) -> None:
    lines = exported_lines(engine, database_url, tmp_path)
    capsys.readouterr()

    status = verify_lines(tmp_path, [*lines, lines[0]])

    assert status == 1
    assert "export_mismatch" in capsys.readouterr().out


@pytest.mark.parametrize("path", ["empty.jsonl", "/dev/null"])
def test_an_empty_export_is_not_intact(tmp_path, capsys, path) -> None:
    target = tmp_path / path
    if not Path(path).is_absolute():
        target.write_bytes(b"")

    status = main(["evidence", "verify", str(target)])

    captured = capsys.readouterr()
    assert status == 2
    assert "is empty" in captured.err
    assert "intact" not in captured.out


def test_an_entry_with_an_extra_field_is_malformed(
    engine, database_url, tmp_path, capsys
) -> None:
    lines = exported_lines(engine, database_url, tmp_path)
    entry = json.loads(lines[1])
    entry["approved"] = True
    capsys.readouterr()

    status = verify_lines(tmp_path, [lines[0], json.dumps(entry), *lines[2:]])

    out = capsys.readouterr().out
    assert status == 1
    assert out.startswith("broken at entry 2 (line 2)")
    assert "malformed_entry" in out


def test_a_line_repeating_a_key_is_refused(
    engine, database_url, tmp_path, capsys
) -> None:
    lines = exported_lines(engine, database_url, tmp_path)
    repeated = lines[1][:-1] + ',"actor":"mallory"}'
    capsys.readouterr()

    status = verify_lines(tmp_path, [lines[0], repeated, *lines[2:]])

    assert status == 2
    assert "line 2 repeats the key 'actor'" in capsys.readouterr().err


def test_a_line_nested_too_deep_exits_2_naming_it(tmp_path, capsys) -> None:
    deep = "[" * 200_000 + "]" * 200_000

    status = verify_lines(tmp_path, ['{"sequence": 1}', deep])

    assert status == 2
    assert "cannot read line 2" in capsys.readouterr().err


def test_an_unreadable_export_exits_2(tmp_path, capsys) -> None:
    status = main(["evidence", "verify", str(tmp_path / "missing.jsonl")])

    assert status == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_export_line_that_is_not_an_entry_is_a_broken_entry(
    tmp_path, capsys
) -> None:
    path = tmp_path / "evidence.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")

    status = main(["evidence", "verify", str(path)])

    assert status == 1
    assert "malformed_entry" in capsys.readouterr().out


def test_the_export_goes_to_standard_output_by_default(
    engine, database_url, capsys
) -> None:
    make_plan(engine, "dåna")
    make_run(engine)

    status = main(["evidence", "export", "--database", database_url])

    out = capsys.readouterr().out
    assert status == 0
    assert [json.loads(line) for line in out.splitlines()[:-1]] == list(
        evidence.iter_entries()
    )
    assert "dåna" in out


def test_the_store_is_verified_with_its_records(engine, database_url, capsys) -> None:
    plan_id = make_plan(engine)
    assert main(["evidence", "verify", "--store", "--database", database_url]) == 0
    assert capsys.readouterr().out.startswith("intact: 1 entries, last hash ")
    raw_sql(
        engine,
        "UPDATE retry_plan SET generated_by = ? WHERE retry_plan_id = ?",
        "mallory",
        plan_id,
    )

    status = main(
        ["evidence", "verify", "--store", "--json", "--database", database_url]
    )

    report = json.loads(capsys.readouterr().out)
    assert status == 1
    assert broken(report) == (1, "record_modified")


def test_verify_needs_a_file_or_the_store(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["evidence", "verify"])

    assert raised.value.code == 2


# -- properties of the chain, without a database -------------------------------

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
#: Documents of summaries' shapes: flat members, lists and objects of leaves.
_VALUES = (
    _LEAVES
    | st.lists(_LEAVES, max_size=3)
    | st.dictionaries(st.text(max_size=6), _LEAVES, max_size=3)
)
DOCUMENTS = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=8), _VALUES, min_size=1, max_size=4),
    min_size=1,
    max_size=6,
)


def chain_of(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for number, document in enumerate(documents):
        entries.append(
            evidence.chain_entry(
                entries[-1] if entries else None,
                kind=evidence.KINDS[number % len(evidence.KINDS)],
                subject_id=f"rp_{number:032x}",
                actor=Actor(f"actor-{number}", number % 2 == 0),
                recorded_at="2026-12-03T18:00:00Z",
                document=document,
            )
        )
    return entries


def string_places(node: Any, path: tuple = ()) -> list[tuple[tuple, bool]]:
    """Every string in a document: (path, True) for a key, (path, False) a value."""
    if isinstance(node, str):
        return [(path, False)] if node else []
    places: list[tuple[tuple, bool]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key:
                places.append(((*path, key), True))
            places += string_places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            places += string_places(value, (*path, index))
    return places


def flip(text: str, position: int) -> str:
    changed = chr(ord(text[position]) ^ 1)
    return text[:position] + changed + text[position + 1 :]


def with_flipped_character(document: Any, place: tuple[tuple, bool], at: int) -> Any:
    path, is_key = place
    result = copy.deepcopy(document)
    parent = result
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if is_key:
        parent[flip(last, at % len(last))] = parent.pop(last)
    else:
        parent[last] = flip(parent[last], at % len(parent[last]))
    return result


@settings(deadline=None)
@given(DOCUMENTS)
def test_any_chain_of_documents_verifies_intact(documents) -> None:
    entries = chain_of(documents)

    report = evidence.verify_entries(json.loads(json.dumps(entries)))

    assert report["intact"] is True
    assert report["verified_entry_count"] == len(documents)
    assert report["last_entry_hash"] == entries[-1]["entry_hash"]


@settings(max_examples=200, deadline=None)
@given(DOCUMENTS, st.data())
def test_flipping_any_character_of_a_document_breaks_the_chain_there(
    documents, data
) -> None:
    entries = chain_of(documents)
    target = data.draw(st.integers(0, len(entries) - 1), label="entry")
    places = string_places(entries[target]["document"])
    place = data.draw(st.sampled_from(places), label="string")
    at = data.draw(st.integers(0, 11), label="character")
    entries[target]["document"] = with_flipped_character(
        entries[target]["document"], place, at
    )

    report = evidence.verify_entries(entries)

    assert report["intact"] is False
    assert broken(report) == (target + 1, "entry_hash_mismatch")
    assert report["verified_entry_count"] == target


@settings(max_examples=100, deadline=None)
@given(DOCUMENTS, st.data())
def test_removing_any_entry_breaks_the_chain_at_the_next(documents, data) -> None:
    entries = chain_of(documents + [{"last": True}])
    target = data.draw(st.integers(0, len(entries) - 2), label="entry")
    del entries[target]

    report = evidence.verify_entries(entries)

    assert broken(report) == (target + 2, "sequence_gap")
