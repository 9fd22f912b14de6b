"""The HTTP API, through the real Falcon app, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import logging
import select
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import peewee
import pytest
from falcon import testing

from cavra_core import DeliveryResult, Engine, hookimpl, validation
from cavra_core.engine import package_hash
from cavra_core.store import MODELS
from cavra_server import create_app
from cavra_server.app import P

FAILED_503 = DeliveryResult(
    outcome="failed", error_class="http_status", http_status=503
)
DELIVERED = DeliveryResult(outcome="delivered", http_status=200)
PROBLEM_TYPE = "application/problem+json"
#: A policy under which a failed delivery is due for retry at once.
IMMEDIATE = {"retry_delay_minutes": 0, "allow_immediate_retry": True}
#: A value that must never come back in an answer.
MARKER = "hunter2marker"


class FakeConnectorType:
    """A connector type that answers from a script; failing with 503 by default."""

    name = "fake"
    category = "webhook"

    def __init__(self) -> None:
        self.script: list[DeliveryResult] = []
        self.deliveries: list[Any] = []

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        return None

    def deliver(self, connector: Any, delivery: Any) -> DeliveryResult:
        self.deliveries.append(delivery)
        return self.script.pop(0) if self.script else FAILED_503


class FakeConnectorPlugin:
    def __init__(self, connector_type: FakeConnectorType) -> None:
        self.connector_type = connector_type

    @hookimpl
    def cavra_register_connector_types(self) -> list[FakeConnectorType]:
        return [self.connector_type]


# -- fixtures and helpers ------------------------------------------------------


@pytest.fixture
def fake() -> FakeConnectorType:
    return FakeConnectorType()


@pytest.fixture
def engine(make_engine: Callable[..., Engine], fake: FakeConnectorType) -> Engine:
    return make_engine(
        {"hook-a": {"type": "fake"}, "hook-b": {"type": "fake"}},
        plugins=[FakeConnectorPlugin(fake)],
        load_entry_points=False,
    )


@pytest.fixture
def client(engine: Engine) -> testing.TestClient:
    return testing.TestClient(create_app(engine))


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def minutes_ago(minutes: float) -> str:
    return stamp(datetime.now(UTC) - timedelta(minutes=minutes))


def make_package(drill_id: str = "drill-1", age_minutes: float = 5) -> dict[str, Any]:
    return {
        "drill_id": drill_id,
        "generated_at": minutes_ago(age_minutes),
        "generated_by": "alice",
        "acknowledgements": [
            {
                "notification_id": "notice-1",
                "role": "release manager",
                "state": "accepted",
                "acknowledged_at": minutes_ago(age_minutes),
            }
        ],
    }


def delivery_request(**changes: Any) -> dict[str, Any]:
    return {
        "package": make_package(),
        "connectors": ["hook-a"],
        "generated_by": "alice",
        **changes,
    }


def imported_attempt(package: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {
        "package_id": package_hash(package),
        "connector_id": "hook-a",
        "outcome": "failed",
        "error_class": "http_status",
        "http_status": 503,
        "started_at": minutes_ago(30),
        "finished_at": minutes_ago(30),
        **changes,
    }


def assert_valid(schema: str, document: Any) -> None:
    validation.validator(schema).validate(document)


def problem_of(response: testing.Result, status: int) -> dict[str, Any]:
    """The problem document of ``response``, checked for status, type and schema."""
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_TYPE
    document = response.json
    assert document["status"] == status
    assert document["type"].startswith("https://cavra.dev/problems/")
    entries = document.get("errors", [])
    if all("pointer" in entry for entry in entries):
        assert_valid("problem", document)
    return document


def pointers(document: dict[str, Any]) -> list[str]:
    return [entry["pointer"] for entry in document.get("errors", [])]


def parameters(document: dict[str, Any]) -> list[str]:
    return [entry["parameter"] for entry in document.get("errors", [])]


def stored_counts() -> dict[str, int]:
    return {model.__name__: model.select().count() for model in MODELS}


def post_json(client: testing.TestClient, path: str, document: Any) -> testing.Result:
    return client.simulate_post(path, json=document)


def post_raw(
    client: testing.TestClient,
    path: str,
    body: bytes,
    content_type: str | None = "application/json",
) -> testing.Result:
    headers = {"Content-Type": content_type} if content_type else {}
    return client.simulate_post(path, body=body, headers=headers)


def deliver_failed(client: testing.TestClient, drill_id: str = "drill-1") -> dict:
    request = delivery_request(package=make_package(drill_id))
    return post_json(client, P, request).json


def dry_run(client: testing.TestClient, **changes: Any) -> testing.Result:
    request = {"generated_by": "bob", "retry_policy": IMMEDIATE, **changes}
    return post_json(client, f"{P}/worker-run", request)


def all_pages(
    client: testing.TestClient, path: str, limit: int, **query: str
) -> list[list[dict]]:
    pages, cursor = [], None
    while True:
        params = {"limit": str(limit), **query}
        if cursor:
            params["cursor"] = cursor
        page = client.simulate_get(path, params=params).json
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


# -- the flow of one failure ---------------------------------------------------


def test_delivering_a_package_answers_201_with_the_failed_delivery(client) -> None:
    """POST P delivers now and reports the connector's failure."""
    request = delivery_request()

    response = post_json(client, P, request)

    assert response.status_code == 201
    assert_valid("delivery_report", response.json)
    assert response.json["package_id"] == package_hash(request["package"])
    assert [d["outcome"] for d in response.json["deliveries"]] == ["failed"]


