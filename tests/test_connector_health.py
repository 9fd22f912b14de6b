"""
Connector health: paused by configuration failures, disabled by the receiver.

Every test runs on SQLite and on PostgreSQL. The connector type is a tiny
inline plugin whose deliveries return scripted results and whose
classification table reads HTTP 410 as the receiver asking to stop, the way
the webhook connector does.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from falcon import testing
from plugins_fixtures import (
    T0,
    Clock,
    failed,
    package,
    parse,
    plan_decisions,
    record_failure,
    record_success,
)

from cavra_core import DeliveryResult, hookimpl
from cavra_core.engine import package_hash
from cavra_core.types import Connector, Delivery
from cavra_server import create_app
from cavra_server.app import P

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
#: A value that must never come back in an answer.
MARKER = "s3cr3t-marker-value"


class GoneStopsType:
    """Scripted deliveries; HTTP 410 means the receiver wants no more."""

    name = "scripted"
    category = "webhook"
    classification = {"http:410": "receiver_stop"}

    def __init__(self) -> None:
        self.results: list[DeliveryResult] = []
        self.deliveries: list[Delivery] = []

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        return None

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        self.deliveries.append(delivery)
        if self.results:
            return self.results.pop(0)
        return DeliveryResult(outcome="delivered", http_status=200)


class GoneStopsPlugin:
    def __init__(self, connector_type: GoneStopsType) -> None:
        self.connector_type = connector_type

    @hookimpl
    def cavra_register_connector_types(self) -> list[GoneStopsType]:
        return [self.connector_type]


CONNECTORS = {
    "hook-a": {"type": "scripted", "url": "https://hooks.example.com/a"},
    "hook-b": {"type": "scripted", "url": "https://hooks.example.com/b"},
}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scripted() -> GoneStopsType:
    return GoneStopsType()


@pytest.fixture
def open_engine(make_engine, scripted, clock):
    """Open an engine on this test's store; a new table means a new engine."""

    def factory(connectors: dict[str, Any] | None = None):
        return make_engine(
            connectors or CONNECTORS,
            plugins=[GoneStopsPlugin(scripted)],
            load_entry_points=False,
            clock=clock,
        )

    return factory


@pytest.fixture
def engine(open_engine):
    return open_engine()


@pytest.fixture
def client(engine) -> testing.TestClient:
    return testing.TestClient(create_app(engine))


def deliver(engine, drill: str, *connector_ids: str) -> dict[str, Any]:
    """Deliver a new package now; the delivery report's entry per connector."""
    report = engine.deliver_package(
        {
            "package": package(drill),
            "connectors": list(connector_ids or ["hook-a"]),
            "generated_by": "rm",
        }
    )
    return {entry["connector_id"]: entry for entry in report["deliveries"]}


def decisions_by_drill(engine, now, *drills: str) -> dict[str, tuple[str, str]]:
    """The plan's (action, reason) for each drill's lineage to hook-a."""
    wanted = {package_hash(package(drill)): drill for drill in drills}
    return {
        wanted[d["package_id"]]: (d["action"], d["reason"])
        for d in plan_decisions(engine, now)
        if d["package_id"] in wanted
    }


def connector(client: testing.TestClient, connector_id: str = "hook-a") -> dict:
    response = client.simulate_get(f"{P}/connectors/{connector_id}")
    assert response.status_code == 200, response.text
    return response.json


def resume(client: testing.TestClient, connector_id: str = "hook-a", **body: Any):
    return client.simulate_post(
        f"{P}/connectors/{connector_id}/resume",
        json=body or {"generated_by": "platform-owner"},
    )


# -- pausing ----------------------------------------------------------------------


def test_refused_credentials_pause_the_connector(engine, scripted, client) -> None:
    """A 401 shows the connector paused, with the reason and the error class."""
    scripted.results.append(failed(401))

    deliver(engine, "drill-1")

    listed = {
        c["connector_id"]: c
        for c in client.simulate_get(f"{P}/connectors").json["items"]
    }
    paused = listed["hook-a"]
    assert paused["state"] == "paused"
    assert paused["state_reason"] == "connector_paused"
    assert (paused["state_error_class"], paused["state_http_status"]) == (
        "http_status",
        401,
    )
    assert paused["state_changed_by"] == "delivery"
    assert T0 <= parse(paused["state_changed_at"]) < T0 + MINUTE
    assert paused["last_failure_category"] == "config"
    assert listed["hook-b"]["state"] == "active"


