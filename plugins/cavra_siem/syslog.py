"""
The syslog connector: one RFC 5424 message per audit package, over UDP, TCP or TLS.

```toml
[soc-syslog]
type = "syslog"
host = "syslog.example.com"
transport = "tls"                  # "udp", "tcp" (default) or "tls"
port = 6514                        # default: 514 for udp and tcp, 6514 for tls
format = "rfc5424"                 # or "cef": a CEF record as the message
app_name = "cavra"
facility = "local0"                # a name or a number, 0-23
severity = "notice"                # a name or a number, 0-7
hostname = "cavra-prod-1"          # default: this machine's host name
ca_bundle = "/etc/cavra/soc-ca.pem"   # tls only; default: the system store
server_name = "syslog.example.com"    # tls only; default: host
connect_timeout_seconds = 5
write_timeout_seconds = 10
max_message_bytes = 8192           # default: 8192 for tcp and tls, 1400 for udp
```

Framing follows the transport: one datagram per message over UDP (RFC 5426),
octet counting (``<length> <message>``, RFC 6587 section 3.4.1) over TCP, and
the same octet counting inside TLS 1.2 or later (RFC 5425), with the
receiver's certificate always verified, its host name included.

Syslog has no application-level acknowledgement. A delivery counts as
delivered once the whole frame was written to the transport and the
connection was closed without a reset; nothing confirms that the receiver
stored the message. A message larger than ``max_message_bytes`` is never sent,
and never truncated: it fails with ``message_too_large``.

Each delivery opens its own connection and closes it again. Only ids and
codes reach the log; the host, the package and the text of an exception
never leave this module.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cavra_core.types import (
    Connector,
    ConnectorConfigError,
    Delivery,
    DeliveryResult,
    ProbeCheck,
    ProbeResult,
)

log = logging.getLogger(__name__)

TRANSPORTS = ("udp", "tcp", "tls")
FORMATS = ("rfc5424", "cef")
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}

#: Limits for the timeout settings, in seconds: (default, maximum).
CONNECT_TIMEOUT = (5.0, 120.0)
WRITE_TIMEOUT = (10.0, 300.0)

#: Every RFC 5424 receiver must accept messages of this size (section 6.1).
MIN_MESSAGE_BYTES = 480
#: Per transport: (default, maximum) size of one message, framing excluded.
#: 1400 bytes keep a UDP datagram inside one unfragmented packet on ordinary
#: networks; 8192 is rsyslog's default maxMessageSize. 65507 is the largest
#: IPv4 UDP payload.
MESSAGE_BYTES = {
    "udp": (1400, 65507),
    "tcp": (8192, 16 * 1024 * 1024),
    "tls": (8192, 16 * 1024 * 1024),
}

#: Facility names and codes (RFC 5424 section 6.2.1, names as syslog.conf has them).
FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "security": 13,
    "console": 14,
    "solaris-cron": 15,
    **{f"local{number}": 16 + number for number in range(8)},
}
#: Severity names and codes (RFC 5424 section 6.2.1), with the usual aliases.
SEVERITIES = {
    "emerg": 0,
    "emergency": 0,
    "alert": 1,
    "crit": 2,
    "critical": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "informational": 6,
    "debug": 7,
}

#: The SD-ID of cavra's structured data element. 32473 is the private
#: enterprise number that RFC 5612 reserves for documentation; cavra has none
#: of its own.
SD_ID = "cavra@32473"
MSGID = "audit_package"
BOM = b"\xef\xbb\xbf"

CEF_EVENT_CLASS = "audit_package"
CEF_EVENT_NAME = "Audit package delivery"
#: CEF severity, 0-10: a delivery of evidence is routine, not an alert.
CEF_SEVERITY = 3

_SETTINGS = (
    "host",
    "port",
    "transport",
    "format",
    "app_name",
    "facility",
    "severity",
    "hostname",
    "ca_bundle",
    "server_name",
    "connect_timeout_seconds",
    "write_timeout_seconds",
    "max_message_bytes",
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# After the frame is written, the receiver gets this long to close its side;
# RFC 5425 section 4.4 lets a sender close without waiting at all.
_CLOSE_WAIT_SECONDS = 2.0
# How much a receiver may send back (syslog receivers send nothing) before the
# connection is closed anyway.
_MAX_DRAINED_BYTES = 64 * 1024


def _cavra_version() -> str:
    try:
        return metadata.version("cavra")
    except metadata.PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class SyslogSettings:
    """The validated settings of one syslog connector, defaults applied."""

    host: str
    port: int
    transport: str = "tcp"
    format: str = "rfc5424"
    app_name: str = "cavra"
    facility: int = FACILITIES["local0"]
    severity: int = SEVERITIES["notice"]
    #: None means this machine's host name, read at delivery time.
    hostname: str | None = None
    ca_bundle: str | None = None
    server_name: str | None = None
    connect_timeout_seconds: float = CONNECT_TIMEOUT[0]
    write_timeout_seconds: float = WRITE_TIMEOUT[0]
    max_message_bytes: int = MESSAGE_BYTES["tcp"][0]

    @property
    def priority(self) -> int:
        """The PRI value: facility times eight plus severity."""
        return self.facility * 8 + self.severity


class SyslogConnectorType:
    """
    Deliver packages to a syslog receiver (rsyslog, syslog-ng, a SIEM collector).

    The type keeps no state between deliveries, so one instance serves every
    syslog connector from any number of threads.
    """

    name = "syslog"
    category = "siem"
    #: Unreachable receivers are retried; a TLS failure waits for a change of
    #: the connector (a CA bundle, a server name), and so does a message that
    #: is larger than the connector allows: raising max_message_bytes or
    #: moving from UDP to TCP is what lets it through.
    classification = {
        "connection_refused": "transient",
        "connect_timeout": "transient",
        "timeout": "transient",
        "connection_reset": "transient",
        "dns_error": "transient",
        "network_error": "transient",
        "tls_error": "config",
        "message_too_large": "config",
        "config_error": "config",
    }
    #: Syslog receivers never send a Retry-After.
    honours_retry_after = False
    #: Syslog has no application acknowledgement: "delivered" means the whole
    #: frame was written to the transport and the connection closed cleanly.
    acknowledgement = "none"
    batching = "one syslog message per package, on a connection of its own"

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        """Raise :class:`ConnectorConfigError` naming the first wrong setting."""
        parse_settings(connector_id, settings)

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        """
        Send ``delivery`` as one syslog message and report what the transport did.

        Network and receiver failures are reported, never raised. Settings that
        no longer validate (a CA bundle removed since start-up, say) are
        reported as ``config_error`` without sending.
        """
        try:
            settings = parse_settings(connector.connector_id, connector.settings)
        except ConnectorConfigError as error:
            log.warning(
                "syslog settings invalid connector=%s key=%s",
                connector.connector_id,
                error.key,
            )
            return _failed(connector, delivery, "config_error")

        message = format_message(settings, delivery)
        if len(message) > settings.max_message_bytes:
            log.warning(
                "syslog message too large connector=%s lineage=%s bytes=%d limit=%d",
                connector.connector_id,
                delivery.lineage_id,
                len(message),
                settings.max_message_bytes,
            )
            return _failed(connector, delivery, "message_too_large")

        log.debug(
            "syslog sending connector=%s lineage=%s attempt=%d transport=%s",
            connector.connector_id,
            delivery.lineage_id,
            delivery.attempt_number,
            settings.transport,
        )
        try:
            if settings.transport == "udp":
                _send_datagram(settings, message)
            else:
                _send_stream(settings, octet_counted(message))
        except TransportFailure as failure:
            return _failed(connector, delivery, failure.error_class)

        result = DeliveryResult(outcome="delivered")
        _log_result(connector, delivery, result)
        return result

    def probe(self, connector: Connector) -> ProbeResult:
        """
        Check that the receiver can be reached, without sending any message.

        TCP and TLS connect (and complete the TLS handshake, certificate and
        host name verified), then close. UDP has no handshake, so its
        reachability is reported as not checked, which counts as a failure.
        """
        try:
            settings = parse_settings(connector.connector_id, connector.settings)
        except ConnectorConfigError as error:
            return ProbeResult(
                False,
                (ProbeCheck("settings", False, f"{error.key} {error.message}."),),
            )

        if settings.transport == "udp":
            return _probe_udp(settings)

        checks: list[ProbeCheck] = []
        try:
            stream = _connect(settings)
        except TransportFailure as failure:
            if failure.phase == "tls":
                checks.append(ProbeCheck("reachable", True, _REACHED))
                checks.append(ProbeCheck("tls", False, _probe_failure(failure)))
            else:
                checks.append(ProbeCheck("reachable", False, _probe_failure(failure)))
                if settings.transport == "tls":
                    checks.append(
                        ProbeCheck("tls", False, "Not checked: no connection was made.")
                    )
            return ProbeResult(False, tuple(checks))

        checks.append(ProbeCheck("reachable", True, _REACHED))
        if isinstance(stream, ssl.SSLSocket):
            checks.append(
                ProbeCheck(
                    "tls",
                    True,
                    f"{stream.version()} handshake completed; the certificate "
                    "chain and the server name were verified.",
                )
            )
        try:
            _close_stream(stream, settings)
        except TransportFailure:
            pass  # the probe wrote nothing, so a reset on closing loses nothing
        finally:
            stream.close()
        return ProbeResult(True, tuple(checks))


class TransportFailure(Exception):
    """A delivery or probe failed; ``error_class`` is the stable code for it."""

    def __init__(self, error_class: str, phase: str) -> None:
        super().__init__(error_class)
        self.error_class = error_class
        #: Where it failed: "connect", "tls" (the handshake), "write" or "close".
        self.phase = phase


def parse_settings(connector_id: str, settings: Mapping[str, Any]) -> SyslogSettings:
    """Validate a syslog connector's settings table and apply the defaults."""
    if not isinstance(settings, Mapping):
        raise ConnectorConfigError(connector_id, "must be a table")
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConnectorConfigError(
            f"{connector_id}.{unknown[0]}",
            "is not a syslog setting; remove it (known settings: "
            f"{', '.join(_SETTINGS)})",
        )

    def key(name: str) -> str:
        return f"{connector_id}.{name}"

    host = _check_host(key("host"), settings.get("host"), required=True)
    transport = _check_choice(
        key("transport"), settings.get("transport", "tcp"), TRANSPORTS
    )
    message_format = _check_choice(
        key("format"), settings.get("format", "rfc5424"), FORMATS
    )
    tls_only = ("ca_bundle", "server_name")
    if transport != "tls":
        for name in tls_only:
            if settings.get(name) is not None:
                raise ConnectorConfigError(
                    key(name), 'applies to transport = "tls" only; remove it'
                )
    default_size, largest_size = MESSAGE_BYTES[transport]
    return SyslogSettings(
        host=host,
        port=_check_port(key("port"), settings.get("port", DEFAULT_PORTS[transport])),
        transport=transport,
        format=message_format,
        app_name=_check_header_field(
            key("app_name"), settings.get("app_name", "cavra"), 48
        ),
        facility=_check_code(
            key("facility"), settings.get("facility", "local0"), FACILITIES, 23
        ),
        severity=_check_code(
            key("severity"), settings.get("severity", "notice"), SEVERITIES, 7
        ),
        hostname=None
        if settings.get("hostname") is None
        else _check_header_field(key("hostname"), settings["hostname"], 255),
        ca_bundle=_check_ca_bundle(key("ca_bundle"), settings.get("ca_bundle")),
        server_name=_check_host(
            key("server_name"), settings.get("server_name"), required=False
        ),
        connect_timeout_seconds=_check_seconds(
            key("connect_timeout_seconds"),
            settings.get("connect_timeout_seconds", CONNECT_TIMEOUT[0]),
            CONNECT_TIMEOUT[1],
        ),
        write_timeout_seconds=_check_seconds(
            key("write_timeout_seconds"),
            settings.get("write_timeout_seconds", WRITE_TIMEOUT[0]),
            WRITE_TIMEOUT[1],
        ),
        max_message_bytes=_check_message_bytes(
            key("max_message_bytes"),
            settings.get("max_message_bytes", default_size),
            transport,
            largest_size,
        ),
    )


