"""Unit and property tests for the delivery calendar (``cavra_core.calendar``)."""

from __future__ import annotations

import dataclasses
import time as clock
import tomllib
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cavra_core.calendar import DAY_NAMES, CalendarError, DeliveryCalendar

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)


def build(**schedule: Any) -> DeliveryCalendar:
    calendar = DeliveryCalendar.from_settings(schedule)
    assert calendar is not None
    return calendar


# --- validation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "key"),
    [
        pytest.param(
            {"timezone": "UTC", "hours": ["08:00-12:00"]}, "hours", id="unknown"
        ),
        pytest.param({"timezone": "Mars/Olympus"}, "timezone", id="unknown-zone"),
        pytest.param({"timezone": "Europe"}, "timezone", id="zone-folder"),
        pytest.param({"timezone": 1}, "timezone", id="zone-not-text"),
        pytest.param(
            {"allowed_hours": ["08:00-12:00"]}, "timezone", id="zone-required"
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_hours": ["08:00-12:00", "13:00-25:00"]},
            "allowed_hours[1]",
            id="hour-out-of-range",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_hours": ["8:00-12:00"]},
            "allowed_hours[0]",
            id="hour-one-digit",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_hours": ["24:00-06:00"]},
            "allowed_hours[0]",
            id="start-at-24",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_hours": ["09:00-09:00"]},
            "allowed_hours[0]",
            id="empty-interval",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_hours": []}, "allowed_hours", id="no-hours"
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_hours": "08:00-12:00"},
            "allowed_hours",
            id="hours-not-list",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_days": ["mon", "tue", "funday"]},
            "allowed_days[2]",
            id="bad-day",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_days": ["mon", "mon"]},
            "allowed_days[1]",
            id="repeated-day",
        ),
        pytest.param(
            {"timezone": "UTC", "allowed_days": []}, "allowed_days", id="no-days"
        ),
        pytest.param({"blackouts": []}, "blackouts", id="no-blackouts"),
        pytest.param({"blackouts": ["soon"]}, "blackouts[0]", id="blackout-not-table"),
        pytest.param(
            {"blackouts": [{"start": "2026-12-24T00:00:00"}]},
            "blackouts[0].end",
            id="missing-end",
        ),
        pytest.param(
            {
                "blackouts": [
                    {"start": "2026-12-24T00:00:00", "end": "2026-12-27T00:00:00Z"}
                ]
            },
            "blackouts[0].start",
            id="naive-start",
        ),
        pytest.param(
            {
                "blackouts": [
                    {
                        "start": "2026-12-24T00:00:00+01:00",
                        "end": datetime(2026, 12, 27),
                    }
                ]
            },
            "blackouts[0].end",
            id="naive-toml-datetime",
        ),
        pytest.param(
            {"blackouts": [{"start": "2026-12-24", "end": "2026-12-27"}]},
            "blackouts[0].start",
            id="date-only",
        ),
        pytest.param(
            {
                "blackouts": [
                    {"start": "2026-02-30T00:00:00Z", "end": "2026-03-02T00:00:00Z"}
                ]
            },
            "blackouts[0].start",
            id="impossible-date",
        ),
        pytest.param(
            {
                "blackouts": [
                    {"start": "2026-12-27T00:00:00Z", "end": "2026-12-27T00:00:00Z"}
                ]
            },
            "blackouts[0].end",
            id="end-equals-start",
        ),
        pytest.param(
            {
                "blackouts": [
                    {
                        "start": "2026-12-27T00:30:00Z",
                        "end": "2026-12-27T01:00:00+01:00",
                    }
                ]
            },
            "blackouts[0].end",
            id="end-before-start-across-offsets",
        ),
        pytest.param(
            {
                "blackouts": [
                    {"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"},
                    {
                        "start": "2026-12-24T00:00:00Z",
                        "end": "2026-12-27T00:00:00Z",
                        "x": 1,
                    },
                ]
            },
            "blackouts[1].x",
            id="unknown-blackout-key",
        ),
        pytest.param(
            {
                "blackouts": [
                    {
                        "days": ["sun"],
                        "start": "2026-12-24T00:00:00Z",
                        "end": "2026-12-27T00:00:00Z",
                    }
                ]
            },
            "blackouts[0].days",
            id="days-on-absolute",
        ),
        pytest.param(
            {
                "timezone": "UTC",
                "blackouts": [{"days": ["sun"], "start": "02:00", "end": "2026-12-27"}],
            },
            "blackouts[0].end",
            id="recurring-end-not-clock",
        ),
        pytest.param(
            {
                "timezone": "UTC",
                "blackouts": [{"days": ["sun"], "start": "02:00", "end": "02:00"}],
            },
            "blackouts[0].end",
            id="recurring-empty",
        ),
        pytest.param(
            {
                "timezone": "UTC",
                "blackouts": [
                    {"days": ["sun", "sonntag"], "start": "02:00", "end": "04:00"}
                ],
            },
            "blackouts[0].days[1]",
            id="recurring-bad-day",
        ),
        pytest.param(
            {"blackouts": [{"days": ["sun"], "start": "02:00", "end": "04:00"}]},
            "timezone",
            id="recurring-needs-zone",
        ),
    ],
)
def test_invalid_setting_is_refused_naming_its_key(
    schedule: dict[str, Any], key: str
) -> None:
    with pytest.raises(CalendarError) as caught:
        DeliveryCalendar.from_settings(schedule)

    assert caught.value.key == key


