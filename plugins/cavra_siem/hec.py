"""
The Splunk HTTP Event Collector (HEC) connector: one HEC event per package.

Written against ``cavra_core.types`` only, as a third-party connector would be.

```toml
[audit-splunk]
type = "hec"
url = "https://splunk.example:8088"        # the collector's base address
token_env = "CAVRA_SPLUNK_HEC_TOKEN"       # sent as "Authorization: Splunk <token>"
index = "audit"                            # optional; else the token's default
indexer_acknowledgement = true             # wait for HEC's indexer acknowledgement
ack_poll_seconds = [1, 2, 4, 8]            # delays between acknowledgement polls
ca_bundle = "/etc/cavra/splunk-ca.pem"     # optional, for a private CA
```

Each delivery is one ``POST {url}/services/collector/event`` carrying one
event envelope, never retried here and never redirected. HEC answers every
request with ``{"text": ..., "code": N}``; the code, not the HTTP status,
says what went wrong, so each documented code maps to its own stable error
class (``hec_invalid_token``, ``hec_server_busy``...) that
:data:`CLASSIFICATION` files under a failure category.

With ``indexer_acknowledgement`` on, HEC's ``200`` only means "received": the
answer carries an ``ackId``, and the delivery counts as delivered once
``/services/collector/ack`` confirms that id on the same channel. Requests
always carry ``X-Splunk-Request-Channel``, a GUID derived from the connector
id unless ``channel`` fixes one, so every attempt of every lineage of one
connector uses the same channel.

The token is read from the environment for each request and appears only in
the ``Authorization`` header: never in a result, a probe detail or the log,
which carries ids and codes only. Neither does the URL nor HEC's answer text.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from cavra_core.types import (
    Connector,
    ConnectorConfigError,
    Delivery,
    DeliveryResult,
    ProbeCheck,
    ProbeResult,
)

log = logging.getLogger(__name__)

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"

#: Limits for the timeout settings, in seconds: (default, maximum).
CONNECT_TIMEOUT = (5.0, 120.0)
READ_TIMEOUT = (10.0, 300.0)
#: The acknowledgement poll schedule: default delays, and the bounds on it.
DEFAULT_ACK_POLL_SECONDS = (1.0, 2.0, 4.0, 8.0)
MAX_ACK_POLL_DELAY = 60.0
MAX_ACK_POLL_TOTAL = 300.0
MAX_ACK_POLLS = 30

DEFAULT_SOURCE = "cavra"
DEFAULT_SOURCETYPE = "cavra:audit_package"

#: HEC status codes (the ``code`` of HEC's JSON answer) that mean a failure,
#: by the error class cavra records. Codes 0 (success), 17 (healthy) and 24/25
#: (capacity warnings) are not failures; any other code falls back to the
#: HTTP status.
HEC_ERROR_CLASSES: dict[int, str] = {
    1: "hec_token_disabled",
    2: "hec_token_required",
    3: "hec_invalid_authorization",
    4: "hec_invalid_token",
    5: "hec_no_data",
    6: "hec_invalid_data_format",
    7: "hec_incorrect_index",
    8: "hec_internal_error",
    9: "hec_server_busy",
    10: "hec_channel_missing",
    11: "hec_invalid_channel",
    12: "hec_event_field_required",
    13: "hec_event_field_blank",
    14: "hec_ack_disabled",
    15: "hec_indexed_fields_error",
    18: "hec_unhealthy",
    19: "hec_unhealthy",
    20: "hec_unhealthy",
    23: "hec_shutting_down",
    26: "hec_at_capacity",
    27: "hec_at_capacity",
}

#: How each failure this connector reports is read, for the retry plan.
CLASSIFICATION: dict[str, str] = {
    # The token or the collector's setup must change before a retry can work.
    "hec_token_disabled": "config",
    "hec_token_required": "config",
    "hec_invalid_authorization": "config",
    "hec_invalid_token": "config",
    "hec_incorrect_index": "config",
    "hec_channel_missing": "config",
    "hec_invalid_channel": "config",
    "hec_ack_disabled": "config",
    # HEC refused the request itself; the same request is refused every time.
    "hec_no_data": "permanent",
    "hec_invalid_data_format": "permanent",
    "hec_event_field_required": "permanent",
    "hec_event_field_blank": "permanent",
    "hec_indexed_fields_error": "permanent",
    # The collector is overloaded: back off, honouring Retry-After.
    "hec_server_busy": "throttle",
    "hec_unhealthy": "throttle",
    "hec_at_capacity": "throttle",
    "http:429": "throttle",
    "http:503": "throttle",
    # A later attempt can succeed as it is.
    "hec_internal_error": "transient",
    "hec_shutting_down": "transient",
    "ack_timeout": "transient",
    "timeout": "transient",
    "connect_timeout": "transient",
    "connection_refused": "transient",
    "connection_reset": "transient",
    "dns_error": "transient",
    "network_error": "transient",
    # Something between cavra and HEC, or cavra's own settings, must change.
    "hec_unreadable_response": "config",
    "redirect": "config",
    "tls_error": "config",
    "missing_secret": "config",
    "invalid_secret": "config",
    "config_error": "config",
}

_SETTINGS = (
    "url",
    "token_env",
    "index",
    "source",
    "sourcetype",
    "host",
    "indexer_acknowledgement",
    "ack_poll_seconds",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "ca_bundle",
    "channel",
)
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# Splunk index names: lower-case letters, digits, '_' and '-', not starting
# with '_' or '-' (those are Splunk's internal indexes).
_INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,254}")
_GUID = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
# The namespace of the channel GUIDs cavra derives from connector ids.
_CHANNEL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cavra:hec-channel")
_MAX_METADATA_LENGTH = 255
_RETRY_AFTER_MAX_LENGTH = 64
# HEC's answers are a few dozen bytes; anything longer is not read as HEC's.
_MAX_ANSWER_BODY = 64 * 1024
_TRANSPORT_ERRORS = (HTTPError, OSError, http.client.HTTPException)


def _cavra_version() -> str:
    try:
        return metadata.version("cavra")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"cavra/{_cavra_version()}"


@dataclass(frozen=True)
class HecSettings:
    """The validated settings of one HEC connector."""

    #: The collector's base address, without a trailing slash.
    url: str
    token_env: str
    channel: str
    host: str
    index: str | None = None
    source: str = DEFAULT_SOURCE
    sourcetype: str = DEFAULT_SOURCETYPE
    indexer_acknowledgement: bool = False
    ack_poll_seconds: tuple[float, ...] = DEFAULT_ACK_POLL_SECONDS
    connect_timeout_seconds: float = CONNECT_TIMEOUT[0]
    read_timeout_seconds: float = READ_TIMEOUT[0]
    ca_bundle: str | None = None

    @property
    def origin(self) -> str:
        """Scheme and host name: all of the address a message may show."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme.lower()}://{f'[{host}]' if ':' in host else host}"

    def path(self, endpoint: str) -> str:
        """The request path of ``endpoint`` under the base address."""
        return urlsplit(self.url).path + endpoint


