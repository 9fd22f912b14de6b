"""Connector recovery: playbooks, steps, closures and the report, on both stores."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from falcon import testing
from plugins_fixtures import (
    T0,
    Clock,
    FakePlugin,
    FakeType,
    attempt,
    failed,
    package,
    plan_request,
    record_failure,
    record_success,
)

import cavra_siem
import cavra_webhook
from cavra_core import (
    Engine,
    InvalidInput,
    NotFound,
    UnprocessableInput,
    default_policy,
    hookimpl,
    redaction,
    validation,
)
from cavra_core.engine import package_hash
from cavra_core.identity import Actor
from cavra_core.recovery import Recovery
from cavra_core.store import (
    EvidenceEntry,
    Execution,
    RecoveryClosure,
    RecoveryPlaybookItem,
)
from cavra_core.types import Connector, ConnectorHealth, FailureCount, RecoveryStep
from cavra_server import create_app
from cavra_server.app import P

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
CONNECTORS = {"hook-a": {"type": "fake"}, "hook-b": {"type": "fake"}}
SOC = Actor("soc-carol", True, "soc_analyst")
PLANNER = Actor("rm-alice", True, "release_manager")
APPROVER = Actor("po-bob", True, "platform_owner")
PLAYBOOKS = f"{P}/connector-recovery-playbooks"
_DRILLS = itertools.count(1)
#: How the engine refuses a request that names no actor (engine.actor_of).
MISSING_ACTOR = (InvalidInput, UnprocessableInput)


class StoppingType(FakeType):
    """A fake type whose receivers say 410 to ask for no more deliveries."""

    classification = {"http:410": "receiver_stop"}


# -- tiny inline plugins ----------------------------------------------------------


class OwnStepsPlugin:
    """Answers recovery steps for the ``fake`` type only."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, tuple[FailureCount, ...]]] = []

    @hookimpl
    def cavra_recovery_steps(self, connector, failure_classes):
        self.asked.append((connector.connector_id, failure_classes))
        if connector.type != "fake":
            return None
        return [RecoveryStep("call_the_vendor", "Call the vendor", "Ring them.")]


class RaisingStepsPlugin:
    """Raises whenever it is asked for recovery steps."""

    @hookimpl
    def cavra_recovery_steps(self, connector, failure_classes):
        raise RuntimeError("the plugin is broken: secret=hunter2")


class MalformedStepsPlugin:
    """Answers with steps whose codes are not codes."""

    @hookimpl
    def cavra_recovery_steps(self, connector):
        return [RecoveryStep("Not A Code", "Title", "Detail")]


class SilentStepsPlugin:
    """Has nothing to say about any connector."""

    @hookimpl
    def cavra_recovery_steps(self, connector, failure_classes):
        return []


# -- fixtures and helpers ---------------------------------------------------------


@pytest.fixture
def fake() -> FakeType:
    return StoppingType("fake")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_engine(make_engine, fake, clock):
    """Engines on this test's store, with the fake type and extra plugins."""

    def factory(*plugins: object, connectors: dict | None = None) -> Engine:
        return make_engine(
            CONNECTORS if connectors is None else connectors,
            plugins=[FakePlugin(fake), *plugins],
            load_entry_points=False,
            clock=clock,
        )

    return factory


@pytest.fixture
def engine(open_engine) -> Engine:
    return open_engine()


@pytest.fixture
def recovery(engine) -> Recovery:
    return engine.recovery


@pytest.fixture
def client(engine) -> testing.TestClient:
    return testing.TestClient(create_app(engine))


def fail(engine, at, *, status=503, connector_id="hook-a", drill=None, **fields):
    """One failed first attempt of a new package at ``at``."""
    drill = drill or f"drill-{next(_DRILLS)}"
    return record_failure(
        engine,
        at,
        status=status,
        connector_id=connector_id,
        evidence=package(drill, generated_at=at - 5 * MINUTE),
        **fields,
    )


def make_playbook(recovery, now, actor=SOC, **request) -> dict[str, Any]:
    return recovery.create_playbook(request, actor=actor, now=now)


def only_item(playbook: dict[str, Any]) -> dict[str, Any]:
    assert len(playbook["items"]) == 1, playbook["items"]
    return playbook["items"][0]


def codes(item: dict[str, Any]) -> list[str]:
    return [step["code"] for step in item["steps"]]


def execution(
    connector_id: str, started_at: datetime, outcome: str = "delivered"
) -> str:
    """An execution row as a live run leaves it; its id."""
    execution_id = Engine.new_id("ex")
    Execution.insert(
        execution_id=execution_id,
        run_id=Engine.new_id("wr"),
        decision_id=Engine.new_id("rd"),
        approval_id=Engine.new_id("apv"),
        lineage_id=Engine.new_id("lin"),
        package_id="ab" * 32,
        connector_id=connector_id,
        attempt_number=2,
        claim_key=None,
        outcome=outcome,
        attempt_id=None,
        started_at=started_at,
        finished_at=started_at + timedelta(seconds=1),
    ).execute()
    return execution_id


def close(recovery, playbook, now, actor=SOC, **request) -> dict[str, Any]:
    body = {"connector_id": "hook-a", "closure_state": "mitigated", **request}
    return recovery.close(playbook["playbook_id"], body, actor=actor, now=now)


def item_row(playbook, connector_id="hook-a") -> RecoveryPlaybookItem:
    return RecoveryPlaybookItem.get(
        (RecoveryPlaybookItem.playbook_id == playbook["playbook_id"])
        & (RecoveryPlaybookItem.connector_id == connector_id)
    )


def problems_of(caught: pytest.ExceptionInfo) -> list[tuple[str, str | None]]:
    return [(problem.pointer, problem.reason) for problem in caught.value.problems]


