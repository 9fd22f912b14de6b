"""The syslog connector against a real rsyslogd on loopback (UDP, TCP and TLS)."""

from __future__ import annotations

import errno
import json
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pluggy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rsyslog_server import (
    LOOPBACK,
    Certificates,
    ReceivedMessage,
    RsyslogServer,
    make_certificates,
    require_rsyslogd,
)

import cavra_siem
from cavra_core import hookspecs
from cavra_core.types import (
    Connector,
    ConnectorConfigError,
    ConnectorType,
    Delivery,
)
from cavra_siem.syslog import (
    BOM,
    SyslogConnectorType,
    escape_cef_extension,
    escape_cef_header,
    escape_sd_param,
    format_message,
    octet_counted,
    parse_settings,
    transport_error_class,
)

# Characters that every layer must carry intact: CEF's separators and escape,
# SD-PARAM's terminators, a line break and a character beyond ASCII.
TRICKY = 'ops|team=a\\b "q" [x] end\nline two\r ü'
PACKAGE = {
    "drill_id": f"drill-7 {TRICKY}",
    "generated_at": "2024-05-01T10:05:00Z",
    "generated_by": TRICKY,
    "acknowledgements": [
        {
            "notification_id": "n-1",
            "role": "release_manager",
            "state": "acknowledged",
            "acknowledged_at": "2024-05-01T10:00:00Z",
        },
        {
            "notification_id": "n-2",
            "role": "sre",
            "state": "acknowledged",
            "acknowledged_at": "2024-05-01T10:02:30Z",
        },
    ],
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    require_rsyslogd()
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rsyslog(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[RsyslogServer]:
    with RsyslogServer(tmp_path_factory.mktemp("rsyslog"), certificates) as server:
        yield server


@pytest.fixture
def syslog() -> SyslogConnectorType:
    return SyslogConnectorType()


def make_connector(**settings: Any) -> Connector:
    return Connector(
        connector_id="soc-syslog",
        type="syslog",
        settings={"host": LOOPBACK, **settings},
    )


def make_delivery(package: dict[str, Any] | None = None) -> Delivery:
    """A delivery with ids of its own, so each test finds its own message."""
    unique = uuid.uuid4().hex[:12]
    return Delivery(
        package_id=f"pkg-{unique}",
        package=PACKAGE if package is None else package,
        lineage_id=f"lin-{unique}",
        attempt_number=2,
        event_id=f"evt-{unique}",
    )


def received(rsyslog: RsyslogServer, delivery: Delivery) -> ReceivedMessage:
    [message] = rsyslog.wait_for(
        lambda message: delivery.event_id in message.structured_data
    )
    return message


def sd_params(structured_data: str) -> dict[str, str]:
    """Read the SD-PARAMs of the cavra element, undoing RFC 5424's escapes."""
    assert structured_data.startswith("[cavra@32473 ")
    pairs = re.findall(r'(\w+)="((?:[^"\\\]]|\\.)*)"', structured_data)
    return {name: re.sub(r'\\(["\\\]])', r"\1", value) for name, value in pairs}


def parse_cef(record: str) -> tuple[list[str], dict[str, str]]:
    """Split a CEF record into its header fields and its extensions, unescaped."""
    fields: list[str] = []
    current, index = "", 0
    while len(fields) < 7:
        character = record[index]
        if character == "\\":
            current += record[index + 1]
            index += 2
            continue
        if character == "|":
            fields.append(current)
            current = ""
        else:
            current += character
        index += 1
    extension = record[index:]

    equals = []
    index = 0
    while index < len(extension):
        if extension[index] == "\\":
            index += 2
            continue
        if extension[index] == "=":
            equals.append(index)
        index += 1
    keys = []
    for position in equals:
        start = extension.rfind(" ", 0, position) + 1
        keys.append((start, position))
    unescapes = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}
    extensions = {}
    for number, (start, position) in enumerate(keys):
        end = keys[number + 1][0] - 1 if number + 1 < len(keys) else len(extension)
        value = re.sub(
            r"\\(.)", lambda match: unescapes[match[1]], extension[position + 1 : end]
        )
        extensions[extension[start:position]] = value
    return fields, extensions


# -- the plugin contract ------------------------------------------------------


def test_plugin_declares_the_syslog_type_through_pluggy() -> None:
    """cavra_siem registers a syslog type that follows the ConnectorType contract."""
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(cavra_siem)

    [declared] = manager.hook.cavra_register_connector_types()

    [syslog] = [item for item in declared if item.name == "syslog"]
    assert isinstance(syslog, ConnectorType)
    assert syslog.category == "siem"
    assert syslog.honours_retry_after is False
    assert syslog.acknowledgement == "none"
    assert syslog.classification["tls_error"] == "config"
    assert syslog.classification["connection_refused"] == "transient"


# -- delivered, as rsyslog saw it ---------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_rfc5424_message_reaches_rsyslog_with_ids_and_package(
    syslog: SyslogConnectorType,
    rsyslog: RsyslogServer,
    certificates: Certificates,
    transport: str,
) -> None:
    ports = {"udp": rsyslog.udp_port, "tcp": rsyslog.tcp_port, "tls": rsyslog.tls_port}
    tls = {"ca_bundle": str(certificates.ca_certificate)} if transport == "tls" else {}
    connector = make_connector(transport=transport, port=ports[transport], **tls)
    delivery = make_delivery()

    result = syslog.deliver(connector, delivery)

    assert (result.outcome, result.error_class) == ("delivered", None)
    message = received(rsyslog, delivery)
    assert message.input == transport
    assert message.pri == 16 * 8 + 5  # local0.notice
    assert message.protocol_version == "1"
    assert (message.app_name, message.msgid) == ("cavra", "audit_package")
    assert message.hostname == socket.gethostname()
    assert sd_params(message.structured_data) == {
        "package_id": delivery.package_id,
        "lineage_id": delivery.lineage_id,
        "attempt": "2",
        "event_id": delivery.event_id,
        # SD-PARAM values have no escape for control characters; rsyslog
        # shows them in octal. The JSON in MSG carries them exactly.
        "drill_id": PACKAGE["drill_id"].replace("\n", "#012").replace("\r", "#015"),
        "acknowledgements": "2",
    }
    assert message.msg.startswith("\ufeff")
    assert json.loads(message.msg.removeprefix("\ufeff")) == PACKAGE


