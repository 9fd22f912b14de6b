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

from cavra_core import Engine, identity, validation
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
    status = main(["tokens", "revoke", "nobody", "--database", database_url])

    assert status == 2
    assert "cavra tokens list" in capsys.readouterr().err


def test_tokens_create_with_a_name_in_use_exits_2(database_url, capsys) -> None:
    arguments = ["tokens", "create", "--role", "admin", "--name", "bob"]
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
    main(["tokens", "create", "--role", "admin", "--name", "env"])
    capsys.readouterr()

    main(["tokens", "list", "--json"])

    assert json.loads(capsys.readouterr().out)["tokens"][0]["name"] == "env"


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
        tmp_path, database_url, "tokens", "create", "--role", "auditor", "--name", "a"
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