# -- messages -----------------------------------------------------------------


def format_message(
    settings: SyslogSettings,
    delivery: Delivery,
    *,
    now: datetime | None = None,
    procid: str | None = None,
) -> bytes:
    """
    Build the RFC 5424 message for one delivery, framing excluded.

    ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [cavra@32473 ...] MSG``,
    where MSG is a byte order mark and the package as compact UTF-8 JSON, or,
    for ``format = "cef"``, a CEF record without a byte order mark: CEF
    readers look for ``CEF:`` at the start of the message.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    header = " ".join(
        (
            f"<{settings.priority}>1",
            moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            settings.hostname or local_hostname(),
            settings.app_name,
            procid or str(os.getpid()),
            MSGID,
            structured_data(delivery),
        )
    )
    if settings.format == "cef":
        body = cef_record(delivery, moment).encode("utf-8")
    else:
        body = BOM + package_json(delivery.package).encode("utf-8")
    # Only SD-PARAM values may hold characters beyond ASCII, and they are UTF-8.
    return header.encode("utf-8") + b" " + body


def structured_data(delivery: Delivery) -> str:
    """The SD element carrying the delivery's ids (RFC 5424 section 6.3)."""
    params = [
        ("package_id", delivery.package_id),
        ("lineage_id", delivery.lineage_id),
        ("attempt", str(delivery.attempt_number)),
        ("event_id", delivery.event_id),
    ]
    drill_id = delivery.package.get("drill_id")
    if drill_id is not None:
        params.append(("drill_id", str(drill_id)))
    acknowledgements = delivery.package.get("acknowledgements")
    if isinstance(acknowledgements, list):
        params.append(("acknowledgements", str(len(acknowledgements))))
    rendered = " ".join(f'{name}="{escape_sd_param(value)}"' for name, value in params)
    return f"[{SD_ID} {rendered}]"