def test_later_lineages_of_a_paused_connector_wait_for_it(engine, scripted) -> None:
    """A 503 recorded after the pause waits connector_paused, not retry_due."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    record_failure(engine, T0 + MINUTE, status=503, evidence=package("drill-2"))

    decisions = plan_decisions(engine, T0 + HOUR)

    by_reason = {d["reason"] for d in decisions}
    assert by_reason == {"connector_paused"}
    later = next(
        d for d in decisions if d["package_id"] == package_hash(package("drill-2"))
    )
    assert later["action"] == "wait"
    assert "paused after a configuration failure (HTTP 401)" in later["explanation"]
    assert "keeping 2 of 3 attempts" in later["explanation"]


def test_new_deliveries_to_a_paused_connector_are_skipped(engine, scripted) -> None:
    """Nothing is sent to a paused connector; other connectors still get it."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    sent_before = len(scripted.deliveries)

    report = deliver(engine, "drill-2", "hook-a", "hook-b")

    assert report["hook-a"]["outcome"] == "skipped"
    assert report["hook-a"]["skipped_reason"] == "connector_paused"
    assert report["hook-a"]["attempt_id"] is None
    assert report["hook-b"]["outcome"] == "delivered"
    assert [d.lineage_id for d in scripted.deliveries[sent_before:]] == [
        report["hook-b"]["lineage_id"]
    ]


def test_a_skipped_delivery_is_made_once_the_connector_is_resumed(
    engine, scripted
) -> None:
    """A skip claims nothing, so the same package is delivered after a resume."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    deliver(engine, "drill-2")
    engine.resume_connector("hook-a", {"generated_by": "platform-owner"})

    report = deliver(engine, "drill-2")

    assert report["hook-a"]["outcome"] == "delivered"
    assert report["hook-a"]["attempt_number"] == 1


def test_dashboard_counts_paused_and_disabled_connectors(engine, scripted) -> None:
    """paused_connector_count counts every connector that is not active."""
    scripted.results.extend([failed(401), failed(410)])
    deliver(engine, "drill-1", "hook-a")
    deliver(engine, "drill-2", "hook-b")

    board = engine.dashboard(now=T0 + MINUTE)

    assert board["paused_connector_count"] == 2


def test_dashboard_count_drops_when_a_connector_is_resumed(
    engine, scripted, client
) -> None:
    """After one resume only the other connector is counted."""
    scripted.results.extend([failed(401), failed(403)])
    deliver(engine, "drill-1", "hook-a", "hook-b")
    resume(client, "hook-b")

    board = client.simulate_get(f"{P}/worker-dashboard").json

    assert board["paused_connector_count"] == 1


# -- resuming ---------------------------------------------------------------------


def test_resume_through_the_api_makes_the_connector_active(
    engine, scripted, client, clock
) -> None:
    """POST .../resume answers the active connector, naming who resumed it."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    clock.advance(minutes=5)

    response = resume(client, generated_by="platform-owner")

    assert response.status_code == 200, response.text
    resumed = response.json
    assert (resumed["state"], resumed["state_reason"]) == ("active", "resumed")
    assert resumed["state_changed_by"] == "platform-owner"
    assert resumed["state_changed_at"] == "2026-06-01T12:05:00Z"
    assert (resumed["state_error_class"], resumed["state_http_status"]) == (None, None)
    assert connector(client)["state"] == "active"


