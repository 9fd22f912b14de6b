"""
The webhook connector: POST each audit package as JSON to one HTTPS endpoint.

It is an ordinary cavra plugin, built only on ``cavra_core.types`` and
``cavra_core.hookspecs.hookimpl``, and a template for third-party connectors.

```toml
[audit-webhook]
type = "webhook"
url = "https://hooks.example.com/cavra"
auth_token_env = "CAVRA_AUDIT_WEBHOOK_TOKEN"   # sent as "Authorization: Bearer"
connect_timeout_seconds = 5
read_timeout_seconds = 10
ca_bundle = "/etc/cavra/hooks-ca.pem"         # optional, for a private CA

[audit-webhook.headers]                        # optional, never secrets
X-Team = "release"
```

Each delivery is one POST, never retried here and never redirected: the retry
plan decides about retries, and a redirect is reported as a failure so that
evidence is never sent somewhere nobody configured. Every outcome becomes a
:class:`~cavra_core.types.DeliveryResult` carrying only codes; the URL, the
headers, the body and the text of an exception never leave this module, and
the log carries ids and codes only.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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

from cavra_core.hookspecs import hookimpl
from cavra_core.types import (
    Connector,
    ConnectorConfigError,
    ConnectorType,
    Delivery,
    DeliveryResult,
)

log = logging.getLogger(__name__)

#: Limits for the timeout settings, in seconds: (default, maximum).
CONNECT_TIMEOUT = (5.0, 120.0)
READ_TIMEOUT = (10.0, 300.0)

_SETTINGS = (
    "url",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "auth_token_env",
    "headers",
    "ca_bundle",
)
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# RFC 9110 section 5.6.2: a field name is a token.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
# Names of headers and query parameters that usually carry a credential.
_SECRET_NAME = re.compile(
    r"auth|token|secret|passw|api[-_]?key|cookie|session|signature|credential|^sig$",
    re.IGNORECASE,
)
# Headers that cavra sets itself or that the HTTP client must own.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "content-type",
        "host",
        "idempotency-key",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
_RETRY_AFTER_MAX_LENGTH = 64
# A receiver's answer is read this far at most (and thrown away) so that the
# connection can be reused; a longer body costs a new connection, not memory.
_MAX_DRAINED_BODY = 64 * 1024


def _cavra_version() -> str:
    try:
        return metadata.version("cavra")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"cavra/{_cavra_version()}"


@hookimpl
def cavra_register_connector_types() -> list[ConnectorType]:
    """Declare the ``webhook`` connector type."""
    return [WebhookConnectorType()]


@dataclass(frozen=True)
class WebhookSettings:
    """The validated settings of one webhook connector."""

    url: str
    connect_timeout_seconds: float = CONNECT_TIMEOUT[0]
    read_timeout_seconds: float = READ_TIMEOUT[0]
    auth_token_env: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ca_bundle: str | None = None


class WebhookConnectorType:
    """
    Deliver packages to a webhook receiver over HTTP(S).

    One instance serves every webhook connector and may be called from many
    threads at once: its connection pools are shared and thread-safe, and each
    pool is keyed by host and CA bundle, so connectors never share trust.
    """

    name = "webhook"
    category = "webhook"

    def __init__(self) -> None:
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

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        """
        POST ``delivery.package`` once and report what the receiver did.

        Receiver and network failures are reported, never raised. Settings
        that no longer validate (a CA bundle removed since start-up, say) are
        reported as ``config_error`` without sending.
        """
        try:
            settings = parse_settings(connector.connector_id, connector.settings)
        except ConnectorConfigError as error:
            log.warning(
                "webhook settings invalid connector=%s key=%s",
                connector.connector_id,
                error.key,
            )
            return self._failed(connector, delivery, "config_error")

        headers = {
            **settings.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": delivery.event_id,
            "X-Cavra-Lineage": delivery.lineage_id,
            "X-Cavra-Attempt": str(delivery.attempt_number),
        }

        if settings.auth_token_env:
            token = (connector.secret("auth_token_env") or "").strip()
            if not token:
                return self._failed(connector, delivery, "missing_secret")
            if not _is_visible_ascii(token):
                # http.client would refuse it with the value in the message.
                return self._failed(connector, delivery, "invalid_secret")
            headers["Authorization"] = f"Bearer {token}"

        body = json.dumps(
            delivery.package, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
        pool_kwargs = {"ca_certs": settings.ca_bundle} if settings.ca_bundle else None
        timeout = urllib3.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.read_timeout_seconds,
        )
        log.debug(
            "webhook sending connector=%s lineage=%s attempt=%d",
            connector.connector_id,
            delivery.lineage_id,
            delivery.attempt_number,
        )

        try:
            pool = self._pool_manager.connection_from_url(
                settings.url, pool_kwargs=pool_kwargs
            )
            response = pool.urlopen(
                "POST",
                urllib3.util.parse_url(settings.url).request_uri,
                body=body,
                headers=headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
                decode_content=False,
            )
        except (HTTPError, OSError, http.client.HTTPException) as error:
            return self._failed(connector, delivery, transport_error_class(error))

        status = response.status
        retry_after = raw_retry_after(response.headers.get("Retry-After"))
        _discard_body(response)

        if 200 <= status < 300:
            result = DeliveryResult(outcome="delivered", http_status=status)
        else:
            result = DeliveryResult(
                outcome="failed",
                error_class="redirect" if 300 <= status < 400 else "http_status",
                http_status=status,
                retry_after=retry_after,
            )
        _log_result(connector, delivery, result)
        return result

    def _failed(
        self, connector: Connector, delivery: Delivery, error_class: str
    ) -> DeliveryResult:
        result = DeliveryResult(outcome="failed", error_class=error_class)
        _log_result(connector, delivery, result)
        return result


def parse_settings(connector_id: str, settings: Mapping[str, Any]) -> WebhookSettings:
    """Validate a webhook connector's settings table and apply the defaults."""
    if not isinstance(settings, Mapping):
        raise ConnectorConfigError(connector_id, "must be a table")
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise ConnectorConfigError(
            f"{connector_id}.{unknown[0]}",
            "is not a webhook setting; remove it (known settings: "
            f"{', '.join(_SETTINGS)})",
        )

    url = _check_url(connector_id, settings.get("url"))
    ca_bundle = _check_ca_bundle(connector_id, settings.get("ca_bundle"), url)
    return WebhookSettings(
        url=url,
        connect_timeout_seconds=_check_seconds(
            f"{connector_id}.connect_timeout_seconds",
            settings.get("connect_timeout_seconds", CONNECT_TIMEOUT[0]),
            CONNECT_TIMEOUT[1],
        ),
        read_timeout_seconds=_check_seconds(
            f"{connector_id}.read_timeout_seconds",
            settings.get("read_timeout_seconds", READ_TIMEOUT[0]),
            READ_TIMEOUT[1],
        ),
        auth_token_env=_check_env_name(connector_id, settings.get("auth_token_env")),
        headers=_check_headers(connector_id, settings.get("headers")),
        ca_bundle=ca_bundle,
    )