def escape_sd_param(value: str) -> str:
    """
    Escape an SD-PARAM value: ``"``, ``\\`` and ``]`` get a backslash.

    RFC 5424 section 6.3.3 requires exactly these three; every other character
    is kept as it is.
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def package_json(package: Mapping[str, Any], *, ascii_only: bool = False) -> str:
    """The package as compact JSON with sorted keys, as every connector sends it."""
    return json.dumps(
        package,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=ascii_only,
        allow_nan=False,
    )


def cef_record(delivery: Delivery, moment: datetime) -> str:
    """
    The delivery as one CEF:0 record: seven header fields, then extensions.

    The ids sit in the custom string and number fields (``cs1``..``cs4``,
    ``cn1``, ``cn2``) with their labels; ``msg`` holds the package as ASCII
    JSON, so it can be read back exactly once the CEF escapes are undone.
    """
    header = [
        "CEF:0",
        escape_cef_header("cavra"),
        escape_cef_header("cavra"),
        escape_cef_header(_cavra_version()),
        escape_cef_header(CEF_EVENT_CLASS),
        escape_cef_header(CEF_EVENT_NAME),
        str(CEF_SEVERITY),
    ]
    acknowledgements = delivery.package.get("acknowledgements")
    extensions = [
        ("rt", str(int(moment.timestamp() * 1000))),
        ("externalId", delivery.event_id),
        ("cs1Label", "package_id"),
        ("cs1", delivery.package_id),
        ("cs2Label", "lineage_id"),
        ("cs2", delivery.lineage_id),
        ("cs3Label", "event_id"),
        ("cs3", delivery.event_id),
        ("cs4Label", "drill_id"),
        ("cs4", str(delivery.package.get("drill_id", ""))),
        ("cn1Label", "attempt"),
        ("cn1", str(delivery.attempt_number)),
        ("cn2Label", "acknowledgements"),
        (
            "cn2",
            str(len(acknowledgements)) if isinstance(acknowledgements, list) else "0",
        ),
        ("msg", package_json(delivery.package, ascii_only=True)),
    ]
    extension = " ".join(
        f"{name}={escape_cef_extension(value)}" for name, value in extensions
    )
    return "|".join(header) + "|" + extension


def escape_cef_header(value: str) -> str:
    """
    Escape a CEF header field: ``\\`` and ``|`` get a backslash.

    CEF allows no line breaks in the header at all, so they become spaces.
    """
    escaped = value.replace("\\", "\\\\").replace("|", "\\|")
    return escaped.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def escape_cef_extension(value: str) -> str:
    """
    Escape a CEF extension value.

    ``\\`` and ``=`` get a backslash, a line feed becomes ``\\n`` and a carriage
    return ``\\r``; a ``|`` needs no escape after the header.
    """
    return (
        value.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r", "\\r")
        .replace("\n", "\\n")
    )


def octet_counted(message: bytes) -> bytes:
    """Frame one message for a stream: ``<length> <message>`` (RFC 6587 3.4.1)."""
    return str(len(message)).encode("ascii") + b" " + message


def local_hostname() -> str:
    """This machine's host name as an RFC 5424 HOSTNAME, or ``-`` if unusable."""
    name = socket.gethostname()
    if 0 < len(name) <= 255 and _is_visible_ascii(name):
        return name
    return "-"