def test_resume_makes_waiting_lineages_retryable(engine, scripted, client) -> None:
    """After a resume the plan decides on timing, not on the pause."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    record_failure(engine, T0 + 50 * MINUTE, status=503, evidence=package("drill-2"))
    resume(client)

    decisions = decisions_by_drill(engine, T0 + HOUR, "drill-1", "drill-2")

    assert decisions == {
        "drill-1": ("retry", "retry_due"),
        "drill-2": ("wait", "delay_not_elapsed"),
    }


def test_engine_resume_makes_waiting_lineages_retryable(engine, scripted) -> None:
    """Engine.resume_connector does what the API does."""
    scripted.results.append(failed(403))
    deliver(engine, "drill-1")

    resumed = engine.resume_connector("hook-a", {"generated_by": "ops-lead"})

    assert (resumed["state"], resumed["state_changed_by"]) == ("active", "ops-lead")
    assert decisions_by_drill(engine, T0 + HOUR, "drill-1") == {
        "drill-1": ("retry", "retry_due")
    }


def test_resume_moves_waiting_lineages_to_retryable_on_the_dashboard(
    engine, scripted
) -> None:
    """After a resume the dashboard agrees with a plan: due once the delay passed."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    assert engine.dashboard(now=T0 + MINUTE)["waiting_count"] == 1

    engine.resume_connector("hook-a", {"generated_by": "ops-lead"}, now=T0 + MINUTE)

    board = engine.dashboard(now=T0 + 20 * MINUTE)
    assert (board["waiting_count"], board["retryable_count"]) == (0, 1)
    assert decisions_by_drill(engine, T0 + 20 * MINUTE, "drill-1") == {
        "drill-1": ("retry", "retry_due")
    }


def test_changed_connector_table_lifts_a_pause(open_engine, scripted) -> None:
    """Starting with different settings for the connector makes it active."""
    engine = open_engine()
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    changed = dict(CONNECTORS, **{"hook-a": {**CONNECTORS["hook-a"], "x": 1}})

    restarted = open_engine(changed)

    state = restarted.get_connector("hook-a")
    assert (state["state"], state["state_reason"]) == (
        "active",
        "configuration_changed",
    )
    assert state["state_changed_by"] == "configuration"
    assert decisions_by_drill(restarted, T0 + HOUR, "drill-1") == {
        "drill-1": ("retry", "retry_due")
    }


def test_unchanged_connector_table_keeps_the_pause(open_engine, scripted) -> None:
    """A restart with the same table is no reason to try again."""
    engine = open_engine()
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")

    restarted = open_engine()

    assert restarted.get_connector("hook-a")["state"] == "paused"
    assert decisions_by_drill(restarted, T0 + HOUR, "drill-1") == {
        "drill-1": ("wait", "connector_paused")
    }


def test_changed_connector_table_does_not_lift_a_disable(open_engine, scripted) -> None:
    """The receiver asked for no more: a new table does not overrule that."""
    engine = open_engine()
    scripted.results.append(failed(410))
    deliver(engine, "drill-1")
    changed = dict(CONNECTORS, **{"hook-a": {**CONNECTORS["hook-a"], "x": 1}})

    restarted = open_engine(changed)

    state = restarted.get_connector("hook-a")
    assert (state["state"], state["state_reason"]) == ("disabled", "receiver_stop")


# -- disabling --------------------------------------------------------------------


def test_receiver_stop_suppresses_the_lineage_and_disables_the_connector(
    engine, scripted, client
) -> None:
    """A 410 closes its lineage as receiver_stop and disables the connector."""
    scripted.results.append(failed(410))

    report = deliver(engine, "drill-1")

    assert (report["hook-a"]["outcome"], report["hook-a"]["http_status"]) == (
        "failed",
        410,
    )
    assert decisions_by_drill(engine, T0 + HOUR, "drill-1") == {
        "drill-1": ("suppress", "receiver_stop")
    }
    state = connector(client)
    assert (state["state"], state["state_reason"]) == ("disabled", "receiver_stop")
    assert (state["state_error_class"], state["state_http_status"]) == (
        "http_status",
        410,
    )
    assert state["last_failure_category"] == "receiver_stop"


def test_other_lineages_of_a_disabled_connector_wait_for_it(engine, scripted) -> None:
    """Failures before and after the disable wait connector_disabled."""
    record_failure(engine, T0 - 30 * MINUTE, status=503, evidence=package("before"))
    scripted.results.append(failed(410))
    deliver(engine, "gone")
    record_failure(engine, T0 + MINUTE, status=503, evidence=package("after"))

    decisions = decisions_by_drill(engine, T0 + HOUR, "before", "gone", "after")

    assert decisions == {
        "before": ("wait", "connector_disabled"),
        "gone": ("suppress", "receiver_stop"),
        "after": ("wait", "connector_disabled"),
    }