# -- which connectors a playbook lists ----------------------------------------------


def test_connectors_with_enough_failures_in_the_lookback_become_items(
    recovery, engine
) -> None:
    """hook-a failed twice within 24 hours; hook-b once; only hook-a is listed."""
    fail(engine, T0, status=503)
    fail(engine, T0 + MINUTE, status=503)
    fail(engine, T0, connector_id="hook-b")

    playbook = make_playbook(recovery, T0 + HOUR)

    assert only_item(playbook)["connector_id"] == "hook-a"
    assert only_item(playbook)["failure_count"] == 2
    assert playbook["item_count"] == 1
    validation.check_output("recovery_playbook", playbook)


def test_failures_before_the_lookback_do_not_count(recovery, engine) -> None:
    fail(engine, T0 - 30 * HOUR)
    fail(engine, T0)

    playbook = make_playbook(recovery, T0 + HOUR, lookback_hours=24)

    assert playbook["items"] == []
    assert playbook["lookback_start"] == "2026-05-31T13:00:00Z"


def test_failures_after_now_do_not_count(recovery, engine) -> None:
    fail(engine, T0)
    fail(engine, T0 + 2 * HOUR)

    playbook = make_playbook(recovery, T0 + HOUR)

    assert playbook["items"] == []


def test_a_healthy_store_gives_an_empty_playbook(recovery, engine) -> None:
    record_success(engine, T0)

    playbook = make_playbook(recovery, T0 + HOUR, min_failure_count=1)

    assert (playbook["items"], playbook["item_count"]) == ([], 0)
    assert playbook["generated_by"] == "soc-carol"
    assert playbook["actor_verified"] is True


def test_min_failure_count_one_lists_a_single_failure(recovery, engine) -> None:
    fail(engine, T0)

    playbook = make_playbook(recovery, T0 + HOUR, min_failure_count=1)

    assert only_item(playbook)["failure_count"] == 1


def test_delivered_attempts_are_not_failures(recovery, engine) -> None:
    fail(engine, T0)
    record_success(engine, T0 + MINUTE, evidence=package("drill-ok"))

    playbook = make_playbook(recovery, T0 + HOUR)

    assert playbook["items"] == []


def test_items_list_the_connector_with_most_failures_first(recovery, engine) -> None:
    for minute in range(2):
        fail(engine, T0 + minute * MINUTE, connector_id="hook-a")
    for minute in range(3):
        fail(engine, T0 + minute * MINUTE, connector_id="hook-b")

    playbook = make_playbook(recovery, T0 + HOUR)

    assert [item["connector_id"] for item in playbook["items"]] == ["hook-b", "hook-a"]


def test_connector_ids_limit_the_playbook_to_those_named(recovery, engine) -> None:
    for connector_id in ("hook-a", "hook-b"):
        fail(engine, T0, connector_id=connector_id)
        fail(engine, T0 + MINUTE, connector_id=connector_id)

    playbook = make_playbook(recovery, T0 + HOUR, connector_ids=["hook-b"])

    assert only_item(playbook)["connector_id"] == "hook-b"
    assert playbook["connector_ids"] == ["hook-b"]


def test_an_unknown_connector_id_is_refused_naming_its_place(recovery) -> None:
    with pytest.raises(UnprocessableInput) as caught:
        make_playbook(recovery, T0, connector_ids=["hook-a", "nowhere"])

    assert problems_of(caught) == [("/connector_ids/1", "unknown_connector")]


def test_without_a_token_or_a_name_the_playbook_is_refused(recovery) -> None:
    with pytest.raises(MISSING_ACTOR) as caught:
        recovery.create_playbook({}, now=T0)

    assert problems_of(caught) == [("/generated_by", "required")]


def test_a_token_name_wins_over_the_name_in_the_body(recovery) -> None:
    playbook = recovery.create_playbook(
        {"generated_by": "someone else"}, actor=SOC, now=T0
    )

    assert (playbook["generated_by"], playbook["actor_verified"]) == (
        "soc-carol",
        True,
    )


def test_a_name_without_a_token_is_recorded_unverified(recovery) -> None:
    playbook = recovery.create_playbook({"generated_by": "carol"}, now=T0)

    assert (playbook["generated_by"], playbook["actor_verified"]) == ("carol", False)


# -- what an item says about its failures -------------------------------------------


def test_an_item_counts_failures_by_class_and_status(recovery, engine) -> None:
    fail(engine, T0, status=503)
    fail(engine, T0 + MINUTE, status=429, retry_after="120")
    latest = fail(engine, T0 + 2 * MINUTE, status=None, error_class="timeout")

    item = only_item(make_playbook(recovery, T0 + HOUR))

    assert item["failures_by_class"] == {"http_status": 2, "timeout": 1}
    assert item["failed_status_codes"] == [429, 503]
    assert item["latest_failure"]["error_class"] == "timeout"
    assert item["latest_failure"]["http_status"] is None
    assert item["latest_failure"]["started_at"] == "2026-06-01T12:01:59Z"
    assert latest.startswith("lin_")


def test_an_item_names_the_connector_type_category_and_state(recovery, engine) -> None:
    fail(engine, T0, status=401)
    fail(engine, T0 + MINUTE, status=401)

    item = only_item(make_playbook(recovery, T0 + HOUR))

    assert (item["connector_type"], item["category"], item["state"]) == (
        "fake",
        "webhook",
        "paused",
    )


