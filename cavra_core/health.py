"""
Connector health: consecutive failures, the last failure, paused or disabled.

A connector is *paused* by a configuration failure (a refused credential, a
wrong index): retries to it wait, keeping their attempt budgets, until its
table in the connectors file changes or someone resumes it. It is *disabled*
when the receiver asks for no more deliveries (HTTP 410 for webhooks): only an
explicit resume lifts that. Both are facts kept in the ``connector_state``
table and changed in the same transaction as the attempt that caused them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cavra_core.store import ConnectorState
from cavra_core.types import Connector

log = logging.getLogger(__name__)

ACTIVE, PAUSED, DISABLED = "active", "paused", "disabled"


class ConnectorHealth(NamedTuple):
    """One connector's health, as decisions and the API see it."""

    state: str = ACTIVE
    reason: str | None = None
    error_class: str | None = None
    http_status: int | None = None
    changed_at: datetime | None = None
    changed_by: str | None = None
    consecutive_failures: int = 0
    last_failure_class: str | None = None
    last_failure_category: str | None = None
    last_failure_at: datetime | None = None
    last_success_at: datetime | None = None


def load_health(connector_ids: Iterable[str]) -> dict[str, ConnectorHealth]:
    """The health of every named connector; one never seen is active."""
    ids = list(connector_ids)
    found = {
        row.connector_id: _health(row)
        for row in ConnectorState.select().where(ConnectorState.connector_id.in_(ids))
    }
    return {
        connector_id: found.get(connector_id, ConnectorHealth()) for connector_id in ids
    }


def lift_pauses_after_configuration_change(
    connectors: Mapping[str, Connector], now: datetime
) -> list[str]:
    """
    Resume paused connectors whose configuration changed since they were paused.

    Disabled connectors stay disabled: the receiver asked for no more, and
    only an explicit resume may overrule that.
    """
    lifted = []
    paused = ConnectorState.select().where(ConnectorState.state == PAUSED)
    for row in paused:
        connector = connectors.get(row.connector_id)
        if connector is None or connector.fingerprint == row.paused_fingerprint:
            continue
        changed = (
            ConnectorState.update(
                state=ACTIVE,
                state_reason="configuration_changed",
                state_changed_at=now,
                state_changed_by="configuration",
                paused_fingerprint=None,
                version=ConnectorState.version + 1,
            )
            .where(
                (ConnectorState.connector_id == row.connector_id)
                & (ConnectorState.version == row.version)
            )
            .execute()
        )
        if changed:
            lifted.append(row.connector_id)
            log.info(
                "connector resumed connector_id=%s reason=configuration_changed",
                row.connector_id,
            )
    return lifted


def record_outcome(
    connector: Connector,
    *,
    delivered: bool,
    error_class: str | None,
    http_status: int | None,
    category: str | None,
    at: datetime,
) -> str | None:
    """
    Fold one attempt's outcome into the connector's health.

    Runs inside the caller's transaction. Returns the new state when the
    attempt changed it (``paused`` or ``disabled``), else None.
    """
    row = _row(connector.connector_id)
    changes: dict[str, Any] = {"version": row.version + 1}
    new_state = None
    if delivered:
        changes.update(consecutive_failures=0, last_success_at=at)
        if row.state == PAUSED:
            # A delivery went through: whatever paused the connector is fixed.
            changes.update(
                state=ACTIVE,
                state_reason="delivered",
                state_changed_at=at,
                state_changed_by="delivery",
                paused_fingerprint=None,
            )
    else:
        changes.update(
            consecutive_failures=row.consecutive_failures + 1,
            last_failure_class=error_class,
            last_failure_category=category,
            last_failure_at=at,
        )
        target = {"config": PAUSED, "receiver_stop": DISABLED}.get(category or "")
        if target and row.state != DISABLED and row.state != target:
            new_state = target
            changes.update(
                state=target,
                state_reason="connector_paused"
                if target == PAUSED
                else "receiver_stop",
                state_error_class=error_class,
                state_http_status=http_status,
                state_changed_at=at,
                state_changed_by="delivery",
                paused_fingerprint=connector.fingerprint,
            )
    ConnectorState.update(**changes).where(
        ConnectorState.connector_id == connector.connector_id
    ).execute()
    if new_state:
        log.info(
            "connector %s connector_id=%s error_class=%s status=%s",
            new_state,
            connector.connector_id,
            error_class,
            http_status,
        )
    return new_state


def resume(connector: Connector, actor: str, now: datetime) -> ConnectorHealth:
    """Make a paused or disabled connector active again; its failures start over."""
    row = _row(connector.connector_id)
    ConnectorState.update(
        state=ACTIVE,
        state_reason="resumed",
        state_error_class=None,
        state_http_status=None,
        state_changed_at=now,
        state_changed_by=actor,
        paused_fingerprint=None,
        consecutive_failures=0,
        version=ConnectorState.version + 1,
    ).where(ConnectorState.connector_id == connector.connector_id).execute()
    log.info(
        "connector resumed connector_id=%s previous_state=%s",
        connector.connector_id,
        row.state,
    )
    return _health(ConnectorState.get_by_id(connector.connector_id))


def endpoint_of(connector: Connector) -> str | None:
    """Where a connector delivers, reduced to scheme, host and port."""
    url = connector.settings.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme and parts.hostname:
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{parts.hostname}{port}"
        return None
    host = connector.settings.get("host")
    if isinstance(host, str):
        scheme = str(connector.settings.get("transport", connector.type))
        port = connector.settings.get("port")
        return f"{scheme}://{host}" + (f":{port}" if port else "")
    return None


def _row(connector_id: str) -> ConnectorState:
    ConnectorState.insert(connector_id=connector_id).on_conflict_ignore().execute()
    return ConnectorState.get_by_id(connector_id)


def _health(row: ConnectorState) -> ConnectorHealth:
    return ConnectorHealth(
        state=row.state,
        reason=row.state_reason,
        error_class=row.state_error_class,
        http_status=row.state_http_status,
        changed_at=row.state_changed_at,
        changed_by=row.state_changed_by,
        consecutive_failures=row.consecutive_failures,
        last_failure_class=row.last_failure_class,
        last_failure_category=row.last_failure_category,
        last_failure_at=row.last_failure_at,
        last_success_at=row.last_success_at,
    )
