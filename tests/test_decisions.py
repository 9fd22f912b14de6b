"""Retry decisions through the engine: every reason code, precedence, windows."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from plugins_fixtures import (
    DELIVERED,
    T0,
    Clock,
    FakePlugin,
    FakeType,
    failed,
    only_decision,
    package,
    parse,
    plan_decisions,
    plan_request,
    record_failure,
    record_success,
)

from cavra_core import FailureClassification, hookimpl, text
from cavra_core.decisions import (
    REASON_CODES,
    Decision,
    _format_time,
    format_time_precise,
)
from cavra_core.engine import canonical_json

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
HOOK_A = {"type": "fake"}


class BrittleClassifier:
    """Raises while classifying failures of the ``brittle`` connector type."""

    @hookimpl
    def cavra_classify_failure(self, connector, attempt):
        if connector.type == "brittle":
            raise RuntimeError("classifier bug")
        return None


class ReceiverStopClassifier:
    """Reads HTTP 410 from the ``fake`` type as the receiver asking to stop."""

    @hookimpl
    def cavra_classify_failure(self, connector, attempt):
        if connector.type == "fake" and attempt.http_status == 410:
            return FailureClassification("http_status", "receiver_stop")
        return None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_plugin() -> FakePlugin:
    return FakePlugin(FakeType("fake"), FakeType("brittle"))


@pytest.fixture
def open_engine(make_engine, fake_plugin, clock):
    """Open an engine on this test's store with the given connectors table."""

    def factory(connectors=None, plugins=()):
        return make_engine(
            connectors or {"hook-a": HOOK_A},
            plugins=[fake_plugin, *plugins],
            load_entry_points=False,
            clock=clock,
        )

    return factory


@pytest.fixture
def engine(open_engine):
    return open_engine()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# -- each reason code ---------------------------------------------------------------


def test_failure_past_its_delay_is_retry_due(engine) -> None:
    """After the 15-minute default delay the lineage may be retried."""
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")
    assert parse(decision["not_before"]) == T0 + 15 * MINUTE


def test_failure_inside_its_delay_waits_for_it(engine) -> None:
    """Before the delay has passed the lineage waits with delay_not_elapsed."""
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 5 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("wait", "delay_not_elapsed")
    assert parse(decision["not_before"]) == T0 + 15 * MINUTE


def test_retry_after_seconds_longer_than_the_delay_hold_the_retry(engine) -> None:
    """Retry-After: 3600 keeps the retry back for an hour, not 15 minutes."""
    record_failure(engine, T0, status=429, retry_after="3600")

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("wait", "retry_after_pending")
    assert parse(decision["not_before"]) == T0 + HOUR


def test_retry_after_http_date_later_than_the_delay_holds_the_retry(engine) -> None:
    """An HTTP-date Retry-After is honoured as an absolute time."""
    record_failure(engine, T0, status=503, retry_after="Mon, 01 Jun 2026 14:00:00 GMT")

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("wait", "retry_after_pending")
    assert parse(decision["not_before"]) == T0 + 2 * HOUR


def test_retry_after_shorter_than_the_delay_does_not_shorten_it(engine) -> None:
    """Retry-After: 60 still waits the full backoff delay."""
    record_failure(engine, T0, status=503, retry_after="60")

    decision = only_decision(engine, T0 + 5 * MINUTE)

    assert decision["reason"] == "delay_not_elapsed"
    assert parse(decision["not_before"]) == T0 + 15 * MINUTE


def test_retry_after_past_the_window_is_suppressed(engine) -> None:
    """A Retry-After beyond the 24-hour retry window can never be honoured."""
    record_failure(engine, T0, status=503, retry_after=str(30 * 3600))

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == (
        "suppress",
        "retry_after_beyond_window",
    )


def test_retry_window_closed_is_window_expired(engine) -> None:
    """Once the retry window has passed, the retry is suppressed."""
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 15 * MINUTE + 25 * HOUR)

    assert (decision["action"], decision["reason"]) == ("suppress", "window_expired")


