"""The Splunk HEC connector against a fake HEC and a scripted receiver."""

from __future__ import annotations

import logging
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hec_receiver import ACK_PATH, EVENT_PATH, FakeHec
from receivers import ScriptedReceiver, close, closed_port_url, delay, status

from cavra_core.types import (
    FAILURE_CATEGORIES,
    Connector,
    ConnectorConfigError,
    ConnectorType,
    Delivery,
    DeliveryResult,
)
from cavra_siem.hec import (
    CLASSIFICATION,
    HEC_ERROR_CLASSES,
    HecConnectorType,
    default_channel,
    parse_settings,
)

TOKEN_VARIABLE = "CAVRA_TEST_HEC_TOKEN"
TOKEN = "hec-7d41c2e9-secret-value"
PACKAGE = {
    "schema": "cavra.ack-audit-package/1",
    "drill_id": "drill-7",
    "generated_at": "2024-05-01T12:00:00.250+02:00",
    "acknowledgements": [
        {"role": "release manager", "acknowledged_at": "2024-05-01T10:00:00Z"},
    ],
}
#: 2024-05-01T10:00:00.250Z in epoch seconds.
GENERATED_AT_EPOCH = 1714557600.25
#: A poll schedule short enough for tests.
QUICK_POLLS = [0.05, 0.05, 0.05]


@pytest.fixture
def hec_type() -> Iterator[HecConnectorType]:
    connector_type = HecConnectorType()
    yield connector_type
    connector_type.close()


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    return TOKEN


@pytest.fixture
def hec() -> Iterator[FakeHec]:
    with FakeHec(tokens={TOKEN}, disabled_tokens={"hec-disabled"}) as started:
        yield started


@pytest.fixture
def acking_hec() -> Iterator[FakeHec]:
    with FakeHec(tokens={TOKEN}, acknowledgement=True) as started:
        yield started


def make_connector(url: str, **settings: Any) -> Connector:
    return Connector(
        connector_id="audit-splunk",
        type="hec",
        settings={"url": url, "token_env": TOKEN_VARIABLE, **settings},
    )


def make_delivery(attempt_number: int = 1, package: Any = None) -> Delivery:
    return Delivery(
        package_id="pkg-0001",
        package=PACKAGE if package is None else package,
        lineage_id="lin-0001",
        attempt_number=attempt_number,
        event_id="evt-0001",
    )


def hec_body(code: int, text: str = "x") -> str:
    return f'{{"text": "{text}", "code": {code}}}'


# -- the type ---------------------------------------------------------------


def test_type_declares_the_optional_contract(hec_type: HecConnectorType) -> None:
    assert isinstance(hec_type, ConnectorType)
    assert (hec_type.name, hec_type.category) == ("hec", "siem")
    assert hec_type.honours_retry_after is True
    assert hec_type.acknowledgement == "indexer_ack"
    assert hec_type.batching == "one HEC event per package per request"


def test_classification_covers_every_hec_error_class() -> None:
    assert set(HEC_ERROR_CLASSES.values()) <= set(CLASSIFICATION)
    assert set(CLASSIFICATION.values()) <= set(FAILURE_CATEGORIES)


# -- delivered --------------------------------------------------------------