# -- transports ---------------------------------------------------------------


def transport_error_class(error: BaseException, phase: str = "write") -> str:
    """
    Map a socket or TLS exception to a stable code.

    ``phase`` tells a timeout while connecting (``connect`` or ``tls``: the
    handshake is part of connecting) from one while writing.
    """
    if isinstance(error, socket.gaierror):
        return "dns_error"
    if isinstance(error, ssl.CertificateError | ssl.SSLError):
        if isinstance(error, ssl.SSLEOFError) and phase != "tls":
            return "connection_reset"
        return "tls_error"
    if isinstance(error, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(error, ConnectionResetError | ConnectionAbortedError):
        return "connection_reset"
    if isinstance(error, BrokenPipeError):
        return "connection_reset"
    if isinstance(error, TimeoutError):
        return "connect_timeout" if phase in ("connect", "tls") else "timeout"
    if isinstance(error, OSError) and error.errno == errno.EMSGSIZE:
        return "message_too_large"
    if isinstance(error, OSError) and error.errno == errno.ENOTCONN:
        return "connection_reset"
    return "network_error"


def _send_datagram(settings: SyslogSettings, message: bytes) -> None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_DGRAM
        )[0]
    except OSError as error:
        raise TransportFailure(
            transport_error_class(error, "connect"), "connect"
        ) from None

    try:
        with socket.socket(family, kind, proto) as datagram:
            datagram.settimeout(settings.write_timeout_seconds)
            sent = datagram.sendto(message, address)
    except OSError as error:
        raise TransportFailure(transport_error_class(error), "write") from None
    if sent != len(message):
        raise TransportFailure("network_error", "write")