def test_a_failed_delivery_is_listed_as_a_failed_attempt(client) -> None:
    report = deliver_failed(client)

    response = client.simulate_get(f"{P}/attempts")

    assert response.status_code == 200
    assert_valid("attempt_page", response.json)
    [attempt] = response.json["items"]
    assert attempt["attempt_id"] == report["deliveries"][0]["attempt_id"]
    assert (attempt["outcome"], attempt["lineage_state"]) == ("failed", "failed")


def test_planning_answers_201_with_every_decision(client) -> None:
    deliver_failed(client, "drill-1")
    deliver_failed(client, "drill-2")

    response = post_json(client, f"{P}/retry-plan", {"generated_by": "bob"})

    assert response.status_code == 201
    assert_valid("retry_plan", response.json)
    assert response.json["decision_count"] == 2
    assert len(response.json["retry_decisions"]) == 2


def test_a_plan_holds_suppress_decisions_without_a_window(client, fake) -> None:
    fake.script.append(DeliveryResult(outcome="failed", http_status=400))
    deliver_failed(client)

    response = post_json(client, f"{P}/retry-plan", {"generated_by": "bob"})

    assert response.status_code == 201
    [decision] = response.json["retry_decisions"]
    assert decision["action"] == "suppress"
    assert (decision["not_before"], decision["not_after"]) == (None, None)


def test_a_new_plan_is_served_at_its_location(client) -> None:
    deliver_failed(client)
    created = post_json(client, f"{P}/retry-plan", {"generated_by": "bob"})

    response = client.simulate_get(created.headers["location"])

    assert created.headers["location"] == (
        f"{P}/retry-plans/{created.json['retry_plan_id']}"
    )
    assert response.status_code == 200
    assert response.json == created.json


def test_plans_are_listed_as_summaries(client) -> None:
    deliver_failed(client)
    created = post_json(client, f"{P}/retry-plan", {"generated_by": "bob"}).json

    response = client.simulate_get(f"{P}/retry-plans")

    assert response.status_code == 200
    assert_valid("retry_plan_page", response.json)
    [summary] = response.json["items"]
    assert summary == {k: v for k, v in created.items() if k != "retry_decisions"}


def test_a_dry_run_selects_the_due_retry_and_delivers_nothing(client, fake) -> None:
    report = deliver_failed(client)
    deliveries_before = len(fake.deliveries)

    response = dry_run(client)

    assert response.status_code == 201
    assert_valid("worker_run", response.json)
    assert response.json["dry_run"] is True
    [selected] = response.json["selected_retries"]
    assert selected["lineage_id"] == report["deliveries"][0]["lineage_id"]
    assert selected["outcome"] == "would_deliver"
    assert len(fake.deliveries) == deliveries_before


def test_a_dry_run_leaves_every_lineage_as_it_was(client) -> None:
    deliver_failed(client)
    before = client.simulate_get(f"{P}/attempts").json

    dry_run(client)

    assert client.simulate_get(f"{P}/attempts").json == before