def test_blackout_holds_the_retry_until_it_ends(open_engine) -> None:
    """A connector blackout moves not_before to the blackout's end."""
    engine = open_engine(
        {
            "hook-a": {
                "type": "fake",
                "schedule": {
                    "blackouts": [
                        {"start": "2026-06-01T12:00:00Z", "end": "2026-06-01T18:00:00Z"}
                    ]
                },
            }
        }
    )
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == (
        "wait",
        "outside_delivery_window",
    )
    assert parse(decision["not_before"]) == at("2026-06-01T18:00:00Z")


def test_allowed_hours_hold_the_retry_until_they_open(open_engine) -> None:
    """Outside allowed_hours the retry waits for the next opening."""
    engine = open_engine(
        {
            "hook-a": {
                "type": "fake",
                "schedule": {"timezone": "UTC", "allowed_hours": ["20:00-22:00"]},
            }
        }
    )
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert decision["reason"] == "outside_delivery_window"
    assert parse(decision["not_before"]) == at("2026-06-01T20:00:00Z")
    explanation = decision["explanation"]
    assert "delivery calendar is closed until 2026-06-01T20:00:00Z" in explanation


def test_delivered_and_imported_attempts_count_toward_the_limit(
    open_engine, fake_plugin, clock
) -> None:
    """One delivery by cavra plus two attempts made elsewhere use up 3 of 3."""
    engine = open_engine()
    fake_plugin.fake.script(failed(503))
    evidence = package()
    engine.deliver_package(
        {"package": evidence, "connectors": ["hook-a"], "generated_by": "rm"}
    )
    record_failure(engine, T0 + 20 * MINUTE, evidence=evidence, attempt_number=2)
    record_failure(engine, T0 + HOUR, evidence=evidence, attempt_number=3)

    decision = only_decision(engine, T0 + 2 * HOUR)

    assert (decision["action"], decision["reason"]) == (
        "suppress",
        "max_attempts_reached",
    )
    assert decision["retry_count"] == 3


def test_evidence_older_than_max_age_is_not_retried(engine) -> None:
    """Evidence generated more than 168 hours ago is past its retry age."""
    record_failure(engine, T0, evidence=package(generated_at=T0 - 167 * HOUR))

    decision = only_decision(engine, T0 + 2 * HOUR)

    assert (decision["action"], decision["reason"]) == ("suppress", "max_age_exceeded")
    assert "168-hour limit" in decision["explanation"]


@pytest.mark.parametrize("status", [400, 404, 405, 410, 413, 422, 501])
def test_status_that_can_never_succeed_is_a_permanent_failure(engine, status) -> None:
    """Retrying a request the receiver will always refuse is suppressed."""
    record_failure(engine, T0, status=status)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == (
        "suppress",
        "permanent_failure",
    )
    assert f"HTTP {status}" in decision["explanation"]


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_pause_the_connector(engine, status) -> None:
    """401/403 wait for a configuration change and keep the attempt budget."""
    record_failure(engine, T0, status=status)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("wait", "connector_paused")
    assert decision["retry_count"] == 1
    assert "keeping 2 of 3 attempts" in decision["explanation"]