def _connect(settings: SyslogSettings) -> socket.socket:
    """Open a TCP connection and, for TLS, complete a verified handshake."""
    try:
        stream = socket.create_connection(
            (settings.host, settings.port), timeout=settings.connect_timeout_seconds
        )
    except OSError as error:
        raise TransportFailure(
            transport_error_class(error, "connect"), "connect"
        ) from None
    if settings.transport != "tls":
        return stream

    try:
        context = _tls_context(settings.ca_bundle)
        return context.wrap_socket(
            stream, server_hostname=settings.server_name or settings.host
        )
    except (OSError, ValueError) as error:
        stream.close()
        # A ValueError here is the ssl module refusing the server name.
        error_class = (
            transport_error_class(error, "tls")
            if isinstance(error, OSError)
            else "tls_error"
        )
        raise TransportFailure(error_class, "tls") from None


def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    # create_default_context verifies the chain and the host name; cavra
    # offers no setting to turn either off.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _send_stream(settings: SyslogSettings, frame: bytes) -> None:
    stream = _connect(settings)
    try:
        stream.settimeout(settings.write_timeout_seconds)
        try:
            stream.sendall(frame)
        except OSError as error:
            raise TransportFailure(transport_error_class(error), "write") from None
        _close_stream(stream, settings)
    finally:
        stream.close()