def test_a_worker_run_is_served_at_its_location(client) -> None:
    deliver_failed(client)
    created = dry_run(client)

    response = client.simulate_get(created.headers["location"])

    assert response.status_code == 200
    assert_valid("worker_run", response.json)
    assert response.json == created.json


def test_worker_runs_are_listed_newest_first(client) -> None:
    first = dry_run(client).json
    second = dry_run(client).json

    response = client.simulate_get(f"{P}/worker-runs")

    assert response.status_code == 200
    assert_valid("worker_run_page", response.json)
    assert [run["run_id"] for run in response.json["items"]] == [
        second["run_id"],
        first["run_id"],
    ]


def test_the_dashboard_counts_the_dry_run_and_what_it_selected(client) -> None:
    deliver_failed(client)
    dry_run(client)

    response = client.simulate_get(f"{P}/worker-dashboard")

    assert response.status_code == 200
    assert_valid("dashboard", response.json)
    assert response.json["run_count"] == 1
    assert response.json["dry_run_count"] == 1
    assert response.json["selected_retry_count"] == 1
    assert len(response.json["latest_runs"]) == 1


def test_health_names_the_backend_and_connector_count(client, engine) -> None:
    response = client.simulate_get("/healthz")

    assert response.status_code == 200
    assert_valid("health", response.json)
    assert response.json["database"] == engine.backend
    assert response.json["connector_count"] == 2


def test_imported_attempts_answer_201_with_what_was_recorded(client) -> None:
    package = make_package()
    request = {"packages": [package], "attempts": [imported_attempt(package)]}

    response = post_json(client, f"{P}/attempts", request)

    assert response.status_code == 201
    assert_valid("attempt_import_result", response.json)
    assert response.json["recorded_count"] == 1
    assert response.json["attempts"][0]["source"] == "import"


# -- keyset paging -------------------------------------------------------------


def test_worker_runs_page_without_duplicates_or_gaps(client) -> None:
    created = [dry_run(client).json["run_id"] for _ in range(7)]

    pages = all_pages(client, f"{P}/worker-runs", limit=3)

    listed = [run["run_id"] for page in pages for run in page]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert listed == list(reversed(created))


def test_attempts_with_equal_start_times_page_without_duplicates_or_gaps(
    client,
) -> None:
    packages = [make_package(f"drill-{n}") for n in range(7)]
    started = minutes_ago(30)
    attempts = [
        imported_attempt(p, started_at=started, finished_at=started) for p in packages
    ]
    recorded = post_json(
        client, f"{P}/attempts", {"packages": packages, "attempts": attempts}
    ).json["attempts"]

    pages = all_pages(client, f"{P}/attempts", limit=2)

    listed = [attempt["attempt_id"] for page in pages for attempt in page]
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    assert len(set(listed)) == 7
    assert set(listed) == {attempt["attempt_id"] for attempt in recorded}


def test_retry_plans_page_without_duplicates_or_gaps(client) -> None:
    created = [
        post_json(client, f"{P}/retry-plan", {"generated_by": "bob"}).json
        for _ in range(5)
    ]

    pages = all_pages(client, f"{P}/retry-plans", limit=2)

    listed = [plan["retry_plan_id"] for page in pages for plan in page]
    assert sorted(listed) == sorted(plan["retry_plan_id"] for plan in created)
    assert len(listed) == 5


def test_the_limit_defaults_to_fifty(client) -> None:
    packages = [make_package(f"drill-{n}") for n in range(51)]
    attempts = [imported_attempt(p) for p in packages]
    post_json(client, f"{P}/attempts", {"packages": packages, "attempts": attempts})

    response = client.simulate_get(f"{P}/attempts")

    assert len(response.json["items"]) == 50
    assert response.json["next_cursor"] is not None


# -- filters -------------------------------------------------------------------


@pytest.fixture
def mixed_attempts(client) -> dict[str, dict]:
    """One failed attempt to hook-a, one delivered to hook-b, an hour apart."""
    failed, delivered = make_package("drill-failed"), make_package("drill-delivered")
    request = {
        "packages": [failed, delivered],
        "attempts": [
            imported_attempt(
                failed, started_at=minutes_ago(90), finished_at=minutes_ago(90)
            ),
            imported_attempt(
                delivered,
                connector_id="hook-b",
                outcome="delivered",
                error_class=None,
                http_status=200,
            ),
        ],
    }
    recorded = post_json(client, f"{P}/attempts", request).json["attempts"]
    return {"failed": recorded[0], "delivered": recorded[1]}


