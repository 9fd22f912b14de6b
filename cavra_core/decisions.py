"""
How one failed lineage becomes one explained decision.

The pipeline asks the plugins, in order: classify the latest failure, decide
eligibility, compute the schedule window, narrow it. Then the core compares
the window with the evaluation time. Reasons take precedence in this order
(the first that applies is the decision's reason):

1. ``plugin_error`` (suppress): a plugin raised; only this lineage is affected.
2. ``connector_not_configured`` (wait): the connector left the connectors file.
3. Eligibility from the plugins, by default: ``max_attempts_reached`` or the
   recorded closing reason for lineages already closed, ``receiver_stop``,
   ``permanent_failure``, ``max_attempts_reached``, ``max_age_exceeded``
   (suppress), ``connector_disabled`` and ``connector_paused`` (wait: the
   connector's health, or a configuration failure under an unchanged
   configuration).
4. ``retry_after_beyond_window`` (suppress): the receiver's ``Retry-After``
   lands after the retry window closes.
5. ``window_expired`` (suppress): the retry window has closed.
6. ``outside_delivery_window``, ``retry_after_pending``, ``delay_not_elapsed``
   (wait): the window has not opened yet, held by the delivery calendar, the
   receiver's ``Retry-After`` or the backoff delay.
7. ``retry_due`` (retry): the window holds the evaluation time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import NamedTuple

from cavra_core.plugins import PluginFailure, PluginHost
from cavra_core.policy import RetryPolicy
from cavra_core.text import format_duration, format_duration_adjective, format_time
from cavra_core.types import Connector, LineageFacts, ScheduleWindow

#: Every reason code the core and the default policy can give.
REASON_CODES = (
    "plugin_error",
    "connector_not_configured",
    "receiver_stop",
    "permanent_failure",
    "max_attempts_reached",
    "max_age_exceeded",
    "connector_disabled",
    "connector_paused",
    "retry_after_beyond_window",
    "window_expired",
    "outside_delivery_window",
    "retry_after_pending",
    "delay_not_elapsed",
    "retry_due",
)

_WAIT_REASONS = {
    "delay": "delay_not_elapsed",
    "retry_after": "retry_after_pending",
    "delivery_window": "outside_delivery_window",
}


class Decision(NamedTuple):
    """One decision for one lineage; the API's ``retry_decisions[]`` entry."""

    lineage_id: str
    lineage_version: int
    package_id: str
    connector_id: str
    action: str
    reason: str
    explanation: str
    retry_count: int
    max_retry_attempts: int
    retry_delay_seconds: int
    not_before: datetime | None
    not_after: datetime | None
    failed_status_codes: tuple[int, ...]

    def as_document(self, decision_id: str) -> dict:
        return {
            "decision_id": decision_id,
            "lineage_id": self.lineage_id,
            "package_id": self.package_id,
            "connector_id": self.connector_id,
            "action": self.action,
            "reason": self.reason,
            "explanation": self.explanation,
            "retry_count": self.retry_count,
            "max_retry_attempts": self.max_retry_attempts,
            "retry_delay_seconds": self.retry_delay_seconds,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "failed_status_codes": list(self.failed_status_codes),
        }

    def canonical_json(self) -> str:
        """
        The decision as canonical JSON (sorted keys, no spaces), without its id.

        This is what a plan's hash covers; it equals
        ``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
        of the decision document without ``decision_id``, built by hand
        because a plan may hold hundreds of thousands of decisions.
        """
        # PERF(plan): one unpacking instead of a dozen attribute reads.
        (
            lineage_id,
            _version,
            package_id,
            connector_id,
            action,
            reason,
            explanation,
            retry_count,
            max_retry_attempts,
            retry_delay_seconds,
            not_before,
            not_after,
            failed_status_codes,
        ) = self
        codes = _codes_text(failed_status_codes)
        # PERF(plan): encode_basestring is what json.dumps(text,
        # ensure_ascii=False) calls for a string, minus building an encoder.
        return (
            f'{{"action":"{action}","connector_id":"{connector_id}",'
            f'"explanation":{encode_basestring(explanation)},'
            f'"failed_status_codes":[{codes}],"lineage_id":"{lineage_id}",'
            f'"max_retry_attempts":{max_retry_attempts},'
            f'"not_after":{_json_time(not_after)},'
            f'"not_before":{_json_time(not_before)},'
            f'"package_id":"{package_id}","reason":"{reason}",'
            f'"retry_count":{retry_count},'
            f'"retry_delay_seconds":{retry_delay_seconds}}}'
        )


