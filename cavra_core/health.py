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

import ipaddress
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cavra_core.store import ConnectorState, is_postgres
from cavra_core.types import Connector, ConnectorHealth

log = logging.getLogger(__name__)

ACTIVE, PAUSED, DISABLED = "active", "paused", "disabled"
#: Failure categories whose attempt changes the connector's state.
STATE_CHANGING = frozenset({"config", "receiver_stop"})


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
                **_lifted(now, "configuration_changed", "configuration"),
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

    Runs inside the caller's transaction. Counters are changed by expressions
    and states by conditional updates, so concurrent writers (several workers
    on one PostgreSQL) neither lose a failure nor undo each other's state.
    An attempt older than the state's last change (an import of old
    evidence) does not lift a pause, and a failure older than the latest
    delivery does not pause or disable: the connector worked after it.

    Returns the new state when the attempt changed it (``active``, ``paused``
    or ``disabled``), else None.
    """
    connector_id = connector.connector_id
    row = _row(connector_id)
    this = ConnectorState.connector_id == connector_id
    new_state = None
    if delivered:
        ConnectorState.update(
            consecutive_failures=0,
            last_success_at=at,
            version=ConnectorState.version + 1,
        ).where(this).execute()
        if row.state == PAUSED:
            # A delivery went through: whatever paused the connector is fixed.
            lifted = (
                ConnectorState.update(**_lifted(at, "delivered", "delivery"))
                .where(
                    this
                    & (ConnectorState.state == PAUSED)
                    & (
                        ConnectorState.state_changed_at.is_null()
                        | (ConnectorState.state_changed_at <= at)
                    )
                )
                .execute()
            )
            new_state = ACTIVE if lifted else None
    else:
        ConnectorState.update(
            consecutive_failures=ConnectorState.consecutive_failures + 1,
            last_failure_class=error_class,
            last_failure_category=category,
            last_failure_at=at,
            version=ConnectorState.version + 1,
        ).where(this).execute()
        target = {"config": PAUSED, "receiver_stop": DISABLED}.get(category or "")
        # A pause may become a disable, never the other way round.
        from_states = {PAUSED: [ACTIVE], DISABLED: [ACTIVE, PAUSED]}.get(target, [])
        if row.state in from_states:
            changed = (
                ConnectorState.update(
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
                .where(
                    this
                    & ConnectorState.state.in_(from_states)
                    & (
                        ConnectorState.last_success_at.is_null()
                        | (ConnectorState.last_success_at <= at)
                    )
                )
                .execute()
            )
            new_state = target if changed else None
    if new_state:
        log.info(
            "connector %s connector_id=%s error_class=%s status=%s",
            new_state,
            connector_id,
            error_class,
            http_status,
        )
    return new_state


def lock_states(connector_ids: Iterable[str]) -> dict[str, ConnectorHealth]:
    """
    The health of these connectors, their rows locked for the caller's
    transaction (on PostgreSQL), so what a batch folds in starts from what
    is stored and no other writer changes it meanwhile.
    """
    ids = sorted(set(connector_ids))
    query = ConnectorState.select().where(ConnectorState.connector_id.in_(ids))
    if is_postgres():
        query = query.order_by(ConnectorState.connector_id).for_update()
    found = {row.connector_id: _health(row) for row in query}
    missing = [connector_id for connector_id in ids if connector_id not in found]
    if missing:  # a connector's first outcome: its row starts now
        ConnectorState.insert_many(
            [{"connector_id": connector_id} for connector_id in missing]
        ).on_conflict_ignore().execute()
        found.update(lock_states(missing))
    return found


@dataclass
class Folded:
    """
    Several attempts' outcomes on an active connector, folded in their order
    into one change of its health: what :func:`record_outcome` would leave
    after each of them, for attempts that change no state.
    """

    health: ConnectorHealth
    count: int = 0

    def add(
        self,
        *,
        delivered: bool,
        error_class: str | None,
        category: str | None,
        at: datetime,
    ) -> None:
        if category in STATE_CHANGING:
            raise ValueError("an attempt that changes the state cannot be folded")
        self.count += 1
        if delivered:
            self.health = self.health._replace(
                consecutive_failures=0, last_success_at=at
            )
        else:
            self.health = self.health._replace(
                consecutive_failures=self.health.consecutive_failures + 1,
                last_failure_class=error_class,
                last_failure_category=category,
                last_failure_at=at,
            )


def write_folded(connector_id: str, folded: Folded) -> None:
    """Store a folded health change (caller's transaction, its row locked)."""
    state = folded.health
    ConnectorState.update(
        consecutive_failures=state.consecutive_failures,
        last_success_at=state.last_success_at,
        last_failure_class=state.last_failure_class,
        last_failure_category=state.last_failure_category,
        last_failure_at=state.last_failure_at,
        version=ConnectorState.version + folded.count,
    ).where(ConnectorState.connector_id == connector_id).execute()


def resume(connector: Connector, actor: str, now: datetime) -> ConnectorHealth:
    """Make a paused or disabled connector active again; its failures start over."""
    row = _row(connector.connector_id)
    ConnectorState.update(
        **_lifted(now, "resumed", actor),
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
    """
    Where a connector delivers, reduced to ``scheme://host[:port]``.

    Read from a ``url`` setting, or from ``host`` (with ``port`` and
    ``transport``) for connectors that have no URL. Paths, queries, user
    information and anything that is not a plain host name or IP address
    are left out: None is answered rather than something that might be a
    file path or carry a secret.
    """
    settings = connector.settings
    url = settings.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        return _origin(scheme, parts.hostname, port)
    host = settings.get("host")
    if isinstance(host, str):
        scheme = str(settings.get("transport") or connector.type).lower()
        port = settings.get("port")
        if isinstance(port, bool) or not isinstance(port, int | None):
            port = None
        return _origin(scheme, host, port)
    return None


_SCHEME = re.compile(r"[a-z][a-z0-9+._-]{0,49}")
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?"
)


def _origin(scheme: str, host: str | None, port: int | None) -> str | None:
    if not host or not _SCHEME.fullmatch(scheme):
        return None
    host = host.lower()
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            return None
    else:
        host = f"[{address.compressed}]" if address.version == 6 else str(address)
    if port is not None and not 0 < port < 65536:
        return None
    endpoint = f"{scheme}://{host}" + (f":{port}" if port is not None else "")
    return endpoint if len(endpoint) <= 300 else None


def _row(connector_id: str) -> ConnectorState:
    row = ConnectorState.get_or_none(ConnectorState.connector_id == connector_id)
    if row is None:
        ConnectorState.insert(connector_id=connector_id).on_conflict_ignore().execute()
        row = ConnectorState.get_by_id(connector_id)
    return row


def _lifted(at: datetime, reason: str, by: str) -> dict[str, Any]:
    """The column values of a connector made active again."""
    return {
        "state": ACTIVE,
        "state_reason": reason,
        "state_error_class": None,
        "state_http_status": None,
        "state_changed_at": at,
        "state_changed_by": by,
        "paused_fingerprint": None,
    }


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
