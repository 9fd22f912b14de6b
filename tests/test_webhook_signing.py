"""
Standard Webhooks signatures and the probe of the webhook connector.

Every signed delivery is checked with the published ``standardwebhooks``
verifier, the library a receiver would use, never with cavra's own code.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from receivers import ReceivedRequest, ScriptedReceiver, closed_port_url, status
from standardwebhooks import Webhook, WebhookVerificationError

from cavra_core.types import Connector, Delivery, DeliveryResult, ProbeResult
from cavra_webhook import WebhookConnectorType
from cavra_webhook.signing import SecretError, decode_secret, sign

OLD_VARIABLE = "CAVRA_TEST_SIGNING_OLD"
NEW_VARIABLE = "CAVRA_TEST_SIGNING_NEW"
TOKEN_VARIABLE = "CAVRA_TEST_WEBHOOK_TOKEN"
OLD_KEY = b"old-signing-key:3e1f0b5a9c7d"  # 28 bytes
NEW_KEY = b"new-signing-key:7a2c4e6b8d0f1234"  # 32 bytes
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
NEW_SECRET = "whsec_" + base64.b64encode(NEW_KEY).decode()
PACKAGE = {
    "schema": "cavra.ack-audit-package/1",
    "package_id": "pkg-0001",
    "acknowledgements": [
        {"role": "release_manager", "acknowledged_at": "2024-05-01T10:00:00Z"},
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


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OLD_VARIABLE, OLD_SECRET)
    monkeypatch.setenv(NEW_VARIABLE, NEW_SECRET)


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


def verifies(secret: str, request: ReceivedRequest) -> bool:
    """Whether the published verifier accepts ``request`` under ``secret``."""
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def secret_forms(secret: str) -> list[str]:
    """The secret as configured, its base64 part and its raw key."""
    encoded = secret.removeprefix("whsec_")
    return [secret, encoded, base64.b64decode(encoded + "==").decode("latin-1")]


# -- signed deliveries --------------------------------------------------------


@pytest.mark.usefixtures("secrets")
def test_delivery_verifies_with_its_secret(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    connector = make_connector(receiver.url + "/hook", signing_secret_env=NEW_VARIABLE)
    before = int(time.time())

    result = webhook.deliver(connector, make_delivery())

    [request] = receiver.requests
    assert result.outcome == "delivered"
    assert Webhook(NEW_SECRET).verify(request.body, request.headers) == PACKAGE
    assert request.headers["webhook-id"] == "evt-0001"
    assert before <= int(request.headers["webhook-timestamp"]) <= time.time()
    assert request.headers["webhook-signature"].startswith("v1,")
    assert not verifies(OLD_SECRET, request)


def test_signature_matches_the_reference_signer() -> None:
    """cavra's signer agrees with the published library on a fixed input."""
    body = b'{"a":"\xc3\xbc","b":[1,2]}'
    key = decode_secret(NEW_VARIABLE, NEW_SECRET)

    ours = sign(key, "evt-0001", 1_714_557_600, body)

    reference = Webhook(NEW_SECRET).sign(
        "evt-0001", datetime.fromtimestamp(1_714_557_600, UTC), body.decode()
    )
    assert ours == reference


