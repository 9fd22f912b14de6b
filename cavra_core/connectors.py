"""
The connectors file: one TOML table per connector id.

```toml
[audit-webhook]
type = "webhook"
url = "https://hooks.example.com/cavra"
auth_token_env = "CAVRA_AUDIT_WEBHOOK_TOKEN"   # a reference, never the secret

[audit-webhook.retry_policy]                   # this connector's defaults
max_retry_attempts = 5

[audit-webhook.schedule]                       # when retries may be delivered
timezone = "Europe/Berlin"
allowed_hours = ["08:00-20:00"]
```

``type`` picks the connector plugin, which validates the remaining settings.
Secrets are refused here outright: a setting that looks like one must be moved
to an environment variable and named through a ``*_env`` key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cavra_core.calendar import CalendarError, DeliveryCalendar
from cavra_core.policy import DEFAULT_POLICY, PolicyError
from cavra_core.types import (
    FAILURE_CATEGORIES,
    Connector,
    ConnectorConfigError,
    ConnectorType,
)

log = logging.getLogger(__name__)

_CONNECTOR_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,99}$")
_SECRET_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|private[_-]?key|credential|cookie)",
    re.IGNORECASE,
)
_RESERVED = ("type", "retry_policy", "schedule", "retryable_statuses")
_STATUS_ITEM = re.compile(r"^(!?)(\d{3})(?:-(\d{3}))?$")
_ERROR_CLASS = re.compile(r"[a-z][a-z0-9_]{0,49}")
_TYPE_NAME = _ERROR_CLASS
_STATUS_KEY = re.compile(r"http:(\d{3})(?:-(\d{3}))?")


class ConnectorRegistry:
    """The configured connectors, each checked by its plugin, by connector id."""

    def __init__(
        self,
        connectors: Mapping[str, Connector],
        types: Mapping[str, ConnectorType],
        calendars: Mapping[str, DeliveryCalendar | None],
    ) -> None:
        self._connectors = dict(connectors)
        self._types = dict(types)
        self._calendars = dict(calendars)

    def __contains__(self, connector_id: object) -> bool:
        return connector_id in self._connectors

    def __iter__(self):
        return iter(sorted(self._connectors))

    def __len__(self) -> int:
        return len(self._connectors)

    def get(self, connector_id: str) -> Connector | None:
        return self._connectors.get(connector_id)

    def type_of(self, connector_id: str) -> ConnectorType:
        return self._types[self._connectors[connector_id].type]

    def calendar(self, connector_id: str) -> DeliveryCalendar | None:
        return self._calendars.get(connector_id)


def load_connectors_file(path: str | Path | None) -> dict[str, Any]:
    """Read the connectors file; an absent path means no connectors."""
    if path is None:
        return {}
    file = Path(path)
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConnectorConfigError(
            str(file), "file not found; pass --connectors or set CAVRA_CONNECTORS"
        ) from exc
    except IsADirectoryError as exc:
        raise ConnectorConfigError(
            str(file), "is a folder; pass the connectors TOML file itself"
        ) from exc
    except PermissionError as exc:
        raise ConnectorConfigError(
            str(file), "cannot be read (permission denied)"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConnectorConfigError(
            str(file), "is not UTF-8 text; save it as UTF-8"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConnectorConfigError(str(file), f"is not valid TOML ({exc})") from exc


def build_registry(
    document: Mapping[str, Any], types: Mapping[str, ConnectorType]
) -> ConnectorRegistry:
    """
    Validate every connector table and build the registry.

    Every installed type is checked first (see :func:`check_connector_type`),
    whether a connector uses it or not, so that a plugin's mistake stops
    start-up instead of surfacing once a connector of that type is configured.
    """
    for type_name, connector_type in types.items():
        check_connector_type(type_name, connector_type)
    connectors: dict[str, Connector] = {}
    calendars: dict[str, DeliveryCalendar | None] = {}
    for connector_id, table in document.items():
        if not _CONNECTOR_ID.match(connector_id):
            raise ConnectorConfigError(
                connector_id,
                "a connector id is 1-100 lower-case letters, digits, '.', '_' "
                "or '-', starting with a letter or digit",
            )
        if not isinstance(table, dict):
            raise ConnectorConfigError(connector_id, "must be a table")
        connector, calendar = _build_connector(connector_id, table, types)
        connectors[connector_id] = connector
        calendars[connector_id] = calendar
    return ConnectorRegistry(connectors, types, calendars)


def _build_connector(
    connector_id: str, table: dict[str, Any], types: Mapping[str, ConnectorType]
) -> tuple[Connector, DeliveryCalendar | None]:
    type_name = table.get("type")
    if "type" not in table:
        raise ConnectorConfigError(
            f"{connector_id}.type", "is required: the connector type, e.g. 'webhook'"
        )
    known = ", ".join(sorted(types)) or "none installed"
    if not isinstance(type_name, str) or type_name not in types:
        raise ConnectorConfigError(
            f"{connector_id}.type",
            f"must name an installed connector type (one of: {known}); install "
            "the plugin that provides another",
        )

    settings = {key: value for key, value in table.items() if key not in _RESERVED}
    _refuse_inline_secrets(connector_id, settings)
    try:
        types[type_name].validate_settings(connector_id, settings)
    except ConnectorConfigError:
        raise
    except Exception as exc:  # a plugin must raise ConnectorConfigError only
        log.warning(
            "validate_settings raised connector_id=%s type=%s error=%s",
            connector_id,
            type_name,
            type(exc).__name__,
        )
        raise ConnectorConfigError(
            connector_id,
            f"the {type_name!r} connector plugin failed while checking these "
            f"settings ({type(exc).__name__}); check them against the plugin's "
            "documentation, or report the plugin's bug",
        ) from exc

    retry_policy = table.get("retry_policy", {})
    if not isinstance(retry_policy, dict):
        raise ConnectorConfigError(f"{connector_id}.retry_policy", "must be a table")
    try:
        DEFAULT_POLICY.merged(retry_policy)
    except PolicyError as exc:
        raise ConnectorConfigError(
            f"{connector_id}.retry_policy.{exc.key}", exc.message
        ) from exc

    schedule = table.get("schedule", {})
    if not isinstance(schedule, dict):
        raise ConnectorConfigError(f"{connector_id}.schedule", "must be a table")
    try:
        calendar = DeliveryCalendar.from_settings(schedule)
    except CalendarError as exc:
        raise ConnectorConfigError(
            f"{connector_id}.schedule.{exc.key}", exc.message
        ) from exc

    connector_type = types[type_name]
    classification = check_classification(
        type_name, getattr(connector_type, "classification", None)
    )
    retryable = table.get("retryable_statuses")
    canonical = json.dumps(table, sort_keys=True, default=str, separators=(",", ":"))
    connector = Connector(
        connector_id=connector_id,
        type=type_name,
        settings=settings,
        retry_policy=retry_policy,
        schedule=schedule,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
        category=str(getattr(connector_type, "category", "") or type_name),
        classification=classification,
        retryable_statuses=None
        if retryable is None
        else parse_status_ranges(retryable, f"{connector_id}.retryable_statuses"),
        honours_retry_after=bool(getattr(connector_type, "honours_retry_after", True)),
    )
    return connector, calendar


def parse_status_ranges(value: Any, key: str) -> frozenset[int]:
    """
    Read a set of HTTP statuses written as ranges with exclusions.

    ``"500-599,!501"`` is every 5xx but 501; items are applied left to right,
    so ``"!501"`` removes what an earlier range added. A list of such items
    is accepted too.
    """
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConnectorConfigError(
            key, 'must be a string of statuses and ranges, e.g. "500-599,!501"'
        )
    statuses: set[int] = set()
    for item in items:
        match = _STATUS_ITEM.match(str(item).strip())
        if not match:
            raise ConnectorConfigError(
                key,
                f"item {str(item).strip()[:20]!r} is not a status (503), a range "
                "(500-599) or an exclusion (!501)",
            )
        exclude, low, high = match.group(1), int(match.group(2)), match.group(3)
        high_value = int(high) if high else low
        if not 100 <= low <= high_value <= 599:
            raise ConnectorConfigError(
                key, "statuses must lie between 100 and 599, low end first"
            )
        chosen = set(range(low, high_value + 1))
        statuses = statuses - chosen if exclude else statuses | chosen
    return frozenset(statuses)


def check_connector_type(type_name: str, connector_type: Any) -> None:
    """
    Check what a plugin declares about one connector type, before any use.

    The name must be a short code (it appears in every document about the
    connector), the methods must be there, and the optional attributes must
    have the documented shapes.

    :raises ConnectorConfigError: naming the type and what to fix.
    """
    where = f"connector type {str(type_name)[:60]}"
    fix = "; fix the plugin, or block it with CAVRA_DISABLED_PLUGINS"
    if not isinstance(type_name, str) or not _TYPE_NAME.fullmatch(type_name):
        raise ConnectorConfigError(
            where,
            "a type name is 1-50 lower-case letters, digits and '_', starting "
            f"with a letter{fix}",
        )
    for method in ("validate_settings", "deliver"):
        if not callable(getattr(connector_type, method, None)):
            raise ConnectorConfigError(where, f"has no {method}() method{fix}")
    for attribute in ("category", "acknowledgement", "batching"):
        value = getattr(connector_type, attribute, None)
        limit = 200 if attribute == "batching" else 50
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise ConnectorConfigError(
                where,
                f"{attribute} must be a string of at most {limit} characters{fix}",
            )
    check_classification(type_name, getattr(connector_type, "classification", None))


def check_classification(type_name: str, table: Any) -> dict[str, str]:
    """
    Check a connector type's classification table; a copy of it.

    Keys are error classes (``ack_timeout``), HTTP statuses (``http:410``) or
    status ranges (``http:500-599``); values are failure categories.

    :raises ConnectorConfigError: naming the type, for a table that is not a
        mapping, a key of none of those forms, or an unknown category.
    """
    where = f"connector type {type_name}"
    fix = "; fix the plugin, or block it with CAVRA_DISABLED_PLUGINS"
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConnectorConfigError(
            where, f"classification must be a mapping of failure to category{fix}"
        )
    checked: dict[str, str] = {}
    for key, category in table.items():
        if not isinstance(key, str) or not _classification_key_ok(key):
            raise ConnectorConfigError(
                where,
                f"classification key {str(key)[:60]!r} is neither an error class "
                "(lower-case letters, digits and '_'), 'http:NNN' nor "
                f"'http:NNN-NNN'{fix}",
            )
        if category not in FAILURE_CATEGORIES:
            raise ConnectorConfigError(
                where,
                f"classification {key!r} maps to {str(category)[:60]!r}, which is "
                f"not one of {', '.join(FAILURE_CATEGORIES)}{fix}",
            )
        checked[key] = category
    return checked


def _classification_key_ok(key: str) -> bool:
    if _ERROR_CLASS.fullmatch(key):
        return True
    match = _STATUS_KEY.fullmatch(key)
    if not match:
        return False
    low = int(match.group(1))
    high = int(match.group(2) or low)
    return 100 <= low <= high <= 599


def _refuse_inline_secrets(connector_id: str, settings: Mapping[str, Any]) -> None:
    for key in settings:
        if key.endswith("_env") or not _SECRET_KEY.search(key):
            continue
        raise ConnectorConfigError(
            f"{connector_id}.{key}",
            "looks like a secret; secrets are never written in the connectors "
            f"file: put it in an environment variable and set {key}_env to "
            "that variable's name",
        )