def test_a_failure_without_an_error_class_counts_by_its_status(
    recovery, engine
) -> None:
    """A null class is http_status with a status, unknown without one."""
    evidence_with_status, evidence_without = package("drill-s"), package("drill-n")
    attempts = [
        attempt(package_hash(evidence_with_status), T0, status=500),
        attempt(package_hash(evidence_without), T0 + MINUTE, status=None),
    ]
    for item in attempts:
        del item["error_class"]
    engine.record_attempts(
        {"packages": [evidence_with_status, evidence_without], "attempts": attempts},
        now=T0 + MINUTE,
    )

    item = only_item(make_playbook(recovery, T0 + HOUR))

    assert item["failures_by_class"] == {"http_status": 1, "unknown": 1}
    assert item["latest_failure"]["error_class"] == "unknown"


# -- storage and evidence -----------------------------------------------------------


def test_a_playbook_is_stored_with_its_items_and_an_evidence_entry(
    recovery, engine
) -> None:
    fail(engine, T0)
    fail(engine, T0 + MINUTE)

    playbook = make_playbook(recovery, T0 + HOUR)

    entry = EvidenceEntry.get(EvidenceEntry.subject_id == playbook["playbook_id"])
    assert (entry.kind, entry.actor, entry.actor_verified) == (
        "recovery_playbook",
        "soc-carol",
        True,
    )
    assert item_row(playbook).closure_state is None
    assert recovery.get_playbook(playbook["playbook_id"]) == playbook


def test_an_unknown_playbook_is_not_found(recovery) -> None:
    with pytest.raises(NotFound):
        recovery.get_playbook(Engine.new_id("pb"))


def test_playbooks_are_listed_newest_first_in_pages(recovery) -> None:
    made = [make_playbook(recovery, T0 + index * MINUTE) for index in range(3)]

    first = recovery.list_playbooks(limit=2)
    second = recovery.list_playbooks(limit=2, cursor=first["next_cursor"])

    listed = [p["playbook_id"] for p in first["items"] + second["items"]]
    assert listed == [p["playbook_id"] for p in reversed(made)]
    assert second["next_cursor"] is None


# -- steps: the default policy ------------------------------------------------------


def failure(error_class="http_status", status=None, category="transient", **fields):
    return FailureCount(error_class, status, category, fields.pop("count", 2), **fields)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (failure(status=401, category="config"), "refresh_credential"),
        (failure(status=403, category="config"), "refresh_credential"),
        (failure("missing_secret", category="config"), "set_secret"),
        (failure("tls_error", category="config"), "check_tls"),
        (failure("redirect", 301, "config"), "correct_address"),
        (failure("hec_incorrect_index", 400, "config"), "check_index"),
        (failure("config_error", category="config"), "review_configuration"),
        (failure(status=410, category="receiver_stop"), "reenable_receiver"),
        (failure(status=413, category="permanent"), "reduce_payload"),
        (failure(status=404, category="permanent"), "correct_address"),
        (failure(status=400, category="permanent"), "fix_request"),
        (failure(status=429, category="throttle"), "lower_rate"),
        (failure(status=503, category="throttle"), "wait_for_capacity"),
        (failure("connection_refused"), "check_network"),
        (failure("dns_error"), "check_network"),
        (failure(status=500), "check_receiver"),
        (failure("strange_thing"), "inspect_failures"),
    ],
)
def test_the_default_step_follows_the_failure_category(kind, code) -> None:
    connector = Connector("hook-a", "fake", {})

    steps = default_policy.generic_recovery_steps(connector, [kind])

    assert [step.code for step in steps] == [code]


def test_a_retry_after_adds_the_wait_step_with_its_time() -> None:
    connector = Connector("hook-a", "fake", {})
    kind = failure(
        status=429,
        category="throttle",
        retry_after_count=1,
        latest_retry_after_at=T0,
    )

    steps = default_policy.generic_recovery_steps(connector, [kind])

    assert [step.code for step in steps] == ["lower_rate", "honour_retry_after"]
    assert "2026-06-01T12:00:00Z" in steps[1].detail


def test_failures_needing_one_step_share_it_with_both_counts() -> None:
    connector = Connector("hook-a", "fake", {})
    kinds = [
        failure(status=401, category="config", count=3),
        failure(status=403, category="config", count=1),
    ]

    steps = default_policy.generic_recovery_steps(connector, kinds)

    assert [step.code for step in steps] == ["refresh_credential"]
    assert "4 failed attempts (HTTP 401: 3, HTTP 403: 1)" in steps[0].detail


def test_the_most_urgent_default_step_comes_first() -> None:
    connector = Connector("hook-a", "fake", {})
    kinds = [
        failure("connection_refused", count=9),
        failure(status=401, category="config"),
    ]

    steps = default_policy.generic_recovery_steps(connector, kinds)

    assert [step.code for step in steps] == ["refresh_credential", "check_network"]


@pytest.mark.parametrize("state", ["paused", "disabled"])
def test_a_stopped_connector_gets_the_resume_step_last(state) -> None:
    connector = Connector(
        "hook-a", "fake", {}, health=ConnectorHealth(state, http_status=401)
    )

    steps = default_policy.generic_recovery_steps(
        connector, [failure(status=401, category="config")]
    )

    assert steps[-1].code == "resume_connector"
    assert "cavra connectors resume hook-a" in steps[-1].detail


def test_an_active_connector_gets_no_resume_step() -> None:
    connector = Connector("hook-a", "fake", {}, health=ConnectorHealth("active"))

    steps = default_policy.generic_recovery_steps(connector, [failure("timeout")])

    assert "resume_connector" not in [step.code for step in steps]


def test_every_item_ends_with_the_verification_step(recovery, engine) -> None:
    fail(engine, T0, status=401)
    fail(engine, T0 + MINUTE, status=401)

    item = only_item(make_playbook(recovery, T0 + HOUR))

    assert codes(item) == ["refresh_credential", "resume_connector", "verify_recovery"]
    assert "verification_refs" in item["steps"][-1]["detail"]


