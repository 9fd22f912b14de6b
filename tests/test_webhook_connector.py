"""The webhook connector against a scripted receiver on loopback."""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from receivers import ScriptedReceiver, close, closed_port_url, delay, status

import cavra_webhook
from cavra_core import hookspecs
from cavra_core.types import (
    FAILURE_CATEGORIES,
    Connector,
    ConnectorConfigError,
    ConnectorType,
    Delivery,
    DeliveryResult,
)
from cavra_webhook import WebhookConnectorType, raw_retry_after

TOKEN_VARIABLE = "CAVRA_TEST_WEBHOOK_TOKEN"
PACKAGE = {
    "schema": "cavra.ack-audit-package/1",
    "package_id": "pkg-0001",
    "acknowledgements": [
        {"role": "release_manager", "acknowledged_at": "2024-05-01T10:00:00Z"},
        {"role": "sre", "acknowledged_at": "2024-05-01T10:02:30Z"},
    ],
    "drill": {"name": "rollback drill ü", "id": "drill-7"},
}


@pytest.fixture
def webhook() -> Iterator[WebhookConnectorType]:
    connector_type = WebhookConnectorType()
    yield connector_type
    connector_type.close()


@pytest.fixture
def receiver() -> Iterator[ScriptedReceiver]:
    with ScriptedReceiver() as started:
        yield started


def make_connector(url: str, **settings: Any) -> Connector:
    return Connector(
        connector_id="audit-hook", type="webhook", settings={"url": url, **settings}
    )


def make_delivery(attempt_number: int = 1) -> Delivery:
    return Delivery(
        package_id="pkg-0001",
        package=PACKAGE,
        lineage_id="lin-0001",
        attempt_number=attempt_number,
        event_id="evt-0001",
    )


# -- the plugin contract ----------------------------------------------------