def test_paused_lineage_becomes_retryable_once_the_configuration_changes(
    open_engine,
) -> None:
    """A new connector configuration lifts the pause with the budget intact."""
    engine = open_engine()
    record_failure(engine, T0, status=401)
    changed = open_engine({"hook-a": {"type": "fake", "token_env": "NEW_TOKEN"}})

    decision = only_decision(changed, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")
    assert (decision["retry_count"], decision["max_retry_attempts"]) == (1, 3)
    assert "attempt 2 may be sent" in decision["explanation"]


def test_lineage_of_a_removed_connector_waits_for_it(open_engine) -> None:
    """Removing a connector from the file never loses its failed evidence."""
    engine = open_engine()
    record_failure(engine, T0, status=503)
    without_hook_a = open_engine({"hook-b": {"type": "fake"}})

    decision = only_decision(without_hook_a, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == (
        "wait",
        "connector_not_configured",
    )
    assert "1 of 3 attempts" in decision["explanation"]


def test_plugin_that_raises_suppresses_only_its_own_lineage(open_engine) -> None:
    """A classifier raising for one type leaves the rest of the plan decided."""
    engine = open_engine(
        {"hook-a": {"type": "fake"}, "hook-b": {"type": "brittle"}},
        plugins=[BrittleClassifier()],
    )
    record_failure(engine, T0, status=503, connector_id="hook-a")
    record_failure(engine, T0, status=503, connector_id="hook-b")

    decisions = plan_decisions(engine, T0 + 20 * MINUTE)

    by_connector = {d["connector_id"]: (d["action"], d["reason"]) for d in decisions}
    assert by_connector == {
        "hook-a": ("retry", "retry_due"),
        "hook-b": ("suppress", "plugin_error"),
    }


def test_plugin_error_explanation_names_the_hook_not_the_message(open_engine) -> None:
    """The explanation says which hook raised what, never the error's text."""
    engine = open_engine({"hook-b": {"type": "brittle"}}, plugins=[BrittleClassifier()])
    record_failure(engine, T0, connector_id="hook-b")

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert "RuntimeError in cavra_classify_failure" in decision["explanation"]
    assert "classifier bug" not in decision["explanation"]


def test_receiver_asking_to_stop_is_suppressed(open_engine) -> None:
    """A connector plugin's receiver_stop category suppresses the lineage."""
    engine = open_engine(plugins=[ReceiverStopClassifier()])
    record_failure(engine, T0, status=410)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("suppress", "receiver_stop")


def test_lineages_of_a_connector_whose_receiver_asked_to_stop_wait(
    open_engine,
) -> None:
    """After a receiver_stop, the connector's other lineages wait for a resume."""
    engine = open_engine(plugins=[ReceiverStopClassifier()])
    waiting = record_failure(engine, T0, status=503, evidence=package("drill-1"))
    record_failure(engine, T0 + MINUTE, status=410, evidence=package("drill-2"))

    decisions = {d["lineage_id"]: d for d in plan_decisions(engine, T0 + HOUR)}

    decision = decisions[waiting]
    assert (decision["action"], decision["reason"]) == ("wait", "connector_disabled")
    assert "keeping 2 of 3 attempts" in decision["explanation"]
    assert (decision["not_before"], decision["not_after"]) == (None, None)


def test_every_reason_code_is_produced_by_a_test_in_this_module() -> None:
    """Meta-test: each code in REASON_CODES is asserted on somewhere above."""
    with open(__file__, encoding="utf-8") as handle:
        source = handle.read()
    asserted = set(re.findall(r'"([a-z_]+)"', source))

    missing = [code for code in REASON_CODES if code not in asserted]

    assert missing == []


# -- retryable failures -------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_status_is_retried(engine, status) -> None:
    """Timeouts, throttling and server errors are worth another attempt."""
    record_failure(engine, T0, status=status)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")


@pytest.mark.parametrize(
    "error_class", ["timeout", "connection_refused", "connection_reset"]
)
def test_transport_error_is_retried(engine, error_class) -> None:
    """A receiver that could not be reached may be back later."""
    record_failure(engine, T0, status=None, error_class=error_class)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")
    assert error_class in decision["explanation"]


def test_recovered_lineage_is_not_in_the_plan(engine) -> None:
    """Once a retry delivered, the lineage is never offered again."""
    recovered = record_failure(engine, T0, evidence=package("drill-1"))
    record_success(engine, T0 + 20 * MINUTE, evidence=package("drill-1"))
    still_failed = record_failure(engine, T0, evidence=package("drill-2"))

    decisions = plan_decisions(engine, T0 + HOUR)

    assert [d["lineage_id"] for d in decisions] == [still_failed]
    assert recovered not in {d["lineage_id"] for d in decisions}


def test_lineage_delivered_by_cavra_on_retry_is_not_in_the_plan(
    open_engine, fake_plugin
) -> None:
    """The same holds when cavra itself made the delivering attempt."""
    engine = open_engine()
    fake_plugin.fake.script(DELIVERED)
    engine.deliver_package(
        {"package": package(), "connectors": ["hook-a"], "generated_by": "rm"}
    )

    plan = engine.plan_retries(plan_request(), now=T0 + HOUR)

    assert plan["decision_count"] == 0


# -- precedence -------------------------------------------------------------------


def test_permanent_failure_beats_max_attempts(engine) -> None:
    """A 400 on the last allowed attempt is reported as permanent."""
    record_failure(engine, T0, status=503)
    record_failure(engine, T0 + 20 * MINUTE, status=503)
    record_failure(engine, T0 + HOUR, status=400)

    decision = only_decision(engine, T0 + 2 * HOUR)

    assert decision["reason"] == "permanent_failure"


def test_permanent_failure_beats_max_age(engine) -> None:
    """A 400 on old evidence is still reported as permanent."""
    record_failure(engine, T0, status=400)

    decision = only_decision(engine, T0 + 200 * HOUR)

    assert decision["reason"] == "permanent_failure"


def test_max_attempts_beats_max_age(engine) -> None:
    """With both limits passed, the attempt limit is the reason given."""
    record_failure(engine, T0, status=503)
    record_failure(engine, T0 + 20 * MINUTE, status=503)

    decision = only_decision(
        engine, T0 + 2 * HOUR, max_retry_attempts=2, max_age_hours=1
    )

    assert decision["reason"] == "max_attempts_reached"
    assert "2 of 2 allowed attempts" in decision["explanation"]


def test_max_attempts_beats_connector_paused(engine) -> None:
    """A 401 on the last allowed attempt exhausts the lineage."""
    record_failure(engine, T0, status=503)
    record_failure(engine, T0 + 20 * MINUTE, status=503)
    record_failure(engine, T0 + HOUR, status=401)

    decision = only_decision(engine, T0 + 2 * HOUR)

    assert (decision["action"], decision["reason"]) == (
        "suppress",
        "max_attempts_reached",
    )


def test_max_age_beats_connector_paused(engine) -> None:
    """A paused lineage whose evidence grew too old is suppressed, not kept."""
    record_failure(engine, T0, status=401)

    decision = only_decision(engine, T0 + 169 * HOUR)

    assert (decision["action"], decision["reason"]) == ("suppress", "max_age_exceeded")


def test_connector_not_configured_beats_a_closed_lineage(open_engine) -> None:
    """Without its connector, even a permanently failed lineage just waits."""
    engine = open_engine()
    record_failure(engine, T0, status=400)
    without_hook_a = open_engine({"hook-b": {"type": "fake"}})

    decision = only_decision(without_hook_a, T0 + 20 * MINUTE)

    assert decision["reason"] == "connector_not_configured"


def test_retry_after_beyond_window_beats_window_expired(engine) -> None:
    """Long after the window, the far Retry-After is still the reason given."""
    record_failure(engine, T0, status=503, retry_after=str(30 * 3600))

    decision = only_decision(engine, T0 + 40 * HOUR)

    assert decision["reason"] == "retry_after_beyond_window"


def test_window_expired_beats_outside_delivery_window(open_engine) -> None:
    """A closed window is reported as expired even during a blackout."""
    engine = open_engine(
        {
            "hook-a": {
                "type": "fake",
                "schedule": {"timezone": "UTC", "allowed_hours": ["20:00-22:00"]},
            }
        }
    )
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, at("2026-06-03T12:00:00Z"))

    assert decision["reason"] == "window_expired"


def test_retry_after_beats_the_backoff_delay_as_the_reason_to_wait(engine) -> None:
    """While both hold, the later Retry-After is the reason given."""
    record_failure(engine, T0, status=429, retry_after="3600")

    decision = only_decision(engine, T0 + 5 * MINUTE)

    assert decision["reason"] == "retry_after_pending"


# -- explanations and windows -------------------------------------------------------


def test_waiting_explanation_gives_attempts_delay_and_time(engine) -> None:
    """The explanation carries the attempt count, the delay and when it ends."""
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 5 * MINUTE)

    explanation = decision["explanation"]
    assert "Attempt 1 of 3" in explanation
    assert "15-minute backoff delay" in explanation
    assert "2026-06-01T12:15:00Z" in explanation
    assert "10 minutes from now" in explanation


