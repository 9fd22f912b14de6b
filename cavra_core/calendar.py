"""
Delivery calendar: the instants at which a connector may receive retries.

A calendar is built from the ``schedule`` table of one connector in the
connectors file::

    [audit-webhook.schedule]
    timezone = "Europe/Berlin"
    allowed_hours = ["08:00-12:00", "13:00-20:00"]
    allowed_days = ["mon", "tue", "wed", "thu", "fri"]

    [[audit-webhook.schedule.blackouts]]      # absolute, RFC 3339 with an offset
    start = "2026-12-24T00:00:00+01:00"
    end = "2026-12-27T00:00:00+01:00"

    [[audit-webhook.schedule.blackouts]]      # recurring, local wall clock
    days = ["sun"]
    start = "02:00"
    end = "04:00"

The calendar is *open* at an instant when the instant lies inside one of the
allowed hours (when any are set) on an allowed day, and outside every blackout.
Every interval is half-open, ``[start, end)``.

Wall-clock settings:

- ``allowed_hours`` entries are ``"HH:MM-HH:MM"``; an end at or before the start
  crosses midnight (``"22:00-06:00"``) and ``"00:00-24:00"`` is the whole day.
- ``allowed_days`` and a recurring blackout's ``days`` name the day on which an
  interval *starts*: ``"22:00-06:00"`` on ``fri`` covers Friday night into
  Saturday morning. Both default to every day; ``allowed_days`` without
  ``allowed_hours`` allows those days whole.
- ``timezone`` (an IANA name) must be given whenever a wall-clock setting is
  used; a calendar with absolute blackouts only needs none (it defaults to UTC).

Daylight-saving rules, applied to every wall-clock boundary (allowed hours and
recurring blackouts alike) on the local day it falls on:

- A wall-clock time that does not exist (the spring-forward gap) resolves to the
  first instant after the gap. In Europe/Berlin on 2026-03-29 an interval
  starting at 02:30 starts at 03:00 CEST (01:00 UTC); an interval ending at
  02:30 ends at that same instant.
- A wall-clock time that occurs twice (the fall-back overlap) resolves to its
  first occurrence when it starts an interval and to its second occurrence when
  it ends one, so the interval covers as much as possible. In Europe/Berlin on
  2026-10-25 ``"02:30-06:00"`` starts at 02:30 CEST (00:30 UTC) and
  ``"00:00-02:30"`` ends at 02:30 CET (01:30 UTC).
- An interval whose resolved end is not after its resolved start (for instance
  ``"02:00-02:30"`` on a spring-forward day) is empty that day.

The resolution uses :mod:`zoneinfo` and the ``fold`` attribute of PEP 495, so
zones with shifts other than one hour (Australia/Lord_Howe moves by 30 minutes)
follow the same rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: How far ``next_open`` looks ahead before declaring that a calendar never opens.
SEARCH_HORIZON = timedelta(days=400)

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_SETTINGS = ("timezone", "allowed_hours", "allowed_days", "blackouts")
_BLACKOUT_SETTINGS = ("start", "end", "days")
_MINUTES_PER_DAY = 24 * 60
_CLOCK = re.compile(r"(\d{2}):(\d{2})")
_HOURS = re.compile(r"(\d{2}:\d{2})-(\d{2}:\d{2})")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?"
    r"(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
_LATEST = datetime.max.replace(tzinfo=UTC)


class CalendarError(ValueError):
    """
    A schedule setting is wrong, or the calendar it describes never opens.

    ``key`` is the dotted path of the setting inside the ``schedule`` table
    (``allowed_hours[1]``, ``blackouts[0].start``), or ``schedule`` for the
    table as a whole; ``message`` says how to fix it.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class _WallClockSpan:
    """A local wall-clock interval repeated on some days of the week."""

    #: Minutes after local midnight, 0-1439.
    start: int
    #: Minutes after local midnight, 1-1440; at or before ``start`` it is the
    #: next day's wall clock (the span crosses midnight).
    end: int
    #: Weekday numbers (Monday is 0) on which the span starts.
    days: frozenset[int]

    def label(self) -> str:
        return f"{_clock_text(self.start)}-{_clock_text(self.end)}"