def _json_time(value: datetime | None) -> str:
    if value is None:
        return "null"
    if value.tzinfo is UTC:
        # PERF(plan): format_time_precise, one call fewer.
        micros = value.microsecond
        if micros:
            return f'"{_utc_clock(value)}.{micros:06d}Z"'
        return f'"{_utc_clock(value)}Z"'
    return f'"{format_time_precise(value)}"'


#: id(codes) -> (codes, their JSON list's inside), see _codes_text.
_CODES_TEXT: dict[int, tuple[tuple[int, ...], str]] = {}


def _codes_text(codes: tuple[int, ...]) -> str:
    """The failed status codes as the inside of a JSON list: '503,503'."""
    # PERF(plan): the engine hands every lineage with the same stored list
    # the same tuple object, and a store holds few distinct lists, so the
    # text is remembered per object. The entry keeps the object, so its id
    # cannot be reused while cached.
    cached = _CODES_TEXT.get(id(codes))
    if cached is not None and cached[0] is codes:
        return cached[1]
    text = ",".join(map(str, codes))
    if len(_CODES_TEXT) >= 4096:
        _CODES_TEXT.clear()
    _CODES_TEXT[id(codes)] = (codes, text)
    return text


def _iso(value: datetime | None) -> str | None:
    return None if value is None else format_time_precise(value)


