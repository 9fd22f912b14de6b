"""
Idempotency-Key on POST: replays, refusals and expiry, through the real app.

On SQLite and on PostgreSQL. A request "still running" is simulated with the
``in_progress`` row the first request would have claimed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing
from plugins_fixtures import Clock, FakePlugin, FakeType, failed, package

from cavra_core import Engine, identity, validation
from cavra_core.store import IdempotencyRecord, RetryPlan, WorkerRun
from cavra_server import create_app
from cavra_server.app import P
from cavra_server.idempotency import request_hash, scope_key

PLAN = f"{P}/retry-plan"
PROBLEM_TYPE = "application/problem+json"
KEY = "3f0e0c52-6a43-4b35-9d0e-6c1f2f4e8a10"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake() -> FakeType:
    return FakeType()


@pytest.fixture
def engine(make_engine: Callable[..., Engine], fake: FakeType, clock: Clock) -> Engine:
    return make_engine(
        {"hook-a": {"type": "fake"}},
        plugins=[FakePlugin(fake)],
        load_entry_points=False,
        clock=clock,
    )


@pytest.fixture
def client(engine: Engine, fake: FakeType) -> testing.TestClient:
    fake.script(failed(503))
    with engine.database.connection_context():
        engine.deliver_package(
            {"package": package(), "connectors": ["hook-a"], "generated_by": "rm"}
        )
    return testing.TestClient(create_app(engine))


def post(
    client: testing.TestClient,
    path: str = PLAN,
    body: Any = None,
    key: str | None = KEY,
    **headers: str,
) -> testing.Result:
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.simulate_post(
        path, json={"generated_by": "rm"} if body is None else body, headers=headers
    )


def count(engine: Engine, model: Any) -> int:
    with engine.database.connection_context():
        return model.select().count()


def problem_of(response: testing.Result, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    validation.validator("problem").validate(response.json)
    return response.json


def claim(engine: Engine, body: bytes, *, key: str = KEY, state: str) -> None:
    """The row a first request with ``key`` and ``body`` would have stored."""
    with engine.database.connection_context():
        IdempotencyRecord.create(
            scope_key=scope_key(None, "POST", PLAN, key),
            request_hash=request_hash(body),
            state=state,
            created_at=engine.clock(),
        )


# -- replays -------------------------------------------------------------------


def test_a_repeated_plan_request_gets_the_first_answer(client, engine) -> None:
    first = post(client)

    again = post(client)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json["retry_plan_id"] == first.json["retry_plan_id"]
    assert again.json == first.json
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == "application/json"
    assert again.headers["idempotent-replayed"] == "true"
    assert count(engine, RetryPlan) == 1


def test_the_first_answer_is_not_marked_replayed(client) -> None:
    response = post(client)

    assert "idempotent-replayed" not in response.headers


def test_a_body_sent_again_in_another_spelling_is_the_same_body(client) -> None:
    first = post(client, body={"generated_by": "rm", "retry_policy": {}})

    again = client.simulate_post(
        PLAN,
        body=b'{ "retry_policy" : { } ,\n "generated_by" : "rm" }',
        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
    )

    assert again.json["retry_plan_id"] == first.json["retry_plan_id"]
    assert again.headers["idempotent-replayed"] == "true"


def test_a_number_sent_again_in_another_spelling_is_the_same_body(client) -> None:
    """0 and 0.0 are one value to the API, so they are one body to the key."""
    first = client.simulate_post(
        PLAN,
        body=b'{"generated_by": "rm", "retry_policy": {"jitter": 0}}',
        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
    )

    again = client.simulate_post(
        PLAN,
        body=b'{"generated_by": "rm", "retry_policy": {"jitter": 0.0}}',
        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
    )

    assert first.status_code == 201, first.text
    assert again.json["retry_plan_id"] == first.json["retry_plan_id"]
    assert again.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b'{"n": 0}', b'{"n": 0.0}'),
        (b'{"n": 0}', b'{"n": -0.0}'),
        (b'{"n": 0}', b'{"n": 0e0}'),
        (b'{"n": 100}', b'{"n": 1E2}'),
        (b'{"n": 1.5}', b'{"n": 1.50}'),
        (b'{"n": 0.1}', b'{"n": 1e-1}'),
        (b'{"n": [2, {"m": 3}]}', b'{"n": [2.0, {"m": 3.000}]}'),
    ],
)
def test_numbers_of_one_value_hash_the_same(one: bytes, other: bytes) -> None:
    assert request_hash(one) == request_hash(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (b'{"n": 0}', b'{"n": 0.5}'),
        (b'{"n": 1}', b'{"n": true}'),
        (b'{"n": 1}', b'{"n": "1"}'),
        (b'{"n": 10000000000000000000000001}', b'{"n": 1e25}'),
    ],
)
def test_numbers_of_other_values_hash_differently(one: bytes, other: bytes) -> None:
    assert request_hash(one) != request_hash(other)


def test_a_repeated_delivery_delivers_once(client, fake) -> None:
    body = {"package": package("drill-2"), "connectors": ["hook-a"]}
    body["generated_by"] = "rm"

    first = post(client, P, body)
    again = post(client, P, body)

    assert first.status_code == 201
    assert again.json == first.json
    assert len(fake.deliveries) == 2  # the client fixture's delivery and this one


def test_a_repeated_worker_run_records_one_run(client, engine) -> None:
    first = post(client, f"{P}/worker-run", {"generated_by": "po"})

    again = post(client, f"{P}/worker-run", {"generated_by": "po"})

    assert first.status_code == 201
    assert again.json["run_id"] == first.json["run_id"]
    assert count(engine, WorkerRun) == 1


def test_an_answer_below_500_is_replayed_too(client) -> None:
    first = post(client, body={"generated_by": "rm", "surprise": 1})

    again = post(client, body={"generated_by": "rm", "surprise": 1})

    problem_of(first, 400)
    problem_of(again, 400)
    assert again.json == first.json
    assert again.headers["idempotent-replayed"] == "true"


def test_without_a_key_every_request_is_made_again(client, engine) -> None:
    post(client, key=None)

    post(client, key=None)

    assert count(engine, RetryPlan) == 2
    assert count(engine, IdempotencyRecord) == 0


def test_a_key_on_a_read_is_ignored(client, engine) -> None:
    response = client.simulate_get(f"{P}/retry-plans", headers={"Idempotency-Key": KEY})

    assert response.status_code == 200
    assert count(engine, IdempotencyRecord) == 0


def test_one_key_on_two_paths_is_two_keys(client, engine) -> None:
    plan = post(client)

    run = post(client, f"{P}/worker-run", {"generated_by": "po"})

    assert (plan.status_code, run.status_code) == (201, 201)
    assert "idempotent-replayed" not in run.headers


def test_one_key_of_two_callers_is_two_keys(client, engine) -> None:
    with engine.database.connection_context():
        alice, _ = identity.create_token("alice", "release_manager")
        bob, _ = identity.create_token("bob", "release_manager")

    first = post(client, Authorization=f"Bearer {alice}")
    second = post(client, Authorization=f"Bearer {bob}")
    again = post(client, Authorization=f"Bearer {alice}")

    assert second.json["retry_plan_id"] != first.json["retry_plan_id"]
    assert again.json["retry_plan_id"] == first.json["retry_plan_id"]
    assert count(engine, RetryPlan) == 2


def test_a_replay_still_needs_a_token_of_a_role_that_may_call(client, engine) -> None:
    with engine.database.connection_context():
        manager, _ = identity.create_token("alice", "release_manager")
    post(client, Authorization=f"Bearer {manager}")

    without = post(client)

    problem_of(without, 401)


# -- refusals ------------------------------------------------------------------


def test_the_same_key_with_another_body_is_refused_with_422(client, engine) -> None:
    post(client, body={"generated_by": "rm"})

    response = post(client, body={"generated_by": "someone-else"})

    problem = problem_of(response, 422)
    assert "Idempotency-Key" in problem["detail"]
    assert problem["errors"][0]["parameter"] == "Idempotency-Key"
    assert count(engine, RetryPlan) == 1


def test_the_same_key_while_the_first_request_runs_is_refused_with_409(
    client, engine
) -> None:
    claim(engine, b'{"generated_by": "rm"}', state="in_progress")

    response = post(client)

    problem = problem_of(response, 409)
    assert "Idempotency-Key" in problem["detail"]
    assert count(engine, RetryPlan) == 0


def test_another_body_while_the_first_request_runs_is_refused_with_422(
    client, engine
) -> None:
    claim(engine, b'{"generated_by": "other"}', state="in_progress")

    response = post(client)

    problem_of(response, 422)


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("k" * 201, "longer than 200"),
        ("tab\there", "control character"),
        ("bell\x07", "control character"),
        ("del\x7f", "control character"),
    ],
)
def test_a_malformed_key_is_refused_with_400_naming_the_header(
    client, engine, key, says
) -> None:
    response = post(client, key=key)

    problem = problem_of(response, 400)
    assert "Idempotency-Key" in problem["detail"] and says in problem["detail"]
    assert problem["errors"][0]["parameter"] == "Idempotency-Key"
    assert count(engine, RetryPlan) == 0


def test_a_key_of_200_characters_is_accepted(client) -> None:
    response = post(client, key="k" * 200)

    assert response.status_code == 201


# -- failures and expiry -------------------------------------------------------


def test_a_failed_request_releases_its_key(client, engine, monkeypatch) -> None:
    def broken(*arguments: Any, **options: Any) -> None:
        raise RuntimeError("the store went away")

    with monkeypatch.context() as patched:
        patched.setattr(engine, "plan_retries", broken)
        failed_answer = post(client)

    retried = post(client)

    problem_of(failed_answer, 500)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers


def test_a_key_is_kept_for_24_hours(client, clock) -> None:
    first = post(client)
    clock.advance(hours=23, minutes=59)

    again = post(client)

    assert again.json["retry_plan_id"] == first.json["retry_plan_id"]


def test_an_expired_key_starts_a_new_request(client, engine, clock) -> None:
    first = post(client, body={"generated_by": "rm"})
    clock.advance(hours=24, seconds=1)

    second = post(client, body={"generated_by": "another"})

    assert second.status_code == 201
    assert second.json["retry_plan_id"] != first.json["retry_plan_id"]
    assert "idempotent-replayed" not in second.headers
    assert count(engine, IdempotencyRecord) == 1


def test_expired_keys_are_purged(engine, fake, clock) -> None:
    client = testing.TestClient(create_app(engine))
    post(client, key="old-1")
    post(client, key="old-2")
    clock.advance(hours=25)

    post(client, key="new")

    with engine.database.connection_context():
        kept = [row.created_at for row in IdempotencyRecord.select()]
    assert kept == [clock()]


def test_an_in_progress_claim_older_than_24_hours_is_replaced(
    client, engine, clock
) -> None:
    claim(engine, b'{"generated_by": "rm"}', state="in_progress")
    clock.advance(hours=24, minutes=1)

    response = post(client)

    assert response.status_code == 201


# -- the body ------------------------------------------------------------------


def test_a_body_is_read_once_for_the_key_and_the_request(engine) -> None:
    body = b'{"generated_by": "rm"}'
    client = testing.TestClient(create_app(engine, max_body_bytes=len(body)))

    response = client.simulate_post(
        PLAN,
        body=body,
        headers={"Idempotency-Key": KEY, "Content-Type": "application/json"},
    )

    assert response.status_code == 201


def test_a_body_over_the_limit_is_refused_with_413_and_claims_nothing(
    engine,
) -> None:
    client = testing.TestClient(create_app(engine, max_body_bytes=64))

    response = post(client, body={"generated_by": "x" * 100})

    problem_of(response, 413)
    assert count(engine, IdempotencyRecord) == 0


def test_another_media_type_is_still_refused_with_415(client) -> None:
    response = client.simulate_post(
        PLAN,
        body=b'{"generated_by": "rm"}',
        headers={"Idempotency-Key": KEY, "Content-Type": "text/plain"},
    )

    problem_of(response, 415)


def test_bodies_that_do_not_parse_are_compared_by_their_bytes() -> None:
    assert request_hash(b"{not json") == request_hash(b"{not json")
    assert request_hash(b"{not json") != request_hash(b"{not json ")
    assert request_hash(b'{"a": 1, "b": 2}') == request_hash(b'{"b":2,"a":1}')
    assert request_hash(b"\xff\xfe") != request_hash(b'{"a": 1}')


def test_a_scope_names_caller_method_path_and_key() -> None:
    base = scope_key("tok_1", "POST", PLAN, KEY)

    assert (
        len(
            {
                base,
                scope_key(None, "POST", PLAN, KEY),
                scope_key("tok_1", "PUT", PLAN, KEY),
                scope_key("tok_1", "POST", P, KEY),
                scope_key("tok_1", "POST", PLAN, KEY + "x"),
            }
        )
        == 5
    )
    assert base == scope_key("tok_1", "POST", PLAN, KEY)


def test_stored_answers_keep_no_token(client, engine) -> None:
    with engine.database.connection_context():
        token, _ = identity.create_token("alice", "release_manager")
    post(client, Authorization=f"Bearer {token}")

    with engine.database.connection_context():
        rows = [list(row) for row in IdempotencyRecord.select().tuples()]

    assert rows and token not in repr(rows)


def test_a_replay_after_the_store_moved_on_is_the_stored_answer(
    client, engine, clock
) -> None:
    first = post(client)
    clock.advance(minutes=5)
    post(client, key="another")

    again = post(client)

    assert again.json == first.json
    assert count(engine, RetryPlan) == 2