def test_due_explanation_gives_the_next_attempt_and_window_end(engine) -> None:
    """A due retry says which attempt it is and until when it may be sent."""
    record_failure(engine, T0, status=503)
    record_failure(engine, T0 + 20 * MINUTE, status=503)

    decision = only_decision(engine, T0 + 2 * HOUR)

    explanation = decision["explanation"]
    assert "Attempt 2 of 3 failed with HTTP 503" in explanation
    assert "30-minute backoff delay ended at 2026-06-01T12:50:00Z" in explanation
    assert "attempt 3 may be sent until 2026-06-02T12:50:00Z" in explanation
    assert decision["retry_delay_seconds"] == 1800


def test_exhausted_explanation_gives_the_attempt_counts(engine) -> None:
    """The limit explanation names how many attempts of how many were made."""
    record_failure(engine, T0)
    record_failure(engine, T0 + 20 * MINUTE)
    record_failure(engine, T0 + HOUR)

    decision = only_decision(engine, T0 + 2 * HOUR)

    assert "3 attempts" in decision["explanation"]
    assert (decision["retry_count"], decision["max_retry_attempts"]) == (3, 3)


def test_window_closes_24_hours_after_it_opens_by_default(engine) -> None:
    """not_after defaults to not_before + retry_window_hours (24)."""
    record_failure(engine, T0, status=503)

    decision = only_decision(engine, T0 + 5 * MINUTE)

    assert parse(decision["not_after"]) - parse(decision["not_before"]) == 24 * HOUR