@dataclass(frozen=True)
class DeliveryCalendar:
    """
    When a connector may receive retries; build it with :meth:`from_settings`.

    Instances are immutable and safe to share between threads.
    """

    #: IANA name of the zone the wall-clock settings are read in.
    timezone: str
    #: Allowed wall-clock spans; empty means every hour of every day is allowed.
    allowed: tuple[_WallClockSpan, ...]
    #: Absolute blackouts as ``(start, end)`` pairs in UTC, sorted by start.
    absolute_blackouts: tuple[tuple[datetime, datetime], ...]
    #: Recurring blackouts read on the local wall clock.
    recurring_blackouts: tuple[_WallClockSpan, ...]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DeliveryCalendar | None:
        """
        Validate a connector's ``schedule`` table and build its calendar.

        :param settings: the table as parsed from TOML (strings, lists, tables;
            TOML date-times and times are accepted too).
        :returns: the calendar, or ``None`` when the table sets no constraint.
        :raises CalendarError: naming the first setting that is wrong.
        """
        if not isinstance(settings, Mapping):
            raise CalendarError("schedule", "must be a table of schedule settings")
        for key in settings:
            if key not in _SETTINGS:
                raise CalendarError(
                    str(key),
                    f"is not a schedule setting; use {', '.join(sorted(_SETTINGS))}",
                )

        zone_name = _parse_zone(settings.get("timezone", "UTC"))

        allowed_days = None
        if "allowed_days" in settings:
            allowed_days = _parse_days(settings["allowed_days"], "allowed_days")
        spans: list[tuple[int, int]] = []
        if "allowed_hours" in settings:
            spans = _parse_allowed_hours(settings["allowed_hours"])
        elif allowed_days is not None:
            spans = [(0, _MINUTES_PER_DAY)]
        days = allowed_days if allowed_days is not None else frozenset(range(7))
        allowed = tuple(_WallClockSpan(start, end, days) for start, end in spans)

        absolute: list[tuple[datetime, datetime]] = []
        recurring: list[_WallClockSpan] = []
        if "blackouts" in settings:
            absolute, recurring = _parse_blackouts(settings["blackouts"])

        if (allowed or recurring) and "timezone" not in settings:
            raise CalendarError(
                "timezone",
                "is required with allowed_hours, allowed_days or recurring "
                'blackouts; name an IANA zone such as "Europe/Berlin" or "UTC"',
            )
        if not (allowed or absolute or recurring):
            return None
        return cls(
            timezone=zone_name,
            allowed=allowed,
            absolute_blackouts=tuple(sorted(absolute)),
            recurring_blackouts=tuple(recurring),
        )

    @property
    def zone(self) -> ZoneInfo:
        """The :class:`~zoneinfo.ZoneInfo` named by :attr:`timezone`."""
        return ZoneInfo(self.timezone)

    def is_open(self, instant: datetime) -> bool:
        """
        Tell whether a delivery may happen at ``instant``.

        :param instant: a timezone-aware datetime.
        :raises ValueError: when ``instant`` is naive.
        """
        moment = _as_utc(instant)
        zone = self.zone

        if self.allowed:
            interval = self._next_allowed(zone, moment, limit=moment)
            if interval is None or interval[0] > moment:
                return False
        return self._blackout_end(zone, moment) is None

    def next_open(self, instant: datetime) -> datetime:
        """
        Find the earliest instant at or after ``instant`` at which the calendar
        is open.

        The search jumps from interval boundary to interval boundary, so it
        costs a few steps per closed period it skips, not one per minute.

        :param instant: a timezone-aware datetime.
        :returns: that instant, in UTC.
        :raises ValueError: when ``instant`` is naive.
        :raises CalendarError: (key ``schedule``) when the calendar does not
            open within :data:`SEARCH_HORIZON` of ``instant``.
        """
        moment = _as_utc(instant)
        zone = self.zone
        limit = (
            _LATEST if _LATEST - moment < SEARCH_HORIZON else moment + SEARCH_HORIZON
        )

        candidate = moment
        while candidate <= limit:
            if self.allowed:
                interval = self._next_allowed(zone, candidate, limit)
                if interval is None:
                    break
                candidate = max(candidate, interval[0])
                if candidate > limit:
                    break
            blackout_end = self._blackout_end(zone, candidate)
            if blackout_end is None:
                return candidate
            candidate = blackout_end

        raise CalendarError(
            "schedule",
            f"never opens in the {SEARCH_HORIZON.days} days after "
            f"{moment.isoformat()}; widen allowed_hours or allowed_days, or "
            "shorten the blackouts",
        )

    def describe(self) -> str:
        """Return a one-line summary for decision explanations."""
        if self.allowed:
            hours = ", ".join(span.label() for span in self.allowed)
            days = _days_text(self.allowed[0].days)
            summary = f"allowed {hours} {days} {self.timezone}"
        else:
            summary = "allowed any time"

        count = len(self.absolute_blackouts) + len(self.recurring_blackouts)
        if count:
            summary += f"; {count} blackout{'s' if count > 1 else ''}"
            if self.recurring_blackouts and not self.allowed:
                summary += f" ({self.timezone})"
        return summary

    def _next_allowed(
        self, zone: ZoneInfo, moment: datetime, limit: datetime = _LATEST
    ) -> tuple[datetime, datetime] | None:
        """
        Return the allowed interval that ends after ``moment`` and starts first,
        or ``None`` when none starts by ``limit``.
        """
        for day in _days_from(_days_before(_local_date(zone, moment), 2)):
            if _start_of_day(zone, day) > limit:
                return None
            found = [
                interval
                for span in self.allowed
                if (interval := _interval_on(zone, span, day)) is not None
                and interval[1] > moment
            ]
            # Starts resolve monotonically with the wall clock, so no later day
            # can hold an interval starting before the ones found on this day.
            if found:
                return min(found)
        return None

    def _blackout_end(self, zone: ZoneInfo, moment: datetime) -> datetime | None:
        """Return the latest end of the blackouts covering ``moment``, if any."""
        ends = [end for start, end in self.absolute_blackouts if start <= moment < end]

        if self.recurring_blackouts:
            today = _local_date(zone, moment)
            for day in _days_from(_days_before(today, 2)):
                if day > today:
                    break
                for span in self.recurring_blackouts:
                    interval = _interval_on(zone, span, day)
                    if interval is not None and interval[0] <= moment < interval[1]:
                        ends.append(interval[1])

        return max(ends) if ends else None