def test_a_receiver_stop_disables_and_asks_to_reenable(recovery, engine) -> None:
    fail(engine, T0, status=410)
    fail(engine, T0 + MINUTE, status=410)

    item = only_item(make_playbook(recovery, T0 + HOUR))

    assert item["state"] == "disabled"
    assert codes(item) == ["reenable_receiver", "resume_connector", "verify_recovery"]


# -- steps: the hook ----------------------------------------------------------------


def test_a_plugin_answers_the_steps_for_its_own_type(open_engine) -> None:
    plugin = OwnStepsPlugin()
    other = FakeType("other")
    engine = open_engine(
        plugin,
        FakePlugin(other, name="other-types"),
        connectors={"hook-a": {"type": "fake"}, "hook-o": {"type": "other"}},
    )
    for connector_id in ("hook-a", "hook-o"):
        fail(engine, T0, connector_id=connector_id, status=401)
        fail(engine, T0 + MINUTE, connector_id=connector_id, status=401)

    playbook = make_playbook(engine.recovery, T0 + HOUR)

    steps = {item["connector_id"]: codes(item) for item in playbook["items"]}
    assert steps["hook-a"] == ["call_the_vendor", "verify_recovery"]
    assert steps["hook-o"][0] == "refresh_credential"


def test_the_hook_gets_each_kind_of_failure_classified(open_engine) -> None:
    plugin = OwnStepsPlugin()
    engine = open_engine(plugin)
    fail(engine, T0, status=401)
    fail(engine, T0 + MINUTE, status=401)
    fail(engine, T0 + 2 * MINUTE, status=None, error_class="timeout")

    make_playbook(engine.recovery, T0 + HOUR)

    [(connector_id, kinds)] = plugin.asked
    assert connector_id == "hook-a"
    assert [(k.error_class, k.http_status, k.category, k.count) for k in kinds] == [
        ("http_status", 401, "config", 2),
        ("timeout", None, "transient", 1),
    ]


def test_a_plugin_that_raises_leaves_the_default_steps_and_a_note(
    open_engine, caplog
) -> None:
    engine = open_engine(RaisingStepsPlugin())
    fail(engine, T0, status=429)
    fail(engine, T0 + MINUTE, status=429)

    item = only_item(make_playbook(engine.recovery, T0 + HOUR))

    assert codes(item) == ["lower_rate", "verify_recovery"]
    [note] = item["notes"]
    assert "RuntimeError" in note
    assert "hunter2" not in note + caplog.text


def test_a_plugin_with_malformed_steps_leaves_the_default_steps(open_engine) -> None:
    engine = open_engine(MalformedStepsPlugin())
    fail(engine, T0, status=429)
    fail(engine, T0 + MINUTE, status=429)

    item = only_item(make_playbook(engine.recovery, T0 + HOUR))

    assert codes(item) == ["lower_rate", "verify_recovery"]
    assert "TypeError" in item["notes"][0]


def test_a_plugin_with_nothing_to_say_leaves_it_to_the_default(open_engine) -> None:
    engine = open_engine(SilentStepsPlugin())
    fail(engine, T0, status=429)
    fail(engine, T0 + MINUTE, status=429)

    item = only_item(make_playbook(engine.recovery, T0 + HOUR))

    assert codes(item) == ["lower_rate", "verify_recovery"]
    assert item["notes"] == []


def test_step_texts_are_scrubbed_of_secrets(open_engine) -> None:
    class LeakyStepsPlugin:
        @hookimpl
        def cavra_recovery_steps(self, connector):
            return [
                RecoveryStep(
                    "call_the_vendor",
                    "Call the vendor",
                    "Send Authorization: Bearer sk_live_hunter2hunter2 to "
                    "https://user:pw@vendor.example.com/private/path",
                )
            ]

    engine = open_engine(LeakyStepsPlugin())
    fail(engine, T0)
    fail(engine, T0 + MINUTE)

    detail = only_item(make_playbook(engine.recovery, T0 + HOUR))["steps"][0]["detail"]

    assert "hunter2" not in detail
    assert "/private/path" not in detail


# -- steps: the built-in connector plugins ------------------------------------------


@pytest.fixture
def builtin_engine(make_engine, clock) -> Engine:
    """The real webhook and SIEM plugins, on connectors that are never reached."""
    connectors = {
        "audit-webhook": {
            "type": "webhook",
            "url": "https://hooks.example.com/cavra",
            "auth_token_env": "CAVRA_HOOK_TOKEN",
            "signing_secrets_env": ["CAVRA_HOOK_OLD", "CAVRA_HOOK_NEW"],
        },
        "audit-splunk": {
            "type": "hec",
            "url": "https://splunk.example.com:8088",
            "token_env": "CAVRA_HEC_TOKEN",
            "index": "audit",
        },
        "soc-syslog": {
            "type": "syslog",
            "host": "syslog.example.com",
            "transport": "tls",
            "max_message_bytes": 4096,
        },
    }
    return make_engine(
        connectors,
        plugins=[cavra_webhook, cavra_siem],
        load_entry_points=False,
        clock=clock,
    )


def steps_for(engine, connector_id, *failures) -> dict[str, str]:
    for index, (status, error_class) in enumerate(failures):
        fail(
            engine,
            T0 + index * MINUTE,
            connector_id=connector_id,
            status=status,
            error_class=error_class,
        )
    playbook = make_playbook(engine.recovery, T0 + HOUR, min_failure_count=1)
    return {step["code"]: step["detail"] for step in only_item(playbook)["steps"]}