def _close_stream(stream: socket.socket, settings: SyslogSettings) -> None:
    """
    End the stream and give the receiver a moment to close its side.

    A receiver that reads the whole stream closes cleanly; one that resets has
    thrown away data it had not read, so a reset here fails the delivery.
    Silence until the wait ends counts as delivered: the frame was written.
    """
    stream.settimeout(min(_CLOSE_WAIT_SECONDS, settings.write_timeout_seconds))
    try:
        if isinstance(stream, ssl.SSLSocket):
            # Sends close_notify (RFC 5425 section 4.4), then waits for the
            # receiver's; rsyslog answers by closing the TCP connection.
            stream.unwrap()
        else:
            stream.shutdown(socket.SHUT_WR)
            drained = 0
            while drained <= _MAX_DRAINED_BYTES:
                chunk = stream.recv(4096)
                if not chunk:
                    break
                drained += len(chunk)
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError, TimeoutError):
        return
    except OSError as error:
        error_class = transport_error_class(error, "close")
        if error_class == "connection_reset":
            raise TransportFailure(error_class, "close") from None
        # Anything else after the whole frame was written does not undo it.
        log.debug("syslog close error_class=%s", error_class)


# -- probe ----------------------------------------------------------------------


_REACHED = "A TCP connection to the receiver was opened and closed; nothing was sent."
_PROBE_FAILURES = {
    "connection_refused": "The receiver refused the connection: nothing listens "
    "on that port.",
    "connect_timeout": "The connection timed out: check the host, the port and "
    "any firewall in between.",
    "dns_error": "The host name could not be resolved.",
    "tls_error": "The TLS handshake failed: the certificate is not trusted by the "
    "CA bundle, does not match the server name, or TLS 1.2 is not offered.",
    "connection_reset": "The receiver closed the connection during the handshake.",
}


def _probe_failure(failure: TransportFailure) -> str:
    if failure.phase == "tls" and failure.error_class == "connect_timeout":
        return (
            "The TLS handshake timed out: the port may serve plain TCP, or the "
            "receiver is too busy to answer."
        )
    return _PROBE_FAILURES.get(
        failure.error_class, f"The connection failed ({failure.error_class})."
    )


def _probe_udp(settings: SyslogSettings) -> ProbeResult:
    try:
        addresses = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_DGRAM
        )
    except OSError:
        return ProbeResult(
            False,
            (ProbeCheck("reachable", False, "The host name could not be resolved."),),
        )
    return ProbeResult(
        False,
        (
            ProbeCheck(
                "reachable",
                False,
                f"Not checked: the host resolves ({len(addresses)} address(es)), "
                "but UDP has no handshake, so reachability cannot be known "
                "without sending a message, and the probe sends none.",
            ),
        ),
    )


