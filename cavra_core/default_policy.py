"""
The built-in default policy, written as an ordinary plugin.

It answers every hook, marked ``trylast`` so that a connector plugin's answer
for its own connector type is always asked for first. It reads failures by
HTTP status and transport error, keeps the attempt and age limits, applies
exponential backoff with a cap and the receiver's ``Retry-After``, keeps
retries inside the connector's delivery calendar, and names generic recovery
steps for each failure category.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from cavra_core.calendar import DeliveryCalendar
from cavra_core.hookspecs import hookimpl
from cavra_core.policy import RetryPolicy, jittered_delay_seconds
from cavra_core.text import describe_failure, format_duration, format_time
from cavra_core.types import (
    AttemptFacts,
    Connector,
    Eligibility,
    FailureClassification,
    FailureCount,
    LineageFacts,
    RecoveryStep,
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
def cavra_classify_failure(
    connector: Connector, attempt: AttemptFacts
) -> FailureClassification:
    """
    Classify by, in this order: the operator's ``retryable_statuses``, the
    connector type's classification table, then the default table.

    ``retryable_statuses`` applies to attempts with a status of 300 or more:
    a listed status is retried, an unlisted one that the default table would
    retry is permanent, and any other is left to the tables.
    """
    error_class = attempt.error_class or "unknown"
    status = attempt.http_status
    honours = connector.honours_retry_after

    retryable = connector.retryable_statuses
    # A failure that came with a 1xx or 2xx status (an acknowledgement that
    # never arrived, an answer that was not the receiver's) failed for a
    # reason other than its status: the status lists do not speak about it.
    if retryable is not None and status is not None and status >= 300:
        if status in retryable:
            category = "throttle" if status in THROTTLE_STATUSES else "transient"
            note = "the connector's retryable_statuses list it"
            return FailureClassification(error_class, category, honours, note)
        default, _ = classify_status(status)
        if default in ("transient", "throttle"):
            note = "the connector's retryable_statuses leave it out"
            return FailureClassification(error_class, "permanent", honours, note)

    declared = declared_category(connector.classification, error_class, status)
    if declared is not None:
        note = _CATEGORY_NOTES[declared]
        return FailureClassification(error_class, declared, honours, note)

    if status is not None:
        category, note = classify_status(status)
        return FailureClassification(error_class, category, honours, note)
    if error_class in CONFIG_ERRORS:
        note = "the connector's configuration must change"
        return FailureClassification(error_class, "config", honours, note)
    if error_class in TRANSIENT_ERRORS:
        note = "the receiver could not be reached"
        return FailureClassification(error_class, "transient", honours, note)
    note = "an unrecognised failure, retried with care"
    return FailureClassification(error_class, "transient", honours, note)


_CATEGORY_NOTES = {
    "transient": "the connector type reads it as passing",
    "throttle": "the receiver is busy or rate-limiting",
    "config": "the connector's configuration or credentials must change",
    "permanent": "the receiver will refuse this request every time",
    "receiver_stop": "the receiver asked for no more deliveries",
}


def declared_category(
    table: Mapping[str, str], error_class: str | None, status: int | None
) -> str | None:
    """
    Look a failure up in a connector type's classification table.

    The error class first, then ``http:<status>``, then the narrowest
    ``http:<low>-<high>`` range holding the status.
    """
    if not table:
        return None
    if error_class and error_class in table:
        return table[error_class]
    if status is None:
        return None
    exact = table.get(f"http:{status}")
    if exact is not None:
        return exact
    best: tuple[int, str] | None = None
    for key, category in table.items():
        low, separator, high = key.removeprefix("http:").partition("-")
        if not key.startswith("http:") or not separator:
            continue
        if low.isdigit() and high.isdigit() and int(low) <= status <= int(high):
            width = int(high) - int(low)
            if best is None or width < best[0]:
                best = (width, category)
    return best[1] if best else None


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
    health = connector.health
    if health is not None and health.state == "disabled":
        cause = _state_cause(health.error_class, health.http_status)
        return Eligibility(
            "wait",
            "connector_disabled",
            f"Attempt {attempts} failed with {failure}. Connector "
            f"{connector.connector_id} is disabled because its receiver asked for "
            f"no more deliveries ({cause}); retries wait until someone resumes "
            f"it, {_kept(policy, attempts)}.",
        )
    if health is not None and health.state == "paused":
        cause = _state_cause(health.error_class, health.http_status)
        return Eligibility(
            "wait",
            "connector_paused",
            f"Attempt {attempts} failed with {failure}. Connector "
            f"{connector.connector_id} is paused after a configuration failure "
            f"({cause}); retries wait until its configuration changes or someone "
            f"resumes it, {_kept(policy, attempts)}.",
        )
    if (
        health is None
        and classification.category == "config"
        and lineage.config_fingerprint == connector.fingerprint
    ):
        return Eligibility(
            "wait",
            "connector_paused",
            f"Attempt {attempts} failed with {failure} ({classification.note}); "
            f"retries to {connector.connector_id} wait until its configuration "
            f"changes, {_kept(policy, attempts)}.",
        )
    return Eligibility(
        "retry",
        "eligible",
        f"Attempt {attempts} of {policy.max_retry_attempts} failed with {failure}.",
    )


def _kept(policy: RetryPolicy, attempts: int) -> str:
    """'keeping 2 of 3 attempts': what a waiting lineage keeps."""
    # PERF(plan): built only for the lineages that wait, not for every one.
    return (
        f"keeping {policy.max_retry_attempts - attempts} of "
        f"{policy.max_retry_attempts} attempts"
    )


def _state_cause(error_class: str | None, http_status: int | None) -> str:
    """What paused a connector, as people read it: 'HTTP 401', 'tls_error'."""
    if error_class in (None, "http_status"):
        return describe_failure(http_status, error_class)
    if http_status is None:
        return error_class
    return f"{error_class}, HTTP {http_status}"


@hookimpl(trylast=True)
def cavra_schedule_retry(
    lineage: LineageFacts,
    classification: FailureClassification,
    policy: RetryPolicy,
) -> ScheduleWindow:
    delay = jittered_delay_seconds(policy, lineage.lineage_id, lineage.attempt_count)
    latest = lineage.latest
    due = latest.finished_at + timedelta(0, delay)  # seconds, without keywords
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


class CalendarMemo:
    """
    What one delivery calendar has answered so far, to avoid asking again.

    A calendar is an immutable function of the instant, so two kinds of
    answers can be reused exactly:

    * an instant found open stays open (a plan asks about its own ``now`` for
      every lineage that is already due);
    * ``calendar.next_open(t) == o`` says the calendar is closed throughout
      ``[t, o)`` and open at ``o``, so any later ``t'`` before ``o`` gets
      ``o`` again.

    PERF(plan): a plan asks the calendar for every lineage of a connector
    that has one; asking costs a few dozen time-zone conversions, and the
    answers repeat (one ``now``, a few nights and weekends).
    """

    #: Answers of each kind kept per calendar before starting afresh.
    LIMIT = 1024

    def __init__(self, calendar: DeliveryCalendar) -> None:
        self.calendar = calendar
        self._open: set[datetime] = set()
        #: (start, opens) pairs sorted by start; replaced, never changed in
        #: place, so a reader on another thread always sees a whole list.
        self._closed: list[tuple[datetime, datetime]] = []

    def next_open(self, moment: datetime) -> datetime | None:
        """When the calendar next opens if it is closed at ``moment``, else None."""
        closed = self._closed
        try:
            if moment in self._open:
                return None
            index = bisect_right(closed, (moment, _LATEST)) - 1
            if index >= 0 and moment < closed[index][1]:
                return closed[index][1]
        except TypeError:
            pass  # a naive time: the calendar refuses it below, as it always has
        if self.calendar.is_open(moment):
            if len(self._open) >= self.LIMIT:
                self._open = set()
            self._open.add(moment)
            return None
        opens = self.calendar.next_open(moment)
        self._remember_closed(moment, opens)
        return opens

    def _remember_closed(self, start: datetime, opens: datetime) -> None:
        current = self._closed
        # A stretch ending at the same opening is the same stretch: keep one.
        starts = [start, *(first for first, end in current if end == opens)]
        spans = [span for span in current if span[1] != opens]
        spans.append((min(starts), opens))
        spans.sort()
        self._closed = spans if len(spans) <= self.LIMIT else []


_LATEST = datetime.max.replace(tzinfo=UTC)
#: id(calendar) -> its memo; calendars are shared and immutable.
_calendar_memos: dict[int, CalendarMemo] = {}


def calendar_memo(calendar: DeliveryCalendar) -> CalendarMemo:
    found = _calendar_memos.get(id(calendar))
    if found is None or found.calendar is not calendar:
        if len(_calendar_memos) >= 256:
            _calendar_memos.clear()
        found = _calendar_memos[id(calendar)] = CalendarMemo(calendar)
    return found


@hookimpl(trylast=True)
def cavra_narrow_window(
    connector: Connector, window: ScheduleWindow
) -> ScheduleWindow | None:
    calendar = connector_calendar(connector)
    if calendar is None:
        return None
    opens = calendar_memo(calendar).next_open(window.not_before)
    if opens is None:
        return None
    shift = opens - window.not_before
    return ScheduleWindow(
        opens, window.not_after + shift, window.delay_seconds, "delivery_window"
    )


# -- recovery steps ----------------------------------------------------------------

#: Transport errors that say the receiver could not be reached at all.
UNREACHABLE_ERRORS = TRANSIENT_ERRORS
#: The generic recovery steps, most urgent first: code -> title.
RECOVERY_STEP_TITLES = {
    "reenable_receiver": "Re-enable the receiving endpoint",
    "set_secret": "Set the connector's secret",
    "refresh_credential": "Rotate or refresh the connector's credential",
    "check_tls": "Check the receiver's TLS certificate and cavra's trust in it",
    "correct_address": "Correct the receiver's address",
    "check_index": "Check the destination index and sourcetype",
    "review_configuration": "Review the connector's configuration",
    "reduce_payload": "Make the packages fit the receiver's size limit",
    "fix_request": "Fix what the receiver refuses in the request",
    "lower_rate": "Lower the delivery rate",
    "honour_retry_after": "Wait for the receiver's Retry-After",
    "wait_for_capacity": "Let the busy receiver recover",
    "check_network": "Check DNS, firewall and TLS on the way to the receiver",
    "check_receiver": "Check the receiver's health",
    "inspect_failures": "Inspect the unrecognised failures",
    "resume_connector": "Resume the connector",
}


def recovery_need(failure: FailureCount) -> str:
    """The generic step a kind of failure calls for (a code of the catalogue)."""
    error_class = failure.error_class
    status = failure.http_status
    category = failure.category
    if category == "receiver_stop":
        return "reenable_receiver"
    if category == "config":
        if error_class in ("missing_secret", "invalid_secret"):
            return "set_secret"
        if status in CONFIG_STATUSES or "token" in error_class or "auth" in error_class:
            return "refresh_credential"
        if error_class == "tls_error":
            return "check_tls"
        if error_class == "redirect" or (status is not None and 300 <= status < 400):
            return "correct_address"
        if "index" in error_class or "sourcetype" in error_class:
            return "check_index"
        return "review_configuration"
    if category == "permanent":
        if status == 413 or "too_large" in error_class:
            return "reduce_payload"
        if status in (404, 405):
            return "correct_address"
        return "fix_request"
    if category == "throttle":
        return "lower_rate" if status == 429 else "wait_for_capacity"
    if error_class in UNREACHABLE_ERRORS:
        return "check_network"
    if status is not None and status >= 500:
        return "check_receiver"
    return "inspect_failures"


@hookimpl(trylast=True)
def cavra_recovery_steps(
    connector: Connector, failure_classes: Sequence[FailureCount]
) -> list[RecoveryStep]:
    return generic_recovery_steps(connector, failure_classes)


def generic_recovery_steps(
    connector: Connector, failure_classes: Sequence[FailureCount]
) -> list[RecoveryStep]:
    """
    Generic steps: one per need the failures call for, most urgent first, and
    a resume step when the connector is paused or disabled.

    Connector plugins may call it for the failures they have nothing more
    specific to say about, and put their own steps first. With no failures
    it answers the resume step alone (or nothing for an active connector).
    """
    by_need: dict[str, list[FailureCount]] = {}
    for failure in failure_classes:
        by_need.setdefault(recovery_need(failure), []).append(failure)
        if failure.retry_after_count:
            by_need.setdefault("honour_retry_after", []).append(failure)

    steps = [
        RecoveryStep(
            code,
            title,
            _RECOVERY_DETAILS[code](connector.connector_id, by_need[code]),
        )
        for code, title in RECOVERY_STEP_TITLES.items()
        if code in by_need
    ]
    health = connector.health
    if health is not None and health.state in ("paused", "disabled"):
        steps.append(
            RecoveryStep(
                "resume_connector",
                RECOVERY_STEP_TITLES["resume_connector"],
                resume_detail(connector),
            )
        )
    return steps


def failure_summary(failures: Sequence[FailureCount]) -> str:
    """'3 failed attempts (HTTP 401: 2, HTTP 403: 1)', for step details."""
    total = sum(failure.count for failure in failures)
    kinds = ", ".join(
        f"{failure_label(failure)}: {failure.count}" for failure in failures
    )
    attempts = "failed attempt" if total == 1 else "failed attempts"
    return f"{total} {attempts} ({kinds})"


def failure_label(failure: FailureCount) -> str:
    """'HTTP 401', 'tls_error' or 'hec_invalid_token, HTTP 403'."""
    if failure.http_status is None:
        return failure.error_class
    if failure.error_class in ("http_status", "unknown"):
        return f"HTTP {failure.http_status}"
    return f"{failure.error_class}, HTTP {failure.http_status}"


def resume_detail(connector: Connector) -> str:
    """How to resume a paused or disabled connector, once its cause is fixed."""
    health = connector.health
    state = health.state if health is not None else "paused"
    cause = ""
    if health is not None and (health.error_class or health.http_status):
        cause = f" after {_state_cause(health.error_class, health.http_status)}"
    lifted = (
        "A change to its table in the connectors file lifts a pause when cavra "
        "next starts, but never a disable."
        if state == "disabled"
        else "A change to its table in the connectors file also lifts the pause "
        "when cavra next starts."
    )
    return (
        f"Connector {connector.connector_id} is {state}{cause}, so retries to it "
        "wait. Once the cause is fixed, resume it with `cavra connectors resume "
        f"{connector.connector_id}` (or its resume endpoint); the waiting "
        f"retries are then decided afresh. {lifted}"
    )


def _retry_after_detail(connector_id: str, failures: Sequence[FailureCount]) -> str:
    count = sum(failure.retry_after_count for failure in failures)
    latest = max(
        (f.latest_retry_after_at for f in failures if f.latest_retry_after_at),
        default=None,
    )
    until = f", the latest until {format_time(latest)}" if latest else ""
    return (
        f"The receiver asked cavra to wait on {count} failed "
        f"{'attempt' if count == 1 else 'attempts'} (Retry-After){until}. The "
        "retry plan holds retries until then; do not deliver by hand before it."
    )


_RECOVERY_DETAILS = {
    "reenable_receiver": lambda cid, failures: (
        f"The receiver asked for no more deliveries: {failure_summary(failures)}. "
        f"cavra stopped delivering to {cid}. Re-enable the endpoint at the "
        "receiver, or point the connector at one that accepts deliveries."
    ),
    "set_secret": lambda cid, failures: (
        f"A secret of {cid} is unset, empty or malformed: "
        f"{failure_summary(failures)}. Set the environment variable that its "
        "*_env setting names in the environment of every cavra process, in the "
        "form the connector expects, and restart them; the secret never goes "
        "in the connectors file."
    ),
    "refresh_credential": lambda cid, failures: (
        f"The receiver refused the credentials of {cid}: "
        f"{failure_summary(failures)}. Issue a new credential at the receiver "
        "(or re-enable the old one), put it in the environment variable that "
        "the connector's *_env setting names, restart cavra's processes so "
        "they read it, and check it with `cavra connectors check "
        f"{cid}`."
    ),
    "check_tls": lambda cid, failures: (
        f"The TLS handshake with the receiver of {cid} failed: "
        f"{failure_summary(failures)}. Check that its certificate is valid, not "
        "expired and issued for the host the connector names, and that a CA "
        "cavra trusts signs it (the system's, or the connector's ca_bundle); "
        "cavra never switches verification off. `cavra connectors check "
        f"{cid}` repeats the handshake without sending evidence."
    ),
    "correct_address": lambda cid, failures: (
        f"The receiver redirected or had nothing at the address of {cid}: "
        f"{failure_summary(failures)}. Set the connector's address in the "
        "connectors file to the receiver's current one; cavra never follows "
        "a redirect."
    ),
    "check_index": lambda cid, failures: (
        f"The receiver refused where {cid} sends events: "
        f"{failure_summary(failures)}. Check that the index (and sourcetype) "
        "the connector names exists at the receiver and that its credential "
        "may write to it, or correct the connector's settings."
    ),
    "review_configuration": lambda cid, failures: (
        f"The configuration of {cid} must change: {failure_summary(failures)}. "
        "Compare its table in the connectors file with what the receiver "
        f"expects, then run `cavra connectors check {cid}`."
    ),
    "reduce_payload": lambda cid, failures: (
        f"The receiver refused packages as too large: {failure_summary(failures)}. "
        "Raise the receiver's size limit (or the connector's own limit, where "
        "it has one); a retry of the same package cannot succeed before."
    ),
    "fix_request": lambda cid, failures: (
        f"The receiver refused the request itself: {failure_summary(failures)}. "
        "It refuses the same request every time, so these deliveries are not "
        "retried. Check what the receiver expects (its schema, its required "
        "fields) against what the connector sends, fix the side that changed, "
        "then deliver the packages again."
    ),
    "lower_rate": lambda cid, failures: (
        f"The receiver rate-limited {cid}: {failure_summary(failures)}. Lower "
        "the rate: fewer max_retry_deliveries per worker run, a longer "
        "retry_delay_minutes or backoff_multiplier in the connector's "
        "retry_policy, or a higher quota at the receiver."
    ),
    "honour_retry_after": _retry_after_detail,
    "wait_for_capacity": lambda cid, failures: (
        f"The receiver of {cid} was busy: {failure_summary(failures)}. Retries "
        "back off on their own; if it lasts, check the receiver's capacity "
        "and queues."
    ),
    "check_network": lambda cid, failures: (
        f"cavra could not reach the receiver of {cid}: "
        f"{failure_summary(failures)}. Check that its host name resolves "
        "(DNS), that firewalls let cavra's hosts reach its port, and that the "
        "receiver listens there (with TLS up, where used). `cavra connectors "
        f"check {cid}` tries without sending evidence."
    ),
    "check_receiver": lambda cid, failures: (
        f"The receiver of {cid} failed with server errors: "
        f"{failure_summary(failures)}. Check its logs and status; retries "
        "continue while it recovers."
    ),
    "inspect_failures": lambda cid, failures: (
        f"{cid} had failures without a known meaning: "
        f"{failure_summary(failures)}. Read them in the attempts list (filtered "
        "by connector_id) next to the receiver's logs, and classify the error "
        "class in the connector plugin if it recurs."
    ),
}


__all__ = [
    "RECOVERY_STEP_TITLES",
    "cavra_classify_failure",
    "cavra_decide_eligibility",
    "cavra_narrow_window",
    "cavra_recovery_steps",
    "cavra_schedule_retry",
    "classify_status",
    "failure_label",
    "failure_summary",
    "generic_recovery_steps",
    "recovery_need",
    "resume_detail",
]