def test_webhook_credential_refusals_rotate_the_token_and_signing_secret(
    builtin_engine,
) -> None:
    steps = steps_for(builtin_engine, "audit-webhook", (401, "http_status"))

    assert list(steps) == [
        "rotate_bearer_token",
        "rotate_signing_secret",
        "resume_connector",
        "verify_recovery",
    ]
    assert "CAVRA_HOOK_TOKEN" in steps["rotate_bearer_token"]
    assert "CAVRA_HOOK_OLD, CAVRA_HOOK_NEW" in steps["rotate_signing_secret"]


def test_webhook_gone_asks_to_reenable_the_endpoint(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "audit-webhook", (410, "http_status"))

    assert list(steps)[0] == "reenable_webhook_endpoint"
    assert "Standard Webhooks" in steps["reenable_webhook_endpoint"]
    assert "resume_connector" in steps


def test_webhook_failures_without_a_webhook_step_get_the_generic_ones(
    builtin_engine,
) -> None:
    steps = steps_for(
        builtin_engine, "audit-webhook", (None, "connection_refused"), (429, None)
    )

    assert list(steps) == ["lower_rate", "check_network", "verify_recovery"]


def test_hec_index_errors_name_the_index(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "audit-splunk", (400, "hec_incorrect_index"))

    assert list(steps)[0] == "check_hec_index"
    assert "index audit" in steps["check_hec_index"]


def test_hec_token_refusals_name_the_token_variable(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "audit-splunk", (403, "hec_invalid_token"))

    assert "replace_hec_token" in steps
    assert "CAVRA_HEC_TOKEN" in steps["replace_hec_token"]


def test_hec_busy_indexers_get_the_hec_step(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "audit-splunk", (503, "hec_server_busy"))

    assert list(steps) == ["relieve_hec_indexers", "verify_recovery"]


def test_syslog_tls_failures_check_the_certificate(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "soc-syslog", (None, "tls_error"))

    assert list(steps)[0] == "check_syslog_tls_certificate"
    assert "syslog.example.com" in steps["check_syslog_tls_certificate"]


def test_syslog_messages_too_large_name_the_limit(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "soc-syslog", (None, "message_too_large"))

    assert "4096 bytes" in steps["raise_syslog_message_limit"]


def test_syslog_refused_connections_name_the_port(builtin_engine) -> None:
    steps = steps_for(builtin_engine, "soc-syslog", (None, "connection_refused"))

    assert "TLS port 6514" in steps["check_syslog_listener"]


# -- closures -----------------------------------------------------------------------


@pytest.fixture
def playbook(recovery, engine, clock) -> dict[str, Any]:
    """
    hook-a failed twice at T0; the playbook was made at T0 + 1 hour; the
    clock (for API calls) stands at T0 + 2 hours.
    """
    fail(engine, T0)
    fail(engine, T0 + MINUTE)
    made = make_playbook(recovery, T0 + HOUR)
    clock.now = T0 + 2 * HOUR
    return made


def test_a_closure_is_recorded_with_its_actor_and_evidence(recovery, playbook) -> None:
    closure = close(
        recovery,
        playbook,
        T0 + 2 * HOUR,
        external_ref="INC-4711",
        notes="Token rotated.\nWatching the next deliveries.",
    )

    assert (closure["closure_state"], closure["closed_by"]) == (
        "mitigated",
        "soc-carol",
    )
    assert closure["actor_verified"] is True
    assert closure["closed_at"] == "2026-06-01T14:00:00Z"
    entry = EvidenceEntry.get(EvidenceEntry.subject_id == closure["closure_id"])
    assert entry.kind == "recovery_closure"
    assert recovery.get_playbook(playbook["playbook_id"])["closures"] == [closure]


def test_a_closure_updates_the_item_state(recovery, playbook) -> None:
    close(recovery, playbook, T0 + 2 * HOUR, closure_state="mitigated")

    item = only_item(recovery.get_playbook(playbook["playbook_id"]))

    assert (item["closure_state"], item["closed_at"]) == (
        "mitigated",
        "2026-06-01T14:00:00Z",
    )


def test_the_latest_closure_wins_and_reopened_opens_the_item(
    recovery, playbook
) -> None:
    close(recovery, playbook, T0 + 2 * HOUR, closure_state="mitigated")
    close(recovery, playbook, T0 + 3 * HOUR, closure_state="reopened")

    row = item_row(playbook)

    assert (row.closure_state, row.closed_at) == ("reopened", None)
    assert RecoveryClosure.select().count() == 2


def test_an_unknown_playbook_cannot_be_closed(recovery) -> None:
    with pytest.raises(NotFound):
        close(recovery, {"playbook_id": Engine.new_id("pb")}, T0)


def test_a_connector_outside_the_playbook_cannot_be_closed(recovery, playbook) -> None:
    with pytest.raises(NotFound) as caught:
        close(recovery, playbook, T0 + 2 * HOUR, connector_id="hook-b")

    assert problems_of(caught) == [("/connector_id", "not_in_playbook")]


def test_resolved_needs_a_cited_delivery(recovery, playbook) -> None:
    with pytest.raises(UnprocessableInput) as caught:
        close(recovery, playbook, T0 + 2 * HOUR, closure_state="resolved")

    assert problems_of(caught) == [("/verification_refs", "verification_required")]
    assert "ex_" in caught.value.problems[0].detail
    assert RecoveryClosure.select().count() == 0


def test_resolved_citing_a_delivery_after_the_playbook_closes_the_item(
    recovery, playbook
) -> None:
    proof = execution("hook-a", T0 + 90 * MINUTE)

    closure = close(
        recovery,
        playbook,
        T0 + 2 * HOUR,
        closure_state="resolved",
        verification_refs=[proof],
    )

    assert closure["verification_refs"] == [proof]
    assert item_row(playbook).closure_state == "resolved"