def listed_ids(client: testing.TestClient, path: str, **query: str) -> list[str]:
    items = client.simulate_get(path, params=query).json["items"]
    return [item.get("attempt_id") or item.get("run_id") for item in items]


def test_attempts_filter_by_outcome(client, mixed_attempts) -> None:
    ids = listed_ids(client, f"{P}/attempts", outcome="delivered")

    assert ids == [mixed_attempts["delivered"]["attempt_id"]]


def test_attempts_filter_by_connector(client, mixed_attempts) -> None:
    ids = listed_ids(client, f"{P}/attempts", connector_id="hook-a")

    assert ids == [mixed_attempts["failed"]["attempt_id"]]


def test_attempts_filter_by_lineage_state(client, mixed_attempts) -> None:
    ids = listed_ids(client, f"{P}/attempts", lineage_state="recovered")

    assert ids == [mixed_attempts["delivered"]["attempt_id"]]


def test_attempts_filter_by_time_range(client, mixed_attempts) -> None:
    ids = listed_ids(
        client, f"{P}/attempts", since=minutes_ago(120), until=minutes_ago(60)
    )

    assert ids == [mixed_attempts["failed"]["attempt_id"]]


def test_attempts_times_take_any_offset(client, mixed_attempts) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(minutes=60)
    since = an_hour_ago.astimezone(timezone(timedelta(hours=2)))

    ids = listed_ids(client, f"{P}/attempts", since=since.isoformat(timespec="seconds"))

    assert ids == [mixed_attempts["delivered"]["attempt_id"]]


def test_worker_runs_filter_by_dry_run(client) -> None:
    dry = dry_run(client).json
    live = post_json(
        client, f"{P}/worker-run", {"generated_by": "bob", "execute": True}
    )

    dry_ids = listed_ids(client, f"{P}/worker-runs", dry_run="true")
    live_ids = listed_ids(client, f"{P}/worker-runs", dry_run="false")

    assert dry_ids == [dry["run_id"]]
    assert live_ids == [live.json["run_id"]]


def test_worker_runs_filter_by_time(client) -> None:
    dry_run(client)

    ids = listed_ids(
        client, f"{P}/worker-runs", since=stamp(datetime.now(UTC) + timedelta(hours=1))
    )

    assert ids == []


# -- bodies --------------------------------------------------------------------


def test_another_content_type_is_refused_with_415_naming_json(client) -> None:
    response = post_raw(client, f"{P}/worker-run", b"generated_by=bob", "text/plain")

    document = problem_of(response, 415)
    assert "application/json" in document["detail"]


def test_a_missing_content_type_is_refused_with_415(client) -> None:
    response = post_raw(client, f"{P}/worker-run", b'{"generated_by": "bob"}', None)

    problem_of(response, 415)


def test_json_in_another_charset_is_refused_with_415(client) -> None:
    body = '{"generated_by": "bob"}'.encode("utf-16")

    response = post_raw(
        client, f"{P}/worker-run", body, "application/json; charset=utf-16"
    )

    problem_of(response, 415)


def test_json_with_a_utf8_charset_parameter_is_accepted(client) -> None:
    body = b'{"generated_by": "bob"}'

    response = post_raw(
        client, f"{P}/worker-run", body, "application/json; charset=UTF-8"
    )

    assert response.status_code == 201


def test_a_body_over_the_limit_is_refused_with_413(engine) -> None:
    client = testing.TestClient(create_app(engine, max_body_bytes=64))
    body = json.dumps({"generated_by": "b" * 100}).encode()

    response = post_raw(client, f"{P}/worker-run", body)

    problem_of(response, 413)


def test_a_declared_length_over_the_limit_is_refused_before_reading(engine) -> None:
    client = testing.TestClient(create_app(engine, max_body_bytes=64))

    response = client.simulate_post(
        f"{P}/worker-run",
        body=b'{"generated_by": "bob"}',
        headers={"Content-Type": "application/json", "Content-Length": "1000000"},
    )

    problem_of(response, 413)


def test_a_body_at_the_limit_is_accepted(engine) -> None:
    body = json.dumps({"generated_by": "bob"}).encode()
    client = testing.TestClient(create_app(engine, max_body_bytes=len(body)))

    response = post_raw(client, f"{P}/worker-run", body)

    assert response.status_code == 201


