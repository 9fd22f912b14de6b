"""
Retry policy: the validated numbers behind every decision, and the backoff rule.

A policy is assembled from three layers, later ones winning key by key: the
built-in defaults, the connector's ``retry_policy`` table in the connectors
file, and the ``retry_policy`` of a plan or worker-run request.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any


class PolicyError(ValueError):
    """A retry policy value is out of range; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    """The effective retry policy for one lineage (or a plan's request)."""

    max_retry_attempts: int = 3
    retry_delay_minutes: float = 15
    backoff_multiplier: float = 2.0
    max_delay_minutes: float = 1440
    jitter: float = 0.0
    allow_immediate_retry: bool = False
    max_age_hours: float = 168
    retry_window_hours: float = 24

    def as_document(self) -> dict[str, Any]:
        return asdict(self)

    def merged(self, overrides: Mapping[str, Any] | None) -> RetryPolicy:
        """Return this policy with ``overrides`` applied and validated."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(_LIMITS) - {"allow_immediate_retry"})
        if unknown:
            raise PolicyError(unknown[0], "is not a retry policy setting")
        values = {**asdict(self), **overrides}
        return validate_policy(values)


# (minimum, maximum, integer-only) for every numeric setting.
_LIMITS: dict[str, tuple[float, float, bool]] = {
    "max_retry_attempts": (1, 100, True),
    "retry_delay_minutes": (0, 10080, False),
    "backoff_multiplier": (1, 10, False),
    "max_delay_minutes": (0, 43200, False),
    "jitter": (0, 1, False),
    "max_age_hours": (1, 8760, False),
    "retry_window_hours": (1, 720, False),
}

DEFAULT_POLICY = RetryPolicy()


def validate_policy(values: Mapping[str, Any]) -> RetryPolicy:
    """Check every value of a complete policy mapping and build the policy."""
    checked: dict[str, Any] = {}
    for key, (low, high, integral) in _LIMITS.items():
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PolicyError(key, "must be a number")
        if isinstance(value, int) and not low <= value <= high:
            # Checked before isfinite: a huge integer does not fit a float.
            raise PolicyError(key, f"must be between {low:g} and {high:g}")
        if not math.isfinite(value):
            raise PolicyError(key, "must be a finite number")
        if integral and value != int(value):
            raise PolicyError(key, "must be a whole number")
        if not low <= value <= high:
            raise PolicyError(key, f"must be between {low:g} and {high:g}")
        checked[key] = int(value) if integral else value

    immediate = values["allow_immediate_retry"]
    if not isinstance(immediate, bool):
        raise PolicyError("allow_immediate_retry", "must be true or false")
    # A delay under one second is an immediate retry, and needs the opt-in,
    # whether it comes from the base delay or from the cap.
    for key in ("retry_delay_minutes", "max_delay_minutes"):
        if checked[key] * 60 < 1 and not immediate:
            raise PolicyError(
                key,
                "must be at least one second (1/60 minute); shorter delays are "
                "immediate retries, allowed only with allow_immediate_retry set "
                "to true",
            )
    return replace(DEFAULT_POLICY, allow_immediate_retry=immediate, **checked)


def backoff_delay_seconds(policy: RetryPolicy, attempts: int) -> float:
    """
    The delay before the next retry after ``attempts`` attempts, without jitter.

    ``min(cap, base * multiplier ** (attempts - 1))``, computed in log space
    so that no attempt count can overflow.
    """
    return _backoff(
        policy.retry_delay_minutes,
        policy.backoff_multiplier,
        policy.max_delay_minutes,
        attempts,
    )


@lru_cache(maxsize=4096)
def _backoff(
    delay_minutes: float, multiplier: float, cap_minutes: float, attempts: int
) -> float:
    base = delay_minutes * 60.0
    cap = cap_minutes * 60.0
    if base <= 0 or cap <= 0:
        return 0.0
    exponent = max(attempts - 1, 0)
    if multiplier == 1 or exponent == 0:
        return min(cap, base)
    if exponent * math.log(multiplier) >= math.log(cap / base):
        return cap
    return min(cap, base * multiplier**exponent)


def jitter_fraction(lineage_id: str, attempts: int) -> float:
    """
    A number in [-1, 1) fixed by the lineage and its attempt count.

    Jitter is derived, not random, so that a plan and a later worker run agree
    on the same window and a plan's hash can be recomputed.
    """
    digest = hashlib.sha256(f"{lineage_id}:{attempts}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1.0


def jittered_delay_seconds(policy: RetryPolicy, lineage_id: str, attempts: int) -> int:
    """The backoff delay with the policy's jitter applied, never past the cap."""
    delay = backoff_delay_seconds(policy, attempts)
    if policy.jitter:
        delay *= 1.0 + policy.jitter * jitter_fraction(lineage_id, attempts)
    cap = policy.max_delay_minutes * 60.0
    return int(max(0.0, min(delay, cap)))