@pytest.mark.parametrize(
    ("connector_id", "started", "outcome"),
    [
        ("hook-a", T0 + 30 * MINUTE, "delivered"),  # before the playbook
        ("hook-a", T0 + HOUR, "delivered"),  # at the playbook's moment
        ("hook-a", T0 + 90 * MINUTE, "failed"),
        ("hook-a", T0 + 90 * MINUTE, "skipped"),
    ],
)
def test_resolved_refuses_an_execution_that_proves_nothing(
    recovery, playbook, connector_id, started, outcome
) -> None:
    weak = execution(connector_id, started, outcome)

    with pytest.raises(UnprocessableInput) as caught:
        close(
            recovery,
            playbook,
            T0 + 2 * HOUR,
            closure_state="resolved",
            verification_refs=[weak],
        )

    assert problems_of(caught) == [("/verification_refs", "verification_required")]


def test_a_reference_to_another_connector_is_refused(recovery, playbook) -> None:
    other = execution("hook-b", T0 + 90 * MINUTE)

    with pytest.raises(UnprocessableInput) as caught:
        close(
            recovery,
            playbook,
            T0 + 2 * HOUR,
            closure_state="resolved",
            verification_refs=[other],
        )

    assert problems_of(caught) == [("/verification_refs/0", "other_connector")]


def test_references_that_name_nothing_are_refused(recovery, playbook) -> None:
    refs = [Engine.new_id("ex"), Engine.new_id("att")]

    with pytest.raises(UnprocessableInput) as caught:
        close(recovery, playbook, T0 + 2 * HOUR, verification_refs=refs)

    assert problems_of(caught) == [
        ("/verification_refs/0", "unknown_reference"),
        ("/verification_refs/1", "unknown_reference"),
    ]


def test_an_attempt_of_the_connector_may_be_cited(recovery, playbook) -> None:
    attempt_id = recovery.get_playbook(playbook["playbook_id"])["items"][0][
        "latest_failure"
    ]["attempt_id"]

    closure = close(recovery, playbook, T0 + 2 * HOUR, verification_refs=[attempt_id])

    assert closure["verification_refs"] == [attempt_id]


def test_without_a_token_or_a_name_a_closure_is_refused(recovery, playbook) -> None:
    with pytest.raises(MISSING_ACTOR) as caught:
        close(recovery, playbook, T0 + 2 * HOUR, actor=None)

    assert problems_of(caught) == [("/closed_by", "required")]


def test_an_external_ref_with_credentials_is_refused(recovery, playbook) -> None:
    with pytest.raises(InvalidInput) as caught:
        close(
            recovery,
            playbook,
            T0 + 2 * HOUR,
            external_ref="https://carol:hunter2@tickets.example.com/INC-1",
        )

    assert [pointer for pointer, _ in problems_of(caught)] == ["/external_ref"]


#: Notes of exactly the longest length a closure takes: plain sentences, so
#: that only their length is judged.
LONGEST_NOTES = ("Token rotated at the receiver; deliveries watched.\n" * 40)[:2000]


def test_notes_of_the_redaction_guards_length_are_recorded(recovery, playbook) -> None:
    closure = close(recovery, playbook, T0 + 2 * HOUR, notes=LONGEST_NOTES)

    assert closure["notes"] == LONGEST_NOTES
    assert len(LONGEST_NOTES) == redaction.MAX_TEXT_LENGTH


def test_longer_notes_are_refused_by_the_schema_naming_the_field(
    recovery, playbook
) -> None:
    with pytest.raises(InvalidInput) as caught:
        close(recovery, playbook, T0 + 2 * HOUR, notes=LONGEST_NOTES + "x")

    assert problems_of(caught) == [("/notes", "maxLength")]
    assert "2000" in caught.value.detail


@pytest.mark.parametrize(
    ("field", "blank"),
    [
        ("notes", "   "),
        ("notes", " \n\t "),
        ("notes", "\u200b"),
        ("external_ref", " "),
        ("external_ref", "\u3000\u00a0"),
    ],
)
def test_blank_notes_and_references_are_refused(
    recovery, playbook, field, blank
) -> None:
    with pytest.raises(InvalidInput) as caught:
        close(recovery, playbook, T0 + 2 * HOUR, **{field: blank})

    assert [pointer for pointer, _ in problems_of(caught)] == [f"/{field}"]


def test_a_live_run_delivery_resolves_the_item(recovery, engine, fake) -> None:
    """The whole way: fail, playbook, plan, approve, live run, resolved closure."""
    lineage_id = fail(engine, T0)
    fail(engine, T0 + MINUTE)
    made = make_playbook(recovery, T0 + 2 * MINUTE)
    plan = engine.plan_retries(plan_request(), actor=PLANNER, now=T0 + 20 * MINUTE)
    engine.approvals.create(
        plan["retry_plan_id"],
        {"reason": "the receiver is back", "all_retry_decisions": True},
        actor=APPROVER,
        now=T0 + 21 * MINUTE,
    )
    run = engine.run_worker({"dry_run": False}, actor=APPROVER, now=T0 + 22 * MINUTE)
    [sent] = [s for s in run["selected_retries"] if s["lineage_id"] == lineage_id]

    closure = close(
        recovery,
        made,
        T0 + 30 * MINUTE,
        closure_state="resolved",
        verification_refs=[sent["execution_id"]],
    )

    assert sent["outcome"] == "delivered"
    assert closure["closure_state"] == "resolved"
    assert item_row(made).closure_state == "resolved"


# -- the report ---------------------------------------------------------------------


