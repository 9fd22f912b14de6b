"""
The canary test: a connector secret never reaches the store, a log line or
an answer.

Unique secrets are made for this run, each shaped as its connector expects
it: webhook bearer tokens, ``whsec_`` signing secrets (base64 of random
bytes, three of them, two in rotation) and Splunk HEC token GUIDs. They exist
only in the environment of the ``cavra`` processes, named by the ``*_env``
keys of the connectors file. ``cavra api`` runs with ``--log-level debug``
against receivers that fail: webhook receivers answering 503 and 401 that
echo the credentials back in their body, in ``X-Echo`` and in
``WWW-Authenticate`` (so a connector that kept response text would leak
them), a closed port, and a fake HEC that is busy or refuses the token.

The whole flow runs over HTTP and the command line: deliveries, a plan, dry
and live worker runs, a resume, every list and every document by id, the
dashboard, the OpenAPI document, ``cavra connectors check`` (probes that
send the tokens), ``cavra plan --json``, ``cavra worker run --json``,
``cavra dashboard --json``. Requests that *carry* a secret in their body are
refused with 400 naming the JSON pointer. Then the server is stopped and
every file it left (the SQLite database, its ``-wal`` and ``-shm`` files, the
captured logs), every answer and every command's output is searched for each
canary, raw and base64, hex and URL encoded: there must be no hit. The
receivers' records show the secrets were really sent, so the test cannot pass
by never using them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hec_receiver import EVENT_PATH, FakeHec
from receivers import ScriptedReceiver, closed_port_url, status

pytestmark = pytest.mark.e2e

PREFIX = (
    "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
)


# -- canaries -----------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    """One secret of this run and the environment variable that holds it."""

    variable: str
    value: str
    #: Encodings of the secret that must not appear either, by name.
    also: dict[str, bytes] = field(default_factory=dict)

    def forms(self) -> dict[str, bytes]:
        """Every spelling searched for: raw, base64 at each alignment, hex..."""
        raw = self.value.encode()
        forms = {
            "raw": raw,
            "url-encoded": quote(self.value, safe="").encode(),
            "hex": raw.hex().encode(),
            "HEX": raw.hex().upper().encode(),
            **self.also,
        }
        # The secret base64-encoded on its own or inside a longer text (an
        # Authorization: Basic header, a base64 blob): at each of the three
        # byte alignments, the characters that depend on the secret alone.
        for shift in range(3):
            for name, encode in (
                ("base64", base64.b64encode),
                ("base64url", base64.urlsafe_b64encode),
            ):
                encoded = encode(b"\0" * shift + raw).rstrip(b"=")
                forms[f"{name}+{shift}"] = encoded[4 if shift else 0 : -4]
        return forms


def bearer_canary(variable: str) -> Canary:
    return Canary(variable, f"canary-{uuid.uuid4().hex}{secrets.token_hex(8)}")


def signing_canary(variable: str) -> Canary:
    key = secrets.token_bytes(32)
    encoded = base64.b64encode(key).decode()
    return Canary(
        variable,
        f"whsec_{encoded}",
        also={
            "key base64": encoded.rstrip("=").encode(),
            "key bytes": key,
            "key hex": key.hex().encode(),
        },
    )


def hec_canary(variable: str) -> Canary:
    token = str(uuid.uuid4())
    return Canary(
        variable,
        token,
        also={
            "GUID upper case": token.upper().encode(),
            "GUID without dashes": token.replace("-", "").encode(),
        },
    )


@dataclass(frozen=True)
class Canaries:
    hook_token: Canary
    hook_secret: Canary
    denied_token: Canary
    old_secret: Canary
    new_secret: Canary
    hec_token: Canary
    refused_hec_token: Canary

    @classmethod
    def new(cls) -> Canaries:
        return cls(
            hook_token=bearer_canary("CAVRA_CANARY_HOOK_TOKEN"),
            hook_secret=signing_canary("CAVRA_CANARY_HOOK_SECRET"),
            denied_token=bearer_canary("CAVRA_CANARY_DENIED_TOKEN"),
            old_secret=signing_canary("CAVRA_CANARY_SECRET_OLD"),
            new_secret=signing_canary("CAVRA_CANARY_SECRET_NEW"),
            hec_token=hec_canary("CAVRA_CANARY_HEC_TOKEN"),
            refused_hec_token=hec_canary("CAVRA_CANARY_REFUSED_HEC_TOKEN"),
        )

    def __iter__(self) -> Iterator[Canary]:
        return iter(vars(self).values())

    def environment(self) -> dict[str, str]:
        return {canary.variable: canary.value for canary in self}


def leaks(canaries: Canaries, haystacks: dict[str, bytes]) -> list[str]:
    """Where any spelling of any canary occurs, as readable findings."""
    found = []
    for canary in canaries:
        for form, needle in canary.forms().items():
            for place, haystack in haystacks.items():
                if needle and needle in haystack:
                    found.append(f"{canary.variable} ({form}) in {place}")
    return found


# -- the receivers and the server ---------------------------------------------


def echo(code: int, canaries: Canaries, headers: dict[str, str] | None = None):
    """A failing answer that hands every credential back, as a careless receiver."""
    credentials = {
        "authorization": f"Bearer {canaries.hook_token.value}",
        "x-denied-authorization": f"Bearer {canaries.denied_token.value}",
        "signing-secrets": [
            canaries.hook_secret.value,
            canaries.old_secret.value,
            canaries.new_secret.value,
        ],
        "splunk": f"Splunk {canaries.hec_token.value}",
    }
    return status(
        code,
        {
            **(headers or {}),
            "Content-Type": "application/json",
            "X-Echo": credentials["authorization"],
            "WWW-Authenticate": (
                'Bearer realm="cavra", error="invalid_token", '
                f'error_description="{canaries.denied_token.value}"'
            ),
        },
        json.dumps({"error": "refused", "received": credentials}),
    )


@dataclass
class Answer:
    """One HTTP answer as received: status, raw header block, raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CavraProcesses:
    """``cavra api`` at debug level, the command line, and all they said."""

    def __init__(self, home: Path, connectors: Path, canaries: Canaries) -> None:
        self.home = home
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("CAVRA_")
        }
        self.env.update(
            CAVRA_DATABASE_URL=f"sqlite:///{home}/cavra.db",
            CAVRA_CONNECTORS=str(connectors),
            **canaries.environment(),
        )
        #: Every answer and every command's output, by a readable name.
        self.outputs: dict[str, bytes] = {}
        self.log_path = home / "api.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"]
            + ["--log-level", "debug"],
            cwd=home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self.first_line = self.process.stdout.readline()
        if b"listening on" not in self.first_line:
            self.stop()
            raise AssertionError(
                f"cavra api did not start: {self.log_path.read_text()}"
            )
        self.base = self.first_line.decode().strip().rsplit(" ", 1)[-1]
        self.stdout = b""

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = Answer(
                    response.status, dict(response.headers), response.read()
                )
        except urllib.error.HTTPError as error:
            answer = Answer(error.code, dict(error.headers), error.read())
        header_block = "".join(f"{k}: {v}\n" for k, v in answer.headers.items())
        place = f"the answer to {method} {path} (#{len(self.outputs)})"
        self.outputs[place] = header_block.encode() + b"\n" + answer.body
        return answer

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [sys.executable, "-m", "cavra_server.cli", *arguments],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            timeout=120,
        )
        place = f"the output of cavra {' '.join(arguments)} (#{len(self.outputs)})"
        self.outputs[place] = result.stdout + b"\n" + result.stderr
        return result

    def stop(self) -> None:
        """Stop the server (idempotent) and keep the rest of its output."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.process.stdout.closed:
            self.stdout = self.first_line + self.process.stdout.read()
            self.process.stdout.close()
        self._log.close()

    def haystacks(self) -> dict[str, bytes]:
        """Every answer, every output, and every file left in the home folder."""
        files = {
            f"the file {path.relative_to(self.home)}": path.read_bytes()
            for path in sorted(self.home.rglob("*"))
            if path.is_file()
        }
        return {**self.outputs, "the server's stdout": self.stdout, **files}


class StoreWatcher:
    """
    Copies of the SQLite side files (``-wal``, ``-shm``, ``-journal``) as
    they come and go.

    The server opens the store per request and SQLite removes the WAL when
    the last connection closes, so the WAL is only there while something is
    being answered: a thread copies it every few milliseconds.
    """

    def __init__(self, database: Path) -> None:
        self.paths = [
            database.with_name(database.name + suffix)
            for suffix in ("-wal", "-shm", "-journal")
        ]
        self.copies: dict[str, bytes] = {}
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> StoreWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(0.003):
            for path in self.paths:
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                key = hash(data)
                if data and key not in self._seen and len(self._seen) < 2000:
                    self._seen.add(key)
                    self.copies[f"a copy of {path.name} (#{len(self._seen)})"] = data


def _package(drill: str) -> dict[str, Any]:
    generated = datetime.now(UTC) - timedelta(minutes=5)
    return {
        "drill_id": drill,
        "generated_at": generated.isoformat(),
        "generated_by": "drill-runner",
        "acknowledgements": [
            {
                "notification_id": f"{drill}-n1",
                "role": "incident_commander",
                "state": "accepted",
                "acknowledged_at": (generated + timedelta(seconds=30)).isoformat(),
            }
        ],
    }


CONNECTORS = ["hook-busy", "hook-denied", "hook-down", "splunk-busy", "splunk-refused"]


def _connectors_file(
    home: Path, canaries: Canaries, webhook: ScriptedReceiver, hec: FakeHec
) -> Path:
    c = canaries
    path = home / "connectors.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [hook-busy]
            type = "webhook"
            url = "{webhook.url}/busy"
            auth_token_env = "{c.hook_token.variable}"
            signing_secret_env = "{c.hook_secret.variable}"
            connect_timeout_seconds = 2
            read_timeout_seconds = 2

            [hook-denied]
            type = "webhook"
            url = "{webhook.url}/denied"
            auth_token_env = "{c.denied_token.variable}"
            signing_secrets_env = ["{c.old_secret.variable}", "{c.new_secret.variable}"]
            connect_timeout_seconds = 2
            read_timeout_seconds = 2

            [hook-down]
            type = "webhook"
            url = "{closed_port_url()}/hook"
            auth_token_env = "{c.hook_token.variable}"
            signing_secret_env = "{c.hook_secret.variable}"
            connect_timeout_seconds = 1

            [splunk-busy]
            type = "hec"
            url = "{hec.url}"
            token_env = "{c.hec_token.variable}"
            index = "audit"
            connect_timeout_seconds = 2
            read_timeout_seconds = 2

            [splunk-refused]
            type = "hec"
            url = "{hec.url}"
            token_env = "{c.refused_hec_token.variable}"
            connect_timeout_seconds = 2
            read_timeout_seconds = 2
            """
        )
    )
    return path