def test_raw_message_has_rfc3339_utc_time_and_bom_before_compact_json(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    delivery = make_delivery()

    syslog.deliver(make_connector(port=rsyslog.tcp_port), delivery)

    raw = received(rsyslog, delivery).raw
    header = re.match(
        r"<133>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) \S+ cavra \d+ audit_package ",
        raw,
    )
    assert header is not None
    sent_at = datetime.fromisoformat(header[1])
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 30
    compact = json.dumps(
        PACKAGE, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert raw.endswith("] \ufeff" + compact)


def test_facility_severity_and_names_are_configurable(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    connector = make_connector(
        port=rsyslog.tcp_port,
        facility="auth",
        severity=3,
        app_name="cavra-audit",
        hostname="release-host-1",
    )
    delivery = make_delivery()

    syslog.deliver(connector, delivery)

    message = received(rsyslog, delivery)
    assert message.pri == 4 * 8 + 3
    assert (message.app_name, message.hostname) == ("cavra-audit", "release-host-1")


def test_cef_record_keeps_tricky_characters_readable(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    delivery = make_delivery()

    result = syslog.deliver(
        make_connector(port=rsyslog.tcp_port, format="cef"), delivery
    )

    assert result.outcome == "delivered"
    message = received(rsyslog, delivery)
    assert message.msg.startswith("CEF:0|cavra|cavra|")
    assert "\n" not in message.raw and "\r" not in message.raw
    header, extensions = parse_cef(message.msg)
    assert header[4:] == ["audit_package", "Audit package delivery", "3"]
    assert extensions["cs1Label"] == "package_id"
    assert extensions["cs1"] == delivery.package_id
    assert extensions["cs2"] == delivery.lineage_id
    assert extensions["cs3"] == extensions["externalId"] == delivery.event_id
    assert extensions["cs4"] == PACKAGE["drill_id"]
    assert (extensions["cn1Label"], extensions["cn1"]) == ("attempt", "2")
    assert (extensions["cn2Label"], extensions["cn2"]) == ("acknowledgements", "2")
    assert json.loads(extensions["msg"]) == PACKAGE


def test_cef_escapes_are_visible_in_what_rsyslog_wrote(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    delivery = make_delivery()

    syslog.deliver(make_connector(port=rsyslog.tcp_port, format="cef"), delivery)

    raw = received(rsyslog, delivery).raw
    assert "cs4=drill-7 ops|team\\=a\\\\b" in raw
    assert "end\\nline two\\r" in raw


def test_tls_verifies_against_server_name(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer, certificates: Certificates
) -> None:
    connector = make_connector(
        port=rsyslog.tls_port,
        transport="tls",
        ca_bundle=str(certificates.ca_certificate),
        server_name="localhost",
    )
    delivery = make_delivery()

    result = syslog.deliver(connector, delivery)

    assert result.outcome == "delivered"
    assert received(rsyslog, delivery).input == "tls"


def test_large_package_over_tcp_arrives_whole(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    package = {**PACKAGE, "generated_by": "x" * 60_000}
    delivery = make_delivery(package)

    result = syslog.deliver(
        make_connector(port=rsyslog.tcp_port, max_message_bytes=65_536), delivery
    )

    assert result.outcome == "delivered"
    message = received(rsyslog, delivery)
    assert json.loads(message.msg.removeprefix("\ufeff")) == package


# -- failures -------------------------------------------------------------------


def test_tls_with_a_ca_that_did_not_sign_the_server_is_tls_error(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer, certificates: Certificates
) -> None:
    connector = make_connector(
        port=rsyslog.tls_port,
        transport="tls",
        ca_bundle=str(certificates.other_ca_certificate),
    )

    result = syslog.deliver(connector, make_delivery())

    assert (result.outcome, result.error_class) == ("failed", "tls_error")


def test_tls_with_a_server_name_the_certificate_lacks_is_tls_error(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer, certificates: Certificates
) -> None:
    connector = make_connector(
        port=rsyslog.tls_port,
        transport="tls",
        ca_bundle=str(certificates.ca_certificate),
        server_name="syslog.example.com",
    )

    result = syslog.deliver(connector, make_delivery())

    assert result.error_class == "tls_error"


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_closed_port_is_connection_refused(
    syslog: SyslogConnectorType, transport: str
) -> None:
    connector = make_connector(port=closed_port(), transport=transport)

    result = syslog.deliver(connector, make_delivery())

    assert (result.outcome, result.error_class) == ("failed", "connection_refused")


def test_udp_message_over_the_limit_is_refused_not_truncated(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    delivery = make_delivery({**PACKAGE, "generated_by": "x" * 2000})

    result = syslog.deliver(
        make_connector(port=rsyslog.udp_port, transport="udp"), delivery
    )

    assert (result.outcome, result.error_class) == ("failed", "message_too_large")


def test_receiver_that_stops_reading_is_a_write_timeout(
    syslog: SyslogConnectorType,
) -> None:
    with SilentReceiver() as port:
        connector = make_connector(
            port=port, write_timeout_seconds=0.3, max_message_bytes=16 * 1024 * 1024
        )
        delivery = make_delivery({**PACKAGE, "generated_by": "x" * 12_000_000})

        result = syslog.deliver(connector, delivery)

    assert (result.outcome, result.error_class) == ("failed", "timeout")


def test_receiver_that_resets_with_unread_data_is_connection_reset(
    syslog: SyslogConnectorType,
) -> None:
    with SilentReceiver(close_after=0.2) as port:
        result = syslog.deliver(make_connector(port=port), make_delivery())

    assert (result.outcome, result.error_class) == ("failed", "connection_reset")


def test_invalid_settings_at_delivery_are_config_error(
    syslog: SyslogConnectorType,
) -> None:
    result = syslog.deliver(make_connector(transport="carrier-pigeon"), make_delivery())

    assert (result.outcome, result.error_class) == ("failed", "config_error")


@pytest.mark.parametrize(
    ("error", "phase", "expected"),
    [
        (socket.gaierror(socket.EAI_NONAME, "unknown"), "connect", "dns_error"),
        (TimeoutError(), "connect", "connect_timeout"),
        (TimeoutError(), "tls", "connect_timeout"),
        (TimeoutError(), "write", "timeout"),
        (ConnectionRefusedError(), "connect", "connection_refused"),
        (BrokenPipeError(), "write", "connection_reset"),
        (ssl.SSLCertVerificationError("bad"), "tls", "tls_error"),
        (ssl.SSLEOFError(), "write", "connection_reset"),
        (OSError(errno.EMSGSIZE, "too long"), "write", "message_too_large"),
        (OSError(errno.EHOSTUNREACH, "no route"), "connect", "network_error"),
    ],
)
def test_transport_errors_map_to_stable_codes(
    error: BaseException, phase: str, expected: str
) -> None:
    assert transport_error_class(error, phase) == expected


# -- probe ------------------------------------------------------------------------


def test_probe_over_tls_checks_reachability_and_certificate(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer, certificates: Certificates
) -> None:
    connector = make_connector(
        port=rsyslog.tls_port,
        transport="tls",
        ca_bundle=str(certificates.ca_certificate),
    )

    result = syslog.probe(connector)

    assert result.ok
    assert [(check.name, check.ok) for check in result.checks] == [
        ("reachable", True),
        ("tls", True),
    ]


def test_probe_with_wrong_ca_is_reachable_but_fails_tls(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer, certificates: Certificates
) -> None:
    connector = make_connector(
        port=rsyslog.tls_port,
        transport="tls",
        ca_bundle=str(certificates.other_ca_certificate),
    )

    result = syslog.probe(connector)

    assert not result.ok
    assert [(check.name, check.ok) for check in result.checks] == [
        ("reachable", True),
        ("tls", False),
    ]


def test_probe_sends_no_message(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    before = len(rsyslog.messages())

    result = syslog.probe(make_connector(port=rsyslog.tcp_port))
    time.sleep(0.3)

    assert [(check.name, check.ok) for check in result.checks] == [("reachable", True)]
    assert len(rsyslog.messages()) == before


def test_probe_of_closed_port_fails_reachable(syslog: SyslogConnectorType) -> None:
    result = syslog.probe(make_connector(port=closed_port()))

    assert not result.ok
    [check] = result.checks
    assert (check.name, check.ok) == ("reachable", False)
    assert "refused" in check.detail


def test_probe_over_udp_says_reachability_is_unknown(
    syslog: SyslogConnectorType, rsyslog: RsyslogServer
) -> None:
    result = syslog.probe(make_connector(port=rsyslog.udp_port, transport="udp"))

    assert not result.ok
    [check] = result.checks
    assert (check.name, check.ok) == ("reachable", False)
    assert check.detail.startswith("Not checked")


# -- settings ---------------------------------------------------------------------


def test_defaults_follow_the_transport() -> None:
    tcp = parse_settings("s", {"host": "syslog.example.com"})
    udp = parse_settings("s", {"host": "10.0.0.5", "transport": "udp"})
    tls = parse_settings("s", {"host": "2001:db8::1", "transport": "tls"})

    assert (tcp.transport, tcp.port, tcp.max_message_bytes) == ("tcp", 514, 8192)
    assert (udp.port, udp.max_message_bytes) == (514, 1400)
    assert (tls.port, tls.max_message_bytes) == (6514, 8192)
    assert (tcp.format, tcp.app_name, tcp.priority) == ("rfc5424", "cavra", 133)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"host": None}, "host"),
        ({"host": ""}, "host"),
        ({"host": "https://syslog.example.com"}, "host"),
        ({"host": "[2001:db8::1]"}, "host"),
        ({"host": "syslog.example.com:514"}, "host"),
        ({"port": 0}, "port"),
        ({"port": "514"}, "port"),
        ({"transport": "TCP"}, "transport"),
        ({"format": "leef"}, "format"),
        ({"app_name": "cavra audit"}, "app_name"),
        ({"app_name": "a" * 49}, "app_name"),
        ({"facility": "local8"}, "facility"),
        ({"facility": 24}, "facility"),
        ({"severity": 8}, "severity"),
        ({"severity": True}, "severity"),
        ({"hostname": "h" * 256}, "hostname"),
        ({"ca_bundle": "/etc/ssl/certs/ca-certificates.crt"}, "ca_bundle"),
        ({"transport": "tls", "ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle"),
        ({"server_name": "localhost"}, "server_name"),
        ({"transport": "tls", "server_name": "bad name"}, "server_name"),
        ({"connect_timeout_seconds": 0}, "connect_timeout_seconds"),
        ({"write_timeout_seconds": float("nan")}, "write_timeout_seconds"),
        ({"max_message_bytes": 100}, "max_message_bytes"),
        ({"transport": "udp", "max_message_bytes": 70_000}, "max_message_bytes"),
        ({"token": "x"}, "token"),
    ],
)
def test_invalid_setting_names_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConnectorConfigError) as raised:
        SyslogConnectorType().validate_settings("soc", {"host": LOOPBACK, **settings})

    assert raised.value.key == f"soc.{key}"


def test_missing_host_says_how_to_fix_it() -> None:
    with pytest.raises(ConnectorConfigError, match="host name or IP address"):
        parse_settings("soc", {})


# -- message construction ---------------------------------------------------------


def test_format_message_builds_the_exact_rfc5424_bytes() -> None:
    settings = parse_settings("s", {"host": "h", "hostname": "cavra-1"})
    delivery = Delivery(
        package_id="p1",
        package={"drill_id": "d]1", "acknowledgements": []},
        lineage_id="l1",
        attempt_number=1,
        event_id="e1",
    )
    moment = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)

    message = format_message(settings, delivery, now=moment, procid="42")

    assert message == (
        b"<133>1 2024-05-01T10:00:00.123456Z cavra-1 cavra 42 audit_package "
        b'[cavra@32473 package_id="p1" lineage_id="l1" attempt="1" event_id="e1" '
        b'drill_id="d\\]1" acknowledgements="0"] '
        + BOM
        + b'{"acknowledgements":[],"drill_id":"d]1"}'
    )


def test_octet_counting_prefixes_the_length_in_bytes() -> None:
    assert octet_counted("ü".encode()) == b"2 \xc3\xbc"


def test_sd_param_escapes_quote_backslash_and_bracket_only() -> None:
    assert escape_sd_param('a"b\\c]d[e=f') == 'a\\"b\\\\c\\]d[e=f'


def test_cef_header_escapes_pipe_and_backslash() -> None:
    assert escape_cef_header("a|b\\c=d") == "a\\|b\\\\c=d"


def test_cef_header_replaces_line_breaks() -> None:
    assert escape_cef_header("a\r\nb\nc") == "a b c"


def test_cef_extension_escapes_equals_backslash_and_line_breaks() -> None:
    assert escape_cef_extension("a=b\\c\nd\re|f") == "a\\=b\\\\c\\nd\\re|f"


def _unescaped(text: str, escapes: dict[str, str]) -> tuple[str, str]:
    """Undo backslash escapes; return the text and the characters left bare."""
    plain, bare, index = "", "", 0
    while index < len(text):
        if text[index] == "\\":
            assert index + 1 < len(text), "a dangling backslash"
            plain += escapes[text[index + 1]]
            index += 2
            continue
        plain += text[index]
        bare += text[index]
        index += 1
    return plain, bare


@given(st.text())
def test_sd_param_values_never_hold_a_bare_quote_or_bracket(value: str) -> None:
    escaped = escape_sd_param(value)

    plain, bare = _unescaped(escaped, {'"': '"', "\\": "\\", "]": "]"})
    assert plain == value
    assert '"' not in bare and "]" not in bare


@given(st.text())
def test_cef_extension_values_never_hold_a_bare_equals_or_line_break(
    value: str,
) -> None:
    escaped = escape_cef_extension(value)

    plain, bare = _unescaped(escaped, {"=": "=", "\\": "\\", "n": "\n", "r": "\r"})
    assert plain == value
    assert "=" not in bare and "\n" not in escaped and "\r" not in escaped


# -- helpers ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class SilentReceiver:
    """
    A TCP listener that accepts one connection and never reads from it.

    With ``close_after``, it closes that connection after so many seconds, with
    the data still unread, which makes the kernel answer with a reset.
    """

    def __init__(self, close_after: float | None = None) -> None:
        self._close_after = close_after
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> int:
        self._thread.start()
        return self._listener.getsockname()[1]

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection:
            self._stopped.wait(self._close_after)


def test_cef_test_parser_reads_back_escaped_values() -> None:
    """The CEF test parser reads back what the connector escaped."""
    record = "CEF:0|a\\|b|c|1|x|y|3|k1=v\\=1 two k2=line\\nnext"

    header, extensions = parse_cef(record)

    assert header == ["CEF:0", "a|b", "c", "1", "x", "y", "3"]
    assert extensions == {"k1": "v=1 two", "k2": "line\nnext"}
