"""
Tiny inline connector plugins and evidence builders for the engine tests.

A :class:`FakeType` delivers nothing: it hands back the
:class:`~cavra_core.types.DeliveryResult` objects a test scripted, in order,
and remembers every delivery it was asked to make.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from cavra_core import hookimpl
from cavra_core.engine import package_hash
from cavra_core.types import Connector, Delivery, DeliveryResult

#: A fixed moment the tests build their timelines around.
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class FakeType:
    """A connector type whose deliveries return scripted results."""

    category = "webhook"

    def __init__(
        self, name: str = "fake", results: Iterable[DeliveryResult] = ()
    ) -> None:
        self.name = name
        self.results = list(results)
        self.deliveries: list[Delivery] = []

    def script(self, *results: DeliveryResult) -> None:
        self.results.extend(results)

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        return None

    def deliver(self, connector: Connector, delivery: Delivery) -> DeliveryResult:
        self.deliveries.append(delivery)
        if not self.results:
            return DeliveryResult(outcome="delivered")
        return self.results.pop(0)


class FakePlugin:
    """A connector plugin that declares the given connector types."""

    def __init__(self, *types: FakeType, name: str | None = None) -> None:
        self.types = list(types) or [FakeType()]
        if name is not None:
            # pluggy registers an object under its __name__, so it can be blocked.
            self.__name__ = name

    @property
    def fake(self) -> FakeType:
        return self.types[0]

    @hookimpl
    def cavra_register_connector_types(self) -> list[FakeType]:
        return list(self.types)


class Clock:
    """A settable clock for engines, so deliveries get the times a test wants."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def failed(status: int | None = 503, **fields: Any) -> DeliveryResult:
    """A failed delivery result: an HTTP status or, with status None, an error."""
    error_class = fields.pop("error_class", "http_status" if status else "timeout")
    return DeliveryResult(
        outcome="failed", error_class=error_class, http_status=status, **fields
    )


DELIVERED = DeliveryResult(outcome="delivered")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def package(
    drill: str = "drill-1", generated_at: datetime = T0, **fields: Any
) -> dict[str, Any]:
    """A valid acknowledgement audit package."""
    document = {
        "drill_id": drill,
        "generated_at": rfc3339(generated_at),
        "generated_by": "release-bot",
        "acknowledgements": [
            {
                "notification_id": "ntf-1",
                "role": "release manager",
                "state": "accepted",
                "acknowledged_at": rfc3339(generated_at - timedelta(minutes=5)),
            }
        ],
    }
    document.update(fields)
    return document


def attempt(
    package_id: str,
    finished_at: datetime,
    *,
    connector_id: str = "hook-a",
    status: int | None = 503,
    outcome: str = "failed",
    error_class: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One imported attempt that took a second and finished at ``finished_at``."""
    if outcome == "delivered":
        status = fields.pop("http_status", 200)
        error_class = None
    elif error_class is None:
        error_class = "http_status" if status is not None else "timeout"
    document = {
        "package_id": package_id,
        "connector_id": connector_id,
        "outcome": outcome,
        "error_class": error_class,
        "http_status": status,
        "started_at": rfc3339(finished_at - timedelta(seconds=1)),
        "finished_at": rfc3339(finished_at),
    }
    document.update(fields)
    return document


def plan_request(**policy: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"generated_by": "rm"}
    if policy:
        request["retry_policy"] = policy
    return request


def record_failure(
    engine: Any,
    at: datetime = T0,
    *,
    status: int | None = 503,
    connector_id: str = "hook-a",
    evidence: dict[str, Any] | None = None,
    **fields: Any,
) -> str:
    """Record one failed attempt (first or next) of a package; the lineage id."""
    evidence = evidence or package()
    package_id = package_hash(evidence)
    result = engine.record_attempts(
        {
            "packages": [evidence],
            "attempts": [
                attempt(
                    package_id, at, connector_id=connector_id, status=status, **fields
                )
            ],
        },
        now=at,
    )
    return result["attempts"][0]["lineage_id"]


def record_success(
    engine: Any,
    at: datetime,
    *,
    connector_id: str = "hook-a",
    evidence: dict[str, Any] | None = None,
) -> str:
    evidence = evidence or package()
    result = engine.record_attempts(
        {
            "packages": [evidence],
            "attempts": [
                attempt(
                    package_hash(evidence),
                    at,
                    connector_id=connector_id,
                    outcome="delivered",
                )
            ],
        },
        now=at,
    )
    return result["attempts"][0]["lineage_id"]


def plan_decisions(engine: Any, now: datetime, **policy: Any) -> list[dict[str, Any]]:
    plan = engine.plan_retries(plan_request(**policy), now=now)
    return list(engine.iter_plan_decisions(plan["retry_plan_id"]))


def only_decision(engine: Any, now: datetime, **policy: Any) -> dict[str, Any]:
    decisions = plan_decisions(engine, now, **policy)
    assert len(decisions) == 1, decisions
    return decisions[0]