@pytest.mark.parametrize(
    "body",
    [b"{", b"", b'{"generated_by": "bob",}', b"{'generated_by': 'bob'}"],
    ids=["unclosed", "empty", "trailing-comma", "single-quotes"],
)
def test_malformed_json_is_refused_with_400_at_the_root(client, body) -> None:
    response = post_raw(client, f"{P}/worker-run", body)

    document = problem_of(response, 400)
    assert pointers(document) == [""]


def test_invalid_utf8_is_refused_with_400_at_the_root(client) -> None:
    response = post_raw(client, f"{P}/worker-run", b'{"generated_by": "b\xff\xfe"}')

    document = problem_of(response, 400)
    assert pointers(document) == [""]
    assert "UTF-8" in document["detail"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_with_400(client, literal) -> None:
    body = f'{{"generated_by": "bob", "retry_policy": {{"jitter": {literal}}}}}'

    response = post_raw(client, f"{P}/retry-plan", body.encode())

    document = problem_of(response, 400)
    assert pointers(document) == [""]


def test_a_number_beyond_float_range_is_refused_with_400(client) -> None:
    body = b'{"generated_by": "bob", "retry_policy": {"jitter": 1e400}}'

    response = post_raw(client, f"{P}/retry-plan", body)

    problem_of(response, 400)


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_refused_with_400(client, body) -> None:
    response = post_raw(client, f"{P}/worker-run", body)

    document = problem_of(response, 400)
    assert pointers(document) == [""]


def test_a_repeated_key_is_refused_with_400(client) -> None:
    body = b'{"generated_by": "bob", "generated_by": "eve"}'

    response = post_raw(client, f"{P}/worker-run", body)

    problem_of(response, 400)


@pytest.mark.parametrize("depth", [40, 5000])
def test_deep_nesting_is_refused_with_400(client, depth) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"generated_by": "bob", "schedule": ' + nested + b"}"

    response = post_raw(client, f"{P}/worker-run", body)

    problem_of(response, 400)


def test_an_unpaired_surrogate_is_refused_with_400_at_its_place(client) -> None:
    body = b'{"generated_by": "bob\\ud800"}'

    response = post_raw(client, f"{P}/worker-run", body)

    document = problem_of(response, 400)
    assert pointers(document) == ["/generated_by"]


def test_a_nul_character_in_a_string_is_refused_with_400_at_its_place(client) -> None:
    body = b'{"generated_by": "bob\\u0000"}'

    response = post_raw(client, f"{P}/worker-run", body)

    document = problem_of(response, 400)
    assert pointers(document) == ["/generated_by"]


@pytest.mark.parametrize(
    "moment",
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "1969-12-31T23:59:59Z"],
)
def test_a_time_outside_the_supported_range_is_refused_with_400(client, moment) -> None:
    package = {**make_package(), "generated_at": moment}

    response = post_json(client, P, delivery_request(package=package))

    document = problem_of(response, 400)
    assert pointers(document) == ["/package/generated_at"]


def test_a_very_long_unknown_field_gets_a_pointer_the_schema_allows(client) -> None:
    request = {"generated_by": "bob", "k" * 5000: 1}

    response = post_json(client, f"{P}/worker-run", request)

    document = problem_of(response, 400)
    assert pointers(document) == [""]


def test_an_unknown_field_is_refused_with_400_naming_it(client) -> None:
    request = {"generated_by": "bob", "colour": "blue"}

    response = post_json(client, f"{P}/worker-run", request)

    document = problem_of(response, 400)
    assert pointers(document) == ["/colour"]


def test_a_missing_field_is_refused_with_400_naming_it(client) -> None:
    response = post_json(client, f"{P}/retry-plan", {})

    document = problem_of(response, 400)
    assert pointers(document) == ["/generated_by"]
    assert document["errors"][0]["reason"] == "required"


def test_a_policy_number_out_of_range_is_refused_with_400_naming_it(client) -> None:
    request = {"generated_by": "bob", "retry_policy": {"jitter": 2}}

    response = post_json(client, f"{P}/retry-plan", request)

    document = problem_of(response, 400)
    assert pointers(document) == ["/retry_policy/jitter"]