def test_error_text_is_key_then_message() -> None:
    with pytest.raises(CalendarError) as caught:
        DeliveryCalendar.from_settings({"timezone": "UTC", "allowed_hours": ["8-12"]})

    error = caught.value
    assert str(error) == f"{error.key}: {error.message}"
    assert "HH:MM-HH:MM" in error.message


def test_calendar_error_is_a_value_error() -> None:
    error = CalendarError("timezone", "name a zone")

    assert isinstance(error, ValueError)


def test_empty_schedule_means_no_calendar() -> None:
    calendar = DeliveryCalendar.from_settings({})

    assert calendar is None


def test_schedule_with_only_a_zone_means_no_calendar() -> None:
    calendar = DeliveryCalendar.from_settings({"timezone": "Europe/Berlin"})

    assert calendar is None


def test_schedule_from_the_connectors_file_is_accepted() -> None:
    document = tomllib.loads(
        """
        [audit-webhook.schedule]
        timezone = "Europe/Berlin"
        allowed_hours = ["08:00-12:00", "13:00-20:00"]
        allowed_days = ["mon", "tue", "wed", "thu", "fri"]
        [[audit-webhook.schedule.blackouts]]
        start = "2026-12-24T00:00:00+01:00"
        end = 2026-12-27T00:00:00+01:00
        [[audit-webhook.schedule.blackouts]]
        days = ["sun"]
        start = "02:00"
        end = 04:00:00
        """
    )

    calendar = DeliveryCalendar.from_settings(document["audit-webhook"]["schedule"])

    assert calendar is not None
    assert calendar.absolute_blackouts == (
        (utc(2026, 12, 23, 23), utc(2026, 12, 26, 23)),
    )
    assert len(calendar.recurring_blackouts) == 1


def test_calendar_is_immutable() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00"])

    with pytest.raises(dataclasses.FrozenInstanceError):
        calendar.timezone = "Europe/Berlin"  # type: ignore[misc]


# --- aware instants only ----------------------------------------------------


def test_is_open_refuses_a_naive_instant() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00"])

    with pytest.raises(ValueError, match="no UTC offset"):
        calendar.is_open(datetime(2026, 6, 1, 9))


def test_next_open_refuses_a_naive_instant() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00"])

    with pytest.raises(ValueError, match="no UTC offset"):
        calendar.next_open(datetime(2026, 6, 1, 9))


def test_next_open_answers_in_utc() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["08:00-12:00"])

    opened = calendar.next_open(datetime(2026, 6, 1, 6, tzinfo=BERLIN))

    assert opened.tzinfo is UTC
    assert opened == utc(2026, 6, 1, 6)


