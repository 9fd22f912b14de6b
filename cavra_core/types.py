"""
Value types shared by the engine, the hook specifications and connector plugins.

Everything here is immutable: plugins receive these objects, read them and
return new ones; nothing here talks to the database. The per-lineage facts are
named tuples because a plan builds hundreds of thousands of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

#: The failure categories every connector type maps its errors onto.
FAILURE_CATEGORIES = ("transient", "throttle", "config", "permanent", "receiver_stop")

#: Decision actions, in the order the API documents them.
ACTIONS = ("retry", "wait", "suppress")

LINEAGE_STATES = ("pending", "failed", "recovered", "exhausted", "suppressed")


class ConnectorConfigError(ValueError):
    """
    A connector's configuration is wrong.

    ``key`` names the setting (a dotted path inside the connectors file) so the
    message can say exactly what to fix.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class Connector:
    """
    One configured connector, as read from the connectors file.

    ``settings`` holds the type-specific keys (``url``, timeouts, secret
    references). Secrets are never in it: a key ending in ``_env`` names the
    environment variable that holds one, and :meth:`secret` reads it on demand.
    """

    connector_id: str
    type: str
    settings: dict[str, Any]
    retry_policy: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the connector's configuration (never of a secret's value).
    fingerprint: str = ""
    #: The connector type's kind of destination (``siem``, ``webhook``...).
    category: str = ""
    #: The connector type's classification table (see :class:`ConnectorType`).
    classification: Mapping[str, str] = field(default_factory=dict)
    #: The operator's retryable HTTP statuses (``retryable_statuses``), if set.
    retryable_statuses: frozenset[int] | None = None
    #: Whether the receiver's ``Retry-After`` lengthens the delay.
    honours_retry_after: bool = True
    #: The connector's health when a decision is made (None when unknown).
    health: ConnectorHealth | None = None

    def secret(self, reference_key: str) -> str | None:
        """Read the secret that the setting ``reference_key`` points to."""
        variable = self.settings.get(reference_key)
        if not variable:
            return None
        return os.environ.get(str(variable))


class ConnectorHealth(NamedTuple):
    """
    One connector's health, as decisions and the API see it.

    ``state`` is ``active``, ``paused`` (a configuration failure) or
    ``disabled`` (the receiver asked for no more deliveries).
    """

    state: str = "active"
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


@dataclass(frozen=True)
class Delivery:
    """What a connector is asked to send: one package for one lineage attempt."""

    package_id: str
    package: dict[str, Any]
    lineage_id: str
    attempt_number: int
    #: Stable across every attempt of the lineage, so receivers can de-duplicate.
    event_id: str


@dataclass(frozen=True)
class DeliveryResult:
    """
    What a connector reports back after one delivery attempt.

    ``error_class`` is a short stable code (``http_status``, ``timeout``,
    ``connection_refused``...) and never free text; ``retry_after`` is the
    receiver's ``Retry-After`` header exactly as received, or None.
    """

    outcome: str  # "delivered" or "failed"
    error_class: str | None = None
    http_status: int | None = None
    retry_after: str | None = None


class AttemptFacts(NamedTuple):
    """The facts of the latest failed attempt of a lineage, as a plugin sees them."""

    attempt_number: int
    outcome: str
    error_class: str | None
    http_status: int | None
    retry_after_at: datetime | None
    finished_at: datetime


class LineageFacts(NamedTuple):
    """
    One lineage (one package on its way to one connector) at evaluation time.

    ``attempt_count`` counts every attempt, the first delivery included.
    """

    lineage_id: str
    package_id: str
    connector_id: str
    connector_type: str
    state: str
    attempt_count: int
    first_attempt_at: datetime
    last_attempt_at: datetime
    package_generated_at: datetime
    failed_status_codes: tuple[int, ...]
    latest: AttemptFacts
    #: The connector fingerprint in force when the latest attempt was made.
    config_fingerprint: str
    #: For lineages closed as exhausted or suppressed: the reason recorded then.
    closing_reason: str | None = None