def test_an_unknown_connector_is_refused_with_422_naming_it(client) -> None:
    request = delivery_request(connectors=["hook-z"])

    response = post_json(client, P, request)

    document = problem_of(response, 422)
    assert pointers(document) == ["/connectors/0"]


def test_a_disabled_schedule_is_refused_with_409(client) -> None:
    request = {"generated_by": "bob", "schedule": {"enabled": False}}

    response = post_json(client, f"{P}/worker-run", request)

    document = problem_of(response, 409)
    assert pointers(document) == ["/schedule/enabled"]


def test_an_attempt_for_an_unknown_package_is_refused_with_422(client) -> None:
    request = {"attempts": [imported_attempt(make_package())]}

    response = post_json(client, f"{P}/attempts", request)

    document = problem_of(response, 422)
    assert pointers(document) == ["/attempts/0/package_id"]


def test_refused_values_are_not_echoed(client) -> None:
    request = {"generated_by": "bob", "trigger": MARKER, "dry_run": MARKER}

    response = post_json(client, f"{P}/worker-run", request)

    problem_of(response, 400)
    assert MARKER not in response.text


# -- nothing changes after a refusal -------------------------------------------


def test_a_refused_delivery_stores_nothing(client) -> None:
    deliver_failed(client)
    before = stored_counts()

    post_json(client, P, delivery_request(connectors=["hook-a", "hook-z"]))

    assert stored_counts() == before


def test_a_refused_import_stores_none_of_its_attempts(client) -> None:
    good = make_package("drill-good")
    request = {
        "packages": [good],
        "attempts": [imported_attempt(good), imported_attempt(make_package("other"))],
    }
    before = stored_counts()

    response = post_json(client, f"{P}/attempts", request)

    assert response.status_code == 422
    assert stored_counts() == before


def test_a_refused_worker_run_records_no_run(client) -> None:
    dry_run(client)
    before = stored_counts()

    post_json(
        client,
        f"{P}/worker-run",
        {"generated_by": "bob", "schedule": {"enabled": False}},
    )

    assert stored_counts() == before


def test_a_refused_plan_request_stores_no_plan(client) -> None:
    deliver_failed(client)
    before = stored_counts()

    post_json(
        client,
        f"{P}/retry-plan",
        {"generated_by": "bob", "retry_policy": {"jitter": 2}},
    )

    assert stored_counts() == before


# -- query parameters ----------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "501", "ten", "", "-1", "1.5", " 5", "5_0"])
def test_a_bad_limit_is_refused_with_400_naming_it(client, value) -> None:
    response = client.simulate_get(f"{P}/worker-runs", params={"limit": value})

    document = problem_of(response, 400)
    assert parameters(document) == ["limit"]


@pytest.mark.parametrize("value", ["1", "500"])
def test_limits_at_the_bounds_are_accepted(client, value) -> None:
    response = client.simulate_get(f"{P}/attempts", params={"limit": value})

    assert response.status_code == 200


@pytest.mark.parametrize("value", ["yes", "True", "1", ""])
def test_a_bad_boolean_is_refused_with_400_naming_it(client, value) -> None:
    response = client.simulate_get(f"{P}/worker-runs", params={"dry_run": value})

    document = problem_of(response, 400)
    assert parameters(document) == ["dry_run"]


@pytest.mark.parametrize(
    "value", ["2026-01-01T00:00:00", "2026-01-01", "yesterday", "2026-02-30T00:00:00Z"]
)
def test_a_time_without_offset_or_shape_is_refused_with_400(client, value) -> None:
    response = client.simulate_get(f"{P}/attempts", params={"since": value})

    document = problem_of(response, 400)
    assert parameters(document) == ["since"]


def test_an_empty_time_range_is_refused_with_400(client) -> None:
    query = {"since": minutes_ago(10), "until": minutes_ago(20)}

    response = client.simulate_get(f"{P}/worker-runs", params=query)

    document = problem_of(response, 400)
    assert parameters(document) == ["until"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("outcome", "lost"), ("lineage_state", "gone"), ("connector_id", "Hook A")],
)
def test_a_value_outside_its_choices_is_refused_with_400(client, name, value) -> None:
    response = client.simulate_get(f"{P}/attempts", params={name: value})

    document = problem_of(response, 400)
    assert parameters(document) == [name]