# --- allowed hours and days -------------------------------------------------


def test_allowed_hours_are_read_on_the_local_wall_clock() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["08:00-12:00"])

    assert calendar.is_open(utc(2026, 6, 1, 6))  # 08:00 CEST
    assert not calendar.is_open(utc(2026, 6, 1, 5, 59))


def test_allowed_hours_end_is_exclusive() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00"])

    assert calendar.is_open(utc(2026, 6, 1, 11, 59, 59))
    assert not calendar.is_open(utc(2026, 6, 1, 12))


def test_next_open_of_an_open_instant_is_that_instant() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00"])
    instant = utc(2026, 6, 1, 9, 17, 3, 250)

    opened = calendar.next_open(instant)

    assert opened == instant


def test_next_open_skips_the_gap_between_allowed_hours() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00", "13:00-20:00"])

    opened = calendar.next_open(utc(2026, 6, 1, 12, 30))

    assert opened == utc(2026, 6, 1, 13)


def test_next_open_after_the_last_interval_is_the_next_morning() -> None:
    calendar = build(timezone="UTC", allowed_hours=["08:00-12:00", "13:00-20:00"])

    opened = calendar.next_open(utc(2026, 6, 1, 20))

    assert opened == utc(2026, 6, 2, 8)


def test_interval_crossing_midnight_covers_both_evenings_and_mornings() -> None:
    calendar = build(timezone="UTC", allowed_hours=["22:00-06:00"])

    assert calendar.is_open(utc(2026, 6, 1, 23))
    assert calendar.is_open(utc(2026, 6, 2, 3))
    assert not calendar.is_open(utc(2026, 6, 2, 6))
    assert not calendar.is_open(utc(2026, 6, 2, 12))


def test_interval_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    calendar = build(
        timezone="UTC", allowed_hours=["22:00-06:00"], allowed_days=["fri"]
    )

    assert calendar.is_open(utc(2026, 6, 6, 3))  # Saturday morning, from Friday
    assert not calendar.is_open(utc(2026, 6, 5, 3))  # Friday morning, from Thursday
    assert not calendar.is_open(utc(2026, 6, 6, 23))  # Saturday evening


def test_whole_day_interval_is_open_around_midnight() -> None:
    calendar = build(
        timezone="UTC", allowed_hours=["00:00-24:00"], allowed_days=["mon"]
    )

    assert calendar.is_open(utc(2026, 6, 1, 0))
    assert calendar.is_open(utc(2026, 6, 1, 23, 59, 59, 999999))
    assert not calendar.is_open(utc(2026, 6, 2, 0))


def test_next_open_waits_for_the_next_allowed_day() -> None:
    calendar = build(
        timezone="America/New_York",
        allowed_hours=["09:00-17:00"],
        allowed_days=["mon", "tue", "wed", "thu", "fri"],
    )

    opened = calendar.next_open(datetime(2026, 6, 5, 17, tzinfo=NEW_YORK))  # Friday

    assert opened == utc(2026, 6, 8, 13)  # Monday 09:00 EDT


def test_allowed_days_without_hours_allow_the_whole_day() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_days=["sat", "sun"])

    assert calendar.is_open(datetime(2026, 6, 6, 0, tzinfo=BERLIN))
    assert not calendar.is_open(datetime(2026, 6, 5, 23, 59, tzinfo=BERLIN))


# --- blackouts --------------------------------------------------------------


def test_absolute_blackout_closes_its_period() -> None:
    calendar = build(
        blackouts=[
            {"start": "2026-12-24T00:00:00+01:00", "end": "2026-12-27T00:00:00+01:00"}
        ]
    )

    assert calendar.is_open(utc(2026, 12, 23, 22, 59))
    assert not calendar.is_open(utc(2026, 12, 23, 23))
    assert calendar.is_open(utc(2026, 12, 26, 23))