def test_new_deliveries_to_a_disabled_connector_are_skipped(engine, scripted) -> None:
    """Nothing is sent to a disabled connector."""
    scripted.results.append(failed(410))
    deliver(engine, "drill-1")
    sent_before = len(scripted.deliveries)

    report = deliver(engine, "drill-2")

    assert report["hook-a"]["skipped_reason"] == "connector_disabled"
    assert len(scripted.deliveries) == sent_before


def test_a_delivered_attempt_does_not_lift_a_disable(engine, scripted) -> None:
    """Only a resume lifts a disable; an imported delivery leaves it."""
    scripted.results.append(failed(410))
    deliver(engine, "drill-1")

    record_success(engine, T0 + MINUTE, evidence=package("drill-2"))

    assert engine.get_connector("hook-a")["state"] == "disabled"


def test_only_a_resume_lifts_a_disable(engine, scripted) -> None:
    """After a resume the disabled connector's waiting lineages are retryable."""
    record_failure(engine, T0 - 30 * MINUTE, status=503, evidence=package("before"))
    scripted.results.append(failed(410))
    deliver(engine, "gone")

    engine.resume_connector("hook-a", {"generated_by": "soc-lead"})

    assert engine.get_connector("hook-a")["state"] == "active"
    assert decisions_by_drill(engine, T0 + HOUR, "before", "gone") == {
        "before": ("retry", "retry_due"),
        "gone": ("suppress", "receiver_stop"),
    }


def test_receiver_stop_on_a_paused_connector_disables_it(engine, scripted) -> None:
    """A pause can become a disable; the stronger state wins."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")

    record_failure(engine, T0 + MINUTE, status=410, evidence=package("drill-2"))

    assert engine.get_connector("hook-a")["state"] == "disabled"


def test_configuration_failure_on_a_disabled_connector_keeps_it_disabled(
    engine, scripted
) -> None:
    """A disable never turns back into a pause."""
    scripted.results.append(failed(410))
    deliver(engine, "drill-1")

    record_failure(engine, T0 + MINUTE, status=401, evidence=package("drill-2"))

    state = engine.get_connector("hook-a")
    assert (state["state"], state["state_http_status"]) == ("disabled", 410)


# -- deliveries lift pauses -------------------------------------------------------


def test_a_delivered_attempt_lifts_a_pause(engine, scripted) -> None:
    """A delivery that went through shows the pause's cause is fixed."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")

    record_success(engine, T0 + 10 * MINUTE, evidence=package("drill-2"))

    state = engine.get_connector("hook-a")
    assert (state["state"], state["state_reason"]) == ("active", "delivered")
    assert state["state_changed_by"] == "delivery"
    assert state["last_success_at"] == "2026-06-01T12:10:00Z"