def _as_utc(instant: datetime) -> datetime:
    if not isinstance(instant, datetime):
        raise TypeError(f"expected a datetime, got {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            f"{instant.isoformat()} has no UTC offset; pass a timezone-aware datetime"
        )
    return instant.astimezone(UTC)


def _local_date(zone: ZoneInfo, moment: datetime) -> date:
    try:
        return moment.astimezone(zone).date()
    except OverflowError:
        # Only reachable within a day of the ends of the datetime range.
        return moment.date()


def _days_before(day: date, count: int) -> date:
    return (
        date.min
        if day - date.min < timedelta(days=count)
        else day - timedelta(days=count)
    )


def _days_from(first: date) -> Iterator[date]:
    """Yield consecutive dates from ``first`` until the end of the calendar."""
    day = first
    while True:
        yield day
        if day == date.max:
            return
        day += timedelta(days=1)


def _start_of_day(zone: ZoneInfo, day: date) -> datetime:
    try:
        return _resolve(zone, day, 0, "start")
    except OverflowError:
        return _LATEST if day.year > 1 else datetime.min.replace(tzinfo=UTC)


def _interval_on(
    zone: ZoneInfo, span: _WallClockSpan, day: date
) -> tuple[datetime, datetime] | None:
    """Resolve ``span`` on the local ``day`` to a UTC interval, if it has one."""
    if day.weekday() not in span.days:
        return None

    try:
        end_day = day if span.end > span.start else day + timedelta(days=1)
        end_minute = span.end
        if end_minute == _MINUTES_PER_DAY:
            end_day, end_minute = day + timedelta(days=1), 0
        start = _resolve(zone, day, span.start, "start")
        end = _resolve(zone, end_day, end_minute, "end")
    except OverflowError:
        return None
    return (start, end) if end > start else None


