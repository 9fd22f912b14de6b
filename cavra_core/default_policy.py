"""
The built-in default policy, written as an ordinary plugin.

It answers every hook, marked ``trylast`` so that a connector plugin's answer
for its own connector type is always asked for first. It reads failures by
HTTP status and transport error, keeps the attempt and age limits, applies
exponential backoff with a cap and the receiver's ``Retry-After``, and keeps
retries inside the connector's delivery calendar.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from cavra_core.calendar import DeliveryCalendar
from cavra_core.hookspecs import hookimpl
from cavra_core.policy import RetryPolicy, jittered_delay_seconds
from cavra_core.text import describe_failure, format_duration
from cavra_core.types import (
    AttemptFacts,
    Connector,
    Eligibility,
    FailureClassification,
    LineageFacts,
    ScheduleWindow,
)

#: Statuses that mean "fix the connector's credentials or address first".
CONFIG_STATUSES = frozenset({401, 403, 407})
#: Statuses a later attempt can succeed on.
TRANSIENT_STATUSES = frozenset({408, 425})
THROTTLE_STATUSES = frozenset({429, 503})
#: Transport errors worth retrying: the receiver may simply be back later.
TRANSIENT_ERRORS = frozenset(
    {
        "timeout",
        "connect_timeout",
        "connection_refused",
        "connection_reset",
        "dns_error",
        "network_error",
    }
)
CONFIG_ERRORS = frozenset(
    {"redirect", "tls_error", "missing_secret", "invalid_secret", "config_error"}
)


def classify_status(status: int) -> tuple[str, str]:
    """The category and a short note for one HTTP status."""
    if status in CONFIG_STATUSES:
        return "config", "the receiver refused the connector's credentials"
    if status in THROTTLE_STATUSES:
        return "throttle", "the receiver is busy or rate-limiting"
    if status in TRANSIENT_STATUSES:
        return "transient", "the receiver timed out or asked for a later attempt"
    if 300 <= status < 400:
        return "config", "the receiver redirected; redirects are not followed"
    if status == 501 or 400 <= status < 500 or status < 200:
        return "permanent", "the receiver will refuse this request every time"
    return "transient", "the receiver had a server error"


@hookimpl(trylast=True)
def cavra_classify_failure(attempt: AttemptFacts) -> FailureClassification:
    error_class = attempt.error_class or "unknown"
    if attempt.http_status is not None:
        category, note = classify_status(attempt.http_status)
        return FailureClassification(error_class, category, note=note)
    if error_class in CONFIG_ERRORS:
        return FailureClassification(
            error_class, "config", note="the connector's configuration must change"
        )
    if error_class in TRANSIENT_ERRORS:
        return FailureClassification(
            error_class, "transient", note="the receiver could not be reached"
        )
    return FailureClassification(
        error_class, "transient", note="an unrecognised failure, retried with care"
    )


@hookimpl(trylast=True)
def cavra_decide_eligibility(
    connector: Connector,
    lineage: LineageFacts,
    classification: FailureClassification,
    policy: RetryPolicy,
    now: datetime,
) -> Eligibility:
    attempts = lineage.attempt_count
    failure = describe_failure(lineage.latest.http_status, classification.error_class)

    if lineage.state == "exhausted":
        return Eligibility(
            "suppress",
            "max_attempts_reached",
            f"The lineage was closed after {attempts} attempts, the last one "
            f"failing with {failure}; no retry is left.",
        )
    if lineage.state == "suppressed" and lineage.closing_reason:
        return Eligibility(
            "suppress",
            lineage.closing_reason,
            f"The lineage was closed ({lineage.closing_reason}) after attempt "
            f"{attempts} failed with {failure}; it is not retried.",
        )
    if classification.category == "receiver_stop":
        return Eligibility(
            "suppress",
            "receiver_stop",
            f"Attempt {attempts} failed with {failure}: the receiver asked for no "
            "more deliveries, so none is retried until the connector is re-enabled.",
        )
    if classification.category == "permanent":
        return Eligibility(
            "suppress",
            "permanent_failure",
            f"Attempt {attempts} failed with {failure}; {classification.note}, "
            "so a retry cannot succeed.",
        )
    if attempts >= policy.max_retry_attempts:
        return Eligibility(
            "suppress",
            "max_attempts_reached",
            f"{attempts} of {policy.max_retry_attempts} allowed attempts have "
            f"been made, the last failing with {failure}; no retry is left.",
        )
    age = now - lineage.package_generated_at
    if age > _hours(policy.max_age_hours):
        return Eligibility(
            "suppress",
            "max_age_exceeded",
            f"The evidence was generated {format_duration(age)} ago, past the "
            f"{policy.max_age_hours:g}-hour limit for retries.",
        )
    if (
        classification.category == "config"
        and lineage.config_fingerprint == connector.fingerprint
    ):
        return Eligibility(
            "wait",
            "connector_paused",
            f"Attempt {attempts} failed with {failure} ({classification.note}); "
            f"retries to {connector.connector_id} wait until its configuration "
            f"changes, keeping {policy.max_retry_attempts - attempts} of "
            f"{policy.max_retry_attempts} attempts.",
        )
    return Eligibility(
        "retry",
        "eligible",
        f"Attempt {attempts} of {policy.max_retry_attempts} failed with {failure}.",
    )


@hookimpl(trylast=True)
def cavra_schedule_retry(
    lineage: LineageFacts,
    classification: FailureClassification,
    policy: RetryPolicy,
) -> ScheduleWindow:
    delay = jittered_delay_seconds(policy, lineage.lineage_id, lineage.attempt_count)
    latest = lineage.latest
    due = latest.finished_at + timedelta(seconds=delay)
    window_end = min(
        due + _hours(policy.retry_window_hours),
        lineage.package_generated_at + _hours(policy.max_age_hours),
    )

    retry_after = latest.retry_after_at
    if classification.honours_retry_after and retry_after and retry_after > due:
        return ScheduleWindow(retry_after, window_end, delay, "retry_after")
    return ScheduleWindow(due, window_end, delay, "delay")


@lru_cache(maxsize=64)
def _hours(hours: float) -> timedelta:
    # PERF(plan): policies hold a handful of hour counts; building the same
    # timedelta for every lineage is a measurable share of planning.
    return timedelta(hours=hours)


@lru_cache(maxsize=256)
def _calendar_for(schedule_key: Any) -> DeliveryCalendar | None:
    return DeliveryCalendar.from_settings(_thaw(schedule_key))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list):
        return ("__list__", tuple(_freeze(item) for item in value))
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple) and value[:1] == ("__list__",):
        return [_thaw(item) for item in value[1]]
    if isinstance(value, tuple):
        return {key: _thaw(item) for key, item in value}
    return value


#: id(connector) -> (connector, calendar); see connector_calendar.
_calendars_by_connector: dict[int, tuple[Connector, DeliveryCalendar | None]] = {}


def connector_calendar(connector: Connector) -> DeliveryCalendar | None:
    """The connector's delivery calendar, built once per configuration."""
    if not connector.schedule:
        return None
    # PERF(plan): freezing the schedule table to look it up costs more than
    # the calendar check itself, and a plan asks for every lineage. Connector
    # objects are immutable and few, so remember the answer per object; the
    # entry keeps the object, so its id cannot be reused while cached.
    cached = _calendars_by_connector.get(id(connector))
    if cached is not None and cached[0] is connector:
        return cached[1]
    calendar = _calendar_for(_freeze(connector.schedule))
    if len(_calendars_by_connector) >= 256:
        _calendars_by_connector.clear()
    _calendars_by_connector[id(connector)] = (connector, calendar)
    return calendar