class FailureClassification(NamedTuple):
    """
    How a connector type reads one failure.

    ``category`` is one of :data:`FAILURE_CATEGORIES`; ``honours_retry_after``
    says whether the receiver's ``Retry-After`` should lengthen the delay.
    """

    error_class: str
    category: str
    honours_retry_after: bool = True
    note: str = ""


class Eligibility(NamedTuple):
    """
    Whether a lineage may be retried at all, before any timing is considered.

    ``action`` is ``retry`` when the lineage is eligible (the schedule then
    decides between retry and wait), otherwise ``wait`` or ``suppress``.
    """

    action: str
    reason: str
    explanation: str


class ScheduleWindow(NamedTuple):
    """
    When a retry may be sent: from ``not_before`` (inclusive) to ``not_after``.

    ``delay_seconds`` is the policy delay after the latest failure;
    ``held_by`` says what set ``not_before`` last: ``delay``, ``retry_after``
    or ``delivery_window`` (a blackout or the allowed delivery hours).
    """

    not_before: datetime
    not_after: datetime
    delay_seconds: int
    held_by: str = "delay"


class FailureCount(NamedTuple):
    """
    One kind of failure a connector had within a recovery playbook's lookback.

    A kind is an error class with an HTTP status (``http_status`` with 401 and
    with 429 are two kinds). ``category`` is how :func:`cavra_classify_failure`
    reads the kind, one of :data:`FAILURE_CATEGORIES`.
    """

    error_class: str
    http_status: int | None
    category: str
    count: int
    #: How many of the failures came with a ``Retry-After``.
    retry_after_count: int = 0
    #: The latest ``Retry-After`` time among them (aware UTC), if any.
    latest_retry_after_at: datetime | None = None


class RecoveryStep(NamedTuple):
    """
    One thing to do to bring a failing connector back, for an operator.

    ``code`` is a short stable code (1-50 lower-case letters, digits and
    ``_``), ``title`` one line (at most 120 characters), ``detail`` what to do
    and how to tell it worked (at most 1000 characters). Neither text may
    carry a secret, a URL path or a private address: cavra scrubs them.
    """

    code: str
    title: str
    detail: str


class ProbeCheck(NamedTuple):
    """One check of a probe: ``name`` (reachable, credentials...), pass or fail."""

    name: str
    ok: bool
    #: One sentence for the operator; never a secret, a path or a full URL.
    detail: str


class ProbeResult(NamedTuple):
    """What ``cavra connectors check`` reports for one connector."""

    ok: bool
    checks: tuple[ProbeCheck, ...]


@runtime_checkable
class ConnectorType(Protocol):
    """
    What a connector plugin provides for one connector type.

    Required: ``name`` (the value of ``type`` in the connectors file),
    ``category`` (``siem``, ``webhook`` or a plugin's own), and the methods
    :meth:`validate_settings` and :meth:`deliver`. Optional, read with
    defaults when absent:

    ``classification``
        A table from failure to category (one of :data:`FAILURE_CATEGORIES`).
        Keys are the error classes the type reports (``"ack_timeout"``), HTTP
        statuses (``"http:410"``) and status ranges (``"http:500-599"``).
        Looked up in that order, narrowest range first, before the default
        table. Default: empty.
    ``honours_retry_after``
        Whether a receiver's ``Retry-After`` lengthens the delay. Default True.
    ``acknowledgement``
        How the receiver confirms a delivery: ``response`` (its HTTP answer)
        or ``indexer_ack`` (a later acknowledgement). Default ``response``.
    ``batching``
        One sentence on how deliveries are grouped. Default: one package per
        request.
    ``probe(connector)``
        Check reachability and credentials without delivering evidence;
        returns a :class:`ProbeResult`.
    """

    name: str
    category: str

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        """Raise :class:`ConnectorConfigError` naming the key that is wrong."""

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        """Send one delivery; never raise for a receiver's failure, report it."""