def test_unsigned_delivery_carries_id_and_timestamp_only(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    webhook.deliver(make_connector(receiver.url), make_delivery())

    [request] = receiver.requests
    assert request.headers["webhook-id"] == "evt-0001"
    assert request.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in request.headers


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize(
    "settings",
    [
        {"signing_secrets_env": [OLD_VARIABLE, NEW_VARIABLE]},
        {"signing_secret_env": OLD_VARIABLE, "signing_secrets_env": [NEW_VARIABLE]},
    ],
    ids=["list", "single-and-list"],
)
def test_during_rotation_both_secrets_verify(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver, settings: dict
) -> None:
    webhook.deliver(make_connector(receiver.url, **settings), make_delivery())

    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verifies(OLD_SECRET, request)
    assert verifies(NEW_SECRET, request)


@pytest.mark.usefixtures("secrets")
def test_after_rotation_only_the_new_secret_verifies(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    connector = make_connector(receiver.url, signing_secrets_env=[NEW_VARIABLE])

    webhook.deliver(connector, make_delivery())

    [request] = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert verifies(NEW_SECRET, request)
    assert not verifies(OLD_SECRET, request)


@pytest.mark.usefixtures("secrets")
def test_retries_keep_the_id_and_take_a_fresh_timestamp(
    receiver: ScriptedReceiver,
) -> None:
    """Attempt 1 is answered 503, attempt 2, four minutes later, 200."""
    now = time.time()
    clock_readings = iter([now - 240, now])
    webhook = WebhookConnectorType(clock=lambda: next(clock_readings))
    receiver.enqueue(status(503, {"Retry-After": "240"}), status(200))
    connector = make_connector(receiver.url, signing_secret_env=NEW_VARIABLE)

    results = [webhook.deliver(connector, make_delivery(n)) for n in (1, 2)]
    webhook.close()

    first, second = receiver.requests
    assert [result.http_status for result in results] == [503, 200]
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "evt-0001"
    assert int(first.headers["webhook-timestamp"]) == int(now - 240)
    assert int(second.headers["webhook-timestamp"]) == int(now)
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert verifies(NEW_SECRET, first)
    assert verifies(NEW_SECRET, second)


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize(
    "tamper",
    [
        lambda body, headers: (body.replace(b"release_manager", b"observer"), headers),
        lambda body, headers: (body + b" ", headers),
        lambda body, headers: (body, {**headers, "webhook-id": "evt-0002"}),
        lambda body, headers: (
            body,
            {
                **headers,
                "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1),
            },
        ),
    ],
    ids=["changed-body", "extra-space", "other-id", "other-timestamp"],
)
def test_tampered_delivery_fails_verification(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver, tamper: Any
) -> None:
    webhook.deliver(
        make_connector(receiver.url, signing_secret_env=NEW_VARIABLE), make_delivery()
    )
    [request] = receiver.requests
    body, headers = tamper(request.body, request.headers)

    with pytest.raises(WebhookVerificationError):
        Webhook(NEW_SECRET).verify(body, headers)


# -- secrets that cannot sign -------------------------------------------------

INVALID_SECRETS = {
    "no-prefix": base64.b64encode(NEW_KEY).decode(),
    "not-base64": "whsec_not*base64!value-9d41",
    "url-safe-alphabet": "whsec_" + base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
    "too-short": "whsec_" + base64.b64encode(b"short-key-5c2e").decode(),
    "too-long": "whsec_" + base64.b64encode(b"k" * 65).decode(),
    "prefix-only": "whsec_",
}


@pytest.mark.parametrize("value", INVALID_SECRETS.values(), ids=INVALID_SECRETS)
def test_invalid_secret_sends_nothing(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    monkeypatch.setenv(NEW_VARIABLE, value)
    caplog.set_level(logging.DEBUG)

    result = webhook.deliver(
        make_connector(receiver.url, signing_secret_env=NEW_VARIABLE), make_delivery()
    )

    assert result == DeliveryResult(outcome="failed", error_class="invalid_secret")
    assert receiver.requests == []
    assert NEW_VARIABLE in caplog.text
    if len(value) > len("whsec_"):
        assert value not in caplog.text


@pytest.mark.usefixtures("secrets")
def test_one_invalid_secret_in_a_rotation_sends_nothing(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(OLD_VARIABLE, "whsec_???")
    connector = make_connector(
        receiver.url, signing_secrets_env=[OLD_VARIABLE, NEW_VARIABLE]
    )

    result = webhook.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="invalid_secret")
    assert receiver.requests == []


@pytest.mark.parametrize("value", [None, "", "  \n"], ids=["unset", "empty", "blank"])
def test_missing_secret_sends_nothing(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
) -> None:
    monkeypatch.setenv(OLD_VARIABLE, OLD_SECRET)
    if value is None:
        monkeypatch.delenv(NEW_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(NEW_VARIABLE, value)
    connector = make_connector(
        receiver.url, signing_secrets_env=[OLD_VARIABLE, NEW_VARIABLE]
    )

    result = webhook.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="missing_secret")
    assert receiver.requests == []


def test_secret_errors_name_the_variable_not_the_value() -> None:
    with pytest.raises(SecretError) as caught:
        decode_secret(NEW_VARIABLE, "whsec_leaky*value")

    assert caught.value.error_class == "invalid_secret"
    assert NEW_VARIABLE in str(caught.value)
    assert "leaky" not in str(caught.value)
    assert "leaky" not in repr(caught.value.args)
    assert "key=" not in repr(decode_secret(NEW_VARIABLE, NEW_SECRET))


@pytest.mark.usefixtures("secrets")
def test_secrets_never_reach_results_or_logs(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.enqueue(status(503, {"Retry-After": "30"}), status(401), status(200))
    connector = make_connector(
        receiver.url, signing_secrets_env=[OLD_VARIABLE, NEW_VARIABLE]
    )
    caplog.set_level(logging.DEBUG)

    results = [webhook.deliver(connector, make_delivery(n)) for n in (1, 2, 3)]
    results.append(webhook.probe(connector))

    shown = caplog.text + "".join(repr(result) for result in results)
    for secret in (OLD_SECRET, NEW_SECRET):
        for form in secret_forms(secret):
            assert form not in shown
    assert "signatures=2" in caplog.text


# -- the probe ----------------------------------------------------------------


def probe_text(result: ProbeResult) -> str:
    return " ".join(check.detail for check in result.checks)


def checks_by_name(result: ProbeResult) -> dict[str, bool]:
    return {check.name: check.ok for check in result.checks}


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize("code", [200, 204, 404, 405])
def test_probe_of_an_answering_receiver_is_reachable(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver, code: int
) -> None:
    receiver.enqueue(status(code))
    connector = make_connector(
        receiver.url + "/private/hook?source=cavra",
        signing_secrets_env=[OLD_VARIABLE, NEW_VARIABLE],
    )

    result = webhook.probe(connector)

    assert result.ok
    assert checks_by_name(result) == {
        "secrets": True,
        "reachable": True,
        "credentials": True,
    }
    [request] = receiver.requests
    assert (request.method, request.path, request.body) == (
        "OPTIONS",
        "/private/hook",
        b"",
    )
    assert "webhook-signature" not in request.headers
    text = probe_text(result)
    assert f"http://127.0.0.1 answered OPTIONS with {code}" in text
    assert "private" not in text and "source" not in text
    assert str(receiver.port) not in text
    assert OLD_VARIABLE in text


@pytest.mark.parametrize("code", [401, 403])
def test_probe_answered_with_401_or_403_fails_the_credentials_check(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "tok-probe-8c1d")
    receiver.enqueue(status(code))
    connector = make_connector(receiver.url, auth_token_env=TOKEN_VARIABLE)

    result = webhook.probe(connector)

    assert not result.ok
    assert checks_by_name(result) == {
        "secrets": True,
        "reachable": True,
        "credentials": False,
    }
    assert receiver.requests[0].headers["authorization"] == "Bearer tok-probe-8c1d"
    assert TOKEN_VARIABLE in probe_text(result)
    assert "tok-probe" not in repr(result)


def test_probe_of_a_closed_port_is_not_reachable(
    webhook: WebhookConnectorType,
) -> None:
    result = webhook.probe(make_connector(closed_port_url() + "/hook"))

    assert not result.ok
    assert checks_by_name(result) == {"secrets": True, "reachable": False}
    assert "connection_refused" in probe_text(result)
    assert "/hook" not in probe_text(result)


def test_probe_reports_a_redirect(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    receiver.enqueue(status(308, {"Location": receiver.url + "/elsewhere"}))

    result = webhook.probe(make_connector(receiver.url))

    assert not result.ok
    assert checks_by_name(result)["reachable"] is True
    assert checks_by_name(result)["redirect"] is False
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("whsec_bad*secret*value", "is not base64"),
        ("plain-bad-secret-value", "does not start with 'whsec_'"),
        (None, "is not set"),
    ],
)
def test_probe_with_a_bad_secret_fails_the_secrets_check(
    webhook: WebhookConnectorType,
    receiver: ScriptedReceiver,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    reason: str,
) -> None:
    monkeypatch.setenv(OLD_VARIABLE, OLD_SECRET)
    if value is None:
        monkeypatch.delenv(NEW_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(NEW_VARIABLE, value)
    connector = make_connector(
        receiver.url, signing_secrets_env=[OLD_VARIABLE, NEW_VARIABLE]
    )

    result = webhook.probe(connector)

    assert not result.ok
    assert checks_by_name(result) == {
        "secrets": False,
        "reachable": True,
        "credentials": True,
    }
    [secrets_check] = [check for check in result.checks if check.name == "secrets"]
    assert f"{NEW_VARIABLE} {reason}" in secrets_check.detail
    assert "bad-secret" not in repr(result) and "secret*value" not in repr(result)
    for form in secret_forms(OLD_SECRET):
        assert form not in repr(result)


def test_probe_with_invalid_settings_sends_nothing(
    webhook: WebhookConnectorType, receiver: ScriptedReceiver
) -> None:
    connector = make_connector(receiver.url, signing_secrets_env=[])

    result = webhook.probe(connector)

    assert not result.ok
    assert checks_by_name(result) == {"settings": False}
    assert "audit-hook.signing_secrets_env" in probe_text(result)
    assert receiver.requests == []