# -- settings -------------------------------------------------------------------


def _check_host(key: str, value: Any, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise ConnectorConfigError(
                key,
                "is required: the receiver's host name or IP address, e.g. "
                "'syslog.example.com'",
            )
        return None
    if not isinstance(value, str) or not value:
        raise ConnectorConfigError(
            key, "must be a host name or an IP address, as a string"
        )
    if value.startswith("["):
        raise ConnectorConfigError(
            key, "must be written without brackets, e.g. '2001:db8::1'"
        )
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return value
    labels = value.removesuffix(".").split(".")
    valid = len(value) <= 253 and all(
        len(label) <= 63 and _HOST_LABEL.fullmatch(label) for label in labels
    )
    if not valid:
        raise ConnectorConfigError(
            key,
            "must be a host name (letters, digits, '-' and '.'; an international "
            "name in its xn-- form) or an IP address, without port or scheme; "
            "put the port in the port setting",
        )
    return value


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        quoted = ", ".join(f'"{choice}"' for choice in choices)
        raise ConnectorConfigError(key, f"must be one of {quoted}")
    return value


def _check_port(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConnectorConfigError(key, "must be a port number from 1 to 65535")
    return value


def _check_code(key: str, value: Any, names: Mapping[str, int], largest: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= largest:
            return value
    elif isinstance(value, str) and value.lower() in names:
        return names[value.lower()]
    raise ConnectorConfigError(
        key,
        f"must be a number from 0 to {largest} or one of the names {', '.join(names)}",
    )


def _check_header_field(key: str, value: Any, longest: int) -> str:
    # RFC 5424 header fields are 1 to N printable US-ASCII characters, no space.
    valid = (
        isinstance(value, str)
        and 0 < len(value) <= longest
        and _is_visible_ascii(value)
        and value != "-"
    )
    if not valid:
        raise ConnectorConfigError(
            key,
            f"must be 1 to {longest} printable ASCII characters without spaces "
            "(RFC 5424), and not '-'",
        )
    return value


def _check_ca_bundle(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConnectorConfigError(key, "must be the path of a PEM file")
    if not Path(value).is_file():
        raise ConnectorConfigError(
            key,
            "names no readable file; give the path of a PEM file holding the "
            "CA certificates that sign the receiver's certificate",
        )
    return value


def _check_seconds(key: str, value: Any, maximum: float) -> float:
    valid = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 < value <= maximum
    )
    if not valid:
        raise ConnectorConfigError(
            key, f"must be a number of seconds greater than 0 and at most {maximum:g}"
        )
    return float(value)


def _check_message_bytes(key: str, value: Any, transport: str, largest: int) -> int:
    valid = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and MIN_MESSAGE_BYTES <= value <= largest
    )
    if not valid:
        raise ConnectorConfigError(
            key,
            f"must be a whole number of bytes from {MIN_MESSAGE_BYTES} to "
            f"{largest} for transport {transport!r}; the receiver must accept "
            "messages this large (rsyslog: maxMessageSize)",
        )
    return value


# -- helpers --------------------------------------------------------------------


def _is_visible_ascii(text: str) -> bool:
    return all("!" <= character <= "~" for character in text)


def _failed(
    connector: Connector, delivery: Delivery, error_class: str
) -> DeliveryResult:
    result = DeliveryResult(outcome="failed", error_class=error_class)
    _log_result(connector, delivery, result)
    return result


def _log_result(
    connector: Connector, delivery: Delivery, result: DeliveryResult
) -> None:
    # At debug: whoever asked for the delivery logs its outcome at info.
    log.debug(
        "syslog delivery connector=%s lineage=%s attempt=%d outcome=%s error_class=%s",
        connector.connector_id,
        delivery.lineage_id,
        delivery.attempt_number,
        result.outcome,
        result.error_class,
    )