def format_time_precise(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds when there are any."""
    if value.tzinfo is UTC:
        micros = value.microsecond
        if micros:
            return f"{_utc_clock(value)}.{micros:06d}Z"
        return _utc_clock(value) + "Z"
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat() + "Z"


def _format_time(value: datetime) -> str:
    """:func:`cavra_core.text.format_time` (to the second), quicker in UTC."""
    if value.tzinfo is UTC:
        return _utc_clock(value) + "Z"
    return format_time(value)


def _utc_clock(value: datetime) -> str:
    """
    ``value.isoformat(timespec="seconds")`` of a UTC time, without the offset.

    PERF(plan): a decision formats two to four times, and isoformat() costs
    more than the rest of its canonical JSON and explanation together (it
    goes through printf and asks the time zone for its offset). The same
    text from a cache of days (a plan spans few) and a table of two-digit
    numbers takes a third of that.
    """
    day = _DAY_TEXT.get(value.toordinal())
    if day is None:
        if len(_DAY_TEXT) >= 4096:
            _DAY_TEXT.clear()
        day = _DAY_TEXT[value.toordinal()] = value.date().isoformat()
    two = _TWO_DIGITS
    return f"{day}T{two[value.hour]}:{two[value.minute]}:{two[value.second]}"


#: Day number (``toordinal()``) -> "YYYY-MM-DD", for _utc_clock.
_DAY_TEXT: dict[int, str] = {}
_TWO_DIGITS = tuple(f"{number:02d}" for number in range(60))


def evaluate(
    host: PluginHost,
    lineage: LineageFacts,
    connector: Connector | None,
    policy: RetryPolicy,
    version: int,
    now: datetime,
) -> Decision:
    """Decide what to do with one failed lineage at ``now``."""
    if connector is None:
        return _decision(
            lineage,
            version,
            policy,
            "wait",
            "connector_not_configured",
            f"Connector {lineage.connector_id} is not in the connectors file; "
            f"the lineage waits with {lineage.attempt_count} of "
            f"{policy.max_retry_attempts} attempts used until it is configured "
            "again.",
        )

    try:
        classification = host.classify_failure(connector, lineage.latest)
        eligibility = host.decide_eligibility(
            connector, lineage, classification, policy, now
        )
        if eligibility.action != "retry":
            return _decision(
                lineage,
                version,
                policy,
                eligibility.action,
                eligibility.reason,
                eligibility.explanation,
            )
        base = host.schedule_retry(connector, lineage, classification, policy, now)
        return _time_decision(
            host,
            connector,
            lineage,
            version,
            policy,
            base,
            eligibility.explanation,
            now,
        )
    except PluginFailure as failure:
        return _decision(
            lineage,
            version,
            policy,
            "suppress",
            "plugin_error",
            f"A connector plugin raised {failure.error_type} in {failure.hook}; "
            "this delivery is held back until the plugin is fixed, and the rest "
            "of the plan is unaffected.",
        )


def _decision(
    lineage: LineageFacts,
    version: int,
    policy: RetryPolicy,
    action: str,
    reason: str,
    explanation: str,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    delay_seconds: int = 0,
) -> Decision:
    """A decision, with its schedule window or (suppressions) without one."""
    # PERF(plan): built with tuple_of; a module function, not a closure made
    # anew for every lineage.
    return tuple_of(
        Decision,
        (
            lineage.lineage_id,
            version,
            lineage.package_id,
            lineage.connector_id,
            action,
            reason,
            explanation,
            lineage.attempt_count,
            policy.max_retry_attempts,
            delay_seconds,
            not_before,
            not_after,
            lineage.failed_status_codes,
        ),
    )


#: ``tuple_of(SomeNamedTuple, values)``: the tuple the NamedTuple's own
#: ``__new__`` would make, without the call (PERF(plan): a NamedTuple built
#: from keywords costs three times more).
tuple_of = tuple.__new__


def _time_decision(
    host: PluginHost,
    connector: Connector,
    lineage: LineageFacts,
    version: int,
    policy: RetryPolicy,
    base: ScheduleWindow,
    lead: str,
    now: datetime,
) -> Decision:
    if base.held_by == "retry_after" and base.not_before >= base.not_after:
        return _decision(
            lineage,
            version,
            policy,
            "suppress",
            "retry_after_beyond_window",
            f"{lead} The receiver asked to wait until {_format_time(base.not_before)}, "
            f"after the retry window closes at {_format_time(base.not_after)}.",
            base.not_before,
            base.not_after,
            base.delay_seconds,
        )
    if now >= base.not_after:
        return _decision(
            lineage,
            version,
            policy,
            "suppress",
            "window_expired",
            f"{lead} The retry window closed at {_format_time(base.not_after)}, "
            f"{format_duration(now - base.not_after)} ago.",
            base.not_before,
            base.not_after,
            base.delay_seconds,
        )

    start = now if now > base.not_before else base.not_before  # max(), cheaper
    if start is base.not_before and type(base) is ScheduleWindow:
        candidate = base  # PERF(plan): the same window; tuples are immutable
    else:
        candidate = ScheduleWindow(
            start, base.not_after, base.delay_seconds, base.held_by
        )
    window = host.narrow_window(connector, lineage, candidate)
    if window.not_before >= window.not_after:
        return _decision(
            lineage,
            version,
            policy,
            "suppress",
            "window_expired",
            f"{lead} No time is left in the retry window once the connector's "
            "plugins have narrowed it.",
            window.not_before,
            window.not_after,
            window.delay_seconds,
        )

    if window.not_before > now:
        held_by = "delivery_window" if window.not_before > start else base.held_by
        reason = _WAIT_REASONS.get(held_by, "delay_not_elapsed")
        until = _format_time(window.not_before)
        wait = format_duration(window.not_before - now)
        if reason == "delay_not_elapsed":
            delay_text = format_duration_adjective(base.delay_seconds)
            because = f"the {delay_text} backoff delay runs until {until}"
        elif reason == "retry_after_pending":
            because = f"the receiver asked to wait until {until}"
        else:
            because = f"the connector's delivery calendar is closed until {until}"
        return _decision(
            lineage,
            version,
            policy,
            "wait",
            reason,
            f"{lead} Waiting: {because}, {wait} from now.",
            window.not_before,
            window.not_after,
            window.delay_seconds,
        )

    if base.held_by == "retry_after":
        opened = f"The receiver's Retry-After ended at {_format_time(base.not_before)}"
    else:
        delay_text = format_duration_adjective(base.delay_seconds)
        opened = (
            f"The {delay_text} backoff delay ended at {_format_time(base.not_before)}"
        )
    # Due: the window opens when the delay ended, unless a plugin moved it.
    return _decision(
        lineage,
        version,
        policy,
        "retry",
        "retry_due",
        f"{lead} {opened}; attempt {lineage.attempt_count + 1} may be sent until "
        f"{_format_time(window.not_after)}.",
        base.not_before if window.not_before == start else window.not_before,
        window.not_after,
        base.delay_seconds,
    )
