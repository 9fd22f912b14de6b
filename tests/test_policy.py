"""The retry policy: validation of every setting, backoff and jitter."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cavra_core.policy import (
    DEFAULT_POLICY,
    PolicyError,
    RetryPolicy,
    backoff_delay_seconds,
    jitter_fraction,
    jittered_delay_seconds,
)

#: (key, lowest accepted, highest accepted) for every numeric setting.
RANGES = [
    ("max_retry_attempts", 1, 100),
    ("retry_delay_minutes", 0, 10080),
    ("backoff_multiplier", 1, 10),
    ("max_delay_minutes", 0, 43200),
    ("jitter", 0, 1),
    ("max_age_hours", 1, 8760),
    ("retry_window_hours", 1, 720),
]
KEYS = [key for key, _, _ in RANGES]
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)

policies = st.builds(
    RetryPolicy,
    retry_delay_minutes=st.floats(min_value=0.5, max_value=10080),
    backoff_multiplier=st.floats(min_value=1, max_value=10),
    max_delay_minutes=st.floats(min_value=0.5, max_value=43200),
    jitter=st.floats(min_value=0, max_value=1),
)
attempt_counts = st.integers(min_value=0, max_value=10**9)
lineage_ids = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32).map(
    lambda digits: f"lin_{digits}"
)


def policy_error(overrides: dict) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        DEFAULT_POLICY.merged(overrides)
    return caught.value


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(("key", "low", "high"), RANGES)
def test_value_below_the_range_is_refused_naming_the_key(key, low, high) -> None:
    """One below the lowest accepted value is refused, and the error names the key."""
    overrides = {key: low - 1, "allow_immediate_retry": True}

    error = policy_error(overrides)

    assert error.key == key
    assert "between" in error.message


@pytest.mark.parametrize(("key", "low", "high"), RANGES)
def test_value_above_the_range_is_refused_naming_the_key(key, low, high) -> None:
    """Just above the highest accepted value is refused, naming the key."""
    overrides = {key: high + 0.5}

    error = policy_error(overrides)

    assert error.key == key
    assert str(error).startswith(f"{key}:")


@pytest.mark.parametrize(("key", "low", "high"), RANGES)
def test_both_ends_of_every_range_are_accepted(key, low, high) -> None:
    """The range is inclusive at both ends."""
    immediate = {"allow_immediate_retry": True}

    lowest = DEFAULT_POLICY.merged({key: low, **immediate})
    highest = DEFAULT_POLICY.merged({key: high, **immediate})

    assert getattr(lowest, key) == low
    assert getattr(highest, key) == high


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_naming_the_key(key, value) -> None:
    """Non-finite numbers never reach the backoff arithmetic."""
    error = policy_error({key: value})

    assert error.key == key
    assert "finite" in error.message


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", [True, False, "5", None, [3]])
def test_booleans_and_non_numbers_are_refused_as_numbers(key, value) -> None:
    """A bool is not a number here, even though Python treats it as an int."""
    error = policy_error({key: value})

    assert error.key == key
    assert error.message == "must be a number"


def test_an_integer_too_large_for_a_float_is_refused_naming_the_key() -> None:
    """Embedding callers may pass any int; a huge one is a policy error too."""
    error = policy_error({"max_age_hours": 10**400})

    assert error.key == "max_age_hours"


def test_fractional_attempt_limit_is_refused() -> None:
    """max_retry_attempts counts attempts, so it must be whole."""
    error = policy_error({"max_retry_attempts": 2.5})

    assert error.key == "max_retry_attempts"
    assert "whole" in error.message


def test_whole_float_attempt_limit_becomes_an_int() -> None:
    """3.0 is accepted as 3."""
    policy = DEFAULT_POLICY.merged({"max_retry_attempts": 3.0})

    assert policy.max_retry_attempts == 3
    assert isinstance(policy.max_retry_attempts, int)


def test_zero_delay_is_refused_without_allow_immediate_retry() -> None:
    """An immediate retry is a deliberate choice, never a typo."""
    error = policy_error({"retry_delay_minutes": 0})

    assert error.key == "retry_delay_minutes"
    assert "allow_immediate_retry" in error.message


def test_zero_delay_is_accepted_with_allow_immediate_retry() -> None:
    """With the opt-in, a zero delay gives a zero backoff."""
    policy = DEFAULT_POLICY.merged(
        {"retry_delay_minutes": 0, "allow_immediate_retry": True}
    )

    assert backoff_delay_seconds(policy, 3) == 0


def test_zero_cap_is_refused_without_allow_immediate_retry() -> None:
    """A zero cap is a zero delay, so it needs the same opt-in."""
    error = policy_error({"max_delay_minutes": 0})

    assert error.key == "max_delay_minutes"


@pytest.mark.parametrize("value", ["true", 1, 0, None])
def test_allow_immediate_retry_must_be_a_boolean(value) -> None:
    """Only true or false switch immediate retries."""
    error = policy_error({"allow_immediate_retry": value})

    assert error.key == "allow_immediate_retry"


def test_unknown_setting_is_refused_naming_it() -> None:
    """A misspelt setting is an error, not silently ignored."""
    error = policy_error({"max_retries": 4})

    assert error.key == "max_retries"


def test_later_layer_wins_key_by_key() -> None:
    """Merging keeps the keys an override does not name."""
    connector = DEFAULT_POLICY.merged({"max_retry_attempts": 5, "jitter": 0.1})

    request = connector.merged({"jitter": 0.2})

    assert request.max_retry_attempts == 5
    assert request.jitter == 0.2
    assert request.retry_delay_minutes == DEFAULT_POLICY.retry_delay_minutes


# -- backoff ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        (0, 900),
        (1, 900),
        (2, 1800),
        (3, 3600),
        (4, 7200),
        (7, 57600),
        (8, 86400),
        (50, 86400),
    ],
)
def test_backoff_doubles_from_the_base_up_to_the_cap(attempts, expected) -> None:
    """delay = min(cap, base * multiplier ** (attempts - 1)) for the defaults."""
    policy = DEFAULT_POLICY

    delay = backoff_delay_seconds(policy, attempts)

    assert delay == expected


def test_backoff_with_multiplier_one_stays_at_the_base() -> None:
    """No growth with a multiplier of 1."""
    policy = DEFAULT_POLICY.merged({"backoff_multiplier": 1})

    delays = [backoff_delay_seconds(policy, n) for n in (1, 10, 10**9)]

    assert delays == [900, 900, 900]


def test_backoff_base_above_the_cap_is_capped() -> None:
    """The cap holds even for the first retry."""
    policy = DEFAULT_POLICY.merged(
        {"retry_delay_minutes": 120, "max_delay_minutes": 60}
    )

    delay = backoff_delay_seconds(policy, 1)

    assert delay == 3600


@PROPERTY_SETTINGS
@given(policy=policies, attempts=attempt_counts)
def test_backoff_never_overflows_and_stays_within_the_cap(policy, attempts) -> None:
    """Any attempt count up to 10**9 and any multiplier give a finite delay."""
    delay = backoff_delay_seconds(policy, attempts)

    assert math.isfinite(delay)
    assert 0 <= delay <= policy.max_delay_minutes * 60


@PROPERTY_SETTINGS
@given(policy=policies, attempts=attempt_counts, more=st.integers(1, 10**6))
def test_backoff_never_shrinks_as_attempts_grow(policy, attempts, more) -> None:
    """The delay is monotonic non-decreasing in the attempt count."""
    earlier = backoff_delay_seconds(policy, attempts)

    later = backoff_delay_seconds(policy, attempts + more)

    assert later >= earlier


@PROPERTY_SETTINGS
@given(
    policy=policies,
    attempts=st.integers(min_value=1, max_value=60),
    lineage_id=lineage_ids,
)
def test_jitter_stays_within_its_fraction_and_under_the_cap(
    policy, attempts, lineage_id
) -> None:
    """Jitter moves the delay by at most ±jitter of it and never past the cap."""
    base = backoff_delay_seconds(policy, attempts)
    cap = policy.max_delay_minutes * 60

    delay = jittered_delay_seconds(policy, lineage_id, attempts)

    assert delay <= cap
    assert base * (1 - policy.jitter) - 1 <= delay <= base * (1 + policy.jitter)


@PROPERTY_SETTINGS
@given(lineage_id=lineage_ids, attempts=attempt_counts)
def test_jitter_fraction_lies_in_minus_one_to_one(lineage_id, attempts) -> None:
    """The derived fraction is in [-1, 1)."""
    fraction = jitter_fraction(lineage_id, attempts)

    assert -1 <= fraction < 1


def test_jitter_is_the_same_for_the_same_lineage_and_attempt() -> None:
    """A plan and a later worker run agree on the jittered delay."""
    policy = DEFAULT_POLICY.merged({"jitter": 0.5})

    first = jittered_delay_seconds(policy, "lin_" + "a" * 32, 2)
    again = jittered_delay_seconds(policy, "lin_" + "a" * 32, 2)

    assert first == again


def test_jitter_differs_between_lineages_and_attempts() -> None:
    """Jitter spreads retries: other lineages and attempts get other delays."""
    policy = DEFAULT_POLICY.merged({"jitter": 0.5, "backoff_multiplier": 1})
    lineages = [f"lin_{index:032x}" for index in range(20)]

    by_lineage = {jittered_delay_seconds(policy, lin, 2) for lin in lineages}
    by_attempt = {jittered_delay_seconds(policy, lineages[0], n) for n in range(20)}

    assert len(by_lineage) > 10
    assert len(by_attempt) > 10


def test_zero_jitter_leaves_the_delay_as_computed() -> None:
    """Without jitter the jittered delay is the backoff, in whole seconds."""
    policy = DEFAULT_POLICY

    delay = jittered_delay_seconds(policy, "lin_" + "b" * 32, 3)

    assert delay == 3600
