"""Small formatting helpers for the sentences in decision explanations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second, as people read it."""
    if value.tzinfo is UTC:
        # PERF(plan): a plan formats several times per decision. For a UTC
        # time isoformat() ends in "+00:00", so swapping that for "Z" gives
        # the same text without building a naive copy first.
        return value.isoformat(timespec="seconds")[:-6] + "Z"
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def format_duration(value: timedelta | float) -> str:
    """A duration in the largest unit that reads naturally: 90 s -> '2 minutes'."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    seconds = abs(seconds)
    if seconds < 90:
        count, unit = round(seconds), "second"
    elif seconds < 90 * 60:
        count, unit = round(seconds / 60), "minute"
    elif seconds < 36 * 3600:
        count, unit = round(seconds / 3600), "hour"
    else:
        count, unit = round(seconds / 86400), "day"
    return f"{count} {unit}{'' if count == 1 else 's'}"


def describe_failure(http_status: int | None, error_class: str | None) -> str:
    """'HTTP 503' or the transport error class, e.g. 'connection_refused'."""
    if http_status is not None:
        return f"HTTP {http_status}"
    return error_class or "an unknown error"


@lru_cache(maxsize=1024)
def format_duration_adjective(value: timedelta | float) -> str:
    """The same duration as an adjective: '15-minute', '2-hour'."""
    # PERF(plan): called with a policy's delay for most decisions of a plan,
    # and delays take few values.
    count, unit = format_duration(value).split(" ")
    return f"{count}-{unit.rstrip('s')}"