def _resolve(
    zone: ZoneInfo, day: date, minute: int, role: Literal["start", "end"]
) -> datetime:
    """
    Turn a local wall-clock time into a UTC instant, following the module's
    daylight-saving rules for the given ``role``.
    """
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)

    if first == second:
        return first
    if first < second:
        # The wall clock shows this time twice (fall back).
        return first if role == "start" else second
    # The time falls in a gap: PEP 495 maps fold=1 to the offset after the
    # transition, giving an instant before it, and fold=0 to one after it.
    return _transition_after(zone, second, first)


def _transition_after(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """
    Return the first instant in ``(before, after]`` whose UTC offset differs
    from the one at ``before``: the end of a spring-forward gap.
    """
    offset = before.astimezone(zone).utcoffset()
    low, high = 0, int((after - before).total_seconds())

    while high - low > 1:
        middle = (low + high) // 2
        if (before + timedelta(seconds=middle)).astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)


def _parse_zone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CalendarError(
            "timezone", 'must be an IANA zone name such as "Europe/Berlin" or "UTC"'
        )
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CalendarError(
            "timezone",
            f"{value!r} is not a known IANA zone; use a name such as "
            '"Europe/Berlin" or "UTC" (names are case-sensitive)',
        ) from None
    return value


def _parse_days(value: Any, key: str) -> frozenset[int]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise CalendarError(
            key, f"must be a list of day names ({', '.join(DAY_NAMES)})"
        )
    if not value:
        raise CalendarError(
            key, "is empty; list at least one day or remove the setting"
        )

    days: set[int] = set()
    for index, name in enumerate(value):
        item_key = f"{key}[{index}]"
        if not isinstance(name, str) or name.lower() not in DAY_NAMES:
            raise CalendarError(
                item_key, f"{name!r} is not a day; use one of {', '.join(DAY_NAMES)}"
            )
        number = DAY_NAMES.index(name.lower())
        if number in days:
            raise CalendarError(item_key, f"repeats {name!r}; list each day once")
        days.add(number)
    return frozenset(days)


def _parse_clock(value: Any, key: str, *, is_end: bool) -> int:
    """Read ``HH:MM`` (or a TOML local time) as minutes after midnight."""
    if isinstance(value, time):
        if value.tzinfo is not None or value.second or value.microsecond:
            raise CalendarError(key, 'must be a local "HH:MM" time without seconds')
        return value.hour * 60 + value.minute

    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        hours, minutes = int(match[1]), int(match[2])
        if hours < 24 and minutes < 60:
            return hours * 60 + minutes
        if is_end and (hours, minutes) == (24, 0):
            return _MINUTES_PER_DAY
    allowed = "00:00 to 24:00" if is_end else "00:00 to 23:59"
    raise CalendarError(key, f'{value!r} is not a "HH:MM" time from {allowed}')


def _parse_allowed_hours(value: Any) -> list[tuple[int, int]]:
    key = "allowed_hours"
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise CalendarError(key, 'must be a list of "HH:MM-HH:MM" intervals')
    if not value:
        raise CalendarError(
            key, "is empty; list at least one interval or remove the setting"
        )

    spans = []
    for index, text in enumerate(value):
        item_key = f"{key}[{index}]"
        match = _HOURS.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise CalendarError(
                item_key,
                f'{text!r} is not an interval; write "HH:MM-HH:MM" such as '
                '"08:00-17:00" or "22:00-06:00"',
            )
        start = _parse_clock(match[1], item_key, is_end=False)
        end = _parse_clock(match[2], item_key, is_end=True)
        if start == end:
            raise CalendarError(
                item_key,
                'starts and ends at the same time; use "00:00-24:00" for the whole day',
            )
        spans.append((start, end))
    return spans