def test_a_nul_byte_in_a_query_value_is_refused_with_400(client) -> None:
    response = client.simulate_get(f"{P}/attempts", query_string="outcome=failed%00")

    document = problem_of(response, 400)
    assert parameters(document) == ["outcome"]


def test_an_unknown_parameter_is_refused_with_400_naming_it(client) -> None:
    response = client.simulate_get(f"{P}/worker-runs", params={"colour": "blue"})

    document = problem_of(response, 400)
    assert parameters(document) == ["colour"]


def test_an_unknown_parameter_on_a_post_is_refused_with_400(client) -> None:
    response = client.simulate_post(
        f"{P}/worker-run", json={"generated_by": "bob"}, params={"force": "true"}
    )

    document = problem_of(response, 400)
    assert parameters(document) == ["force"]


def test_a_repeated_parameter_is_refused_with_400(client) -> None:
    response = client.simulate_get(f"{P}/worker-runs", query_string="limit=5&limit=6")

    document = problem_of(response, 400)
    assert parameters(document) == ["limit"]


def test_a_cursor_cavra_did_not_issue_is_refused_with_400(client) -> None:
    response = client.simulate_get(f"{P}/worker-runs", params={"cursor": "bm9wZQ"})

    document = problem_of(response, 400)
    assert parameters(document) == ["cursor"]


def test_a_cursor_of_another_list_is_refused_with_400(client) -> None:
    packages = [make_package(f"drill-{n}") for n in range(2)]
    attempts = [imported_attempt(p) for p in packages]
    post_json(client, f"{P}/attempts", {"packages": packages, "attempts": attempts})
    cursor = client.simulate_get(f"{P}/attempts", params={"limit": "1"}).json[
        "next_cursor"
    ]

    response = client.simulate_get(f"{P}/worker-runs", params={"cursor": cursor})

    document = problem_of(response, 400)
    assert parameters(document) == ["cursor"]


def test_a_cursor_beyond_the_stored_time_range_is_refused_with_400(client) -> None:
    import base64

    raw = f"{10**19}:wr_{'0' * 32}".encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")

    response = client.simulate_get(f"{P}/worker-runs", params={"cursor": cursor})

    document = problem_of(response, 400)
    assert parameters(document) == ["cursor"]


def test_refused_query_values_are_not_echoed(client) -> None:
    response = client.simulate_get(f"{P}/worker-runs", params={"dry_run": MARKER})

    problem_of(response, 400)
    assert MARKER not in response.text


# -- ids, routes and methods ---------------------------------------------------


@pytest.mark.parametrize("collection", ["retry-plans", "worker-runs"])
@pytest.mark.parametrize(
    "item_id",
    ["rp_" + "0" * 32, "wr_" + "0" * 32, "nope", "wr_%00", "rp_" + "0" * 31 + "%00"],
)
def test_an_unknown_or_misshapen_id_is_404(client, collection, item_id) -> None:
    response = client.simulate_get(f"{P}/{collection}/{item_id}")

    document = problem_of(response, 404)
    assert "0" * 31 not in document["detail"]


def test_a_wrong_method_is_405_with_allow(client) -> None:
    response = client.simulate_delete(f"{P}/worker-runs")

    problem_of(response, 405)
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET"}


def test_a_get_on_a_post_only_resource_is_405_with_allow(client) -> None:
    response = client.simulate_get(f"{P}/worker-run")

    problem_of(response, 405)
    assert "POST" in response.headers["allow"]


def test_an_unknown_route_is_a_404_problem(client) -> None:
    response = client.simulate_get(f"{P}/no-such-thing")

    problem_of(response, 404)


def test_the_console_is_404_when_not_built(engine, tmp_path: Path) -> None:
    client = testing.TestClient(create_app(engine, static_dir=tmp_path))

    response = client.simulate_get("/console/")

    document = problem_of(response, 404)
    assert "console" in document["detail"].lower()


def test_the_root_describes_the_api_when_no_console_is_built(
    engine, tmp_path: Path
) -> None:
    client = testing.TestClient(create_app(engine, static_dir=tmp_path))

    response = client.simulate_get("/")

    assert response.status_code == 200
    assert response.json == {"service": "cavra", "api": "/openapi.json"}