def test_failed_status_codes_list_every_failure_oldest_first(engine) -> None:
    """The decision carries the lineage's statuses in order."""
    record_failure(engine, T0, status=503)
    record_failure(engine, T0 + 20 * MINUTE, status=429)

    decision = only_decision(engine, T0 + 2 * HOUR)

    assert decision["failed_status_codes"] == [503, 429]


# -- policy layers ----------------------------------------------------------------


def test_default_policy_applies_without_overrides(engine) -> None:
    """The built-in 15-minute delay and 3 attempts apply by default."""
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 5 * MINUTE)

    assert (decision["retry_delay_seconds"], decision["max_retry_attempts"]) == (
        900,
        3,
    )


def test_connector_policy_overrides_the_defaults(open_engine) -> None:
    """The connector's retry_policy table replaces the built-in values."""
    engine = open_engine(
        {"hook-a": {"type": "fake", "retry_policy": {"retry_delay_minutes": 30}}}
    )
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 5 * MINUTE)

    assert decision["retry_delay_seconds"] == 1800


def test_request_policy_overrides_the_connector_policy(open_engine) -> None:
    """A plan request's retry_policy wins over the connector's, key by key."""
    engine = open_engine(
        {
            "hook-a": {
                "type": "fake",
                "retry_policy": {"retry_delay_minutes": 30, "max_retry_attempts": 5},
            }
        }
    )
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 5 * MINUTE, retry_delay_minutes=45)

    assert decision["retry_delay_seconds"] == 2700
    assert decision["max_retry_attempts"] == 5


# -- plan summary -----------------------------------------------------------------


def test_plan_with_a_due_retry_is_critical(engine) -> None:
    """Failed evidence that can be retried now needs action."""
    record_failure(engine, T0, evidence=package("drill-1"))
    record_failure(engine, T0 + 10 * MINUTE, evidence=package("drill-2"))

    plan = engine.plan_retries(plan_request(), now=T0 + 20 * MINUTE)

    assert plan["alert_level"] == "critical"
    assert (plan["retryable_count"], plan["waiting_count"]) == (1, 1)


def test_plan_with_only_waiting_lineages_is_a_warning(engine) -> None:
    """Waiting evidence is worth a look but needs no action yet."""
    record_failure(engine, T0, status=503)

    plan = engine.plan_retries(plan_request(), now=T0 + 5 * MINUTE)

    assert plan["alert_level"] == "warning"
    assert plan["waiting_count"] == 1


def test_plan_with_only_suppressed_lineages_is_healthy(engine) -> None:
    """Nothing left to do is healthy, even if some evidence was given up."""
    record_failure(engine, T0, status=400)

    plan = engine.plan_retries(plan_request(), now=T0 + 5 * MINUTE)

    assert plan["alert_level"] == "healthy"
    assert plan["suppressed_count"] == 1