def transport_error_class(error: BaseException) -> str:
    """Map an exception of urllib3 or the socket layer to a stable code."""
    # NewConnectionError derives from ConnectTimeoutError (for compatibility),
    # so the more specific connection errors are tested first.
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


def raw_retry_after(value: str | None) -> str | None:
    """
    Return a ``Retry-After`` header as received, if it is safe to keep.

    Only surrounding whitespace is removed. A value longer than 64 characters
    or holding anything but printable ASCII is dropped: it is evidence, and a
    receiver must not be able to write arbitrary text into it.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _RETRY_AFTER_MAX_LENGTH:
        return None
    if not all(" " <= character <= "~" for character in value):
        return None
    return value


def _os_error_class(error: BaseException | None) -> str | None:
    if isinstance(error, ConnectionRefusedError):
        return "connection_refused"
    # http.client.RemoteDisconnected is a ConnectionResetError.
    if isinstance(error, ConnectionResetError | ConnectionAbortedError):
        return "connection_reset"
    if isinstance(error, BrokenPipeError | http.client.IncompleteRead):
        return "connection_reset"
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        return "tls_error"
    if isinstance(error, TimeoutError):
        return "timeout"
    return None


def _discard_body(response: urllib3.BaseHTTPResponse) -> None:
    # Only the status matters, and the receiver has already given it.
    try:
        remaining = _MAX_DRAINED_BODY
        while remaining > 0:
            chunk = response.read(min(remaining, 16 * 1024), decode_content=False)
            if not chunk:
                return
            remaining -= len(chunk)
        response.close()
    except (HTTPError, OSError, http.client.HTTPException):
        response.close()
    finally:
        response.release_conn()


def _log_result(
    connector: Connector, delivery: Delivery, result: DeliveryResult
) -> None:
    log.info(
        "webhook delivery connector=%s lineage=%s attempt=%d outcome=%s "
        "status=%s error_class=%s",
        connector.connector_id,
        delivery.lineage_id,
        delivery.attempt_number,
        result.outcome,
        result.http_status,
        result.error_class,
    )


def _check_url(connector_id: str, value: Any) -> str:
    key = f"{connector_id}.url"
    if value is None:
        raise ConnectorConfigError(
            key, "is required: the receiver's address, e.g. 'https://hooks.example.com'"
        )
    if not isinstance(value, str) or not value:
        raise ConnectorConfigError(key, "must be a URL string such as 'https://...'")
    if not _is_visible_ascii(value):
        raise ConnectorConfigError(
            key,
            "must be ASCII without spaces or control characters; percent-encode "
            "the path and write an international host name in its xn-- form",
        )

    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ConnectorConfigError(key, "must start with 'https://' or 'http://'")
    if "@" in parts.netloc:
        raise ConnectorConfigError(
            key,
            "must not carry a user name or password; put the token in an "
            "environment variable and name it in auth_token_env",
        )
    if not parts.hostname or not _is_host(parts.hostname, parts.netloc):
        raise ConnectorConfigError(
            key, "must name a host, e.g. 'https://hooks.example.com/cavra'"
        )
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ConnectorConfigError(key, "has a port that is not 1-65535") from None
    if parts.fragment or value.endswith("#"):
        raise ConnectorConfigError(key, "must not have a '#fragment'; remove it")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_NAME.search(name):
            raise ConnectorConfigError(
                key,
                f"has a query parameter {name!r} that looks like a credential; "
                "put the token in an environment variable and name it in "
                "auth_token_env",
            )
    return value


def _is_host(hostname: str, netloc: str) -> bool:
    if "[" in netloc:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return False
        return True
    labels = hostname.rstrip(".").split(".")
    return all(
        len(label) <= 63 and _HOST_NAME.fullmatch(label) is not None for label in labels
    )


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


def _check_env_name(connector_id: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ConnectorConfigError(
            f"{connector_id}.auth_token_env",
            "must be the name of an environment variable (upper-case letters, "
            "digits and '_', not starting with a digit), e.g. "
            "'CAVRA_WEBHOOK_TOKEN'; the token itself never goes in this file",
        )
    return value


def _check_headers(connector_id: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConnectorConfigError(
            f"{connector_id}.headers",
            "must be a table of header names to string values",
        )

    headers: dict[str, str] = {}
    for name, header_value in value.items():
        key = f"{connector_id}.headers.{name}"
        lowered = str(name).lower()
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConnectorConfigError(
                key, "is not a valid header name (letters, digits and '-')"
            )
        if _SECRET_NAME.search(name):
            raise ConnectorConfigError(
                key,
                "may carry a secret, and secrets are never written in the "
                "connectors file; for a bearer token set auth_token_env to the "
                "name of the environment variable that holds it",
            )
        if lowered in _RESERVED_HEADERS or lowered.startswith("x-cavra-"):
            raise ConnectorConfigError(key, "is set by cavra itself; remove it")
        if not isinstance(header_value, str) or not all(
            " " <= character <= "~" for character in header_value
        ):
            raise ConnectorConfigError(
                key, "must be a string of printable ASCII characters"
            )
        headers[name] = header_value.strip()
    return headers


def _check_ca_bundle(connector_id: str, value: Any, url: str) -> str | None:
    key = f"{connector_id}.ca_bundle"
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
            "CA certificates that sign the receiver's certificate",
        )
    return value


def _is_visible_ascii(text: str) -> bool:
    return all("!" <= character <= "~" for character in text)