@dataclass
class Setup:
    canaries: Canaries
    webhook: ScriptedReceiver
    hec: FakeHec
    cavra: CavraProcesses


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    """Receivers that fail and echo credentials, and a debug-level server."""
    canaries = Canaries.new()
    home = tmp_path / "home"
    home.mkdir()
    with (
        ScriptedReceiver(fallback=echo(503, canaries, {"Retry-After": "120"})) as hook,
        FakeHec(tokens=[canaries.hec_token.value], indexes=["audit"]) as hec,
    ):
        hook.enqueue(*[echo(401, canaries) for _ in range(20)], path="/denied")
        connectors = _connectors_file(home, canaries, hook, hec)
        cavra = CavraProcesses(home, connectors, canaries)
        try:
            yield Setup(canaries, hook, hec, cavra)
        finally:
            cavra.stop()


def _busy_hec(hec: FakeHec, canaries: Canaries) -> None:
    """The next event to HEC: 503 busy, echoing the token in a header."""
    echoed = {"Retry-After": "60", "X-Echo": f"Splunk {canaries.hec_token.value}"}
    hec.answer_next(9, headers=echoed, path=EVENT_PATH)


def _exercise_the_api(cavra: CavraProcesses, hec: FakeHec, canaries: Canaries) -> None:
    """Deliver, fail, plan, run and read everything, over HTTP."""
    _busy_hec(hec, canaries)
    report = cavra.request(
        "POST",
        PREFIX,
        {
            "package": _package("drill-canary-1"),
            "connectors": CONNECTORS,
            "generated_by": "release-manager",
        },
    )
    assert report.status == 201, report.body
    outcomes = {d["connector_id"]: d for d in report.json()["deliveries"]}
    assert {
        k: (v["outcome"], v["http_status"], v["error_class"])
        for k, v in outcomes.items()
    } == {
        "hook-busy": ("failed", 503, "http_status"),
        "hook-denied": ("failed", 401, "http_status"),
        "hook-down": ("failed", None, "connection_refused"),
        "splunk-busy": ("failed", 503, "hec_server_busy"),
        "splunk-refused": ("failed", 403, "hec_invalid_token"),
    }

    plan = cavra.request("POST", f"{PREFIX}/retry-plan", {"generated_by": "rm"})
    assert plan.status == 201, plan.body
    dry = cavra.request("POST", f"{PREFIX}/worker-run", {"generated_by": "po"})
    assert dry.status == 201, dry.body
    live = cavra.request(
        "POST", f"{PREFIX}/worker-run", {"generated_by": "po", "dry_run": False}
    )
    assert live.status == 201, live.body
    resumed = cavra.request(
        "POST", f"{PREFIX}/connectors/hook-denied/resume", {"generated_by": "soc"}
    )
    assert resumed.status == 200, resumed.body

    # A second package after the resume: more attempts, more state changes.
    _busy_hec(hec, canaries)
    again = cavra.request(
        "POST",
        PREFIX,
        {
            "package": _package("drill-canary-2"),
            "connectors": CONNECTORS,
            "generated_by": "release-manager",
        },
    )
    assert again.status == 201, again.body

    reads = [
        "/",
        "/healthz",
        "/openapi.json",
        f"{PREFIX}/attempts?limit=500",
        f"{PREFIX}/attempts?outcome=failed&lineage_state=failed",
        f"{PREFIX}/retry-plans",
        f"{PREFIX}/retry-plans/{plan.json()['retry_plan_id']}",
        f"{PREFIX}/worker-runs",
        f"{PREFIX}/worker-runs?dry_run=false",
        f"{PREFIX}/worker-runs/{dry.json()['run_id']}",
        f"{PREFIX}/worker-runs/{live.json()['run_id']}",
        f"{PREFIX}/worker-dashboard",
        f"{PREFIX}/connectors",
        *(f"{PREFIX}/connectors/{connector_id}" for connector_id in CONNECTORS),
    ]
    for path in reads:
        answer = cavra.request("GET", path)
        assert answer.status == 200, (path, answer.body)