def _parse_blackouts(
    value: Any,
) -> tuple[list[tuple[datetime, datetime]], list[_WallClockSpan]]:
    key = "blackouts"
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise CalendarError(key, "must be a list of tables with start and end")
    if not value:
        raise CalendarError(key, "is empty; add a blackout or remove the setting")

    absolute: list[tuple[datetime, datetime]] = []
    recurring: list[_WallClockSpan] = []
    for index, entry in enumerate(value):
        entry_key = f"{key}[{index}]"
        if not isinstance(entry, Mapping):
            raise CalendarError(entry_key, "must be a table with start and end")
        for name in entry:
            if name not in _BLACKOUT_SETTINGS:
                raise CalendarError(
                    f"{entry_key}.{name}",
                    "is not a blackout setting; use start, end and (for recurring "
                    "blackouts) days",
                )
        for name in ("start", "end"):
            if name not in entry:
                raise CalendarError(f"{entry_key}.{name}", "is required")

        if _looks_like_clock(entry["start"]):
            recurring.append(_parse_recurring_blackout(entry, entry_key))
        else:
            absolute.append(_parse_absolute_blackout(entry, entry_key))
    return absolute, recurring


def _looks_like_clock(value: Any) -> bool:
    if isinstance(value, time):
        return True
    return isinstance(value, str) and _CLOCK.fullmatch(value) is not None


def _parse_recurring_blackout(
    entry: Mapping[str, Any], entry_key: str
) -> _WallClockSpan:
    start = _parse_clock(entry["start"], f"{entry_key}.start", is_end=False)
    end = _parse_clock(entry["end"], f"{entry_key}.end", is_end=True)
    if start == end:
        raise CalendarError(
            f"{entry_key}.end",
            'equals start; use start "00:00" and end "24:00" to black out whole days',
        )
    days = frozenset(range(7))
    if "days" in entry:
        days = _parse_days(entry["days"], f"{entry_key}.days")
    return _WallClockSpan(start, end, days)


def _parse_absolute_blackout(
    entry: Mapping[str, Any], entry_key: str
) -> tuple[datetime, datetime]:
    if "days" in entry:
        raise CalendarError(
            f"{entry_key}.days",
            'applies to recurring blackouts only; give start and end as "HH:MM" '
            "or remove days",
        )
    start = _parse_instant(entry["start"], f"{entry_key}.start")
    end = _parse_instant(entry["end"], f"{entry_key}.end")
    if end <= start:
        raise CalendarError(f"{entry_key}.end", "must be later than start")
    return start, end


def _parse_instant(value: Any, key: str) -> datetime:
    """Read an RFC 3339 timestamp with an offset (or a TOML offset date-time)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and (match := _RFC3339.fullmatch(value)):
        if match["offset"] is None:
            parsed = None
        else:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise CalendarError(
                    key, f"{value!r} is not a valid date and time"
                ) from None
    else:
        raise CalendarError(
            key,
            f"{value!r} is not an RFC 3339 timestamp; write it like "
            '"2026-12-24T00:00:00+01:00", or "HH:MM" for a recurring blackout',
        )

    if parsed is None or parsed.tzinfo is None or parsed.utcoffset() is None:
        raise CalendarError(
            key, f"{value!s} has no UTC offset; add one such as +01:00 or Z"
        )
    return parsed.astimezone(UTC)


def _clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    """Write weekdays as runs in week order: ``Mon-Fri``, ``Mon, Wed``, ``daily``."""
    if len(days) == 7:
        return "daily"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])

    def name(day: int) -> str:
        return DAY_NAMES[day].capitalize()

    return ", ".join(
        name(run[0]) if len(run) == 1 else f"{name(run[0])}-{name(run[-1])}"
        for run in runs
    )