def test_plan_hash_is_a_sha256_hex_digest(engine) -> None:
    """The hash auditors recompute is 64 lower-case hex digits."""
    record_failure(engine, T0)

    plan = engine.plan_retries(plan_request(), now=T0 + 20 * MINUTE)

    assert re.fullmatch(r"[0-9a-f]{64}", plan["plan_hash"])


def test_same_store_time_and_policy_give_the_same_plan_hash(engine) -> None:
    """Two plans over an unchanged store at the same moment hash the same."""
    record_failure(engine, T0, evidence=package("drill-1"))
    record_failure(engine, T0 + 10 * MINUTE, evidence=package("drill-2"))

    first = engine.plan_retries(plan_request(jitter=0.3), now=T0 + 20 * MINUTE)
    second = engine.plan_retries(plan_request(jitter=0.3), now=T0 + 20 * MINUTE)

    assert first["retry_plan_id"] != second["retry_plan_id"]
    assert first["plan_hash"] == second["plan_hash"]


def test_a_different_policy_gives_a_different_plan_hash(engine) -> None:
    """The policy is part of what the hash covers."""
    record_failure(engine, T0)

    first = engine.plan_retries(plan_request(), now=T0 + 20 * MINUTE)
    second = engine.plan_retries(
        plan_request(max_retry_attempts=4), now=T0 + 20 * MINUTE
    )

    assert first["plan_hash"] != second["plan_hash"]


def test_plan_hash_can_be_recomputed_from_the_plan_document(engine) -> None:
    """sha256 of the canonical policy, then of each decision without its id."""
    record_failure(engine, T0, evidence=package("drill-1"))
    record_failure(engine, T0, status=400, evidence=package("drill-2"))
    summary = engine.plan_retries(plan_request(jitter=0.2), now=T0 + 20 * MINUTE)

    plan = engine.get_plan(summary["retry_plan_id"])

    hasher = hashlib.sha256(canonical_json(plan["policy"]).encode())
    for decision in plan["retry_decisions"]:
        without_id = {k: v for k, v in decision.items() if k != "decision_id"}
        hasher.update(b"\n" + canonical_json(without_id).encode())
    assert hasher.hexdigest() == plan["plan_hash"]


def test_plan_and_worker_agree_on_a_jittered_window(engine) -> None:
    """Jitter is derived, so a later worker run selects the plan's window."""
    record_failure(engine, T0)
    planned = only_decision(engine, T0 + HOUR, jitter=0.5)

    run = engine.run_worker(
        {"generated_by": "platform", "retry_policy": {"jitter": 0.5}}, now=T0 + HOUR
    )

    selected = run["selected_retries"][0]
    assert (selected["not_before"], selected["not_after"]) == (
        planned["not_before"],
        planned["not_after"],
    )
    assert selected["retry_delay_seconds"] != 900


# -- delivery calendars across daylight-saving changes ----------------------------


def calendar_engine(open_engine, timezone: str, hours: list[str]):
    return open_engine(
        {
            "hook-a": {
                "type": "fake",
                "schedule": {"timezone": timezone, "allowed_hours": hours},
            }
        }
    )


def test_berlin_window_starting_in_the_spring_gap_opens_after_it(open_engine) -> None:
    """02:30 does not exist on 2026-03-29 in Berlin: the window opens 03:00 CEST."""
    engine = calendar_engine(open_engine, "Europe/Berlin", ["02:30-04:00"])
    failed_at = at("2026-03-28T22:50:00Z")
    record_failure(engine, failed_at, evidence=package(generated_at=failed_at))

    decision = only_decision(engine, failed_at + 20 * MINUTE)

    assert decision["reason"] == "outside_delivery_window"
    assert parse(decision["not_before"]) == at("2026-03-29T01:00:00Z")