def test_a_delivery_older_than_the_pause_does_not_lift_it(engine, scripted) -> None:
    """An imported success from before the 401 says nothing about the fix."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")

    record_success(engine, T0 - 10 * MINUTE, evidence=package("drill-2"))

    assert engine.get_connector("hook-a")["state"] == "paused"


def test_a_failure_older_than_the_latest_delivery_does_not_pause(engine) -> None:
    """An imported 401 from before a delivery is history, not a reason to stop."""
    record_success(engine, T0, evidence=package("drill-1"))

    record_failure(engine, T0 - 10 * MINUTE, status=401, evidence=package("drill-2"))

    state = engine.get_connector("hook-a")
    assert state["state"] == "active"
    assert state["consecutive_failures"] == 1


# -- consecutive failures ---------------------------------------------------------


def test_consecutive_failures_count_every_failed_attempt(engine) -> None:
    """Failures of different lineages add up on their connector only."""
    record_failure(engine, T0, status=503, evidence=package("drill-1"))
    record_failure(engine, T0 + MINUTE, status=None, evidence=package("drill-2"))
    record_failure(engine, T0 + 20 * MINUTE, status=502, evidence=package("drill-1"))

    state = engine.get_connector("hook-a")

    assert state["consecutive_failures"] == 3
    assert (state["last_failure_class"], state["last_failure_category"]) == (
        "http_status",
        "transient",
    )
    assert state["last_failure_at"] == "2026-06-01T12:20:00Z"
    assert engine.get_connector("hook-b")["consecutive_failures"] == 0


def test_a_delivered_attempt_resets_consecutive_failures(engine) -> None:
    """One delivery starts the count over."""
    record_failure(engine, T0, status=503, evidence=package("drill-1"))
    record_failure(engine, T0 + MINUTE, status=503, evidence=package("drill-2"))

    record_success(engine, T0 + 2 * MINUTE, evidence=package("drill-3"))

    assert engine.get_connector("hook-a")["consecutive_failures"] == 0


def test_a_resume_resets_consecutive_failures(engine, scripted) -> None:
    """Resuming starts the count over too."""
    scripted.results.append(failed(401))
    deliver(engine, "drill-1")
    record_failure(engine, T0 + MINUTE, status=503, evidence=package("drill-2"))
    assert engine.get_connector("hook-a")["consecutive_failures"] == 2

    resumed = engine.resume_connector("hook-a", {"generated_by": "ops-lead"})

    assert resumed["consecutive_failures"] == 0


# -- what the API shows and refuses -----------------------------------------------


def test_connector_list_never_shows_secrets_or_paths(
    make_engine, scripted, monkeypatch
) -> None:
    """Endpoints are scheme://host[:port]; no path, query, user or secret."""
    monkeypatch.setenv("CAVRA_HOOK_TOKEN", MARKER)
    engine = make_engine(
        {
            "hook-a": {
                "type": "scripted",
                "url": "https://ops:hunter2@Hooks.Example.com:8443/private/path?q=1",
                "auth_token_env": "CAVRA_HOOK_TOKEN",
                "ca_bundle": "/etc/cavra/private-ca.pem",
            },
            "soc-syslog": {
                "type": "scripted",
                "host": "2001:db8::1",
                "port": 6514,
                "transport": "tls",
            },
            "local-socket": {"type": "scripted", "host": "/var/run/syslog.sock"},
            "drop-folder": {"type": "scripted", "path": "/srv/evidence/drop"},
        },
        plugins=[GoneStopsPlugin(scripted)],
        load_entry_points=False,
    )
    client = testing.TestClient(create_app(engine))

    response = client.simulate_get(f"{P}/connectors")

    assert response.status_code == 200
    endpoints = {c["connector_id"]: c["endpoint"] for c in response.json["items"]}
    assert endpoints == {
        "drop-folder": None,
        "hook-a": "https://hooks.example.com:8443",
        "local-socket": None,
        "soc-syslog": "tls://[2001:db8::1]:6514",
    }
    text = response.text
    for leaked in (
        MARKER,
        "hunter2",
        "ops:",
        "/private",
        "q=1",
        "/etc/",
        "/var/",
        "/srv/",
    ):
        assert leaked not in text
    assert "CAVRA_HOOK_TOKEN" not in text


def test_connectors_are_listed_by_id(client) -> None:
    """The list holds every configured connector, sorted by id."""
    response = client.simulate_get(f"{P}/connectors")

    assert [c["connector_id"] for c in response.json["items"]] == ["hook-a", "hook-b"]
    assert all(c["state"] == "active" for c in response.json["items"])


@pytest.mark.parametrize("connector_id", ["hook-z", "HOOK-A", "a" * 101])
def test_unknown_connector_is_not_found(client, connector_id) -> None:
    """GET and resume of an id that names no connector answer 404."""
    read = client.simulate_get(f"{P}/connectors/{connector_id}")
    resumed = resume(client, connector_id)

    assert (read.status_code, resumed.status_code) == (404, 404)
    assert read.headers["content-type"] == "application/problem+json"
    assert f"{P}/connectors" in read.json["detail"]