class HecAnswer(NamedTuple):
    """One HTTP answer of HEC, reduced to what the connector reads."""

    status: int
    #: HEC's ``code``, or None when the body was not HEC's JSON answer.
    code: int | None
    #: The ``ackId`` of an accepted event (indexer acknowledgement on).
    ack_id: int | None
    #: The ``acks`` table of an acknowledgement answer, by ack id.
    acks: Mapping[str, Any] | None
    retry_after: str | None


class HecConnectorType:
    """
    Deliver packages to a Splunk HTTP Event Collector.

    One instance serves every ``hec`` connector and may be called from many
    threads at once: its connection pools are shared and thread-safe, and
    each pool is keyed by host and CA bundle, so connectors never share trust.

    :param sleep: waits between acknowledgement polls (``time.sleep`` by
        default); a worker can pass one that returns early on shutdown.
    """

    name = "hec"
    category = "siem"
    classification = MappingProxyType(CLASSIFICATION)
    honours_retry_after = True
    #: Applies to connectors with ``indexer_acknowledgement = true``; the
    #: others are confirmed by HEC's answer to the event itself.
    acknowledgement = "indexer_ack"
    batching = "one HEC event per package per request"

    def __init__(self, sleep: Callable[[float], None] | None = None) -> None:
        self._sleep = sleep or time.sleep
        self._pool_manager = urllib3.PoolManager(
            num_pools=32,
            maxsize=8,
            block=False,
            retries=False,
            cert_reqs=ssl.CERT_REQUIRED,
        )

    def close(self) -> None:
        """Close every pooled connection (the instance stays usable)."""
        self._pool_manager.clear()

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        """Raise :class:`ConnectorConfigError` naming the first wrong setting."""
        parse_settings(connector_id, settings)

    # -- delivery ---------------------------------------------------------

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        """
        Send ``delivery`` as one HEC event and report what HEC did with it.

        Receiver and network failures are reported, never raised. With
        indexer acknowledgement on, the call then waits for HEC's
        confirmation, for at most the sum of ``ack_poll_seconds`` plus one
        read timeout.
        """
        try:
            settings = parse_settings(connector.connector_id, connector.settings)
        except ConnectorConfigError as error:
            log.warning(
                "hec settings invalid connector=%s key=%s",
                connector.connector_id,
                error.key,
            )
            return self._finish(
                connector, delivery, DeliveryResult("failed", "config_error")
            )

        token, secret_problem = _read_token(connector)
        if secret_problem is not None:
            return self._finish(
                connector, delivery, DeliveryResult("failed", secret_problem)
            )

        body = encode_event(build_event(settings, delivery))
        log.debug(
            "hec sending connector=%s lineage=%s attempt=%d",
            connector.connector_id,
            delivery.lineage_id,
            delivery.attempt_number,
        )
        try:
            answer = self._request(settings, token, "POST", EVENT_PATH, body)
        except _TRANSPORT_ERRORS as error:
            result = DeliveryResult("failed", transport_error_class(error))
            return self._finish(connector, delivery, result)

        result = read_event_answer(answer)
        if result.outcome == "delivered" and settings.indexer_acknowledgement:
            if answer.ack_id is None:
                # HEC only hands out ack ids for tokens with acknowledgement on.
                result = DeliveryResult(
                    "failed", "hec_ack_disabled", http_status=answer.status
                )
            else:
                result = self._await_acknowledgement(
                    settings, token, answer.ack_id, answer.status, connector
                )
        return self._finish(connector, delivery, result, answer.code)

    def _await_acknowledgement(
        self,
        settings: HecSettings,
        token: str,
        ack_id: int,
        event_status: int,
        connector: Connector,
    ) -> DeliveryResult:
        """
        Poll ``/services/collector/ack`` until HEC confirms ``ack_id``.

        A busy collector, a network failure or an unconfirmed id means "ask
        again at the next delay"; an answer that says the token or channel is
        wrong ends the wait with that error class. When the schedule runs
        out the event may still be indexed later: ``ack_timeout`` is retried
        and the stable ``cavra_event_id`` lets searches drop the duplicate.
        """
        body = json.dumps({"acks": [ack_id]}).encode("utf-8")
        deadline = (
            time.monotonic()
            + sum(settings.ack_poll_seconds)
            + settings.read_timeout_seconds
        )

        for polls, delay in enumerate(settings.ack_poll_seconds, start=1):
            self._sleep(delay)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                answer = self._request(
                    settings, token, "POST", ACK_PATH, body, read_timeout=remaining
                )
            except _TRANSPORT_ERRORS as error:
                log.debug(
                    "hec ack poll failed connector=%s poll=%d error_class=%s",
                    connector.connector_id,
                    polls,
                    transport_error_class(error),
                )
                continue

            error_class = hec_error_class(answer.code)
            if error_class is not None and CLASSIFICATION[error_class] == "config":
                return DeliveryResult("failed", error_class, http_status=answer.status)
            confirmed = (
                200 <= answer.status < 300
                and answer.acks is not None
                and answer.acks.get(str(ack_id)) is True
            )
            if confirmed:
                log.debug(
                    "hec ack confirmed connector=%s polls=%d",
                    connector.connector_id,
                    polls,
                )
                return DeliveryResult("delivered", http_status=event_status)

        return DeliveryResult("failed", "ack_timeout", http_status=event_status)

    # -- probe ------------------------------------------------------------

    def probe(self, connector: Connector) -> ProbeResult:
        """
        Check that HEC is reachable and healthy and accepts the token.

        Nothing is indexed: the health endpoint needs no token, the token is
        checked with an empty request (HEC answers code 5, "No data", to a
        token it accepts), the acknowledgement setting by asking for the
        status of ack id 0, and ``index`` with an event whose ``event`` is
        blank, which HEC refuses without indexing anything.
        """
        try:
            settings = parse_settings(connector.connector_id, connector.settings)
        except ConnectorConfigError as error:
            return ProbeResult(
                False,
                (ProbeCheck("settings", False, f"{error.key} {error.message}"),),
            )

        checks = list(self._probe_health(settings))
        if checks[0].ok:
            checks.extend(self._probe_token(connector, settings))
        else:
            checks.append(
                ProbeCheck(
                    "credentials",
                    False,
                    "Not checked: the collector could not be reached.",
                )
            )
        result = ProbeResult(all(check.ok for check in checks), tuple(checks))
        log.info(
            "hec probe connector=%s ok=%s failed=%s",
            connector.connector_id,
            result.ok,
            ",".join(check.name for check in checks if not check.ok) or "-",
        )
        return result

    def _probe_health(self, settings: HecSettings) -> list[ProbeCheck]:
        origin = settings.origin
        try:
            answer = self._request(settings, None, "GET", HEALTH_PATH, None)
        except _TRANSPORT_ERRORS as error:
            return [
                ProbeCheck(
                    "reachable",
                    False,
                    f"{origin} could not be reached ({transport_error_class(error)}).",
                )
            ]

        reachable = ProbeCheck(
            "reachable", True, f"{origin} answered with HTTP {answer.status}."
        )
        if answer.code == 17:
            healthy = ProbeCheck("healthy", True, "HEC reports itself healthy.")
        elif answer.code in (18, 19, 20):
            healthy = ProbeCheck(
                "healthy",
                False,
                f"HEC reports itself unhealthy (code {answer.code}): its queues "
                "are full or its acknowledgement service is down; deliveries "
                "will be throttled until it recovers.",
            )
        else:
            healthy = ProbeCheck(
                "healthy",
                False,
                f"The health endpoint did not answer as HEC does (HTTP "
                f"{answer.status}); check that url is the collector's base "
                "address, e.g. 'https://splunk.example:8088'.",
            )
        return [reachable, healthy]

    def _probe_token(
        self, connector: Connector, settings: HecSettings
    ) -> list[ProbeCheck]:
        token, problem = _read_token(connector)
        if problem == "missing_secret":
            return [
                ProbeCheck(
                    "credentials",
                    False,
                    f"The environment variable {settings.token_env} (token_env) "
                    "is not set or is empty.",
                )
            ]
        if problem is not None:
            return [
                ProbeCheck(
                    "credentials",
                    False,
                    f"The environment variable {settings.token_env} holds "
                    "characters an HEC token cannot have (spaces or control "
                    "characters).",
                )
            ]

        try:
            answer = self._request(settings, token, "POST", EVENT_PATH, b"")
        except _TRANSPORT_ERRORS as error:
            return [_not_checked("credentials", error)]
        if answer.code != 5:
            return [ProbeCheck("credentials", False, _refusal(answer))]

        checks = [
            ProbeCheck(
                "credentials",
                True,
                "HEC accepted the token (an empty request was answered 'No "
                "data', code 5).",
            )
        ]
        if settings.indexer_acknowledgement:
            checks.append(self._probe_acknowledgement(settings, token))
        if settings.index is not None:
            checks.append(self._probe_index(settings, token))
        return checks

    def _probe_acknowledgement(self, settings: HecSettings, token: str) -> ProbeCheck:
        body = json.dumps({"acks": [0]}).encode("utf-8")
        try:
            answer = self._request(settings, token, "POST", ACK_PATH, body)
        except _TRANSPORT_ERRORS as error:
            return _not_checked("acknowledgement", error)
        if 200 <= answer.status < 300 and answer.acks is not None:
            return ProbeCheck(
                "acknowledgement",
                True,
                "HEC answers acknowledgement queries on this connector's channel.",
            )
        if answer.code == 14:
            return ProbeCheck(
                "acknowledgement",
                False,
                "The token has indexer acknowledgement turned off (code 14); "
                "turn it on for the token or set indexer_acknowledgement = false.",
            )
        return ProbeCheck("acknowledgement", False, _refusal(answer))

    def _probe_index(self, settings: HecSettings, token: str) -> ProbeCheck:
        body = encode_event({"index": settings.index, "event": ""})
        try:
            answer = self._request(settings, token, "POST", EVENT_PATH, body)
        except _TRANSPORT_ERRORS as error:
            return _not_checked("index", error)
        if answer.code == 7:
            return ProbeCheck(
                "index",
                False,
                f"HEC refused index {settings.index!r} for this token (code 7); "
                "add it to the token's allowed indexes or change index.",
            )
        if answer.code == 13:
            # NOTE(hec): Splunk does not document whether it checks the index
            # before the event field; if it does not, a wrong index shows
            # only at the first delivery, as hec_incorrect_index.
            return ProbeCheck(
                "index",
                True,
                f"HEC did not refuse index {settings.index!r} (checked with a "
                "blank event, which HEC refuses without indexing).",
            )
        return ProbeCheck("index", False, _refusal(answer))

    # -- HTTP -------------------------------------------------------------

    def _request(
        self,
        settings: HecSettings,
        token: str | None,
        method: str,
        endpoint: str,
        body: bytes | None,
        read_timeout: float | None = None,
    ) -> HecAnswer:
        """Send one request and read HEC's answer; transport errors raise."""
        headers = {
            "User-Agent": USER_AGENT,
            "X-Splunk-Request-Channel": settings.channel,
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["Authorization"] = f"Splunk {token}"
        read = settings.read_timeout_seconds
        if read_timeout is not None:
            read = max(min(read, read_timeout), 0.001)
        pool_kwargs = {"ca_certs": settings.ca_bundle} if settings.ca_bundle else None

        pool = self._pool_manager.connection_from_url(
            settings.url, pool_kwargs=pool_kwargs
        )
        response = pool.urlopen(
            method,
            settings.path(endpoint),
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(
                connect=settings.connect_timeout_seconds, read=read
            ),
            retries=False,
            redirect=False,
            preload_content=False,
            decode_content=True,
        )
        try:
            payload = _read_limited(response)
        finally:
            response.release_conn()
        return parse_answer(
            response.status,
            payload,
            raw_retry_after(response.headers.get("Retry-After")),
        )

    def _finish(
        self,
        connector: Connector,
        delivery: Delivery,
        result: DeliveryResult,
        hec_code: int | None = None,
    ) -> DeliveryResult:
        # At debug: whoever asked for the delivery logs its outcome at info.
        log.debug(
            "hec delivery connector=%s lineage=%s attempt=%d outcome=%s "
            "status=%s hec_code=%s error_class=%s",
            connector.connector_id,
            delivery.lineage_id,
            delivery.attempt_number,
            result.outcome,
            result.http_status,
            hec_code,
            result.error_class,
        )
        return result


# -- settings ---------------------------------------------------------------


def parse_settings(connector_id: str, settings: Mapping[str, Any]) -> HecSettings:
    """Validate an HEC connector's settings table and apply the defaults."""
    if not isinstance(settings, Mapping):
        raise ConnectorConfigError(connector_id, "must be a table")
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConnectorConfigError(
            f"{connector_id}.{unknown[0]}",
            "is not an hec setting; remove it (known settings: "
            f"{', '.join(_SETTINGS)})",
        )

    def key(name: str) -> str:
        return f"{connector_id}.{name}"

    url = _check_url(key("url"), settings.get("url"))
    token_env = settings.get("token_env")
    if token_env is None:
        raise ConnectorConfigError(
            key("token_env"),
            "is required: the name of the environment variable that holds the "
            "HEC token, e.g. 'CAVRA_SPLUNK_HEC_TOKEN'",
        )
    if not isinstance(token_env, str) or not _ENV_NAME.fullmatch(token_env):
        raise ConnectorConfigError(
            key("token_env"),
            "must be the name of an environment variable (upper-case letters, "
            "digits and '_', not starting with a digit), e.g. "
            "'CAVRA_SPLUNK_HEC_TOKEN'; the token itself never goes in this file",
        )

    index = settings.get("index")
    if index is not None and (
        not isinstance(index, str) or not _INDEX_NAME.fullmatch(index)
    ):
        raise ConnectorConfigError(
            key("index"),
            "must be a Splunk index name: lower-case letters, digits, '_' and "
            "'-', not starting with '_' or '-'; leave it out to use the token's "
            "default index",
        )

    acknowledgement = settings.get("indexer_acknowledgement", False)
    if not isinstance(acknowledgement, bool):
        raise ConnectorConfigError(
            key("indexer_acknowledgement"), "must be true or false"
        )

    return HecSettings(
        url=url,
        token_env=token_env,
        channel=_check_channel(key("channel"), connector_id, settings.get("channel")),
        host=_check_metadata(
            key("host"), settings.get("host"), _default_host(), "the host field"
        ),
        index=index,
        source=_check_metadata(
            key("source"), settings.get("source"), DEFAULT_SOURCE, "the source field"
        ),
        sourcetype=_check_metadata(
            key("sourcetype"),
            settings.get("sourcetype"),
            DEFAULT_SOURCETYPE,
            "the source type",
        ),
        indexer_acknowledgement=acknowledgement,
        ack_poll_seconds=_check_poll_schedule(
            key("ack_poll_seconds"), settings.get("ack_poll_seconds")
        ),
        connect_timeout_seconds=_check_seconds(
            key("connect_timeout_seconds"),
            settings.get("connect_timeout_seconds", CONNECT_TIMEOUT[0]),
            CONNECT_TIMEOUT[1],
        ),
        read_timeout_seconds=_check_seconds(
            key("read_timeout_seconds"),
            settings.get("read_timeout_seconds", READ_TIMEOUT[0]),
            READ_TIMEOUT[1],
        ),
        ca_bundle=_check_ca_bundle(key("ca_bundle"), settings.get("ca_bundle"), url),
    )


def default_channel(connector_id: str) -> str:
    """The channel GUID of a connector without a ``channel`` setting."""
    return str(uuid.uuid5(_CHANNEL_NAMESPACE, connector_id)).upper()


def _check_url(key: str, value: Any) -> str:
    if value is None:
        raise ConnectorConfigError(
            key,
            "is required: the collector's base address, e.g. "
            "'https://splunk.example:8088'",
        )
    if not isinstance(value, str) or not value:
        raise ConnectorConfigError(key, "must be a URL string such as 'https://...'")
    if not all("!" <= character <= "~" for character in value):
        raise ConnectorConfigError(
            key,
            "must be ASCII without spaces or control characters; write an "
            "international host name in its xn-- form",
        )

    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ConnectorConfigError(key, "must start with 'https://' or 'http://'")
    if "@" in parts.netloc:
        raise ConnectorConfigError(
            key,
            "must not carry a user name or password; put the HEC token in an "
            "environment variable and name it in token_env",
        )
    if not parts.hostname or not _is_host(parts.hostname, parts.netloc):
        raise ConnectorConfigError(
            key, "must name a host, e.g. 'https://splunk.example:8088'"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port <= 65535:
        raise ConnectorConfigError(key, "has a port that is not 1-65535")
    if parts.query or "?" in value:
        raise ConnectorConfigError(
            key,
            "must not have a query string: the HEC token goes in the environment "
            "variable named by token_env, and cavra adds the rest",
        )
    if parts.fragment or "#" in value:
        raise ConnectorConfigError(key, "must not have a '#fragment'; remove it")
    if "/services/collector" in parts.path:
        raise ConnectorConfigError(
            key,
            "must be the collector's base address without '/services/collector"
            "...', e.g. 'https://splunk.example:8088'; cavra adds the endpoint",
        )
    return value.rstrip("/")


def _is_host(hostname: str, netloc: str) -> bool:
    if "[" in netloc:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return False
        return True
    labels = hostname.rstrip(".").split(".")
    return all(
        len(label) <= 63 and _HOST_LABEL.fullmatch(label) is not None
        for label in labels
    )


def _check_channel(key: str, connector_id: str, value: Any) -> str:
    if value is None:
        return default_channel(connector_id)
    if not isinstance(value, str) or not _GUID.fullmatch(value):
        raise ConnectorConfigError(
            key,
            "must be a GUID such as 'FE0ECFAD-13D5-401B-847D-77833BD77131' (HEC "
            "refuses other channel ids); leave it out to use one derived from "
            "the connector id",
        )
    return value


def _check_metadata(key: str, value: Any, default: str, what: str) -> str:
    if value is None:
        return default
    valid = (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_METADATA_LENGTH
        and value.strip() == value
        and value.isprintable()
    )
    if not valid:
        raise ConnectorConfigError(
            key,
            f"must be {what}: 1-{_MAX_METADATA_LENGTH} printable characters "
            "without leading or trailing spaces",
        )
    return value


def _default_host() -> str:
    name = socket.gethostname()
    if not name or not name.isprintable() or len(name) > _MAX_METADATA_LENGTH:
        return "localhost"
    return name


def _check_poll_schedule(key: str, value: Any) -> tuple[float, ...]:
    if value is None:
        return DEFAULT_ACK_POLL_SECONDS
    hint = (
        f"must be a list of 1-{MAX_ACK_POLLS} delays in seconds, each greater "
        f"than 0 and at most {MAX_ACK_POLL_DELAY:g}, {MAX_ACK_POLL_TOTAL:g} in "
        "total, e.g. [1, 2, 4, 8]"
    )
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or not 0 < len(value) <= MAX_ACK_POLLS
    ):
        raise ConnectorConfigError(key, hint)
    delays = []
    for delay in value:
        valid = (
            isinstance(delay, int | float)
            and not isinstance(delay, bool)
            and math.isfinite(delay)
            and 0 < delay <= MAX_ACK_POLL_DELAY
        )
        if not valid:
            raise ConnectorConfigError(key, hint)
        delays.append(float(delay))
    if sum(delays) > MAX_ACK_POLL_TOTAL:
        raise ConnectorConfigError(key, hint)
    return tuple(delays)


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


def _check_ca_bundle(key: str, value: Any, url: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConnectorConfigError(key, "must be the path of a PEM file")
    if urlsplit(url).scheme.lower() != "https":
        raise ConnectorConfigError(
            key, "applies to https URLs only; remove it or use an https url"
        )
    if not Path(value).is_file():
        raise ConnectorConfigError(
            key,
            "names no readable file; give the path of a PEM file holding the "
            "CA certificates that sign the collector's certificate",
        )
    return value


# -- the event and HEC's answers ---------------------------------------------


def build_event(settings: HecSettings, delivery: Delivery) -> dict[str, Any]:
    """
    The HEC event envelope of one delivery.

    ``time`` is the package's ``generated_at`` in epoch seconds (left out
    when the package has none, so HEC stamps the time it received it);
    ``fields.cavra_event_id`` is an indexed field holding the event id that
    every attempt of a lineage shares, so duplicates can be found by search.
    """
    envelope: dict[str, Any] = {}
    generated_at = epoch_seconds(delivery.package.get("generated_at"))
    if generated_at is not None:
        envelope["time"] = generated_at
    envelope["host"] = settings.host
    envelope["source"] = settings.source
    envelope["sourcetype"] = settings.sourcetype
    if settings.index is not None:
        envelope["index"] = settings.index
    envelope["event"] = {
        "package_id": delivery.package_id,
        "lineage_id": delivery.lineage_id,
        "attempt_number": delivery.attempt_number,
        "event_id": delivery.event_id,
        "package": delivery.package,
    }
    envelope["fields"] = {"cavra_event_id": delivery.event_id}
    return envelope


def encode_event(envelope: Mapping[str, Any]) -> bytes:
    """Compact JSON with sorted keys, so equal events are equal bytes."""
    return json.dumps(
        envelope, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def epoch_seconds(value: Any) -> float | None:
    """An RFC 3339 time with an offset as epoch seconds, to the millisecond."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return round(moment.timestamp(), 3)


def parse_answer(status: int, body: bytes | None, retry_after: str | None) -> HecAnswer:
    """Read HEC's ``{"text", "code", "ackId"?}`` or ``{"acks"}`` answer."""
    document: Any = None
    if body:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
    if not isinstance(document, dict):
        return HecAnswer(status, None, None, None, retry_after)

    code = document.get("code")
    ack_id = document.get("ackId")
    acks = document.get("acks")
    return HecAnswer(
        status=status,
        code=code if _is_count(code) else None,
        ack_id=ack_id if _is_count(ack_id) else None,
        acks=acks if isinstance(acks, dict) else None,
        retry_after=retry_after,
    )


def read_event_answer(answer: HecAnswer) -> DeliveryResult:
    """
    What HEC's answer to an event means, acknowledgement aside.

    A documented failure code decides, whatever the HTTP status; otherwise
    the HTTP status does. A 2xx without HEC's JSON answer is not trusted as a
    delivery: something other than HEC answered.
    """
    status = answer.status
    error_class = hec_error_class(answer.code)
    if error_class is not None:
        return DeliveryResult("failed", error_class, status, answer.retry_after)
    if 300 <= status < 400:
        return DeliveryResult("failed", "redirect", status, answer.retry_after)
    if 200 <= status < 300:
        if answer.code is None:
            return DeliveryResult("failed", "hec_unreadable_response", status)
        return DeliveryResult("delivered", http_status=status)
    return DeliveryResult("failed", "http_status", status, answer.retry_after)


def hec_error_class(code: int | None) -> str | None:
    """The error class of an HEC failure code; None for success and unknowns."""
    if code is None:
        return None
    return HEC_ERROR_CLASSES.get(code)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refusal(answer: HecAnswer) -> str:
    """One sentence on an HEC refusal, by code; never HEC's own text."""
    fixes = {
        1: "the token is disabled; enable it in Splunk or use another token",
        2: "HEC saw no token; check token_env",
        3: "HEC could not read the Authorization header",
        4: "HEC does not know the token; check the value of token_env's variable",
        10: "HEC wants a channel; check channel",
        11: "HEC refused the channel; set channel to a GUID",
    }
    error_class = hec_error_class(answer.code)
    if answer.code in fixes:
        return f"HEC refused the request ({error_class}): {fixes[answer.code]}."
    if error_class is not None:
        return f"HEC refused the request ({error_class}, HTTP {answer.status})."
    return f"HEC gave an unexpected answer (HTTP {answer.status})."


def _not_checked(name: str, error: BaseException) -> ProbeCheck:
    return ProbeCheck(
        name,
        False,
        f"Not checked: the request failed ({transport_error_class(error)}).",
    )


def _read_token(connector: Connector) -> tuple[str, str | None]:
    """The token, or an error class saying why there is none to send."""
    token = (connector.secret("token_env") or "").strip()
    if not token:
        return "", "missing_secret"
    if not all("!" <= character <= "~" for character in token):
        # http.client would refuse it with the value in the message.
        return "", "invalid_secret"
    return token, None


def _read_limited(response: urllib3.BaseHTTPResponse) -> bytes | None:
    """The body, or None when it is longer than any answer HEC gives."""
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(16 * 1024)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > _MAX_ANSWER_BODY:
                response.close()
                return None
            chunks.append(chunk)
    except _TRANSPORT_ERRORS:
        # The status arrived; a body cut short just is not HEC's answer.
        response.close()
        return None


# -- transport errors ----------------------------------------------------------


def transport_error_class(error: BaseException) -> str:
    """Map an exception of urllib3 or the socket layer to a stable code."""
    # NewConnectionError derives from ConnectTimeoutError, so the specific
    # connection failures are told apart first.
    if isinstance(error, NameResolutionError):
        return "dns_error"
    if isinstance(error, NewConnectionError):
        return _os_error_class(error.__cause__) or "network_error"
    if isinstance(error, ConnectTimeoutError):
        return "connect_timeout"
    if isinstance(error, ReadTimeoutError):
        return "timeout"
    if isinstance(error, SSLError):
        return "tls_error"
    if isinstance(error, ProtocolError):
        cause = error.args[1] if len(error.args) > 1 else error.__cause__
        if isinstance(cause, BaseException):
            return _os_error_class(cause) or "network_error"
        return "network_error"
    return _os_error_class(error) or "network_error"


def _os_error_class(error: BaseException | None) -> str | None:
    if isinstance(error, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(error, ConnectionResetError | ConnectionAbortedError):
        return "connection_reset"
    if isinstance(error, BrokenPipeError | http.client.IncompleteRead):
        return "connection_reset"
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return "tls_error"
    if isinstance(error, socket.gaierror):
        return "dns_error"
    if isinstance(error, TimeoutError):
        return "timeout"
    return None


def raw_retry_after(value: str | None) -> str | None:
    """
    A ``Retry-After`` header as received, if it is safe to keep as evidence.

    Surrounding whitespace is removed; a value over 64 characters or with
    anything but printable ASCII is dropped.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _RETRY_AFTER_MAX_LENGTH:
        return None
    if not all(" " <= character <= "~" for character in value):
        return None
    return value
