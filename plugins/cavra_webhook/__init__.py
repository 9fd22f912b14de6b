"""
The webhook connector: POST each audit package as JSON to one HTTPS endpoint.

It is an ordinary cavra plugin, built only on ``cavra_core.types`` and
``cavra_core.hookspecs.hookimpl``, and a template for third-party connectors.

```toml
[audit-webhook]
type = "webhook"
url = "https://hooks.example.com/cavra"
auth_token_env = "CAVRA_AUDIT_WEBHOOK_TOKEN"   # sent as "Authorization: Bearer"
signing_secret_env = "CAVRA_AUDIT_WEBHOOK_SECRET"  # holds "whsec_<base64>"
connect_timeout_seconds = 5
read_timeout_seconds = 10
ca_bundle = "/etc/cavra/hooks-ca.pem"         # optional, for a private CA

[audit-webhook.headers]                        # optional, never secrets
X-Team = "release"
```

While a signing secret is rotated, ``signing_secrets_env`` lists the old and
the new one's variables and every delivery carries both signatures:
``signing_secrets_env = ["CAVRA_HOOK_SECRET_OLD", "CAVRA_HOOK_SECRET_NEW"]``.

Each delivery is one POST, never retried here and never redirected: the retry
plan decides about retries, and a redirect is reported as a failure so that
evidence is never sent somewhere nobody configured. Every outcome becomes a
:class:`~cavra_core.types.DeliveryResult` carrying only codes; the URL, the
headers, the body and the text of an exception never leave this module, and
the log carries ids and codes only.

Every delivery carries the Standard Webhooks headers ``webhook-id`` (the
lineage's event id, the same on every retry) and ``webhook-timestamp``, and
``webhook-signature`` when secrets are configured (see
:mod:`cavra_webhook.signing`). :meth:`WebhookConnectorType.probe` checks the
secrets and the receiver without sending evidence, and
:mod:`cavra_webhook.recovery` says what to do when deliveries keep failing.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
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
    FailureCount,
    ProbeCheck,
    ProbeResult,
    RecoveryStep,
)
from cavra_webhook.recovery import recovery_steps
from cavra_webhook.signing import (
    SecretError,
    decode_secret,
    is_signable_id,
    load_signing_keys,
    signature_headers,
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
    "signing_secret_env",
    "signing_secrets_env",
    "headers",
    "ca_bundle",
)
#: Rotation needs two secrets at a time; a few more leave room for overlaps.
MAX_SIGNING_SECRETS = 4
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
# Standard Webhooks owns every header with this prefix.
_RESERVED_HEADER_PREFIXES = ("x-cavra-", "webhook-")
#: Statuses that mean the receiver refused the request's credentials.
_CREDENTIAL_STATUSES = frozenset({401, 403})
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


@hookimpl
def cavra_recovery_steps(
    connector: Connector, failure_classes: tuple[FailureCount, ...]
) -> list[RecoveryStep] | None:
    """Steps in webhook terms for webhook connectors; other types are not ours."""
    if connector.type != WebhookConnectorType.name:
        return None
    return recovery_steps(connector, failure_classes)


@dataclass(frozen=True)
class WebhookSettings:
    """The validated settings of one webhook connector."""

    url: str
    connect_timeout_seconds: float = CONNECT_TIMEOUT[0]
    read_timeout_seconds: float = READ_TIMEOUT[0]
    auth_token_env: str | None = None
    signing_secret_env: str | None = None
    signing_secrets_env: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    ca_bundle: str | None = None

    @property
    def signing_variables(self) -> tuple[str, ...]:
        """Every variable holding a signing secret: the single one first."""
        single = (self.signing_secret_env,) if self.signing_secret_env else ()
        return single + self.signing_secrets_env


class WebhookConnectorType:
    """
    Deliver packages to a webhook receiver over HTTP(S).

    One instance serves every webhook connector and may be called from many
    threads at once: its connection pools are shared and thread-safe, and each
    pool is keyed by host and CA bundle, so connectors never share trust.

    :param clock: returns the current Unix time in seconds; it stamps
        ``webhook-timestamp`` (tests pass their own).
    """

    name = "webhook"
    category = "webhook"
    #: How the receiver's answers are read, beyond the default table. 410 Gone
    #: is the receiver's way of asking for no more deliveries (the Standard
    #: Webhooks specification asks senders to stop and disable the endpoint).
    classification = {
        "http:410": "receiver_stop",
        "http:429": "throttle",
        "http:502": "throttle",
        "http:503": "throttle",
        "http:504": "throttle",
        "http:401": "config",
        "http:403": "config",
        "redirect": "config",
        "tls_error": "config",
        "invalid_secret": "config",
        "missing_secret": "config",
        "config_error": "config",
        "invalid_event_id": "permanent",
        "timeout": "transient",
        "connect_timeout": "transient",
        "connection_refused": "transient",
        "connection_reset": "transient",
        "dns_error": "transient",
        "network_error": "transient",
    }
    honours_retry_after = True
    acknowledgement = "response"
    batching = "one package per request"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
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
        reported as ``config_error``, and a secret that is unset or malformed
        as ``missing_secret`` or ``invalid_secret``, all without sending.
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
        if not is_signable_id(delivery.event_id):
            return self._failed(connector, delivery, "invalid_event_id")

        try:
            token = bearer_token(settings)
            signing_keys = load_signing_keys(settings.signing_variables)
        except SecretError as error:
            log.warning(
                "webhook secret unusable connector=%s variable=%s error_class=%s",
                connector.connector_id,
                error.variable,
                error.error_class,
            )
            return self._failed(connector, delivery, error.error_class)

        body = json.dumps(
            delivery.package, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
        headers = {
            **settings.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": delivery.event_id,
            "X-Cavra-Lineage": delivery.lineage_id,
            "X-Cavra-Attempt": str(delivery.attempt_number),
        }
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # Signed last, over the very bytes that are sent, so that the
        # timestamp is as fresh as it can be when the request leaves.
        headers.update(
            signature_headers(signing_keys, delivery.event_id, int(self._clock()), body)
        )
        log.debug(
            "webhook sending connector=%s lineage=%s attempt=%d signatures=%d",
            connector.connector_id,
            delivery.lineage_id,
            delivery.attempt_number,
            len(signing_keys),
        )

        try:
            response = self._send(settings, "POST", headers, body)
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

    def probe(self, connector: Connector) -> ProbeResult:
        """
        Check the secrets and whether the receiver answers, sending no evidence.

        The receiver gets one ``OPTIONS`` request to the configured URL, with
        the bearer token when one is configured (so that 401 and 403 speak
        about it) and without body or signature. Any HTTP answer means
        reachable, 405 Method Not Allowed included. Details name at most the
        URL's scheme and host; never its path, a port, a header or a secret.
        """
        try:
            settings = parse_settings(connector.connector_id, connector.settings)
        except ConnectorConfigError as error:
            check = ProbeCheck("settings", False, f"{error.key} {error.message}.")
            return self._probed(connector, [check])

        checks = [_secrets_check(settings)]
        origin = _origin(settings.url)
        headers = {"User-Agent": USER_AGENT}
        try:
            token = bearer_token(settings)
        except SecretError:
            token = None  # the secrets check already says what is wrong
        if token:
            headers["Authorization"] = f"Bearer {token}"

        try:
            response = self._send(settings, "OPTIONS", headers, None)
        except (HTTPError, OSError, http.client.HTTPException) as error:
            error_class = transport_error_class(error)
            checks.append(
                ProbeCheck(
                    "reachable", False, f"{origin} could not be reached: {error_class}."
                )
            )
            if error_class == "tls_error":
                checks.append(ProbeCheck("tls", False, _tls_failure(settings, origin)))
            return self._probed(connector, checks)

        status = response.status
        _discard_body(response)
        checks.append(
            ProbeCheck("reachable", True, f"{origin} answered OPTIONS with {status}.")
        )
        if origin.startswith("https:"):
            trust = "the ca_bundle" if settings.ca_bundle else "the system's CAs"
            checks.append(
                ProbeCheck("tls", True, f"The certificate is verified by {trust}.")
            )
        if 300 <= status < 400:
            checks.append(
                ProbeCheck(
                    "redirect",
                    False,
                    f"{origin} redirects, and deliveries never follow a redirect; "
                    "set url to the address it points to.",
                )
            )
        checks.append(_credentials_check(settings, status, token_sent=bool(token)))
        return self._probed(connector, checks)

    def _send(
        self,
        settings: WebhookSettings,
        method: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> urllib3.BaseHTTPResponse:
        pool_kwargs = {"ca_certs": settings.ca_bundle} if settings.ca_bundle else None
        pool = self._pool_manager.connection_from_url(
            settings.url, pool_kwargs=pool_kwargs
        )
        return pool.urlopen(
            method,
            urllib3.util.parse_url(settings.url).request_uri,
            body=body,
            headers=dict(headers),
            timeout=urllib3.Timeout(
                connect=settings.connect_timeout_seconds,
                read=settings.read_timeout_seconds,
            ),
            retries=False,
            redirect=False,
            preload_content=False,
            decode_content=False,
        )

    def _failed(
        self, connector: Connector, delivery: Delivery, error_class: str
    ) -> DeliveryResult:
        result = DeliveryResult(outcome="failed", error_class=error_class)
        _log_result(connector, delivery, result)
        return result

    def _probed(self, connector: Connector, checks: list[ProbeCheck]) -> ProbeResult:
        result = ProbeResult(ok=all(check.ok for check in checks), checks=tuple(checks))
        log.info(
            "webhook probe connector=%s ok=%s failed=%s",
            connector.connector_id,
            result.ok,
            ",".join(check.name for check in checks if not check.ok) or "-",
        )
        return result


def bearer_token(settings: WebhookSettings) -> str | None:
    """
    The bearer token that ``auth_token_env`` names, or None without one.

    :raises SecretError: when the variable is unset or empty, or when the
        token holds characters that cannot go into a header (the HTTP client
        would refuse it with the value in its message).
    """
    variable = settings.auth_token_env
    if not variable:
        return None
    token = os.environ.get(variable, "").strip()
    if not token:
        raise SecretError(variable, "missing_secret", "is not set or empty")
    if not _is_visible_ascii(token):
        raise SecretError(
            variable,
            "invalid_secret",
            "holds spaces or characters that a header cannot carry",
        )
    return token


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
    auth_token_env = _check_env_name(
        f"{connector_id}.auth_token_env",
        settings.get("auth_token_env"),
        example="CAVRA_WEBHOOK_TOKEN",
    )
    signing_secret_env, signing_secrets_env = _check_signing(
        connector_id, settings, auth_token_env
    )
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
        auth_token_env=auth_token_env,
        signing_secret_env=signing_secret_env,
        signing_secrets_env=signing_secrets_env,
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
    # At debug: whoever asked for the delivery logs its outcome at info.
    log.debug(
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


def _check_env_name(key: str, value: Any, example: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ConnectorConfigError(
            key,
            "must be the name of an environment variable (upper-case letters, "
            f"digits and '_', not starting with a digit), e.g. {example!r}; "
            "the secret itself never goes in this file",
        )
    return value


def _check_signing(
    connector_id: str, settings: Mapping[str, Any], auth_token_env: str | None
) -> tuple[str | None, tuple[str, ...]]:
    single = _check_env_name(
        f"{connector_id}.signing_secret_env",
        settings.get("signing_secret_env"),
        example="CAVRA_WEBHOOK_SECRET",
    )

    key = f"{connector_id}.signing_secrets_env"
    listed = settings.get("signing_secrets_env")
    names: tuple[str, ...] = ()
    if listed is not None:
        if not isinstance(listed, list | tuple) or not listed:
            raise ConnectorConfigError(
                key,
                "must be a list of environment variable names, e.g. "
                "['CAVRA_HOOK_SECRET_OLD', 'CAVRA_HOOK_SECRET_NEW']; remove it "
                "to send deliveries unsigned",
            )
        for index, name in enumerate(listed):
            _check_env_name(
                f"{key}[{index}]",
                "" if name is None else name,
                example="CAVRA_WEBHOOK_SECRET",
            )
        names = tuple(listed)

    variables = ((single,) if single else ()) + names
    if len(set(variables)) < len(variables):
        raise ConnectorConfigError(
            key,
            "names a variable twice (here or in signing_secret_env); each "
            "secret signs once, so list each variable once",
        )
    if len(variables) > MAX_SIGNING_SECRETS:
        raise ConnectorConfigError(
            key,
            f"names more than {MAX_SIGNING_SECRETS} secrets; a rotation needs "
            "two: the old one and the new one",
        )
    if auth_token_env and auth_token_env in variables:
        raise ConnectorConfigError(
            f"{connector_id}.auth_token_env",
            "names a signing secret's variable: the token is sent with every "
            "request, and a signing secret must never be; use two variables",
        )
    return single, names


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
        if lowered in _RESERVED_HEADERS or lowered.startswith(
            _RESERVED_HEADER_PREFIXES
        ):
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


def _secrets_check(settings: WebhookSettings) -> ProbeCheck:
    variables = settings.signing_variables
    if settings.auth_token_env:
        variables = (settings.auth_token_env, *variables)
    if not variables:
        return ProbeCheck(
            "secrets",
            True,
            "No secret is configured: deliveries carry neither a token nor a "
            "signature.",
        )

    problems = []
    try:
        bearer_token(settings)
    except SecretError as error:
        problems.append(f"{error.variable} {error.reason}")
    for variable in settings.signing_variables:
        try:
            decode_secret(variable, os.environ.get(variable))
        except SecretError as error:
            problems.append(f"{error.variable} {error.reason}")
    if problems:
        return ProbeCheck("secrets", False, "; ".join(problems) + ".")
    return ProbeCheck("secrets", True, f"Set and well-formed: {', '.join(variables)}.")


def _credentials_check(
    settings: WebhookSettings, status: int, token_sent: bool
) -> ProbeCheck:
    if settings.auth_token_env and not token_sent:
        return ProbeCheck(
            "credentials",
            False,
            f"Not checked: {settings.auth_token_env} holds no usable token.",
        )
    if status in _CREDENTIAL_STATUSES:
        fix = (
            f"check the token in {settings.auth_token_env}"
            if settings.auth_token_env
            else "it wants a token: name its variable in auth_token_env"
        )
        return ProbeCheck(
            "credentials", False, f"The receiver refused the request ({status}); {fix}."
        )
    if settings.auth_token_env:
        return ProbeCheck(
            "credentials", True, f"The receiver did not refuse the token ({status})."
        )
    return ProbeCheck("credentials", True, "The receiver asked for no token.")


def _tls_failure(settings: WebhookSettings, origin: str) -> str:
    if settings.ca_bundle:
        return (
            f"The TLS handshake with {origin} failed: is its certificate signed "
            "by a CA in ca_bundle, and issued for this host?"
        )
    return (
        f"The TLS handshake with {origin} failed: for a private CA, name its "
        "certificates in ca_bundle; verification is never switched off."
    )


def _origin(url: str) -> str:
    """``scheme://host`` of ``url``: no port, path, query or user."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}"