def _exercise_the_command_line(cavra: CavraProcesses) -> None:
    """The commands that read the store or use the secrets, at debug level."""
    debug = ("--log-level", "debug")
    check = cavra.cli("connectors", "check", *debug)
    # hook-denied (401), hook-down (closed port) and splunk-refused fail.
    assert check.returncode == 1, check.stderr
    assert b"FAILED" in check.stdout
    check_json = cavra.cli("connectors", "check", "--json", *debug)
    probes = {
        item["connector_id"]: item for item in json.loads(check_json.stdout)["items"]
    }
    assert probes["splunk-busy"]["ok"] is True, probes["splunk-busy"]
    assert probes["hook-denied"]["ok"] is False
    commands = [
        ("connectors", "list", "--json"),
        ("plan", "--json", "--generated-by", "release-manager"),
        ("plan",),
        ("worker", "run", "--json", "--generated-by", "platform-owner"),
        ("worker", "run", "--execute", "--interval", "30", "--json"),
        ("worker", "runs", "--json"),
        ("dashboard", "--json"),
        ("dashboard",),
    ]
    for command in commands:
        result = cavra.cli(*command, *debug)
        assert result.returncode == 0, (command, result.stderr)


def test_no_canary_reaches_the_store_a_log_line_or_an_answer(setup: Setup) -> None:
    """The secrets are used, echoed back by receivers, and found nowhere."""
    canaries, cavra = setup.canaries, setup.cavra

    with StoreWatcher(cavra.home / "cavra.db") as watcher:
        _exercise_the_api(cavra, setup.hec, canaries)
        _exercise_the_command_line(cavra)
    cavra.stop()

    hook_headers = [r.headers for r in setup.webhook.requests]
    sent = {h.get("authorization") for h in hook_headers}
    assert f"Bearer {canaries.hook_token.value}" in sent
    assert f"Bearer {canaries.denied_token.value}" in sent
    assert any(len(h.get("webhook-signature", "").split()) == 2 for h in hook_headers)
    assert f"Splunk {canaries.hec_token.value}" in {
        r.headers.get("authorization") for r in setup.hec.requests
    }
    assert f"Splunk {canaries.refused_hec_token.value}" in {
        r.headers.get("authorization") for r in setup.hec.requests
    }
    assert any(
        r.method == "OPTIONS"
        and r.headers.get("authorization") == f"Bearer {canaries.hook_token.value}"
        for r in setup.webhook.requests
    ), "the probe did not send the token"
    assert any("cavra.db-wal" in copy for copy in watcher.copies), "no WAL seen"
    haystacks = {**watcher.copies, **cavra.haystacks()}
    assert b"DEBUG" in haystacks["the file api.log"]
    assert leaks(canaries, haystacks) == []