def test_plugin_registers_the_webhook_type_through_pluggy() -> None:
    """The module is a valid plugin and declares one ConnectorType."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(cavra_webhook)
    manager.check_pending()

    declared = manager.hook.cavra_register_connector_types()

    [[connector_type]] = declared
    assert isinstance(connector_type, ConnectorType)
    assert (connector_type.name, connector_type.category) == ("webhook", "webhook")


def test_type_declares_how_its_failures_and_answers_are_read() -> None:
    connector_type = WebhookConnectorType()

    table = connector_type.classification

    assert set(table.values()) <= set(FAILURE_CATEGORIES)
    assert table["http:410"] == "receiver_stop"
    assert table["http:429"] == table["http:503"] == "throttle"
    for error_class in (
        "redirect",
        "tls_error",
        "invalid_secret",
        "missing_secret",
        "config_error",
    ):
        assert table[error_class] == "config"
    for error_class in ("timeout", "connect_timeout", "connection_refused"):
        assert table[error_class] == "transient"
    # Statuses are reported as error class http_status: only "http:" keys
    # may speak for them, or every status would get one category.
    assert "http_status" not in table
    assert connector_type.honours_retry_after is True
    assert connector_type.acknowledgement == "response"
    assert connector_type.batching == "one package per request"


# -- delivered --------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 202, 204])
def test_success_status_is_delivered(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver, code: int
) -> None:
    receiver.enqueue(status(code, body=b"" if code == 204 else b'{"ok":true}'))

    result = webhook.deliver(make_connector(receiver.url + "/hook"), make_delivery())

    assert result.outcome == "delivered"
    assert result.error_class is None
    assert result.http_status == code


def test_body_is_the_package_as_compact_json_with_sorted_keys(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    webhook.deliver(make_connector(receiver.url + "/hook"), make_delivery())

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.json == PACKAGE
    expected = json.dumps(PACKAGE, sort_keys=True, separators=(",", ":"))
    assert request.body == expected.encode("utf-8")


def test_headers_carry_idempotency_key_lineage_and_attempt(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    webhook.deliver(make_connector(receiver.url), make_delivery(attempt_number=3))

    [request] = receiver.requests
    assert request.headers["idempotency-key"] == "evt-0001"
    assert request.headers["x-cavra-lineage"] == "lin-0001"
    assert request.headers["x-cavra-attempt"] == "3"
    assert request.headers["user-agent"].startswith("cavra/")
    assert "authorization" not in request.headers


def test_configured_extra_headers_are_sent(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    connector = make_connector(receiver.url, headers={"X-Team": "release"})

    webhook.deliver(connector, make_delivery())

    assert receiver.requests[0].headers["x-team"] == "release"


def test_query_string_is_kept(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    webhook.deliver(make_connector(receiver.url + "/in?source=cavra"), make_delivery())

    [request] = receiver.requests
    assert (request.path, request.query) == ("/in", "source=cavra")


def test_pooled_connection_serves_consecutive_deliveries(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    receiver.enqueue(status(503), status(200))
    connector = make_connector(receiver.url)

    results = [webhook.deliver(connector, make_delivery(n)) for n in (1, 2, 3)]

    assert [result.http_status for result in results] == [503, 200, 204]
    assert [r.headers["x-cavra-attempt"] for r in receiver.requests] == ["1", "2", "3"]


# -- failures reported by the receiver --------------------------------------


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 429, 500, 502, 503])
def test_error_status_is_failed_with_http_status(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver, code: int
) -> None:
    receiver.enqueue(status(code, body=b"receiver says no"))

    result = webhook.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="http_status", http_status=code
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", "120"),
        ("  120 ", "120"),
        ("Wed, 21 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ("soon-ish", "soon-ish"),
    ],
)
def test_retry_after_is_passed_raw(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    header: str,
    expected: str,
) -> None:
    receiver.enqueue(status(503, {"Retry-After": header}))

    result = webhook.deliver(make_connector(receiver.url), make_delivery())

    assert (result.http_status, result.retry_after) == (503, expected)


def test_overlong_retry_after_is_dropped(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    receiver.enqueue(status(429, {"Retry-After": "9" * 65}))

    result = webhook.deliver(make_connector(receiver.url), make_delivery())

    assert (result.http_status, result.retry_after) == (429, None)


@pytest.mark.parametrize(
    "value", [None, "", "   ", "1\x07", "zwei Minuten ü", "x" * 65]
)
def test_unusable_retry_after_values_become_none(value: str | None) -> None:
    assert raw_retry_after(value) is None


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirect_is_reported_and_not_followed(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver, code: int
) -> None:
    receiver.enqueue(status(code, {"Location": receiver.url + "/moved"}), path="/hook")

    result = webhook.deliver(make_connector(receiver.url + "/hook"), make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="redirect", http_status=code
    )
    assert [request.path for request in receiver.requests] == ["/hook"]


# -- failures of the network ------------------------------------------------


def test_slow_receiver_is_a_read_timeout(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    receiver.enqueue(delay(5, then=status(200)))
    connector = make_connector(receiver.url, read_timeout_seconds=0.3)
    started = time.monotonic()

    result = webhook.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="timeout")
    assert time.monotonic() - started < 2
    assert len(receiver.requests) == 1


def test_closed_port_is_connection_refused(webhook: WebhookConnectorType) -> None:
    result = webhook.deliver(make_connector(closed_port_url()), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="connection_refused")


def test_dropped_connection_is_connection_reset(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    receiver.enqueue(close())

    result = webhook.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="connection_reset")
    assert len(receiver.requests) == 1


def test_unresolvable_host_is_dns_error(
    webhook: WebhookConnectorType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_to_resolve(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_to_resolve)

    result = webhook.deliver(
        make_connector("https://receiver.invalid/hook"), make_delivery()
    )

    assert result == DeliveryResult(outcome="failed", error_class="dns_error")


def test_unanswered_connect_is_connect_timeout(
    webhook: WebhookConnectorType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never_connect(self: socket.socket, address: Any) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket.socket, "connect", never_connect)

    result = webhook.deliver(
        make_connector(closed_port_url(), connect_timeout_seconds=0.2),
        make_delivery(),
    )

    assert result == DeliveryResult(outcome="failed", error_class="connect_timeout")


# -- TLS --------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = shlex.split(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]) -> Iterator[ScriptedReceiver]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with ScriptedReceiver(tls=context) as started:
        yield started


def test_untrusted_certificate_is_tls_error(
    webhook: WebhookConnectorType, tls_receiver: ScriptedReceiver
) -> None:
    result = webhook.deliver(make_connector(tls_receiver.url), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="tls_error")
    assert tls_receiver.requests == []


def test_probe_of_an_untrusted_certificate_fails_reachable_and_tls(
    webhook: WebhookConnectorType, tls_receiver: ScriptedReceiver
) -> None:
    result = webhook.probe(make_connector(tls_receiver.url + "/hook"))

    checks = {check.name: check for check in result.checks}
    assert not result.ok
    assert (checks["reachable"].ok, checks["tls"].ok) == (False, False)
    assert "tls_error" in checks["reachable"].detail
    assert "ca_bundle" in checks["tls"].detail
    assert tls_receiver.requests == []


def test_probe_with_the_ca_bundle_passes_tls(
    webhook: WebhookConnectorType,
    tls_receiver: ScriptedReceiver,
    certificate: tuple[Path, Path],
) -> None:
    connector = make_connector(tls_receiver.url, ca_bundle=str(certificate[0]))

    result = webhook.probe(connector)

    checks = {check.name: check for check in result.checks}
    assert result.ok
    assert checks["tls"].ok and "ca_bundle" in checks["tls"].detail
    assert "https://127.0.0.1 answered OPTIONS" in checks["reachable"].detail
    assert str(certificate[0]) not in repr(result)


def test_ca_bundle_makes_the_certificate_trusted(
    webhook: WebhookConnectorType,
    tls_receiver: ScriptedReceiver,
    certificate: tuple[Path, Path],
) -> None:
    connector = make_connector(tls_receiver.url, ca_bundle=str(certificate[0]))

    result = webhook.deliver(connector, make_delivery())

    assert result.outcome == "delivered"
    assert tls_receiver.requests[0].json == PACKAGE


# -- secrets ----------------------------------------------------------------


def test_bearer_token_comes_from_the_environment(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "tok-3f9a1c-secret-value")
    receiver.enqueue(status(401))
    connector = make_connector(receiver.url, auth_token_env=TOKEN_VARIABLE)

    result = webhook.deliver(connector, make_delivery())

    assert receiver.requests[0].headers["authorization"] == (
        "Bearer tok-3f9a1c-secret-value"
    )
    assert "tok-3f9a1c" not in repr(result)
    assert result.error_class == "http_status"


def test_missing_token_variable_fails_without_sending(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    connector = make_connector(receiver.url, auth_token_env=TOKEN_VARIABLE)

    result = webhook.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="missing_secret")
    assert receiver.requests == []


def test_token_with_a_line_break_fails_without_sending_or_leaking(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "tok-one\r\nX-Injected: yes")
    connector = make_connector(receiver.url, auth_token_env=TOKEN_VARIABLE)

    result = webhook.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="invalid_secret")
    assert receiver.requests == []


def test_log_names_ids_and_codes_but_no_url_or_token(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "tok-3f9a1c-secret-value")
    receiver.enqueue(status(503, {"Retry-After": "120"}))
    connector = make_connector(
        receiver.url + "/private-path", auth_token_env=TOKEN_VARIABLE
    )
    caplog.set_level(logging.DEBUG, logger="cavra_webhook")

    webhook.deliver(connector, make_delivery())

    # urllib3's own DEBUG lines name the path; the server keeps them off.
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("cavra_webhook")
    )
    assert "lin-0001" in logged and "audit-hook" in logged and "503" in logged
    assert "tok-3f9a1c" not in logged
    assert "private-path" not in logged
    assert str(receiver.port) not in logged


def test_vanished_ca_bundle_is_config_error_without_sending(
    webhook: WebhookConnectorType, tmp_path: Path
) -> None:
    connector = make_connector(
        "https://hooks.example.com/in", ca_bundle=str(tmp_path / "gone.pem")
    )

    result = webhook.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="config_error")


# -- settings ---------------------------------------------------------------


def test_minimal_and_full_settings_are_accepted(
    webhook: WebhookConnectorType, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")

    webhook.validate_settings("hook", {"url": "https://hooks.example.com"})
    webhook.validate_settings(
        "hook",
        {
            "url": "https://hooks.example.com:8443/cavra/in?source=cavra",
            "connect_timeout_seconds": 2.5,
            "read_timeout_seconds": 300,
            "auth_token_env": "CAVRA_HOOK_TOKEN",
            "signing_secret_env": "CAVRA_HOOK_SECRET",
            "signing_secrets_env": ["CAVRA_HOOK_SECRET_OLD", "CAVRA_HOOK_SECRET_NEW"],
            "headers": {"X-Team": "release", "Accept": "application/json"},
            "ca_bundle": str(bundle),
        },
    )
    webhook.validate_settings("hook", {"url": "http://[::1]:8080/in"})


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        ({"url": None}, "hook.url", "required"),
        ({"url": 42}, "hook.url", "URL"),
        ({"url": "ftp://hooks.example.com"}, "hook.url", "https://"),
        ({"url": "https://"}, "hook.url", "host"),
        ({"url": "https://bad_host!/"}, "hook.url", "host"),
        ({"url": "https://user:pw@hooks.example.com"}, "hook.url", "auth_token_env"),
        ({"url": "https://hooks.example.com:99999"}, "hook.url", "port"),
        ({"url": "https://hooks.example.com/in#x"}, "hook.url", "fragment"),
        ({"url": "https://hooks.example.com/a b"}, "hook.url", "spaces"),
        ({"url": "https://h.example.com/?token=abc"}, "hook.url", "auth_token_env"),
        ({"connect_timeout_seconds": 0}, "hook.connect_timeout_seconds", "120"),
        ({"connect_timeout_seconds": 121}, "hook.connect_timeout_seconds", "120"),
        ({"connect_timeout_seconds": "5"}, "hook.connect_timeout_seconds", "number"),
        ({"connect_timeout_seconds": True}, "hook.connect_timeout_seconds", "number"),
        ({"read_timeout_seconds": -1}, "hook.read_timeout_seconds", "300"),
        ({"read_timeout_seconds": 301}, "hook.read_timeout_seconds", "300"),
        ({"read_timeout_seconds": float("nan")}, "hook.read_timeout_seconds", "300"),
        ({"auth_token_env": "lower_case"}, "hook.auth_token_env", "environment"),
        ({"auth_token_env": "Bearer abc"}, "hook.auth_token_env", "environment"),
        ({"headers": "X-Team: a"}, "hook.headers", "table"),
        ({"headers": {"Authorization": "x"}}, "hook.headers.Authorization", "_env"),
        ({"headers": {"cookie": "x"}}, "hook.headers.cookie", "auth_token_env"),
        ({"headers": {"X-API-Key": "x"}}, "hook.headers.X-API-Key", "auth_token_env"),
        ({"headers": {"X-Team": 1}}, "hook.headers.X-Team", "string"),
        ({"headers": {"X-Team": "a\r\nb"}}, "hook.headers.X-Team", "printable"),
        ({"headers": {"Bad Name": "a"}}, "hook.headers.Bad Name", "header name"),
        ({"headers": {"Content-Type": "a"}}, "hook.headers.Content-Type", "cavra"),
        (
            {"headers": {"X-Cavra-Attempt": "9"}},
            "hook.headers.X-Cavra-Attempt",
            "cavra",
        ),
        ({"headers": {"webhook-id": "x"}}, "hook.headers.webhook-id", "cavra"),
        (
            {"headers": {"Webhook-Timestamp": "1"}},
            "hook.headers.Webhook-Timestamp",
            "cavra",
        ),
        ({"signing_secret_env": "whsec_abc"}, "hook.signing_secret_env", "environment"),
        ({"signing_secrets_env": "CAVRA_A"}, "hook.signing_secrets_env", "list"),
        ({"signing_secrets_env": []}, "hook.signing_secrets_env", "unsigned"),
        (
            {"signing_secrets_env": ["CAVRA_A", "whsec_abc"]},
            "hook.signing_secrets_env[1]",
            "environment",
        ),
        (
            {"signing_secrets_env": ["CAVRA_A", "CAVRA_A"]},
            "hook.signing_secrets_env",
            "twice",
        ),
        (
            {"signing_secret_env": "CAVRA_A", "signing_secrets_env": ["CAVRA_A"]},
            "hook.signing_secrets_env",
            "twice",
        ),
        (
            {"signing_secrets_env": [f"CAVRA_{n}" for n in "ABCDE"]},
            "hook.signing_secrets_env",
            "more than 4",
        ),
        (
            {"auth_token_env": "CAVRA_A", "signing_secrets_env": ["CAVRA_A"]},
            "hook.auth_token_env",
            "signing secret",
        ),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "hook.ca_bundle", "PEM"),
        ({"ca_bundle": 3}, "hook.ca_bundle", "PEM"),
        ({"verify_tls": False}, "hook.verify_tls", "not a webhook setting"),
    ],
)
def test_invalid_setting_names_its_key(
    webhook: WebhookConnectorType, overrides: dict[str, Any], key: str, hint: str
) -> None:
    """Each override spoils one valid table; None removes the setting."""
    settings = {"url": "https://hooks.example.com/in", **overrides}
    settings = {name: value for name, value in settings.items() if value is not None}

    with pytest.raises(ConnectorConfigError) as caught:
        webhook.validate_settings("hook", settings)

    assert caught.value.key == key
    assert hint in caught.value.message


def test_ca_bundle_with_plain_http_url_is_refused(
    webhook: WebhookConnectorType, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")

    with pytest.raises(ConnectorConfigError) as caught:
        webhook.validate_settings(
            "hook", {"url": "http://hooks.example.com", "ca_bundle": str(bundle)}
        )

    assert caught.value.key == "hook.ca_bundle"
    assert "https" in caught.value.message