@pytest.fixture
def three_playbooks(recovery, engine) -> list[dict[str, Any]]:
    """Playbooks with hook-a at T0, T0 + 2 h and T0 + 4 h; the middle one closed."""
    made = []
    for hours in (0, 2, 4):
        fail(engine, T0 + hours * HOUR - 2 * MINUTE)
        fail(engine, T0 + hours * HOUR - MINUTE)
        made.append(make_playbook(recovery, T0 + hours * HOUR, lookback_hours=1))
    close(recovery, made[1], T0 + 5 * HOUR, closure_state="mitigated")
    return made


def test_the_report_counts_open_closed_and_overdue_items(
    recovery, three_playbooks
) -> None:
    """At T0 + 5 h with a 4 h SLO, only the T0 playbook is overdue."""
    report = recovery.report(slo_minutes=240, now=T0 + 5 * HOUR)

    assert (report["open_count"], report["closed_count"], report["overdue_count"]) == (
        2,
        1,
        1,
    )
    assert [i["playbook_id"] for i in report["overdue_items"]] == [
        three_playbooks[0]["playbook_id"]
    ]
    assert [i["playbook_id"] for i in report["open_items"]] == [
        three_playbooks[0]["playbook_id"],
        three_playbooks[2]["playbook_id"],
    ]
    assert report["closed_items"][0]["closure_state"] == "mitigated"
    validation.check_output("recovery_report", report)


def test_an_item_exactly_at_its_slo_is_not_overdue(recovery, three_playbooks) -> None:
    report = recovery.report(slo_minutes=300, now=T0 + 5 * HOUR)

    assert report["overdue_count"] == 0
    assert report["open_items"][0]["due_at"] == "2026-06-01T17:00:00Z"
    assert report["open_items"][0]["overdue"] is False


def test_deferred_escalated_and_reopened_items_are_open(
    recovery, three_playbooks
) -> None:
    for made, state in zip(
        three_playbooks, ("deferred", "escalated", "reopened"), strict=True
    ):
        close(recovery, made, T0 + 6 * HOUR, closure_state=state)

    report = recovery.report(slo_minutes=60, now=T0 + 6 * HOUR)

    assert (report["open_count"], report["closed_count"], report["overdue_count"]) == (
        3,
        0,
        3,
    )
    assert [i["closure_state"] for i in report["open_items"]] == [
        "deferred",
        "escalated",
        "reopened",
    ]


def test_the_report_limit_cuts_lists_but_not_counts(recovery, three_playbooks) -> None:
    report = recovery.report(slo_minutes=1, limit=1, now=T0 + 10 * HOUR)

    assert report["open_count"] == 2
    assert len(report["open_items"]) == 1
    assert report["open_items"][0]["playbook_id"] == three_playbooks[0]["playbook_id"]


# -- the HTTP API -------------------------------------------------------------------


def test_api_makes_a_playbook_and_serves_it_at_its_location(client, engine) -> None:
    fail(engine, T0 - 2 * MINUTE)
    fail(engine, T0 - MINUTE)
    body = {"generated_by": "carol", "lookback_hours": 720}

    made = client.simulate_post(f"{P}/connector-recovery-playbook", json=body)
    served = client.simulate_get(made.headers["location"])

    assert made.status_code == 201
    validation.check_output("recovery_playbook", made.json)
    assert only_item(made.json)["connector_id"] == "hook-a"
    assert made.json["generated_by"] == "carol"
    assert made.json["actor_verified"] is False
    assert served.status_code == 200
    assert served.json == made.json


def test_api_lists_playbooks_in_pages(client) -> None:
    for _ in range(3):
        client.simulate_post(
            f"{P}/connector-recovery-playbook", json={"generated_by": "carol"}
        )

    first = client.simulate_get(PLAYBOOKS, params={"limit": "2"}).json
    second = client.simulate_get(
        PLAYBOOKS, params={"limit": "2", "cursor": first["next_cursor"]}
    ).json

    assert len(first["items"]) == 2
    assert len(second["items"]) == 1
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"generated_by": "carol", "min_failure_count": 0}, "/min_failure_count"),
        ({"generated_by": "carol", "min_failure_count": 1001}, "/min_failure_count"),
        ({"generated_by": "carol", "lookback_hours": 721}, "/lookback_hours"),
        ({"generated_by": "carol", "lookback_hours": 1.5}, "/lookback_hours"),
        ({"generated_by": "carol", "connector_ids": []}, "/connector_ids"),
        ({"generated_by": "carol", "force": True}, "/force"),
        ({"generated_by": ""}, "/generated_by"),
    ],
)
def test_api_refuses_a_bad_playbook_request_naming_the_field(
    client, body, pointer
) -> None:
    response = client.simulate_post(f"{P}/connector-recovery-playbook", json=body)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert pointer in [entry["pointer"] for entry in response.json["errors"]]


def test_api_answers_422_for_an_unknown_connector(client) -> None:
    body = {"generated_by": "carol", "connector_ids": ["nowhere"]}

    response = client.simulate_post(f"{P}/connector-recovery-playbook", json=body)

    assert response.status_code == 422
    assert [entry["pointer"] for entry in response.json["errors"]] == [
        "/connector_ids/0"
    ]


def test_api_without_tokens_needs_generated_by(client) -> None:
    response = client.simulate_post(f"{P}/connector-recovery-playbook", json={})

    assert response.status_code in (400, 422)
    assert [entry["pointer"] for entry in response.json["errors"]] == ["/generated_by"]


@pytest.mark.parametrize(
    "playbook_id", ["pb_" + "0" * 32, "pb_nothing", "rp_" + "0" * 32]
)
def test_api_answers_404_for_a_playbook_that_does_not_exist(
    client, playbook_id
) -> None:
    read = client.simulate_get(f"{PLAYBOOKS}/{playbook_id}")
    closed = client.simulate_post(
        f"{PLAYBOOKS}/{playbook_id}/closures",
        json={"connector_id": "hook-a", "closure_state": "deferred", "closed_by": "c"},
    )

    assert (read.status_code, closed.status_code) == (404, 404)