def test_next_open_inside_an_absolute_blackout_is_its_end() -> None:
    calendar = build(
        blackouts=[{"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"}]
    )

    opened = calendar.next_open(utc(2026, 12, 25, 10))

    assert opened == utc(2026, 12, 27)


def test_recurring_blackout_closes_its_local_hours_on_its_days() -> None:
    calendar = build(
        timezone="Europe/Berlin",
        blackouts=[{"days": ["sun"], "start": "02:00", "end": "04:00"}],
    )

    assert calendar.is_open(datetime(2026, 6, 7, 1, 59, tzinfo=BERLIN))
    assert not calendar.is_open(datetime(2026, 6, 7, 2, 0, tzinfo=BERLIN))
    assert calendar.is_open(datetime(2026, 6, 6, 3, 0, tzinfo=BERLIN))  # Saturday


def test_next_open_inside_a_recurring_blackout_is_its_end() -> None:
    calendar = build(
        timezone="Europe/Berlin",
        blackouts=[{"days": ["sun"], "start": "02:00", "end": "04:00"}],
    )

    opened = calendar.next_open(datetime(2026, 6, 7, 3, tzinfo=BERLIN))

    assert opened == utc(2026, 6, 7, 2)  # 04:00 CEST


def test_recurring_blackout_without_days_repeats_daily_across_midnight() -> None:
    calendar = build(timezone="UTC", blackouts=[{"start": "23:00", "end": "01:00"}])

    opened = calendar.next_open(utc(2026, 6, 3, 23, 30))

    assert opened == utc(2026, 6, 4, 1)


def test_next_open_chains_through_blackouts_and_closed_hours() -> None:
    calendar = build(
        timezone="Europe/Berlin",
        allowed_hours=["08:00-12:00", "13:00-20:00"],
        allowed_days=["mon", "tue", "wed", "thu", "fri"],
        blackouts=[
            # Thursday 24 to Sunday 27 December.
            {"start": "2026-12-24T00:00:00+01:00", "end": "2026-12-27T00:00:00+01:00"},
            # Monday mornings, then an outage overlapping it into lunch.
            {"days": ["mon"], "start": "07:00", "end": "09:00"},
            {"start": "2026-12-28T08:30:00+01:00", "end": "2026-12-28T12:30:00+01:00"},
        ],
    )

    opened = calendar.next_open(datetime(2026, 12, 24, 10, tzinfo=BERLIN))

    assert opened == utc(2026, 12, 28, 12)  # Monday 13:00 CET


def test_never_opening_calendar_raises_naming_the_schedule() -> None:
    calendar = build(
        timezone="UTC",
        allowed_days=["mon"],
        blackouts=[{"days": ["mon"], "start": "00:00", "end": "24:00"}],
    )
    started = clock.monotonic()

    with pytest.raises(CalendarError, match="never opens") as caught:
        calendar.next_open(utc(2026, 6, 1))

    assert caught.value.key == "schedule"
    assert clock.monotonic() - started < 1


def test_calendar_opening_only_after_the_horizon_never_opens() -> None:
    calendar = build(
        blackouts=[{"start": "2026-01-01T00:00:00Z", "end": "2027-06-01T00:00:00Z"}]
    )

    with pytest.raises(CalendarError) as caught:
        calendar.next_open(utc(2026, 1, 1))

    assert caught.value.key == "schedule"


def test_next_open_near_the_end_of_time_terminates() -> None:
    calendar = build(timezone="Pacific/Kiritimati", allowed_hours=["08:00-09:00"])

    with pytest.raises(CalendarError):
        calendar.next_open(datetime.max.replace(tzinfo=UTC) - timedelta(hours=1))


# --- describe ---------------------------------------------------------------


def test_describe_names_hours_days_zone_and_blackouts() -> None:
    calendar = build(
        timezone="Europe/Berlin",
        allowed_hours=["08:00-20:00"],
        allowed_days=["mon", "tue", "wed", "thu", "fri"],
        blackouts=[{"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"}],
    )

    assert (
        calendar.describe() == "allowed 08:00-20:00 Mon-Fri Europe/Berlin; 1 blackout"
    )