def _refusals(canaries: Canaries, package_id: str) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, pointer) of requests that carry a secret."""
    token = canaries.hook_token.value
    whsec = canaries.hook_secret.value
    hec = canaries.hec_token.value
    package = _package("drill-carrying")
    with_role = {
        **package,
        "acknowledgements": [
            {**package["acknowledgements"][0], "role": f"Splunk {hec}"}
        ],
    }
    now = datetime.now(UTC)
    attempt = {
        "package_id": package_id,
        "connector_id": "hook-busy",
        "outcome": "failed",
        "error_class": "http_status",
        "http_status": 503,
        "retry_after": f"Bearer {token}",
        "started_at": now.isoformat(),
        "finished_at": now.isoformat(),
    }
    deliver = {"connectors": ["hook-busy"], "generated_by": "rm"}
    return [
        (
            "POST",
            PREFIX,
            {**deliver, "package": {**package, "token": token}},
            "/package/token",
        ),
        (
            "POST",
            PREFIX,
            {**deliver, "package": with_role},
            "/package/acknowledgements/0/role",
        ),
        (
            "POST",
            PREFIX,
            {
                **deliver,
                "package": package,
                "generated_by": f"https://rm:{token}@example.com",
            },
            "/generated_by",
        ),
        (
            "POST",
            f"{PREFIX}/retry-plan",
            {"generated_by": f"Bearer {token}"},
            "/generated_by",
        ),
        (
            "POST",
            f"{PREFIX}/retry-plan",
            {"generated_by": "rm", "retry_policy": {"api_key": token}},
            "/retry_policy/api_key",
        ),
        ("POST", f"{PREFIX}/worker-run", {"generated_by": whsec}, "/generated_by"),
        (
            "POST",
            f"{PREFIX}/attempts",
            {"attempts": [attempt]},
            "/attempts/0/retry_after",
        ),
        (
            "POST",
            f"{PREFIX}/connectors/hook-busy/resume",
            {"generated_by": f"Authorization: Splunk {hec}"},
            "/generated_by",
        ),
    ]


def test_a_body_that_carries_a_secret_is_refused_naming_its_pointer(
    setup: Setup,
) -> None:
    """400 with the pointer, and the secret is nowhere afterwards."""
    canaries, cavra = setup.canaries, setup.cavra
    stored = cavra.request(
        "POST",
        PREFIX,
        {
            "package": _package("drill-stored"),
            "connectors": ["hook-down"],
            "generated_by": "rm",
        },
    )
    assert stored.status == 201, stored.body

    answers = [
        (pointer, cavra.request(method, path, body))
        for method, path, body, pointer in _refusals(
            canaries, stored.json()["package_id"]
        )
    ]
    token = canaries.hook_token.value
    cursor = cavra.request("GET", f"{PREFIX}/attempts?cursor={token}")
    by_id = cavra.request("GET", f"{PREFIX}/connectors/{token}")
    unchanged = cavra.request("GET", f"{PREFIX}/attempts")
    plans = cavra.request("GET", f"{PREFIX}/retry-plans")
    cavra.stop()

    for pointer, answer in answers:
        assert answer.status == 400, (pointer, answer.body)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert answer.json()["errors"][0]["pointer"] == pointer, answer.body
    assert cursor.status == 400
    assert cursor.json()["errors"][0]["reason"] == "invalid_cursor"
    assert by_id.status == 404
    assert len(unchanged.json()["items"]) == 1
    assert plans.json()["items"] == []
    assert leaks(canaries, cavra.haystacks()) == []


def test_the_search_finds_every_spelling_of_a_canary() -> None:
    """The detector itself: raw, encoded, embedded in longer base64, key bytes."""
    canaries = Canaries.new()
    token, secret = canaries.hook_token, canaries.hook_secret
    basic = base64.b64encode(f"user:{token.value}".encode())
    key = base64.b64decode(secret.value.removeprefix("whsec_"))

    found = leaks(
        canaries,
        {
            "basic": b"Authorization: Basic " + basic,
            "url": quote(f"?t={canaries.hec_token.value}", safe="").encode(),
            "blob": b"\x00\x01" + key + b"\x02",
            "clean": b"nothing to see",
        },
    )

    assert any(
        f.startswith(f"{token.variable} (base64") and "basic" in f for f in found
    )
    assert any(f.startswith(canaries.hec_token.variable) and "url" in f for f in found)
    assert f"{secret.variable} (key bytes) in blob" in found
    assert not any("clean" in f for f in found)


@pytest.mark.parametrize(
    "echoed", ["{token}", "Bearer {token}"], ids=["token", "bearer-credentials"]
)
def test_a_receiver_cannot_write_a_secret_into_the_evidence_through_retry_after(
    tmp_path: Path, echoed: str
) -> None:
    """A Retry-After that is no delay or date is dropped, not kept."""
    canaries = Canaries.new()
    home = tmp_path / "home"
    home.mkdir()
    retry_after = echoed.format(token=canaries.hook_token.value)
    with (
        ScriptedReceiver(fallback=status(503, {"Retry-After": retry_after})) as hook,
        FakeHec(tokens=[canaries.hec_token.value]) as hec,
    ):
        cavra = CavraProcesses(
            home, _connectors_file(home, canaries, hook, hec), canaries
        )
        try:
            report = cavra.request(
                "POST",
                PREFIX,
                {
                    "package": _package("drill-echo"),
                    "connectors": ["hook-busy"],
                    "generated_by": "rm",
                },
            )
            attempts = cavra.request("GET", f"{PREFIX}/attempts")
        finally:
            cavra.stop()

    assert report.json()["deliveries"][0]["http_status"] == 503
    assert attempts.json()["items"][0]["retry_after"] is None
    assert leaks(canaries, cavra.haystacks()) == []


def test_a_secret_sent_as_a_query_parameter_name_is_not_repeated(
    setup: Setup,
) -> None:
    """``?<token>=1`` is refused without the answer repeating the name."""
    query_secret = Canary("QUERY_PARAMETER_NAME", f"ghp_{secrets.token_hex(18)}")
    cavra = setup.cavra

    answer = cavra.request("GET", f"{PREFIX}/retry-plans?{query_secret.value}=1")
    cavra.stop()

    assert answer.status == 400
    assert answer.json()["errors"][0]["reason"] == "unknown_parameter"
    found = [
        place
        for place, haystack in cavra.haystacks().items()
        if query_secret.value.encode() in haystack
    ]
    assert found == []
