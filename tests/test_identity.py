"""
API tokens and roles: the store's tokens, the API's checks, the command line.

Through the real Falcon app on SQLite and on PostgreSQL, and with real
``cavra`` processes for the refusal to serve the network without a token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from plugins_fixtures import Clock, FakePlugin, FakeType, attempt, failed, package

from cavra_core import Engine, identity, redaction, validation
from cavra_core.engine import package_hash
from cavra_core.errors import Conflict, InvalidInput, NotFound
from cavra_core.store import MODELS, ApiToken, RetryPlan
from cavra_server import auth, create_app
from cavra_server.app import P
from cavra_server.cli import main

PROBLEM_TYPE = "application/problem+json"
TOKEN = re.compile(r"cavra_[A-Za-z0-9_-]{43}")
ROLES = list(identity.ROLES)


# -- fixtures and helpers ------------------------------------------------------


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
def store(engine: Engine) -> Iterator[Engine]:
    """The engine with its database connected, for calls outside requests."""
    with engine.database.connection_context():
        yield engine


@pytest.fixture
def client(engine: Engine) -> testing.TestClient:
    return testing.TestClient(create_app(engine))


@pytest.fixture
def tokens(engine: Engine, clock: Clock) -> dict[str, str]:
    """One token per role, named after it: role -> token."""
    with engine.database.connection_context():
        return {
            role: identity.create_token(f"{role}-token", role, clock())[0]
            for role in ROLES
        }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def problem_of(response: testing.Result, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_TYPE
    validation.validator("problem").validate(response.json)
    return response.json


def fail_one_delivery(engine: Engine, fake: FakeType, drill: str = "drill-1") -> None:
    fake.script(failed(503))
    with engine.database.connection_context():
        engine.deliver_package(
            {"package": package(drill), "connectors": ["hook-a"], "generated_by": "rm"}
        )


def app_operations(client: testing.TestClient) -> list[tuple[str, str, str]]:
    """(method, path, operation id) of every operation the app serves."""
    document = client.simulate_get("/openapi.json").json
    return [
        (method.upper(), path, operation["operationId"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    ]


def concrete(path: str) -> str:
    """A path of the template with every {field} filled in with a made-up id."""
    return re.sub(r"\{[^}]+\}", "x_00000000000000000000000000000000", path)


def mutating_operations(client: testing.TestClient) -> list[tuple[str, str, str]]:
    return [op for op in app_operations(client) if op[0] != "GET"]


def call(
    client: testing.TestClient, method: str, path: str, token: str | None = None
) -> testing.Result:
    headers = bearer(token) if token else {}
    if method == "GET":
        return client.simulate_get(concrete(path), headers=headers)
    return client.simulate_request(
        method, concrete(path), json={"generated_by": "someone"}, headers=headers
    )


# -- tokens in the store -------------------------------------------------------


def test_a_new_token_is_shown_once_and_kept_only_as_its_digest(store, clock) -> None:
    token, document = identity.create_token("alice", "auditor", clock())

    row = ApiToken.get_by_id(document["token_id"])
    assert TOKEN.fullmatch(token)
    assert re.fullmatch(r"tok_[0-9a-f]{32}", document["token_id"])
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in json.dumps(document)
    assert (row.name, row.role, row.revoked_at) == ("alice", "auditor", None)


def test_tokens_are_listed_without_hashes(store, clock) -> None:
    identity.create_token("alice", "auditor", clock())
    identity.create_token("bob", "admin", clock.advance(seconds=1))

    listed = identity.list_tokens()

    assert [(t["name"], t["role"]) for t in listed] == [
        ("alice", "auditor"),
        ("bob", "admin"),
    ]
    assert all(
        set(t) == {"token_id", "name", "role", "created_at", "revoked_at"}
        for t in listed
    )


def test_a_token_authenticates_as_its_name_and_role(store, clock) -> None:
    token, _ = identity.create_token("alice", "platform_owner", clock())

    actor = identity.authenticate(token)

    assert actor == identity.Actor("alice", True, "platform_owner")


@pytest.mark.parametrize(
    "text", ["", "cavra_", "cavra_not-a-token", "Bearer x", "cavra_" + "a" * 500]
)
def test_other_texts_do_not_authenticate(store, clock, text) -> None:
    identity.create_token("alice", "admin", clock())

    assert identity.authenticate(text) is None


def test_a_revoked_token_no_longer_authenticates(store, clock) -> None:
    token, _ = identity.create_token("alice", "admin", clock())

    revoked = identity.revoke_token("alice", clock.advance(minutes=1))

    assert revoked["revoked_at"] == "2026-06-01T12:01:00Z"
    assert identity.authenticate(token) is None


def test_a_token_is_revoked_by_its_id_too(store, clock) -> None:
    token, document = identity.create_token("alice", "admin", clock())

    identity.revoke_token(document["token_id"], clock())

    assert identity.authenticate(token) is None


def test_revoking_twice_keeps_the_first_revocation(store, clock) -> None:
    identity.create_token("alice", "admin", clock())
    first = identity.revoke_token("alice", clock())

    again = identity.revoke_token("alice", clock.advance(hours=1))

    assert again == first


def test_revoking_an_unknown_token_is_not_found(store) -> None:
    with pytest.raises(NotFound, match="cavra tokens list"):
        identity.revoke_token("nobody")


def test_tokens_are_configured_while_one_is_unrevoked(store, clock) -> None:
    before = identity.tokens_configured()
    identity.create_token("alice", "admin", clock())
    during = identity.tokens_configured()
    identity.revoke_token("alice", clock())

    assert (before, during, identity.tokens_configured()) == (False, True, False)


def test_an_unknown_role_is_refused_listing_the_roles(store) -> None:
    with pytest.raises(InvalidInput) as raised:
        identity.create_token("alice", "superuser")

    assert all(role in raised.value.detail for role in ROLES)
    assert not ApiToken.select().exists()


@pytest.mark.parametrize("name", ["", "a" * 201, "line\nbreak", "tab\there", "\x7f"])
def test_a_name_that_breaks_the_actor_rules_is_refused(store, name) -> None:
    with pytest.raises(InvalidInput, match="1 to 200 characters"):
        identity.create_token(name, "admin")


def test_a_name_in_use_is_refused(store, clock) -> None:
    identity.create_token("alice", "admin", clock())

    with pytest.raises(Conflict, match="another name"):
        identity.create_token("alice", "auditor", clock())


def test_a_revoked_token_keeps_its_name(store, clock) -> None:
    identity.create_token("alice", "admin", clock())
    identity.revoke_token("alice", clock())

    with pytest.raises(Conflict):
        identity.create_token("alice", "admin", clock())


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("t-admin", "t-admin"),
        ("T-ADMIN", "t-admin"),
        (" t-admin", "t-admin"),
        ("t-admin ", "t-admin"),
        ("\tt-admin\u3000", "t-admin"),
        ("t-admin\u200b", "t-admin"),
        ("t-\u00adad\u200dmin\ufeff", "t-admin"),
        ("\u202et-admin", "t-admin"),
        ("\uff54-\uff41\uff44\uff4d\uff49\uff4e", "t-admin"),
        ("Stra\u00dfe", "strasse"),
        ("\u2160 ops", "i ops"),
        ("t\u00a0admin", "t admin"),
        ("t  admin", "t  admin"),
        (" ", ""),
        ("\u200b\u2060 \ufeff", ""),
    ],
)
def test_normal_name_folds_case_width_spacing_and_invisible_characters(
    name: str, normal: str
) -> None:
    assert identity.normal_name(name) == normal


def test_a_name_shaped_like_a_credential_is_refused_as_a_body_would_be(
    store,
) -> None:
    name = "Bearer abcdefghijklmnopqrstuvwxyz123456"

    with pytest.raises(InvalidInput) as raised:
        identity.create_token(name, "platform_owner")

    [problem] = raised.value.problems
    assert (problem.pointer, problem.reason) == ("/name", "secret_value")
    assert "credential" in raised.value.detail
    assert name not in raised.value.detail and "abcdefghij" not in problem.detail
    assert not ApiToken.select().exists()


@pytest.mark.parametrize(
    "name",
    ["http://10.0.0.5/", "https://ops:hunter2@example.com/", "password=hunter2"],
)
def test_a_name_the_redaction_guard_refuses_is_not_stored(store, name) -> None:
    with pytest.raises(InvalidInput, match="redaction guard"):
        identity.create_token(name, "admin")

    assert not ApiToken.select().exists()


def test_plugin_redaction_rules_apply_to_names_too(store) -> None:
    rule = redaction.RedactionRule(
        "no-ticket-ids", "ticket_id", lambda _, text: text.startswith("INC-")
    )

    with pytest.raises(InvalidInput) as raised:
        identity.create_token("INC-4711", "admin", rules=[rule])

    assert [p.reason for p in raised.value.problems] == ["ticket_id"]


@pytest.mark.parametrize("name", [" ", "   ", "\u3000", "\u200b", "\u200e\ufeff"])
def test_a_blank_name_is_refused_saying_so(store, name) -> None:
    with pytest.raises(InvalidInput, match="at least one visible character") as raised:
        identity.create_token(name, "admin")

    assert [p.reason for p in raised.value.problems] == ["blank"]
    assert not ApiToken.select().exists()


@pytest.mark.parametrize(
    "name", [" t-admin", "t-admin ", "t-admin\n", "\tt-admin", "t-admin\u200b"]
)
def test_a_padded_name_is_refused_saying_what_to_remove(store, name) -> None:
    with pytest.raises(InvalidInput, match="start or end with whitespace") as raised:
        identity.create_token(name, "admin")

    assert [p.reason for p in raised.value.problems] == ["padded"]
    assert not ApiToken.select().exists()


@pytest.mark.parametrize(
    "look_alike",
    [
        "T-ADMIN",
        "T-Admin",
        "\uff54-\uff41\uff44\uff4d\uff49\uff4e",
        "t-ad\u200bmin",
        "t\u00ad-admin",
        "t-\u200fadmin",
    ],
)
def test_a_name_that_reads_like_one_in_use_is_refused(store, clock, look_alike) -> None:
    identity.create_token("t-admin", "admin", clock())

    with pytest.raises(Conflict, match="reads the same"):
        identity.create_token(look_alike, "auditor", clock())

    assert [t["name"] for t in identity.list_tokens()] == ["t-admin"]


def test_a_look_alike_of_a_revoked_token_is_refused_too(store, clock) -> None:
    identity.create_token("t-admin", "admin", clock())
    identity.revoke_token("t-admin", clock())

    with pytest.raises(Conflict, match="reads the same"):
        identity.create_token("T-Admin", "admin", clock())


def test_names_that_differ_in_more_than_spelling_are_two_tokens(store, clock) -> None:
    identity.create_token("t-admin", "admin", clock())

    identity.create_token("t admin", "admin", clock())
    identity.create_token("t-admin-2", "admin", clock())

    assert len(identity.list_tokens()) == 3


def test_a_time_without_offset_is_refused(store, clock) -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        identity.create_token("alice", "admin", clock().replace(tzinfo=None))


# -- the permission table ------------------------------------------------------


def test_every_operation_of_the_app_is_in_the_permission_table(client) -> None:
    """A new endpoint must be given its roles; it cannot fall back unnoticed."""
    missing = {op for _, _, op in app_operations(client)} - set(auth.PERMISSIONS)

    assert not missing


def test_the_permission_table_names_only_known_roles() -> None:
    for roles in auth.PERMISSIONS.values():
        assert roles <= set(ROLES) and "admin" in roles


def test_an_operation_missing_from_the_table_is_for_admins_only() -> None:
    assert auth.roles_allowed("someNewOperation") == {"admin"}


def test_the_public_operations_are_in_the_table() -> None:
    assert set(auth.PERMISSIONS) >= auth.PUBLIC_OPERATIONS


# -- the API without tokens ----------------------------------------------------


def test_without_tokens_requests_need_no_token(client, engine, fake) -> None:
    fail_one_delivery(engine, fake)

    response = client.simulate_post(f"{P}/retry-plan", json={"generated_by": "rm"})

    assert response.status_code == 201
    assert response.json["generated_by"] == "rm"


def test_without_tokens_a_client_off_this_machine_is_refused(client) -> None:
    """Only after the last token was revoked while serving the network."""
    response = client.simulate_get(f"{P}/retry-plans", remote_addr="203.0.113.7")

    problem = problem_of(response, 401)
    assert "cavra tokens create" in problem["detail"]
    assert response.headers["www-authenticate"] == 'Bearer realm="cavra"'


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.0.2.10", False),
        ("no-such-host.invalid", False),
    ],
)
def test_loopback_addresses_are_recognised(host, loopback) -> None:
    assert auth.is_loopback(host) is loopback


# -- the API with tokens -------------------------------------------------------


def test_a_request_without_a_token_is_refused_with_401(client, tokens) -> None:
    response = client.simulate_get(f"{P}/retry-plans")

    problem = problem_of(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="cavra"'
    assert "Authorization: Bearer TOKEN" in problem["detail"]


@pytest.mark.parametrize(
    "header", ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "cavra_abc", "Token x"]
)
def test_a_header_that_is_not_a_bearer_token_is_refused_with_401(
    client, tokens, header
) -> None:
    response = client.simulate_get(
        f"{P}/retry-plans", headers={"Authorization": header}
    )

    problem_of(response, 401)


def test_an_unknown_token_is_refused_with_401(client, tokens) -> None:
    response = client.simulate_get(
        f"{P}/retry-plans", headers=bearer("cavra_" + "x" * 43)
    )

    problem = problem_of(response, 401)
    assert "unknown or it was revoked" in problem["detail"]
    assert response.headers["www-authenticate"] == 'Bearer realm="cavra"'


def test_a_revoked_token_is_refused_with_401(client, engine, tokens) -> None:
    with engine.database.connection_context():
        identity.revoke_token("auditor-token")

    response = client.simulate_get(
        f"{P}/retry-plans", headers=bearer(tokens["auditor"])
    )

    problem_of(response, 401)


def test_the_bearer_scheme_is_case_insensitive(client, tokens) -> None:
    response = client.simulate_get(
        f"{P}/retry-plans", headers={"Authorization": f"bearer {tokens['auditor']}"}
    )

    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/", "/openapi.json"])
def test_the_public_operations_need_no_token(client, tokens, path) -> None:
    response = client.simulate_get(path)

    assert response.status_code in (200, 302)


def test_the_console_files_need_no_token(engine, tokens, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>console</title>")
    client = testing.TestClient(create_app(engine, static_dir=tmp_path))

    response = client.simulate_get("/console/")

    assert response.status_code == 200


def test_an_unknown_path_is_404_without_a_token(client, tokens) -> None:
    response = client.simulate_get(f"{P}/no-such-thing")

    problem_of(response, 404)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_read(client, tokens, role) -> None:
    reads = [op for op in app_operations(client) if op[0] == "GET"]

    statuses = {
        (path, call(client, "GET", path, tokens[role]).status_code)
        for _, path, _ in reads
    }

    refused = {(path, status) for path, status in statuses if status in (401, 403)}
    assert not refused
    assert (f"{P}/retry-plans", 200) in statuses


@pytest.mark.parametrize("role", ROLES)
def test_a_role_is_refused_every_operation_it_may_not_call(
    client, tokens, role
) -> None:
    """403 naming the roles needed, before the body is even read."""
    refused = [
        (method, path, op)
        for method, path, op in mutating_operations(client)
        if role not in auth.roles_allowed(op)
    ]

    for method, path, operation_id in refused:
        response = call(client, method, path, tokens[role])

        problem = problem_of(response, 403)
        needed = auth.roles_allowed(operation_id)
        assert operation_id in problem["detail"], path
        assert all(name in problem["detail"] for name in needed), path
    if role == "admin":
        assert not refused
    else:
        assert refused


@pytest.mark.parametrize("role", ROLES)
def test_a_role_may_call_every_operation_it_is_given(client, tokens, role) -> None:
    allowed = [
        (method, path)
        for method, path, op in mutating_operations(client)
        if role in auth.roles_allowed(op)
    ]

    statuses = {
        path: call(client, method, path, tokens[role]).status_code
        for method, path in allowed
    }

    assert not {path for path, status in statuses.items() if status in (401, 403)}


@pytest.mark.parametrize(
    ("role", "refused"),
    [
        ("release_manager", ["runWorker", "resumeConnector"]),
        ("platform_owner", ["deliverPackage", "recordAttempts", "planRetries"]),
        ("soc_analyst", ["deliverPackage", "planRetries", "runWorker"]),
        (
            "auditor",
            [
                "deliverPackage",
                "recordAttempts",
                "planRetries",
                "runWorker",
                "resumeConnector",
            ],
        ),
    ],
)
def test_the_roles_of_the_governance_contract(role, refused) -> None:
    assert not any(role in auth.roles_allowed(op) for op in refused)


def test_a_release_manager_delivers_records_and_plans(client, tokens) -> None:
    token = tokens["release_manager"]
    evidence = package("drill-2")

    delivered = client.simulate_post(
        P,
        json={"package": package(), "connectors": ["hook-a"], "generated_by": "rm"},
        headers=bearer(token),
    )
    recorded = client.simulate_post(
        f"{P}/attempts",
        json={
            "packages": [evidence],
            "attempts": [attempt(package_hash(evidence), Clock().now)],
        },
        headers=bearer(token),
    )
    planned = client.simulate_post(
        f"{P}/retry-plan", json={"generated_by": "rm"}, headers=bearer(token)
    )

    assert delivered.status_code == 201, delivered.text
    assert recorded.status_code == 201, recorded.text
    assert planned.status_code == 201, planned.text


def test_a_platform_owner_runs_the_worker_and_resumes_connectors(
    client, tokens
) -> None:
    token = tokens["platform_owner"]

    run = client.simulate_post(
        f"{P}/worker-run", json={"generated_by": "po"}, headers=bearer(token)
    )
    resumed = client.simulate_post(
        f"{P}/connectors/hook-a/resume",
        json={"generated_by": "po"},
        headers=bearer(token),
    )

    assert run.status_code == 201, run.text
    assert resumed.status_code == 200, resumed.text


def test_an_admin_may_plan(client, tokens) -> None:
    response = client.simulate_post(
        f"{P}/retry-plan", json={"generated_by": "rm"}, headers=bearer(tokens["admin"])
    )

    assert response.status_code == 201


def test_an_operation_missing_from_the_table_is_refused_to_other_roles(
    engine, tokens
) -> None:
    from cavra_server.resources import Operation, Resource

    class Unlisted(Resource):
        operations = {
            "GET": Operation("readSomethingNew", "A new read.", {200: None}, ())
        }

        def on_get(self, req, resp) -> None:
            resp.status = 200

    app = create_app(engine)
    app.add_route("/unlisted", Unlisted(engine, max_body_bytes=100))
    client = testing.TestClient(app)

    refused = client.simulate_get("/unlisted", headers=bearer(tokens["auditor"]))
    allowed = client.simulate_get("/unlisted", headers=bearer(tokens["admin"]))

    problem = problem_of(refused, 403)
    assert "admin" in problem["detail"]
    assert allowed.status_code == 200


def test_a_plan_records_the_token_name_not_the_name_in_the_body(
    client, engine, fake, tokens
) -> None:
    fail_one_delivery(engine, fake)

    response = client.simulate_post(
        f"{P}/retry-plan",
        json={"generated_by": "someone-else"},
        headers=bearer(tokens["release_manager"]),
    )

    assert response.status_code == 201
    assert response.json["generated_by"] == "release_manager-token"
    with engine.database.connection_context():
        row = RetryPlan.get_by_id(response.json["retry_plan_id"])
    assert (row.generated_by, row.actor_verified) == ("release_manager-token", True)


def test_a_token_appears_in_no_answer_log_or_stored_row(
    client, engine, fake, tokens, caplog, database_url
) -> None:
    caplog.set_level(logging.DEBUG)
    fail_one_delivery(engine, fake)
    answers = [
        client.simulate_post(
            f"{P}/retry-plan", json={"generated_by": "rm"}, headers=bearer(token)
        )
        for token in tokens.values()
    ] + [
        client.simulate_get(f"{P}/retry-plans", headers=bearer(token))
        for token in tokens.values()
    ]
    with engine.database.connection_context():
        identity.revoke_token("auditor-token")
    answers.append(
        client.simulate_get(f"{P}/retry-plans", headers=bearer(tokens["auditor"]))
    )

    with engine.database.connection_context():
        rows = json.dumps(
            [list(model.select().tuples()) for model in MODELS], default=str
        )
    seen = [rows, caplog.text] + [
        f"{answer.headers}\n{answer.text}" for answer in answers
    ]
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///") :]
        engine.close()
        seen += [
            Path(file).read_bytes().decode("latin-1")
            for file in (path, f"{path}-wal")
            if os.path.exists(file)
        ]
    assert {answer.status_code for answer in answers} >= {201, 403, 200, 401}
    for token in tokens.values():
        assert all(token not in text for text in seen)
        secret_part = token[len("cavra_") :]
        assert all(secret_part not in text for text in seen)


def test_the_openapi_document_names_the_token_problems(client) -> None:
    document = client.simulate_get("/openapi.json").json

    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            statuses = set(operation["responses"])
            op = operation["operationId"]
            if op in auth.PUBLIC_OPERATIONS:
                # getSession needs no token, yet refuses one that is not valid.
                refused = {"401"} if op == "getSession" else set()
                assert {"401", "403"} & statuses == refused, path
                assert "security" not in operation
            elif method == "get":
                assert "401" in statuses and "403" not in statuses, path
                assert operation["security"] == [{"apiToken": []}]
            else:
                assert {"401", "403"} <= statuses, path
    assert document["components"]["securitySchemes"]["apiToken"]["scheme"] == ("bearer")


# -- the command line ----------------------------------------------------------


def test_tokens_create_prints_the_token_once(database_url, capsys) -> None:
    status = main(
        [
            "tokens",
            "create",
            "--role",
            "auditor",
            "--name",
            "alice",
            "--database",
            database_url,
            "--create",
        ]
    )

    out, err = capsys.readouterr()
    assert status == 0
    assert TOKEN.fullmatch(out.strip())
    assert "will not be shown again" in err
    assert out.strip() not in err


def test_tokens_list_shows_names_and_roles_but_no_token(database_url, capsys) -> None:
    main(
        [
            "tokens",
            "create",
            "--role",
            "admin",
            "--name",
            "bob",
            "--database",
            database_url,
            "--create",
        ]
    )
    token = capsys.readouterr().out.strip()

    main(["tokens", "list", "--database", database_url])
    table = capsys.readouterr().out
    main(["tokens", "list", "--json", "--database", database_url])
    listed = json.loads(capsys.readouterr().out)

    assert "bob" in table and "admin" in table and token not in table
    assert [(t["name"], t["role"]) for t in listed["tokens"]] == [("bob", "admin")]
    assert token not in json.dumps(listed)
    assert hashlib.sha256(token.encode()).hexdigest() not in json.dumps(listed)


def test_tokens_revoke_revokes_by_name(database_url, capsys) -> None:
    main(
        [
            "tokens",
            "create",
            "--role",
            "admin",
            "--name",
            "bob",
            "--database",
            database_url,
            "--create",
        ]
    )
    capsys.readouterr()

    status = main(["tokens", "revoke", "bob", "--database", database_url])

    out = capsys.readouterr().out
    main(["tokens", "list", "--json", "--database", database_url])
    [listed] = json.loads(capsys.readouterr().out)["tokens"]
    assert status == 0 and "revoked" in out
    assert listed["revoked_at"] is not None


def test_tokens_revoke_of_an_unknown_name_exits_2(database_url, capsys) -> None:
    main(["migrate", "--database", database_url])

    status = main(["tokens", "revoke", "nobody", "--database", database_url])

    assert status == 2
    assert "cavra tokens list" in capsys.readouterr().err


def test_tokens_create_with_a_name_in_use_exits_2(database_url, capsys) -> None:
    arguments = ["tokens", "create", "--role", "admin", "--name", "bob", "--create"]
    main([*arguments, "--database", database_url])
    capsys.readouterr()

    status = main([*arguments, "--database", database_url])

    assert status == 2
    assert "another name" in capsys.readouterr().err


def test_tokens_create_with_an_unknown_role_exits_2_listing_roles(
    database_url, capsys
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tokens", "create", "--role", "root", "--name", "x"])

    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert all(role in err for role in ROLES)


def test_tokens_use_the_database_of_the_environment(
    database_url, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("CAVRA_DATABASE_URL", database_url)
    main(["tokens", "create", "--role", "admin", "--name", "env", "--create"])
    capsys.readouterr()

    main(["tokens", "list", "--json"])

    assert json.loads(capsys.readouterr().out)["tokens"][0]["name"] == "env"


def test_tokens_create_refuses_a_credential_as_the_name(database_url, capsys) -> None:
    name = "Bearer abcdefghijklmnopqrstuvwxyz123456"

    status = main(
        ["tokens", "create", "--role", "platform_owner", "--name", name]
        + ["--database", database_url, "--create"]
    )

    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert "credential" in err and "/name" in err
    assert "abcdefghij" not in err


def test_tokens_create_refuses_a_blank_name(database_url, capsys) -> None:
    status = main(
        ["tokens", "create", "--role", "admin", "--name", " "]
        + ["--database", database_url, "--create"]
    )

    assert status == 2
    assert "at least one visible character" in capsys.readouterr().err


def test_tokens_create_refuses_a_look_alike_name(database_url, capsys) -> None:
    arguments = ["--role", "admin", "--database", database_url, "--create"]
    main(["tokens", "create", "--name", "t-admin", *arguments])
    capsys.readouterr()

    status = main(["tokens", "create", "--name", "T-ADMIN ", *arguments])

    assert status == 2
    assert "start or end with whitespace" in capsys.readouterr().err
    assert main(["tokens", "create", "--name", "T-ADMIN", *arguments]) == 2
    assert "reads the same" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["tokens", "create", "--role", "admin", "--name", "ops"],
        ["tokens", "list"],
        ["tokens", "revoke", "ops"],
    ],
)
def test_token_commands_refuse_a_store_that_does_not_exist(
    tmp_path, capsys, command
) -> None:
    store = tmp_path / "typo" / "cavra.db"

    status = main([*command, "--database", f"sqlite:///{store}"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and f"no store at {store}" in err
    assert "--database" in err
    assert ("--create" in err) == (command[1] == "create")
    assert not store.parent.exists()


def test_tokens_create_makes_a_new_store_with_create(tmp_path, capsys) -> None:
    store = tmp_path / "new" / "cavra.db"
    url = f"sqlite:///{store}"

    status = main(
        ["tokens", "create", "--role", "admin", "--name", "ops"]
        + ["--database", url, "--create"]
    )

    capsys.readouterr()
    assert status == 0 and store.is_file()
    main(["tokens", "list", "--json", "--database", url])
    assert json.loads(capsys.readouterr().out)["tokens"][0]["name"] == "ops"


def test_migrate_still_makes_a_new_store_and_its_folder(tmp_path, capsys) -> None:
    store = tmp_path / "new" / "cavra.db"

    status = main(["migrate", "--database", f"sqlite:///{store}"])

    assert status == 0 and store.is_file()


@pytest.mark.parametrize(
    ("url", "words"), [("", "scheme ''"), ("sqlite:///", "needs a file")]
)
@pytest.mark.parametrize("command", [["migrate"], ["worker", "runs"]])
def test_an_empty_database_url_is_refused_not_read_as_the_default(
    tmp_path, monkeypatch, capsys, url, words, command
) -> None:
    monkeypatch.chdir(tmp_path)

    status = main([*command, "--database", url])

    assert status == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / ".cavra").exists()


@pytest.mark.parametrize(
    "command", [["migrate"], ["worker", "runs"], ["tokens", "list"]]
)
def test_an_in_memory_store_is_refused_with_what_to_use_instead(
    tmp_path, monkeypatch, capsys, command
) -> None:
    monkeypatch.chdir(tmp_path)

    status = main([*command, "--database", "sqlite:///:memory:"])

    assert status == 2
    error = capsys.readouterr().err
    assert "in-memory SQLite store is not supported" in error
    assert "use a file" in error
    assert not (tmp_path / ":memory:").exists()


def test_an_engine_on_an_in_memory_store_is_refused_before_it_starts() -> None:
    from cavra_core import Engine
    from cavra_core.store import StoreError

    with pytest.raises(StoreError, match="use a file"):
        Engine("sqlite:///:memory:", {})


def _unusable_stores(tmp_path: Path) -> dict[str, Path]:
    not_a_database = tmp_path / "passwd"
    not_a_database.write_text("root:x:0:0:root:/root:/bin/bash\n" * 20)
    folder = tmp_path / "folder.db"
    folder.mkdir()
    in_a_file = not_a_database / "cavra.db"
    return {
        "not a database": not_a_database,
        "a folder": folder,
        "in a file": in_a_file,
    }


@pytest.mark.parametrize("kind", ["not a database", "a folder", "in a file"])
@pytest.mark.parametrize(
    "command",
    [
        ["tokens", "list"],
        ["tokens", "create", "--role", "admin", "--name", "ops", "--create"],
        ["tokens", "revoke", "ops"],
        ["migrate"],
        ["plan"],
        ["worker", "runs"],
        ["dashboard"],
        ["evidence", "export"],
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line_and_exit_2(
    tmp_path, capsys, kind, command
) -> None:
    store = _unusable_stores(tmp_path)[kind]

    status = main([*command, "--database", f"sqlite:///{store}"])

    out, err = capsys.readouterr()
    assert status == 2, err
    assert err.startswith("cavra: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


# -- serving the network -------------------------------------------------------


def _cavra(home: Path, database_url: str, *arguments: str, **options: Any):
    environment = {**os.environ, "CAVRA_DATABASE_URL": database_url}
    environment.pop("CAVRA_CONNECTORS", None)
    return subprocess.run(
        [sys.executable, "-m", "cavra_server.cli", *arguments],
        cwd=home,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        **options,
    )


@pytest.mark.e2e
def test_the_api_refuses_to_serve_the_network_without_a_token(
    database_url, tmp_path
) -> None:
    result = _cavra(tmp_path, database_url, "api", "--host", "0.0.0.0", "--port", "0")

    assert result.returncode == 2
    assert "listening" not in result.stdout
    assert "cavra tokens create" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_the_api_serves_the_network_once_a_token_exists(database_url, tmp_path) -> None:
    import urllib.error
    import urllib.request

    created = _cavra(
        tmp_path,
        database_url,
        "tokens",
        "create",
        "--role",
        "auditor",
        "--name",
        "a",
        "--create",
    )
    token = created.stdout.strip()
    environment = {**os.environ, "CAVRA_DATABASE_URL": database_url}
    environment.pop("CAVRA_CONNECTORS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cavra_server.cli", "api", "--host", "0.0.0.0"]
        + ["--port", "0"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "listening on http://0.0.0.0:" in line, process.stderr.read()
        port = int(line.strip().rsplit(":", 1)[-1])
        url = f"http://127.0.0.1:{port}{P}/retry-plans"

        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        request = urllib.request.Request(url, headers=bearer(token))
        with urllib.request.urlopen(request, timeout=10) as answer:
            status = answer.status
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)

    assert created.returncode == 0 and TOKEN.fullmatch(token)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="cavra"'
    assert status == 200
    assert token not in errors and "Traceback" not in errors


@pytest.mark.e2e
def test_the_api_serves_loopback_without_a_token(database_url, tmp_path) -> None:
    environment = {**os.environ, "CAVRA_DATABASE_URL": database_url}
    environment.pop("CAVRA_CONNECTORS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "cavra_server.cli", "api", "--host", "localhost"]
        + ["--port", "0"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
    finally:
        process.terminate()
        process.communicate(timeout=10)

    assert "listening on http://localhost:" in line