def test_describe_without_allowed_hours_counts_blackouts() -> None:
    calendar = build(
        timezone="UTC",
        blackouts=[
            {"start": "2026-12-24T00:00:00Z", "end": "2026-12-27T00:00:00Z"},
            {"days": ["sun", "sat"], "start": "02:00", "end": "04:00"},
        ],
    )

    assert calendar.describe() == "allowed any time; 2 blackouts (UTC)"


def test_describe_lists_separate_days_and_daily_hours() -> None:
    weekdays = build(timezone="UTC", allowed_days=["wed", "mon", "fri", "sat"])
    daily = build(timezone="UTC", allowed_hours=["22:00-06:00"])

    assert weekdays.describe() == "allowed 00:00-24:00 Mon, Wed, Fri-Sat UTC"
    assert daily.describe() == "allowed 22:00-06:00 daily UTC"


# --- daylight saving --------------------------------------------------------
# Transitions used below (2026):
#   Europe/Berlin     spring 29 Mar 02:00 CET -> 03:00 CEST (01:00 UTC)
#                     fall   25 Oct 03:00 CEST -> 02:00 CET (01:00 UTC)
#   America/New_York  spring  8 Mar 02:00 EST -> 03:00 EDT (07:00 UTC)
#                     fall    1 Nov 02:00 EDT -> 01:00 EST (06:00 UTC)
#   Australia/Lord_Howe fall  5 Apr 02:00 +11 -> 01:30 +10:30 (15:00 UTC on 4 Apr)
#                     spring  4 Oct 02:00 +10:30 -> 02:30 +11 (15:30 UTC on 3 Oct)


def test_berlin_start_in_spring_gap_moves_to_end_of_gap() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["02:30-05:00"])

    opened = calendar.next_open(utc(2026, 3, 29, 0))

    assert opened == utc(2026, 3, 29, 1)  # 03:00 CEST
    assert not calendar.is_open(utc(2026, 3, 29, 0, 59))


def test_berlin_end_in_spring_gap_moves_to_end_of_gap() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["00:00-02:30"])

    assert calendar.is_open(utc(2026, 3, 29, 0, 59))  # 01:59 CET
    assert not calendar.is_open(utc(2026, 3, 29, 1))  # 03:00 CEST


def test_berlin_interval_inside_spring_gap_is_empty_that_day() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["02:00-02:30"])

    opened = calendar.next_open(utc(2026, 3, 28, 12))

    assert opened == utc(2026, 3, 30, 0)  # 02:00 CEST on Monday


def test_berlin_start_in_fall_overlap_takes_first_occurrence() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["02:30-06:00"])

    opened = calendar.next_open(utc(2026, 10, 24, 23))

    assert opened == utc(2026, 10, 25, 0, 30)  # 02:30 CEST


def test_berlin_end_in_fall_overlap_takes_second_occurrence() -> None:
    calendar = build(timezone="Europe/Berlin", allowed_hours=["01:00-02:30"])

    assert calendar.is_open(utc(2026, 10, 25, 1, 29))  # 02:29 CET
    assert not calendar.is_open(utc(2026, 10, 25, 1, 30))  # 02:30 CET


def test_berlin_recurring_blackout_in_fall_overlap_covers_both_occurrences() -> None:
    calendar = build(
        timezone="Europe/Berlin",
        blackouts=[{"days": ["sun"], "start": "02:00", "end": "03:00"}],
    )

    opened = calendar.next_open(utc(2026, 10, 25, 0))  # 02:00 CEST

    assert opened == utc(2026, 10, 25, 2)  # 03:00 CET, two hours later


def test_new_york_start_in_spring_gap_moves_to_end_of_gap() -> None:
    calendar = build(timezone="America/New_York", allowed_hours=["02:30-04:00"])

    opened = calendar.next_open(utc(2026, 3, 8, 5))

    assert opened == utc(2026, 3, 8, 7)  # 03:00 EDT


