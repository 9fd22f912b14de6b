"""
The console's API: the session, one lineage, attempt filters and activity.

Through the real Falcon app, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from falcon import testing
from plugins_fixtures import (
    T0,
    Clock,
    FakePlugin,
    FakeType,
    package,
    plan_request,
    record_failure,
    record_success,
    rfc3339,
)

from cavra_core import Engine, InvalidInput, identity, lineages, validation
from cavra_core.identity import ROLES
from cavra_server import create_app
from cavra_server.app import P
from cavra_server.auth import PERMISSIONS, PUBLIC_OPERATIONS

PROBLEM_TYPE = "application/problem+json"
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
#: When the engine's clock says the requests are made.
NOW = T0 + 2 * HOUR
CONNECTORS = {
    "hook-a": {"type": "fake"},
    "hook-b": {"type": "fake"},
    "hook-twice": {"type": "fake", "retry_policy": {"max_retry_attempts": 2}},
}


@pytest.fixture
def engine(make_engine) -> Engine:
    return make_engine(
        CONNECTORS,
        plugins=[FakePlugin(FakeType("fake"))],
        load_entry_points=False,
        clock=Clock(NOW),
    )


@pytest.fixture
def client(engine: Engine) -> testing.TestClient:
    return testing.TestClient(create_app(engine))


@pytest.fixture
def store(engine: Engine):
    """
    The engine for calls outside requests; its connection is opened again
    on the next query after a request closed it.
    """
    engine.database.connect(reuse_if_open=True)
    yield engine
    engine.close()


@pytest.fixture
def tokens(store: Engine) -> dict[str, str]:
    """One token per role: role -> token."""
    return {
        role: identity.create_token(f"{role}-token", role, NOW)[0] for role in ROLES
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem_of(response: testing.Result, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    validation.validator("problem").validate(response.json)
    return response.json


def parameters(document: dict[str, Any]) -> list[str]:
    return [entry["parameter"] for entry in document.get("errors", [])]


def operation_ids(client: testing.TestClient) -> list[str]:
    document = client.simulate_get("/openapi.json").json
    return sorted(
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    )


def get_operation_ids(client: testing.TestClient) -> list[str]:
    document = client.simulate_get("/openapi.json").json
    return sorted(
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method == "get"
    )


def lineage(client: testing.TestClient, lineage_id: str) -> dict[str, Any]:
    response = client.simulate_get(f"{P}/lineages/{lineage_id}")
    assert response.status_code == 200, response.text
    validation.validator("lineage").validate(response.json)
    return response.json


def activity(client: testing.TestClient, **query: str) -> dict[str, Any]:
    response = client.simulate_get(f"{P}/attempt-activity", params=query)
    assert response.status_code == 200, response.text
    validation.validator("attempt_activity").validate(response.json)
    return response.json


def buckets_of(document: dict[str, Any], connector_id: str) -> list[tuple]:
    (found,) = [c for c in document["connectors"] if c["connector_id"] == connector_id]
    return [
        (b["start"], b["failed"], b["delivered"], b["recovered"])
        for b in found["buckets"]
    ]


# -- the session ---------------------------------------------------------------------


def test_session_without_tokens_allows_every_operation(client) -> None:
    response = client.simulate_get(f"{P}/session")

    assert response.status_code == 200
    assert response.json == {
        "tokens_required": False,
        "authenticated": False,
        "actor": None,
        "role": None,
        "allowed_operations": operation_ids(client),
    }


def test_session_with_tokens_and_no_header_lists_the_public_operations(
    client, tokens
) -> None:
    response = client.simulate_get(f"{P}/session")

    assert response.status_code == 200
    assert response.json["tokens_required"] is True
    assert response.json["authenticated"] is False
    assert response.json["allowed_operations"] == sorted(PUBLIC_OPERATIONS)


@pytest.mark.parametrize("role", sorted(ROLES))
def test_session_with_a_token_shows_the_operations_of_its_role(
    client, tokens, role
) -> None:
    response = client.simulate_get(f"{P}/session", headers=bearer(tokens[role]))

    assert response.status_code == 200
    session = response.json
    assert (session["authenticated"], session["actor"], session["role"]) == (
        True,
        f"{role}-token",
        role,
    )
    expected = sorted(op for op, roles in PERMISSIONS.items() if role in roles)
    assert session["allowed_operations"] == expected


def test_session_operations_match_what_the_role_may_call(client, tokens) -> None:
    """An auditor may call every read and nothing else; an admin everything."""
    auditor = client.simulate_get(f"{P}/session", headers=bearer(tokens["auditor"]))
    admin = client.simulate_get(f"{P}/session", headers=bearer(tokens["admin"]))

    assert auditor.json["allowed_operations"] == get_operation_ids(client)
    assert admin.json["allowed_operations"] == operation_ids(client)


def test_a_role_may_not_call_what_its_session_leaves_out(client, tokens) -> None:
    session = client.simulate_get(f"{P}/session", headers=bearer(tokens["auditor"]))

    refused = client.simulate_post(
        f"{P}/retry-plan", json={}, headers=bearer(tokens["auditor"])
    )

    assert "planRetries" not in session.json["allowed_operations"]
    problem_of(refused, 403)


@pytest.mark.parametrize(
    "header",
    ["Bearer cavra_not-a-token", "Basic dXNlcjpwYXNz", "Bearer", "cavra_bare"],
    ids=["unknown", "basic", "empty", "no-scheme"],
)
def test_session_refuses_a_presented_token_that_is_not_valid(
    client, tokens, header
) -> None:
    response = client.simulate_get(f"{P}/session", headers={"Authorization": header})

    problem_of(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="cavra"'


def test_session_refuses_a_revoked_token(client, tokens) -> None:
    identity.revoke_token("auditor-token", NOW)

    response = client.simulate_get(f"{P}/session", headers=bearer(tokens["auditor"]))

    problem_of(response, 401)


def test_session_refuses_a_token_when_none_is_configured(client) -> None:
    response = client.simulate_get(f"{P}/session", headers=bearer("cavra_never-issued"))

    problem_of(response, 401)


@pytest.mark.parametrize(
    "path", ["/attempt-activity", "/lineages/lin_" + "0" * 32], ids=["activity", "lin"]
)
def test_new_reads_need_a_token_once_tokens_exist(client, tokens, path) -> None:
    without = client.simulate_get(P + path)
    auditor = client.simulate_get(P + path, headers=bearer(tokens["auditor"]))

    problem_of(without, 401)
    assert auditor.status_code in (200, 404)
    assert auditor.status_code != 401


# -- one lineage ---------------------------------------------------------------------


def test_a_failed_lineage_shows_the_decision_a_plan_would_make_now(
    client, store
) -> None:
    lineage_id = record_failure(store, T0)
    made = store.plan_retries(plan_request(), now=NOW)
    (planned,) = store.iter_plan_decisions(made["retry_plan_id"])

    found = lineage(client, lineage_id)

    expected = {key: value for key, value in planned.items() if key != "decision_id"}
    assert found["decision"] == expected
    assert found["decision"]["action"] == "retry"
    assert found["latest_plan_decision"] == {
        "retry_plan_id": made["retry_plan_id"],
        "generated_at": made["generated_at"],
        "decision": planned,
    }


def test_a_lineage_lists_its_facts_and_attempts_oldest_first(client, store) -> None:
    evidence = package("drill-7")
    lineage_id = record_failure(store, T0, evidence=evidence)
    record_failure(store, T0 + 20 * MINUTE, evidence=evidence)

    found = lineage(client, lineage_id)

    assert found["drill_id"] == "drill-7"
    assert (found["connector_id"], found["connector_type"]) == ("hook-a", "fake")
    assert (found["state"], found["attempt_count"]) == ("failed", 2)
    # Imported attempts start a second before they finish.
    assert found["first_attempt_at"] == rfc3339(T0 - timedelta(seconds=1))
    assert found["last_attempt_at"] == rfc3339(T0 + 20 * MINUTE)
    assert [a["attempt_number"] for a in found["attempts"]] == [1, 2]
    assert {a["lineage_state"] for a in found["attempts"]} == {"failed"}
    assert found["attempts_truncated"] is False
    assert found["latest_plan_decision"] is None


def test_a_recovered_lineage_has_no_decision_now(client, store) -> None:
    lineage_id = record_failure(store, T0)
    store.plan_retries(plan_request(), now=T0 + 20 * MINUTE)
    record_success(store, T0 + 30 * MINUTE)

    found = lineage(client, lineage_id)

    assert found["state"] == "recovered"
    assert found["decision"] is None
    assert found["latest_plan_decision"]["decision"]["action"] == "retry"
    assert [a["outcome"] for a in found["attempts"]] == ["failed", "delivered"]


def test_an_exhausted_lineage_is_decided_as_suppressed(client, store) -> None:
    lineage_id = record_failure(store, T0, connector_id="hook-twice")
    record_failure(store, T0 + 20 * MINUTE, connector_id="hook-twice")

    found = lineage(client, lineage_id)

    assert found["state"] == "exhausted"
    assert (found["decision"]["action"], found["decision"]["reason"]) == (
        "suppress",
        "max_attempts_reached",
    )


def test_the_newest_plan_gives_the_latest_plan_decision(client, store) -> None:
    lineage_id = record_failure(store, T0)
    store.plan_retries(plan_request(), now=T0 + 5 * MINUTE)
    newest = store.plan_retries(plan_request(), now=T0 + 30 * MINUTE)

    found = lineage(client, lineage_id)

    assert found["latest_plan_decision"]["retry_plan_id"] == newest["retry_plan_id"]
    assert found["latest_plan_decision"]["decision"]["reason"] == "retry_due"


def test_a_long_lineage_keeps_its_newest_attempts(client, store, monkeypatch) -> None:
    monkeypatch.setattr(lineages, "MAX_ATTEMPTS", 2)
    lineage_id = record_failure(store, T0, connector_id="hook-b")
    record_failure(store, T0 + 20 * MINUTE, connector_id="hook-b")
    record_failure(store, T0 + 40 * MINUTE, connector_id="hook-b")

    found = lineage(client, lineage_id)

    assert [a["attempt_number"] for a in found["attempts"]] == [2, 3]
    assert found["attempts_truncated"] is True
    assert found["attempt_count"] == 3


@pytest.mark.parametrize(
    "lineage_id", ["lin_" + "0" * 32, "lin_XYZ", "att_" + "0" * 32], ids=str
)
def test_an_unknown_lineage_is_404(client, lineage_id) -> None:
    response = client.simulate_get(f"{P}/lineages/{lineage_id}")

    problem_of(response, 404)


def test_a_lineage_takes_no_query_parameters(client, store) -> None:
    lineage_id = record_failure(store, T0)

    response = client.simulate_get(f"{P}/lineages/{lineage_id}", params={"x": "1"})

    assert parameters(problem_of(response, 400)) == ["x"]


# -- attempts by error class and lineage ----------------------------------------------


def test_attempts_filter_by_error_class(client, store) -> None:
    record_failure(store, T0, status=503)
    record_failure(store, T0, status=None, evidence=package("drill-2"))

    response = client.simulate_get(f"{P}/attempts", params={"error_class": "timeout"})

    assert response.status_code == 200
    assert [a["error_class"] for a in response.json["items"]] == ["timeout"]


def test_attempts_filter_by_lineage(client, store) -> None:
    wanted = record_failure(store, T0)
    record_failure(store, T0 + 20 * MINUTE)
    record_failure(store, T0, evidence=package("drill-2"))

    response = client.simulate_get(f"{P}/attempts", params={"lineage_id": wanted})

    assert response.status_code == 200
    items = response.json["items"]
    assert [(a["lineage_id"], a["attempt_number"]) for a in items] == [
        (wanted, 2),
        (wanted, 1),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("error_class", "HTTP_STATUS"),
        ("error_class", "1bad"),
        ("error_class", "a" * 51),
        ("lineage_id", "lin_123"),
        ("lineage_id", "att_" + "0" * 32),
    ],
)
def test_a_bad_attempt_filter_is_refused_with_400_naming_it(
    client, name, value
) -> None:
    response = client.simulate_get(f"{P}/attempts", params={name: value})

    assert parameters(problem_of(response, 400)) == [name]


# -- attempt activity ---------------------------------------------------------------


def test_activity_counts_each_attempt_in_its_bucket(client, store) -> None:
    """Attempts at 12:00, 12:20 and 12:40 (a retry delivered) in 30-minute buckets."""
    record_failure(store, T0 + 1 * MINUTE)
    record_failure(store, T0 + 20 * MINUTE)
    record_success(store, T0 + 40 * MINUTE)
    record_success(store, T0 + 45 * MINUTE, evidence=package("drill-2"))

    found = activity(
        client,
        since="2026-06-01T11:45:00Z",
        until="2026-06-01T13:10:00Z",
        bucket_minutes="30",
    )

    assert (found["since"], found["until"], found["bucket_minutes"]) == (
        "2026-06-01T11:30:00Z",
        "2026-06-01T13:30:00Z",
        30,
    )
    # Attempts start one second before they finish: 12:00:00, 12:19:00...
    assert buckets_of(found, "hook-a") == [
        ("2026-06-01T11:30:00Z", 0, 0, 0),
        ("2026-06-01T12:00:00Z", 2, 0, 0),
        ("2026-06-01T12:30:00Z", 0, 2, 1),
        ("2026-06-01T13:00:00Z", 0, 0, 0),
    ]
    assert buckets_of(found, "hook-b") == [
        (start, 0, 0, 0) for start, *_ in buckets_of(found, "hook-a")
    ]


def test_activity_buckets_are_aligned_on_the_epoch(client, store) -> None:
    """Seven-minute buckets start at multiples of seven minutes since 1970."""
    found = activity(
        client,
        since="2026-06-01T12:00:00Z",
        until="2026-06-01T12:20:00Z",
        bucket_minutes="7",
    )

    width = 7 * 60
    starts = [
        datetime.fromisoformat(start) for start, *_ in buckets_of(found, "hook-a")
    ]
    assert all(int(start.timestamp()) % width == 0 for start in starts)
    assert starts[0] <= T0 < starts[0] + timedelta(seconds=width)
    assert starts[-1] + timedelta(seconds=width) >= T0 + 20 * MINUTE
    assert found["until"] == rfc3339(starts[-1] + timedelta(seconds=width))


def test_activity_widens_an_offset_time_to_the_utc_bucket(client, store) -> None:
    record_failure(store, T0 + 10 * MINUTE)

    found = activity(
        client,
        since="2026-06-01T14:05:00+02:00",
        until="2026-06-01T15:00:00+02:00",
        bucket_minutes="60",
    )

    assert buckets_of(found, "hook-a") == [("2026-06-01T12:00:00Z", 1, 0, 0)]


def test_activity_defaults_to_the_last_24_hours_in_hour_buckets(client, store) -> None:
    record_failure(store, NOW - 30 * MINUTE)
    old = package("drill-old", generated_at=NOW - 26 * HOUR)
    record_failure(store, NOW - 25 * HOUR, evidence=old)

    found = activity(client)

    assert found["bucket_minutes"] == 60
    assert (found["since"], found["until"]) == (
        rfc3339(NOW - 24 * HOUR),
        rfc3339(NOW),
    )
    counts = buckets_of(found, "hook-a")
    assert len(counts) == 24
    assert sum(failed for _, failed, _, _ in counts) == 1
    assert counts[-1] == (rfc3339(NOW - HOUR), 1, 0, 0)


def test_activity_since_defaults_to_a_day_before_until(client) -> None:
    found = activity(client, until="2026-05-20T00:00:00Z", bucket_minutes="120")

    assert found["since"] == "2026-05-19T00:00:00Z"
    assert len(buckets_of(found, "hook-a")) == 12


def test_activity_for_one_connector_lists_only_it(client, store) -> None:
    record_failure(store, NOW - 10 * MINUTE, connector_id="hook-b")
    record_failure(store, NOW - 10 * MINUTE)

    found = activity(client, connector_id="hook-b", bucket_minutes="1440")

    assert [c["connector_id"] for c in found["connectors"]] == ["hook-b"]
    assert sum(b[1] for b in buckets_of(found, "hook-b")) == 1


def test_activity_lists_a_connector_no_longer_configured(make_engine) -> None:
    before = make_engine(
        {**CONNECTORS, "hook-gone": {"type": "fake"}},
        plugins=[FakePlugin(FakeType("fake"))],
        load_entry_points=False,
    )
    with before.database.connection_context():
        record_failure(before, NOW - 10 * MINUTE, connector_id="hook-gone")
    after = make_engine(
        CONNECTORS,
        plugins=[FakePlugin(FakeType("fake"))],
        load_entry_points=False,
        clock=Clock(NOW),
    )

    found = activity(testing.TestClient(create_app(after)))

    assert [c["connector_id"] for c in found["connectors"]] == [
        "hook-a",
        "hook-b",
        "hook-gone",
        "hook-twice",
    ]


def test_activity_holds_at_most_500_buckets(client) -> None:
    found = activity(
        client,
        since="2026-01-01T00:00:00Z",
        until="2026-01-01T08:20:00Z",
        bucket_minutes="1",
    )

    assert len(found["connectors"][0]["buckets"]) == 500


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"bucket_minutes": "0"}, "bucket_minutes"),
        ({"bucket_minutes": "1441"}, "bucket_minutes"),
        ({"bucket_minutes": "-5"}, "bucket_minutes"),
        ({"bucket_minutes": "1.5"}, "bucket_minutes"),
        ({"bucket_minutes": "sixty"}, "bucket_minutes"),
        ({"bucket_minutes": "1"}, "bucket_minutes"),
        (
            {
                "since": "2026-01-01T00:00:00Z",
                "until": "2026-01-01T08:21:00Z",
                "bucket_minutes": "1",
            },
            "bucket_minutes",
        ),
        ({"since": "2026-06-01T12:00:00"}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"since": rfc3339(NOW + HOUR)}, "since"),
        (
            {"since": "2026-06-01T12:00:00Z", "until": "2026-06-01T12:00:00Z"},
            "until",
        ),
        ({"connector_id": "Hook A"}, "connector_id"),
        ({"limit": "5"}, "limit"),
    ],
    ids=str,
)
def test_bad_activity_queries_are_refused_with_400_naming_the_parameter(
    client, query, name
) -> None:
    response = client.simulate_get(f"{P}/attempt-activity", params=query)

    document = problem_of(response, 400)
    assert document["type"].endswith("/invalid-query")
    assert parameters(document) == [name]


def test_activity_refuses_naive_times_from_embedding_code(store) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.lineages.activity(since=datetime(2026, 6, 1))

    assert caught.value.problems[0].parameter == "since"


def test_activity_takes_now_for_its_default_range(store) -> None:
    record_failure(store, T0 + 5 * MINUTE)

    found = store.lineages.activity(now=T0 + 30 * MINUTE, bucket_minutes=30)

    assert found["until"] == rfc3339(T0 + 30 * MINUTE)
    assert found["connectors"][0]["buckets"][-1]["failed"] == 1


def test_activity_reads_a_range_of_an_index(sqlite_url) -> None:
    """SQLite's plan for the query enters the started_at indexes, never scans."""
    with Engine(sqlite_url, {}, load_entry_points=False) as engine:
        first = int(T0.astimezone(UTC).timestamp()) * 1_000_000
        for connector_id in (None, "hook-a"):
            query = lineages.bucket_query(connector_id, first, first + 10**9, 10**8)
            sql, params = query.sql()

            with engine.database.connection_context():
                plan = engine.database.execute_sql(
                    "EXPLAIN QUERY PLAN " + sql, params
                ).fetchall()

            steps = [row[-1] for row in plan if row[-1].startswith(("SCAN", "SEARCH"))]
            assert len(steps) == 1, plan
            assert steps[0].startswith("SEARCH") and "USING INDEX" in steps[0]
            assert "started_at>? AND started_at<?" in steps[0], plan