def test_api_records_a_closure_and_lists_it_with_the_playbook(
    client, recovery, playbook
) -> None:
    path = f"{PLAYBOOKS}/{playbook['playbook_id']}"
    body = {
        "connector_id": "hook-a",
        "closure_state": "escalated",
        "external_ref": "INC-4711",
        "closed_by": "carol",
    }

    response = client.simulate_post(f"{path}/closures", json=body)

    assert response.status_code == 201
    validation.check_output("recovery_closure", response.json)
    served = client.simulate_get(path).json
    assert served["closures"] == [response.json]
    assert served["items"][0]["closure_state"] == "escalated"


def test_api_names_the_connector_outside_the_playbook(client, playbook) -> None:
    body = {"connector_id": "hook-b", "closure_state": "deferred", "closed_by": "c"}

    response = client.simulate_post(
        f"{PLAYBOOKS}/{playbook['playbook_id']}/closures", json=body
    )

    assert response.status_code == 404
    assert [entry["pointer"] for entry in response.json["errors"]] == ["/connector_id"]


def test_api_says_what_a_resolved_closure_must_cite(client, playbook) -> None:
    body = {"connector_id": "hook-a", "closure_state": "resolved", "closed_by": "c"}

    response = client.simulate_post(
        f"{PLAYBOOKS}/{playbook['playbook_id']}/closures", json=body
    )

    assert response.status_code == 422
    [entry] = response.json["errors"]
    assert entry["pointer"] == "/verification_refs"
    assert "execution (ex_...)" in entry["detail"]


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"closure_state": "done"}, "/closure_state"),
        ({"external_ref": "x" * 201}, "/external_ref"),
        ({"notes": "x" * 2001}, "/notes"),
        ({"notes": "   "}, "/notes"),
        ({"verification_refs": ["wr_" + "0" * 32]}, "/verification_refs/0"),
        ({"verification_refs": ["ex_" + "0" * 32] * 2}, "/verification_refs"),
        (
            {"verification_refs": [f"ex_{n:032x}" for n in range(51)]},
            "/verification_refs",
        ),
        ({"connector_id": "Hook A"}, "/connector_id"),
    ],
)
def test_api_refuses_a_bad_closure_naming_the_field(
    client, playbook, change, pointer
) -> None:
    body = {"connector_id": "hook-a", "closure_state": "deferred", "closed_by": "c"}

    response = client.simulate_post(
        f"{PLAYBOOKS}/{playbook['playbook_id']}/closures", json={**body, **change}
    )

    assert response.status_code == 400
    assert pointer in [entry["pointer"] for entry in response.json["errors"]]


def test_api_serves_the_report(client, recovery, engine, clock) -> None:
    fail(engine, T0)
    fail(engine, T0 + MINUTE)
    make_playbook(recovery, T0 + HOUR)
    clock.now = T0 + 3 * HOUR

    response = client.simulate_get(
        f"{P}/connector-recovery-report", params={"slo_minutes": "60"}
    )

    assert response.status_code == 200
    validation.check_output("recovery_report", response.json)
    assert (response.json["slo_minutes"], response.json["open_count"]) == (60, 1)
    assert response.json["overdue_count"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"slo_minutes": "0"},
        {"slo_minutes": "100001"},
        {"slo_minutes": "soon"},
        {"limit": "501"},
        {"since": "2026-06-01T00:00:00Z"},
    ],
)
def test_api_refuses_a_bad_report_query(client, params) -> None:
    response = client.simulate_get(f"{P}/connector-recovery-report", params=params)

    assert response.status_code == 400
    assert [entry["parameter"] for entry in response.json["errors"]] == list(params)


def test_api_live_run_resolves_the_item(client, engine, fake, clock) -> None:
    """Through the API: a failed delivery, a playbook, a live run, a closure."""
    fake.script(failed(503))
    delivered = client.simulate_post(
        P,
        json={
            "package": package("drill-live", generated_at=T0 - 5 * MINUTE),
            "connectors": ["hook-a"],
            "generated_by": "alice",
        },
    ).json
    clock.advance(minutes=1)
    made = client.simulate_post(
        f"{P}/connector-recovery-playbook",
        json={"generated_by": "carol", "min_failure_count": 1},
    ).json
    clock.advance(minutes=1)
    immediate = {"retry_delay_minutes": 0, "allow_immediate_retry": True}
    plan = client.simulate_post(
        f"{P}/retry-plan", json={"generated_by": "rm", "retry_policy": immediate}
    ).json
    clock.advance(minutes=1)
    approval = client.simulate_post(
        f"{P}/retry-plans/{plan['retry_plan_id']}/approvals",
        json={"approved_by": "po", "all_retry_decisions": True, "reason": "back up"},
    )
    clock.advance(minutes=1)
    run = client.simulate_post(
        f"{P}/worker-run",
        json={"generated_by": "po", "dry_run": False, "retry_policy": immediate},
    ).json
    [sent] = run["selected_retries"]
    clock.advance(minutes=1)

    response = client.simulate_post(
        f"{PLAYBOOKS}/{made['playbook_id']}/closures",
        json={
            "connector_id": "hook-a",
            "closure_state": "resolved",
            "verification_refs": [sent["execution_id"]],
            "closed_by": "carol",
        },
    )

    assert delivered["deliveries"][0]["outcome"] == "failed"
    assert approval.status_code == 201
    assert sent["outcome"] == "delivered"
    assert response.status_code == 201
    report = client.simulate_get(f"{P}/connector-recovery-report").json
    assert (report["open_count"], report["closed_count"]) == (0, 1)