def test_event_envelope_carries_metadata_package_and_event_id(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    connector = make_connector(hec.url, index="audit", host="cavra-worker-1")

    result = hec_type.deliver(connector, make_delivery(attempt_number=2))

    assert result == DeliveryResult(outcome="delivered", http_status=200)
    [accepted] = hec.events
    assert accepted.envelope == {
        "time": GENERATED_AT_EPOCH,
        "host": "cavra-worker-1",
        "source": "cavra",
        "sourcetype": "cavra:audit_package",
        "index": "audit",
        "event": {
            "package_id": "pkg-0001",
            "lineage_id": "lin-0001",
            "attempt_number": 2,
            "event_id": "evt-0001",
            "package": PACKAGE,
        },
        "fields": {"cavra_event_id": "evt-0001"},
    }


def test_request_carries_splunk_authorization_and_the_channel(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    hec_type.deliver(make_connector(hec.url), make_delivery())

    [request] = hec.requests
    assert (request.method, request.path) == ("POST", EVENT_PATH)
    assert request.headers["authorization"] == f"Splunk {TOKEN}"
    assert request.headers["x-splunk-request-channel"] == default_channel(
        "audit-splunk"
    )
    assert request.headers["content-type"] == "application/json"


def test_defaults_leave_index_out_and_use_the_machine_host_name(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    hec_type.deliver(make_connector(hec.url), make_delivery())

    envelope = hec.events[0].envelope
    assert "index" not in envelope
    assert envelope["host"] == socket.gethostname()


def test_package_without_generated_at_leaves_time_to_hec(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    package = {key: value for key, value in PACKAGE.items() if key != "generated_at"}

    hec_type.deliver(make_connector(hec.url), make_delivery(package=package))

    assert "time" not in hec.events[0].envelope


def test_base_url_path_prefix_is_kept(hec_type: HecConnectorType) -> None:
    with ScriptedReceiver(fallback=status(200, body=hec_body(0))) as receiver:
        hec_type.deliver(make_connector(receiver.url + "/splunk/"), make_delivery())

        assert receiver.requests[0].path == "/splunk" + EVENT_PATH


def test_channel_is_derived_from_the_connector_id_unless_configured(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    fixed = "FE0ECFAD-13D5-401B-847D-77833BD77131"

    hec_type.deliver(make_connector(hec.url), make_delivery())
    hec_type.deliver(make_connector(hec.url, channel=fixed), make_delivery())

    channels = [event.channel for event in hec.events]
    assert channels == [default_channel("audit-splunk"), fixed]
    assert uuid.UUID(channels[0]) == uuid.UUID(default_channel("audit-splunk"))
    assert default_channel("audit-splunk") != default_channel("other")


def test_unknown_success_code_falls_back_to_the_http_status(
    hec_type: HecConnectorType,
) -> None:
    with ScriptedReceiver(fallback=status(200, body=hec_body(24))) as receiver:
        result = hec_type.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(outcome="delivered", http_status=200)


# -- HEC's refusals ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http_status", "error_class", "category"),
    [
        (1, 403, "hec_token_disabled", "config"),
        (2, 401, "hec_token_required", "config"),
        (3, 401, "hec_invalid_authorization", "config"),
        (4, 403, "hec_invalid_token", "config"),
        (5, 400, "hec_no_data", "permanent"),
        (6, 400, "hec_invalid_data_format", "permanent"),
        (7, 400, "hec_incorrect_index", "config"),
        (8, 500, "hec_internal_error", "transient"),
        (9, 503, "hec_server_busy", "throttle"),
        (10, 400, "hec_channel_missing", "config"),
        (11, 400, "hec_invalid_channel", "config"),
        (12, 400, "hec_event_field_required", "permanent"),
        (13, 400, "hec_event_field_blank", "permanent"),
        (14, 400, "hec_ack_disabled", "config"),
        (15, 400, "hec_indexed_fields_error", "permanent"),
        (18, 503, "hec_unhealthy", "throttle"),
        (19, 503, "hec_unhealthy", "throttle"),
        (20, 503, "hec_unhealthy", "throttle"),
        (23, 503, "hec_shutting_down", "transient"),
        (26, 429, "hec_at_capacity", "throttle"),
        (27, 429, "hec_at_capacity", "throttle"),
    ],
)
def test_hec_code_maps_to_its_error_class_and_category(
    hec_type: HecConnectorType,
    hec: FakeHec,
    code: int,
    http_status: int,
    error_class: str,
    category: str,
) -> None:
    hec.answer_next(code)

    result = hec_type.deliver(make_connector(hec.url), make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class=error_class, http_status=http_status
    )
    assert hec_type.classification[error_class] == category


def test_disabled_token_is_refused_by_hec(
    hec_type: HecConnectorType, hec: FakeHec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "hec-disabled")

    result = hec_type.deliver(make_connector(hec.url), make_delivery())

    assert (result.error_class, result.http_status) == ("hec_token_disabled", 403)


def test_unknown_token_is_refused_by_hec(
    hec_type: HecConnectorType, hec: FakeHec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "hec-unknown")

    result = hec_type.deliver(make_connector(hec.url), make_delivery())

    assert (result.error_class, result.http_status) == ("hec_invalid_token", 403)


def test_index_outside_the_token_allow_list_is_incorrect_index(
    hec_type: HecConnectorType,
) -> None:
    with FakeHec(tokens={TOKEN}, indexes={"main"}) as hec:
        result = hec_type.deliver(
            make_connector(hec.url, index="audit"), make_delivery()
        )

    assert (result.error_class, result.http_status) == ("hec_incorrect_index", 400)


def test_busy_answer_passes_retry_after_raw(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    hec.answer_busy(retry_after=" 45 ")

    result = hec_type.deliver(make_connector(hec.url), make_delivery())

    assert result == DeliveryResult(
        outcome="failed",
        error_class="hec_server_busy",
        http_status=503,
        retry_after="45",
    )


def test_unknown_code_falls_back_to_the_http_status(
    hec_type: HecConnectorType,
) -> None:
    with ScriptedReceiver(fallback=status(429, body=hec_body(99))) as receiver:
        result = hec_type.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="http_status", http_status=429
    )
    assert CLASSIFICATION["http:429"] == "throttle"


def test_error_page_from_a_proxy_falls_back_to_the_http_status(
    hec_type: HecConnectorType,
) -> None:
    answer = status(502, {"Retry-After": "10"}, "<html>Bad gateway</html>")
    with ScriptedReceiver(fallback=answer) as receiver:
        result = hec_type.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="http_status", http_status=502, retry_after="10"
    )


def test_success_status_without_hec_answer_is_not_trusted(
    hec_type: HecConnectorType,
) -> None:
    with ScriptedReceiver(fallback=status(200, body="<html>ok</html>")) as receiver:
        result = hec_type.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="hec_unreadable_response", http_status=200
    )
    assert CLASSIFICATION["hec_unreadable_response"] == "config"


def test_redirect_is_reported_and_not_followed(hec_type: HecConnectorType) -> None:
    with ScriptedReceiver() as receiver:
        receiver.enqueue(status(301, {"Location": receiver.url + "/elsewhere"}))

        result = hec_type.deliver(make_connector(receiver.url), make_delivery())

        assert result == DeliveryResult(
            outcome="failed", error_class="redirect", http_status=301
        )
        assert len(receiver.requests) == 1


# -- the network ------------------------------------------------------------


def test_closed_port_is_connection_refused(hec_type: HecConnectorType) -> None:
    result = hec_type.deliver(make_connector(closed_port_url()), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="connection_refused")


def test_slow_collector_is_a_read_timeout(hec_type: HecConnectorType) -> None:
    with ScriptedReceiver() as receiver:
        receiver.enqueue(delay(5, then=status(200, body=hec_body(0))))
        connector = make_connector(receiver.url, read_timeout_seconds=0.2)

        result = hec_type.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="timeout")


def test_dropped_connection_is_connection_reset(hec_type: HecConnectorType) -> None:
    with ScriptedReceiver() as receiver:
        receiver.enqueue(close())

        result = hec_type.deliver(make_connector(receiver.url), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="connection_reset")


def test_unresolvable_host_is_dns_error(
    hec_type: HecConnectorType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse_to_resolve(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_to_resolve)

    result = hec_type.deliver(
        make_connector("https://splunk.invalid:8088"), make_delivery()
    )

    assert result == DeliveryResult(outcome="failed", error_class="dns_error")


def test_unanswered_connect_is_connect_timeout(
    hec_type: HecConnectorType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never_connect(self: socket.socket, address: Any) -> None:
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket.socket, "connect", never_connect)

    result = hec_type.deliver(
        make_connector(closed_port_url(), connect_timeout_seconds=0.2),
        make_delivery(),
    )

    assert result == DeliveryResult(outcome="failed", error_class="connect_timeout")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("hec-tls")
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
def tls_hec(certificate: tuple[Path, Path]) -> Iterator[FakeHec]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    with FakeHec(tokens={TOKEN}, tls=context) as started:
        yield started


def test_untrusted_certificate_is_tls_error(
    hec_type: HecConnectorType, tls_hec: FakeHec
) -> None:
    result = hec_type.deliver(make_connector(tls_hec.url), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="tls_error")
    assert tls_hec.events == []


def test_ca_bundle_makes_the_certificate_trusted(
    hec_type: HecConnectorType, tls_hec: FakeHec, certificate: tuple[Path, Path]
) -> None:
    connector = make_connector(tls_hec.url, ca_bundle=str(certificate[0]))

    result = hec_type.deliver(connector, make_delivery())

    assert result.outcome == "delivered"
    assert len(tls_hec.events) == 1


# -- indexer acknowledgement ------------------------------------------------


def test_acknowledged_event_is_delivered_after_polling(
    hec_type: HecConnectorType, acking_hec: FakeHec
) -> None:
    acking_hec.confirm_after_polls = 2
    connector = make_connector(
        acking_hec.url, indexer_acknowledgement=True, ack_poll_seconds=QUICK_POLLS
    )

    result = hec_type.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="delivered", http_status=200)
    polls = acking_hec.requests_to(ACK_PATH)
    assert [poll.json for poll in polls] == [{"acks": [0]}, {"acks": [0]}]
    channel = default_channel("audit-splunk")
    for poll in polls:
        assert poll.headers["x-splunk-request-channel"] == channel
        assert poll.headers["authorization"] == f"Splunk {TOKEN}"


def test_ack_never_confirmed_is_ack_timeout_within_the_schedule(
    hec_type: HecConnectorType, acking_hec: FakeHec
) -> None:
    acking_hec.confirm_after_polls = None
    connector = make_connector(
        acking_hec.url, indexer_acknowledgement=True, ack_poll_seconds=QUICK_POLLS
    )
    started = time.monotonic()

    result = hec_type.deliver(connector, make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="ack_timeout", http_status=200
    )
    assert len(acking_hec.requests_to(ACK_PATH)) == len(QUICK_POLLS)
    assert time.monotonic() - started < 2
    assert CLASSIFICATION["ack_timeout"] == "transient"


def test_busy_ack_endpoint_is_polled_again(
    hec_type: HecConnectorType, acking_hec: FakeHec
) -> None:
    acking_hec.answer_next(9, headers={"Retry-After": "1"}, path=ACK_PATH)
    connector = make_connector(
        acking_hec.url, indexer_acknowledgement=True, ack_poll_seconds=QUICK_POLLS
    )

    result = hec_type.deliver(connector, make_delivery())

    assert result.outcome == "delivered"
    assert len(acking_hec.requests_to(ACK_PATH)) == 2


def test_missing_ack_id_while_acknowledgement_is_on_is_ack_disabled(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    connector = make_connector(
        hec.url, indexer_acknowledgement=True, ack_poll_seconds=QUICK_POLLS
    )

    result = hec_type.deliver(connector, make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="hec_ack_disabled", http_status=200
    )
    assert hec.requests_to(ACK_PATH) == []


def test_ack_endpoint_refusing_the_token_ends_the_wait(
    hec_type: HecConnectorType, acking_hec: FakeHec
) -> None:
    acking_hec.answer_next(4, path=ACK_PATH)
    connector = make_connector(
        acking_hec.url, indexer_acknowledgement=True, ack_poll_seconds=QUICK_POLLS
    )

    result = hec_type.deliver(connector, make_delivery())

    assert result == DeliveryResult(
        outcome="failed", error_class="hec_invalid_token", http_status=403
    )
    assert len(acking_hec.requests_to(ACK_PATH)) == 1


def test_acknowledgement_off_ignores_an_ack_id(
    hec_type: HecConnectorType, acking_hec: FakeHec
) -> None:
    result = hec_type.deliver(make_connector(acking_hec.url), make_delivery())

    assert result.outcome == "delivered"
    assert acking_hec.events[0].ack_id == 0
    assert acking_hec.requests_to(ACK_PATH) == []


# -- retries of one lineage -------------------------------------------------


def test_event_id_and_channel_stay_the_same_across_attempts(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    hec.answer_busy()
    connector = make_connector(hec.url)

    first = hec_type.deliver(connector, make_delivery(attempt_number=1))
    second = hec_type.deliver(connector, make_delivery(attempt_number=2))

    assert (first.error_class, second.outcome) == ("hec_server_busy", "delivered")
    sent = [request.json for request in hec.requests_to(EVENT_PATH)]
    assert [body["fields"]["cavra_event_id"] for body in sent] == ["evt-0001"] * 2
    assert [body["event"]["event_id"] for body in sent] == ["evt-0001"] * 2
    assert [body["event"]["attempt_number"] for body in sent] == [1, 2]
    channels = {r.headers["x-splunk-request-channel"] for r in hec.requests}
    assert channels == {default_channel("audit-splunk")}
    assert len(hec.events) == 1


# -- the token --------------------------------------------------------------


def test_token_travels_only_in_the_authorization_header(
    hec_type: HecConnectorType,
    acking_hec: FakeHec,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="cavra_siem")
    acking_hec.answer_busy()
    connector = make_connector(
        acking_hec.url, indexer_acknowledgement=True, ack_poll_seconds=QUICK_POLLS
    )

    results = [hec_type.deliver(connector, make_delivery(n)) for n in (1, 2)]
    probe = hec_type.probe(connector)

    for request in acking_hec.requests:
        assert TOKEN not in request.body.decode("utf-8")
        assert TOKEN not in request.path + request.query
        carrying = {name for name, value in request.headers.items() if TOKEN in value}
        assert carrying <= {"authorization"}
    assert TOKEN not in repr(results) + repr(probe)
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("cavra_siem")
    )
    assert "lin-0001" in logged and "audit-splunk" in logged
    assert TOKEN not in logged
    assert str(acking_hec.port) not in logged


def test_missing_token_fails_without_sending(
    hec_type: HecConnectorType, hec: FakeHec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE)

    result = hec_type.deliver(make_connector(hec.url), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="missing_secret")
    assert hec.requests == []


def test_token_with_a_line_break_fails_without_sending(
    hec_type: HecConnectorType, hec: FakeHec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "hec-one\r\nX-Injected: yes")

    result = hec_type.deliver(make_connector(hec.url), make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="invalid_secret")
    assert hec.requests == []


def test_settings_spoiled_since_start_up_are_config_error(
    hec_type: HecConnectorType, tmp_path: Path
) -> None:
    connector = make_connector(
        "https://splunk.example:8088", ca_bundle=str(tmp_path / "gone.pem")
    )

    result = hec_type.deliver(connector, make_delivery())

    assert result == DeliveryResult(outcome="failed", error_class="config_error")


# -- settings ---------------------------------------------------------------


def test_minimal_and_full_settings_are_accepted(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")

    minimal = parse_settings(
        "splunk", {"url": "https://splunk.example:8088/", "token_env": "HEC_TOKEN"}
    )
    full = parse_settings(
        "splunk",
        {
            "url": "https://splunk.example:8088/gateway",
            "token_env": "HEC_TOKEN",
            "index": "audit-evidence_2",
            "source": "cavra-prod",
            "sourcetype": "cavra:audit_package",
            "host": "worker-1.example",
            "indexer_acknowledgement": True,
            "ack_poll_seconds": [0.5, 60, 60, 60, 60, 59.5],
            "connect_timeout_seconds": 2,
            "read_timeout_seconds": 30,
            "ca_bundle": str(bundle),
            "channel": "fe0ecfad-13d5-401b-847d-77833bd77131",
        },
    )

    assert minimal.url == "https://splunk.example:8088"
    assert minimal.ack_poll_seconds == (1, 2, 4, 8)
    assert minimal.indexer_acknowledgement is False
    assert full.path(EVENT_PATH) == "/gateway" + EVENT_PATH
    assert sum(full.ack_poll_seconds) == 300


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        ({"url": None}, "hec.url", "required"),
        ({"url": 8088}, "hec.url", "URL"),
        ({"url": "tcp://splunk.example:8088"}, "hec.url", "https://"),
        ({"url": "https://:8088"}, "hec.url", "host"),
        ({"url": "https://admin:pw@splunk.example"}, "hec.url", "token_env"),
        ({"url": "https://splunk.example:0"}, "hec.url", "port"),
        ({"url": "https://splunk.example/?token=abc"}, "hec.url", "token_env"),
        ({"url": "https://splunk.example/#top"}, "hec.url", "fragment"),
        ({"url": "https://splunk.example/a b"}, "hec.url", "spaces"),
        (
            {"url": "https://splunk.example:8088/services/collector/event"},
            "hec.url",
            "base address",
        ),
        ({"token_env": None}, "hec.token_env", "required"),
        ({"token_env": "Splunk abc"}, "hec.token_env", "environment variable"),
        ({"index": "_internal"}, "hec.index", "index name"),
        ({"index": "Audit"}, "hec.index", "index name"),
        ({"source": ""}, "hec.source", "printable"),
        ({"sourcetype": "a\nb"}, "hec.sourcetype", "printable"),
        ({"host": " padded"}, "hec.host", "printable"),
        ({"indexer_acknowledgement": "yes"}, "hec.indexer_acknowledgement", "true"),
        ({"ack_poll_seconds": []}, "hec.ack_poll_seconds", "list"),
        ({"ack_poll_seconds": [0]}, "hec.ack_poll_seconds", "greater than 0"),
        ({"ack_poll_seconds": [61]}, "hec.ack_poll_seconds", "at most 60"),
        ({"ack_poll_seconds": [60] * 6}, "hec.ack_poll_seconds", "300 in total"),
        ({"ack_poll_seconds": "1,2"}, "hec.ack_poll_seconds", "list"),
        ({"ack_poll_seconds": [True]}, "hec.ack_poll_seconds", "list"),
        ({"connect_timeout_seconds": 0}, "hec.connect_timeout_seconds", "120"),
        ({"read_timeout_seconds": 301}, "hec.read_timeout_seconds", "300"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "hec.ca_bundle", "PEM"),
        ({"channel": "not-a-guid"}, "hec.channel", "GUID"),
        ({"token": "abc"}, "hec.token", "not an hec setting"),
    ],
)
def test_invalid_setting_names_its_key(
    overrides: dict[str, Any], key: str, hint: str
) -> None:
    """Each override spoils one valid table; None removes the setting."""
    settings = {
        "url": "https://splunk.example:8088",
        "token_env": "HEC_TOKEN",
        **overrides,
    }
    settings = {name: value for name, value in settings.items() if value is not None}

    with pytest.raises(ConnectorConfigError) as caught:
        HecConnectorType().validate_settings("hec", settings)

    assert caught.value.key == key
    assert hint in caught.value.message


def test_ca_bundle_with_plain_http_url_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = {
        "url": "http://splunk.example:8088",
        "token_env": "HEC_TOKEN",
        "ca_bundle": str(bundle),
    }

    with pytest.raises(ConnectorConfigError) as caught:
        parse_settings("hec", settings)

    assert caught.value.key == "hec.ca_bundle"
    assert "https" in caught.value.message


# -- probe ------------------------------------------------------------------


def checks_of(result: Any) -> dict[str, bool]:
    return {check.name: check.ok for check in result.checks}


def test_probe_of_a_healthy_collector_passes_without_indexing(
    hec_type: HecConnectorType,
) -> None:
    with FakeHec(tokens={TOKEN}, indexes={"audit"}, acknowledgement=True) as hec:
        connector = make_connector(hec.url, index="audit", indexer_acknowledgement=True)

        result = hec_type.probe(connector)

        assert result.ok is True
        assert checks_of(result) == {
            "reachable": True,
            "healthy": True,
            "credentials": True,
            "acknowledgement": True,
            "index": True,
        }
        assert hec.events == []
        details = " ".join(check.detail for check in result.checks)
        assert "http://127.0.0.1" in details
        assert str(hec.port) not in details and TOKEN not in details


def test_probe_with_a_bad_token_fails_credentials(
    hec_type: HecConnectorType, hec: FakeHec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "hec-unknown")

    result = hec_type.probe(make_connector(hec.url))

    assert result.ok is False
    assert checks_of(result) == {
        "reachable": True,
        "healthy": True,
        "credentials": False,
    }
    assert "hec_invalid_token" in result.checks[2].detail
    assert "hec-unknown" not in repr(result)


def test_probe_without_the_token_variable_names_the_variable(
    hec_type: HecConnectorType, hec: FakeHec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_VARIABLE)

    result = hec_type.probe(make_connector(hec.url))

    assert checks_of(result)["credentials"] is False
    assert TOKEN_VARIABLE in result.checks[-1].detail


def test_probe_of_an_unreachable_collector_fails_reachable(
    hec_type: HecConnectorType,
) -> None:
    result = hec_type.probe(make_connector(closed_port_url()))

    assert result.ok is False
    assert checks_of(result) == {"reachable": False, "credentials": False}
    assert "connection_refused" in result.checks[0].detail


def test_probe_of_an_unhealthy_collector_fails_healthy(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    hec.healthy = False

    result = hec_type.probe(make_connector(hec.url))

    assert checks_of(result) == {
        "reachable": True,
        "healthy": False,
        "credentials": True,
    }


def test_probe_reports_a_refused_index(hec_type: HecConnectorType) -> None:
    with FakeHec(tokens={TOKEN}, indexes={"main"}) as hec:
        result = hec_type.probe(make_connector(hec.url, index="audit"))

    assert checks_of(result)["index"] is False
    assert "code 7" in result.checks[-1].detail


def test_probe_reports_acknowledgement_off_on_the_token(
    hec_type: HecConnectorType, hec: FakeHec
) -> None:
    result = hec_type.probe(make_connector(hec.url, indexer_acknowledgement=True))

    assert checks_of(result)["acknowledgement"] is False
    assert "indexer_acknowledgement" in result.checks[-1].detail


def test_probe_of_invalid_settings_names_the_key(hec_type: HecConnectorType) -> None:
    result = hec_type.probe(make_connector("https://splunk.example", index="_audit"))

    assert result.ok is False
    assert result.checks[0].name == "settings"
    assert "audit-splunk.index" in result.checks[0].detail