def test_engine_refuses_unknown_connector_ids(engine) -> None:
    """The engine's calls raise NotFound for an unknown id, like the API."""
    from cavra_core import NotFound

    with pytest.raises(NotFound):
        engine.get_connector("hook-z")
    with pytest.raises(NotFound):
        engine.resume_connector("hook-z", {"generated_by": "ops"})


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({}, "/generated_by"),
        ({"generated_by": ""}, "/generated_by"),
        ({"generated_by": "ops", "reason": "fixed"}, "/reason"),
        ({"generated_by": 7}, "/generated_by"),
    ],
)
def test_resume_body_is_validated(client, body, pointer) -> None:
    """A bad resume body is a 400 naming the field; nothing changes."""
    response = client.simulate_post(f"{P}/connectors/hook-a/resume", json=body)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert {e.get("pointer") for e in response.json["errors"]} == {pointer}
    assert connector(client)["state_reason"] is None


def test_resume_body_must_be_json(client) -> None:
    """A body that is not JSON is a 400, not a 500."""
    response = client.simulate_post(
        f"{P}/connectors/hook-a/resume",
        body=b"generated_by=ops",
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert json.loads(response.text)["status"] == 400


# -- the command line -------------------------------------------------------------


@pytest.fixture
def webhook_file(tmp_path) -> str:
    """A connectors file with one webhook connector, for the installed plugin."""
    path = tmp_path / "connectors.toml"
    path.write_text('[hook]\ntype = "webhook"\nurl = "https://hooks.example.com/x"\n')
    return str(path)


def cavra(database_url: str, connectors: str, *arguments: str) -> int:
    from cavra_server.cli import main

    command, *rest = arguments
    return main(
        [command, *rest, "--database", database_url, "--connectors", connectors]
    )


def pause_webhook(make_engine, webhook_file: str) -> None:
    engine = make_engine(webhook_file)
    record_failure(engine, T0, status=401, connector_id="hook")
    engine.close()


def test_cli_lists_a_paused_connector_with_its_reason(
    make_engine, database_url, webhook_file, capsys
) -> None:
    """cavra connectors list shows state and reason; --json the API document."""
    pause_webhook(make_engine, webhook_file)

    status = cavra(database_url, webhook_file, "connectors", "list")
    table = capsys.readouterr().out
    as_json = cavra(database_url, webhook_file, "connectors", "list", "--json")
    document = json.loads(capsys.readouterr().out)

    assert (status, as_json) == (0, 0)
    assert "paused (connector_paused)" in table
    assert "https://hooks.example.com" in table
    assert document["items"][0]["state"] == "paused"


def test_cli_resume_makes_the_connector_active(
    make_engine, database_url, webhook_file, capsys
) -> None:
    """cavra connectors resume says what changed and records who did it."""
    pause_webhook(make_engine, webhook_file)

    status = cavra(
        database_url,
        webhook_file,
        "connectors",
        "resume",
        "hook",
        "--generated-by",
        "platform-owner",
    )

    assert status == 0
    assert capsys.readouterr().out.strip() == "hook: paused -> active"
    state = make_engine(webhook_file).get_connector("hook")
    assert (state["state"], state["state_changed_by"]) == ("active", "platform-owner")


@pytest.mark.parametrize("command", ["resume", "check"])
def test_cli_refuses_an_unknown_connector_id(
    database_url, webhook_file, capsys, command
) -> None:
    """An unknown id is a message naming it and how to list them, exit 2."""
    status = cavra(database_url, webhook_file, "connectors", command, "hook-z")

    assert status == 2
    errors = capsys.readouterr().err
    assert "no connector 'hook-z' is configured" in errors
    assert "cavra connectors list" in errors


def test_a_pause_moves_the_connectors_other_lineages_to_waiting(
    engine, scripted
) -> None:
    """The dashboard agrees with a plan when a later failure pauses the connector."""
    scripted.results.extend([failed(503), failed(401)])
    deliver(engine, "drill-1")
    deliver(engine, "drill-2")

    board = engine.dashboard(now=T0 + 20 * MINUTE)

    assert (board["retryable_count"], board["waiting_count"]) == (0, 2)
    assert decisions_by_drill(engine, T0 + 20 * MINUTE, "drill-1") == {
        "drill-1": ("wait", "connector_paused")
    }