def test_the_root_redirects_to_a_built_console(engine, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>console</title>")
    client = testing.TestClient(create_app(engine, static_dir=tmp_path))

    response = client.simulate_get("/")

    assert response.status_code == 302
    assert response.headers["location"] == "/console/"


def test_a_built_console_is_served(engine, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>console</title>")
    client = testing.TestClient(create_app(engine, static_dir=tmp_path))

    response = client.simulate_get("/console/")

    assert response.status_code == 200
    assert "<title>console</title>" in response.text


def test_the_shipped_console_is_served_with_a_same_origin_policy(client) -> None:
    response = client.simulate_get("/console/")

    assert response.status_code == 200
    assert "Evidence Console" in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "unsafe-inline" not in policy


# -- headers and connections ---------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/healthz", f"{P}/worker-runs", f"{P}/no-such-thing", "/openapi.json"]
)
def test_security_headers_are_on_every_json_answer(client, path) -> None:
    response = client.simulate_get(path)

    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-security-policy"] == (
        "default-src 'none'; frame-ancestors 'none'"
    )


def test_the_database_connection_is_closed_after_each_request(client, engine) -> None:
    client.simulate_get(f"{P}/worker-runs")

    assert engine.database.is_closed()


def test_the_connection_is_closed_after_a_failed_request(client, engine) -> None:
    post_json(client, P, delivery_request(connectors=["hook-z"]))

    assert engine.database.is_closed()


# -- failures of the server itself ---------------------------------------------


def break_dashboard(engine: Engine, monkeypatch, error: Exception) -> None:
    def broken(**options: Any) -> dict:
        raise error

    monkeypatch.setattr(engine, "dashboard", broken)


def test_an_output_schema_failure_is_a_500_without_internal_text(
    client, engine, monkeypatch
) -> None:
    break_dashboard(
        engine, monkeypatch, validation.OutputSchemaError(f"dashboard breaks {MARKER}")
    )

    response = client.simulate_get(f"{P}/worker-dashboard")

    document = problem_of(response, 500)
    assert MARKER not in response.text
    assert "errors" not in document


def test_an_unexpected_error_is_a_500_without_internal_text(
    client, engine, monkeypatch
) -> None:
    break_dashboard(engine, monkeypatch, RuntimeError(f"secret {MARKER}"))

    response = client.simulate_get(f"{P}/worker-dashboard")

    problem_of(response, 500)
    assert MARKER not in response.text


def test_an_unexpected_error_logs_its_traceback(
    client, engine, monkeypatch, caplog
) -> None:
    break_dashboard(engine, monkeypatch, RuntimeError("broken on purpose"))

    with caplog.at_level(logging.ERROR, logger="cavra_server"):
        client.simulate_get(f"{P}/worker-dashboard")

    [record] = [r for r in caplog.records if r.name.startswith("cavra_server")]
    assert record.exc_info is not None
    assert "broken on purpose" in str(record.exc_info[1])


# -- the runner ----------------------------------------------------------------


def test_the_runner_prints_one_line_serves_and_stops_on_sigterm(sqlite_url) -> None:
    script = textwrap.dedent(
        f"""
        from cavra_core import Engine
        from cavra_server import create_app, serve

        engine = Engine({sqlite_url!r}, {{}}, load_entry_points=False)
        serve(create_app(engine), host="127.0.0.1", port=0, threads=2)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the server printed nothing within 30 s"
        line = process.stdout.readline().strip()
        port = int(line.rsplit(":", 1)[1])
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/healthz", timeout=10
        ) as r:
            health = json.load(r)

        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert line == f"cavra api listening on http://127.0.0.1:{port}"
    assert health["status"] == "ok"
    assert exit_code == 0
    assert process.stdout.read() == ""


@pytest.mark.parametrize(
    "message",
    [
        "database is locked",
        "deadlock detected\nDETAIL:  Process 1 waits for ShareLock on transaction 2",
        "could not serialize access due to concurrent update",
    ],
)
def test_a_write_lost_to_another_writer_answers_503_with_retry_after(
    client, engine, monkeypatch, message
) -> None:
    def lost(*args, **kwargs):
        raise peewee.OperationalError(message)

    monkeypatch.setattr(engine, "plan_retries", lost)
    response = post_json(client, f"{P}/retry-plan", {"generated_by": "ops"})

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert "send it again" in response.json["detail"].lower()
    assert "deadlock" not in response.text and "serialize" not in response.text