class ClosedSpans:
    """
    The closed stretches of one delivery calendar met so far.

    ``calendar.next_open(t) == o`` says the calendar is closed throughout
    ``[t, o)`` and open at ``o``, so for any later ``t'`` before ``o`` the
    answer is ``o`` again, and the calendar need not be asked.

    PERF(plan): a plan asks the calendar for every lineage of a connector
    that has one, and most windows of such a connector start while it is
    closed (nights, weekends), in a few stretches shared by many lineages.
    Asking a calendar costs a few dozen time-zone conversions.
    """

    #: Stretches kept per calendar before starting afresh.
    LIMIT = 1024

    def __init__(self, calendar: DeliveryCalendar) -> None:
        self.calendar = calendar
        #: (start, opens) pairs sorted by start; replaced, never changed in
        #: place, so a reader on another thread always sees a whole list.
        self._spans: list[tuple[datetime, datetime]] = []

    def next_open(self, moment: datetime) -> datetime | None:
        """When the calendar next opens if it is closed at ``moment``, else None."""
        spans = self._spans
        try:
            index = bisect_right(spans, (moment, _LATEST)) - 1
            if index >= 0 and moment < spans[index][1]:
                return spans[index][1]
        except TypeError:
            pass  # a naive time: the calendar refuses it below, as it always has
        if self.calendar.is_open(moment):
            return None
        opens = self.calendar.next_open(moment)
        self._remember(moment, opens)
        return opens

    def _remember(self, start: datetime, opens: datetime) -> None:
        current = self._spans
        # A stretch ending at the same opening is the same stretch: keep one.
        starts = [start, *(first for first, end in current if end == opens)]
        spans = [span for span in current if span[1] != opens]
        spans.append((min(starts), opens))
        spans.sort()
        self._spans = spans if len(spans) <= self.LIMIT else []


_LATEST = datetime.max.replace(tzinfo=UTC)
#: id(calendar) -> its ClosedSpans; calendars are shared and immutable.
_closed_spans: dict[int, ClosedSpans] = {}


def closed_spans(calendar: DeliveryCalendar) -> ClosedSpans:
    found = _closed_spans.get(id(calendar))
    if found is None or found.calendar is not calendar:
        if len(_closed_spans) >= 256:
            _closed_spans.clear()
        found = _closed_spans[id(calendar)] = ClosedSpans(calendar)
    return found


@hookimpl(trylast=True)
def cavra_narrow_window(
    connector: Connector, window: ScheduleWindow
) -> ScheduleWindow | None:
    calendar = connector_calendar(connector)
    if calendar is None:
        return None
    opens = closed_spans(calendar).next_open(window.not_before)
    if opens is None:
        return None
    shift = opens - window.not_before
    return ScheduleWindow(
        opens, window.not_after + shift, window.delay_seconds, "delivery_window"
    )


def describe_calendar(connector: Connector) -> str:
    calendar = connector_calendar(connector)
    return calendar.describe() if calendar else "always open"


__all__ = [
    "cavra_classify_failure",
    "cavra_decide_eligibility",
    "cavra_narrow_window",
    "cavra_schedule_retry",
    "classify_status",
    "describe_calendar",
]