def test_new_york_start_in_fall_overlap_takes_first_occurrence() -> None:
    calendar = build(timezone="America/New_York", allowed_hours=["01:30-05:00"])

    opened = calendar.next_open(utc(2026, 11, 1, 4))

    assert opened == utc(2026, 11, 1, 5, 30)  # 01:30 EDT


def test_new_york_end_in_fall_overlap_takes_second_occurrence() -> None:
    calendar = build(timezone="America/New_York", allowed_hours=["00:00-01:30"])

    assert calendar.is_open(utc(2026, 11, 1, 6, 29))  # 01:29 EST
    assert not calendar.is_open(utc(2026, 11, 1, 6, 30))  # 01:30 EST


def test_new_york_whole_day_on_fall_back_lasts_25_hours() -> None:
    calendar = build(
        timezone="America/New_York", allowed_hours=["00:00-24:00"], allowed_days=["sun"]
    )

    opened = calendar.next_open(utc(2026, 10, 31, 12))

    assert opened == utc(2026, 11, 1, 4)  # 00:00 EDT
    assert calendar.is_open(utc(2026, 11, 2, 4, 59))  # 23:59 EST
    assert not calendar.is_open(utc(2026, 11, 2, 5))  # Monday 00:00 EST


def test_lord_howe_start_in_half_hour_spring_gap_moves_to_end_of_gap() -> None:
    calendar = build(timezone="Australia/Lord_Howe", allowed_hours=["02:15-05:00"])

    opened = calendar.next_open(utc(2026, 10, 3, 12))

    assert opened == utc(2026, 10, 3, 15, 30)  # 02:30 +11:00


def test_lord_howe_start_in_half_hour_fall_overlap_takes_first_occurrence() -> None:
    calendar = build(timezone="Australia/Lord_Howe", allowed_hours=["01:45-05:00"])

    opened = calendar.next_open(utc(2026, 4, 4, 12))

    assert opened == utc(2026, 4, 4, 14, 45)  # 01:45 +11:00


def test_lord_howe_end_in_half_hour_fall_overlap_takes_second_occurrence() -> None:
    calendar = build(timezone="Australia/Lord_Howe", allowed_hours=["00:00-01:45"])

    assert calendar.is_open(utc(2026, 4, 4, 15, 14))  # 01:44 +10:30
    assert not calendar.is_open(utc(2026, 4, 4, 15, 15))  # 01:45 +10:30


# --- properties -------------------------------------------------------------

ZONE_NAMES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
TRANSITIONS = (
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15, 30),
)

any_instant = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2060, 1, 1),
    timezones=st.sampled_from([ZoneInfo(name) for name in ZONE_NAMES]),
)
instant_near_transition = st.builds(
    lambda base, seconds: base + timedelta(seconds=seconds),
    st.sampled_from(TRANSITIONS),
    st.integers(-3 * 86400, 3 * 86400),
)
instants = st.one_of(any_instant, instant_near_transition)

# Quarter hours hit daylight-saving boundaries often; any minute keeps it honest.
minute_of_day = st.one_of(
    st.integers(0, 95).map(lambda quarter: quarter * 15), st.integers(0, 1439)
)


def clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