def test_berlin_window_after_spring_forward_ends_at_04_cest(open_engine) -> None:
    """Past 04:00 CEST the next opening is 02:30 CEST the following day."""
    engine = calendar_engine(open_engine, "Europe/Berlin", ["02:30-04:00"])
    failed_at = at("2026-03-29T01:50:00Z")
    record_failure(engine, failed_at, evidence=package(generated_at=failed_at))

    decision = only_decision(engine, failed_at + 20 * MINUTE)

    assert decision["reason"] == "outside_delivery_window"
    assert parse(decision["not_before"]) == at("2026-03-30T00:30:00Z")


def test_new_york_window_starting_in_the_fall_overlap_opens_at_its_first_occurrence(
    open_engine,
) -> None:
    """01:30 happens twice on 2026-11-01 in New York; a start takes the first, EDT."""
    engine = calendar_engine(open_engine, "America/New_York", ["01:30-03:00"])
    failed_at = at("2026-11-01T04:00:00Z")
    record_failure(engine, failed_at, evidence=package(generated_at=failed_at))

    decision = only_decision(engine, failed_at + 5 * MINUTE)

    assert decision["reason"] == "outside_delivery_window"
    assert parse(decision["not_before"]) == at("2026-11-01T05:30:00Z")


def test_new_york_window_ending_in_the_fall_overlap_closes_at_its_second_occurrence(
    open_engine,
) -> None:
    """An end at 01:30 takes the second occurrence (EST, 06:30 UTC)."""
    engine = calendar_engine(open_engine, "America/New_York", ["00:00-01:30"])
    failed_at = at("2026-11-01T06:00:00Z")
    record_failure(engine, failed_at, evidence=package(generated_at=failed_at))

    inside = only_decision(engine, failed_at + 5 * MINUTE)

    assert inside["reason"] == "delay_not_elapsed"
    assert parse(inside["not_before"]) == at("2026-11-01T06:15:00Z")


def test_new_york_window_missed_in_the_overlap_waits_for_the_next_day(
    open_engine,
) -> None:
    """A retry due after 01:30 EST waits for midnight EST on the next day."""
    engine = calendar_engine(open_engine, "America/New_York", ["00:00-01:30"])
    failed_at = at("2026-11-01T06:20:00Z")
    record_failure(engine, failed_at, evidence=package(generated_at=failed_at))

    decision = only_decision(engine, failed_at + 5 * MINUTE)

    assert decision["reason"] == "outside_delivery_window"
    assert parse(decision["not_before"]) == at("2026-11-02T05:00:00Z")


# -- texts and canonical JSON, against the obvious computation ---------------------

AWARE_TIMES = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)
).flatmap(
    lambda naive: st.sampled_from(
        [
            naive.replace(tzinfo=UTC),
            naive.replace(tzinfo=UTC, microsecond=0),
            naive.replace(tzinfo=timezone(timedelta(hours=5, minutes=30))),
            naive.replace(tzinfo=timezone(timedelta(0))),
            naive,
        ]
    )
)


@given(AWARE_TIMES)
def test_decision_times_read_as_isoformat_writes_them(value: datetime) -> None:
    utc = value.astimezone(UTC) if value.utcoffset() else value

    precise = format_time_precise(value)
    seconds = _format_time(value)

    assert precise == utc.replace(tzinfo=None).isoformat() + "Z"
    assert seconds == text.format_time(value)


@given(
    codes=st.lists(st.integers(min_value=100, max_value=599), max_size=4),
    times=st.tuples(AWARE_TIMES, AWARE_TIMES) | st.just((None, None)),
    explanation=st.text(max_size=40),
)
def test_canonical_json_is_json_dumps_of_the_decision(codes, times, explanation):
    shared = tuple(codes)
    decisions = [
        Decision(
            "lin_" + "0" * 32,
            1,
            "ab" * 32,
            "hec",
            "wait",
            "delay_not_elapsed",
            explanation,
            2,
            3,
            900,
            *[t.replace(tzinfo=UTC) if t and not t.tzinfo else t for t in times],
            failed_status_codes,
        )
        for failed_status_codes in (shared, shared, tuple(codes))
    ]

    for decision in decisions:
        document = decision.as_document("rd_" + "0" * 32)
        del document["decision_id"]
        assert decision.canonical_json() == canonical_json(document)