wall_interval = st.tuples(minute_of_day, minute_of_day | st.just(1440)).filter(
    lambda pair: pair[0] != pair[1]
)
day_lists = st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], datetime]:
    """Draw a valid schedule table and an instant it will be asked about."""
    instant = draw(instants)
    schedule: dict[str, Any] = {"timezone": draw(st.sampled_from(ZONE_NAMES))}

    if draw(st.booleans()):
        intervals = draw(st.lists(wall_interval, min_size=1, max_size=3))
        schedule["allowed_hours"] = [
            f"{clock_text(start)}-{clock_text(end)}" for start, end in intervals
        ]
    if draw(st.booleans()):
        schedule["allowed_days"] = draw(day_lists)

    blackouts: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            start, end = draw(wall_interval)
            blackout: dict[str, Any] = {
                "start": clock_text(start),
                "end": clock_text(end),
            }
            if draw(st.booleans()):
                blackout["days"] = draw(day_lists)
        else:
            # Near the instant, so that next_open has to step over it. Arithmetic
            # in UTC: adding to a zoned datetime moves its wall clock instead.
            start_at = instant.astimezone(UTC) + timedelta(
                minutes=draw(st.integers(-2880, 7200))
            )
            length = timedelta(minutes=draw(st.integers(1, 14400)))
            blackout = {
                "start": start_at.isoformat(),
                "end": (start_at + length).isoformat(),
            }
        blackouts.append(blackout)
    if blackouts:
        schedule["blackouts"] = blackouts

    return schedule, instant


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), fractions=st.lists(st.floats(0, 1), max_size=6))
def test_next_open_is_the_first_open_instant(
    scenario: tuple[dict[str, Any], datetime], fractions: list[float]
) -> None:
    schedule, instant = scenario
    calendar = DeliveryCalendar.from_settings(schedule)
    assume(calendar is not None)
    assert calendar is not None
    # Sample points in UTC: zoned arithmetic and comparison ignore ``fold``.
    start = instant.astimezone(UTC)

    try:
        opened = calendar.next_open(instant)
    except CalendarError as error:
        # Then nothing in the horizon may be open either.
        assert error.key == "schedule"
        horizon = timedelta(days=400)
        for point in [start, *(start + horizon * share for share in fractions)]:
            assert not calendar.is_open(point)
        return

    assert opened >= start
    assert calendar.is_open(opened)
    between = [opened - timedelta(microseconds=1), start]
    between += [start + (opened - start) * share for share in fractions]
    for point in between:
        if start <= point < opened:
            assert not calendar.is_open(point), point


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_next_open_is_idempotent(scenario: tuple[dict[str, Any], datetime]) -> None:
    schedule, instant = scenario
    calendar = DeliveryCalendar.from_settings(schedule)
    assume(calendar is not None)
    assert calendar is not None

    try:
        opened = calendar.next_open(instant)
    except CalendarError:
        return

    assert calendar.next_open(opened) == opened


def wall_clock_contains(
    span: tuple[int, int], days: list[str] | None, local: datetime
) -> bool:
    """Read a wall-clock span the way a person would, ignoring daylight saving."""
    start, end = span
    minute = local.hour * 60 + local.minute + local.second / 60
    today = DAY_NAMES[local.weekday()]
    yesterday = DAY_NAMES[(local.weekday() - 1) % 7]
    on = set(days or DAY_NAMES)
    if end > start:
        return today in on and start <= minute < end
    return (today in on and minute >= start) or (yesterday in on and minute < end)


def read_span(text: str) -> tuple[int, int]:
    start, end = (int(part[:2]) * 60 + int(part[3:]) for part in text.split("-"))
    return start, end


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_is_open_agrees_with_the_wall_clock_away_from_transitions(
    scenario: tuple[dict[str, Any], datetime],
) -> None:
    schedule, instant = scenario
    calendar = DeliveryCalendar.from_settings(schedule)
    assume(calendar is not None)
    assert calendar is not None
    zone = ZoneInfo(schedule["timezone"])
    moment = instant.astimezone(UTC)
    offsets = {
        (moment + timedelta(days=days)).astimezone(zone).utcoffset()
        for days in (-3, 0, 3)
    }
    assume(len(offsets) == 1)
    local = moment.astimezone(zone)
    days = schedule.get("allowed_days")
    hours = schedule.get("allowed_hours", ["00:00-24:00"] if days else [])
    blackouts = schedule.get("blackouts", [])

    allowed = not hours or any(
        wall_clock_contains(read_span(text), days, local) for text in hours
    )
    blacked_out = any(
        wall_clock_contains(
            read_span(f"{entry['start']}-{entry['end']}"), entry.get("days"), local
        )
        if len(entry["start"]) == 5
        else datetime.fromisoformat(entry["start"])
        <= moment
        < datetime.fromisoformat(entry["end"])
        for entry in blackouts
    )

    assert calendar.is_open(instant) == (allowed and not blacked_out)
