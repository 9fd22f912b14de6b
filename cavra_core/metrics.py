"""
Figures for monitoring, kept in the store so every process sees the same.

Deliveries, decisions and executions are running totals in the ``counter``
table, bumped in the same transaction as the rows they count; durations are
histograms kept the same way, one counter per bucket. A scrape in any process
(``GET /metrics``) therefore reads what every worker and API process did,
before and after restarts.

Counter names, all in the ``counter`` table:

- ``deliveries:{source}:{outcome}:{connector_id}``: recorded attempts;
- ``decisions:{made_by}:{action}:{reason}``: decisions of plans
  (``plan``) and of worker runs (``worker_run``);
- ``histogram:{name}:{series}:bucket:{bound}``, ``...:count`` and
  ``...:sum_us``: observations of a :class:`StoredHistogram`.

Connector ids, sources, actions and reason codes never contain ``:``, so a
name splits back into its labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from cavra_core import store

DELIVERIES = "deliveries:"
DECISIONS = "decisions:"
_HISTOGRAMS = "histogram:"


def count_delivery(source: str, outcome: str, connector_id: str) -> None:
    """Count one recorded attempt (inside the caller's transaction)."""
    store.bump_counters({f"{DELIVERIES}{source}:{outcome}:{connector_id}": 1})


def count_decisions(made_by: str, counts: Mapping[tuple[str, str], int]) -> None:
    """Count decisions by (action, reason) (inside the caller's transaction)."""
    store.bump_counters(
        {
            f"{DECISIONS}{made_by}:{action}:{reason}": value
            for (action, reason), value in counts.items()
        }
    )


def read_family(prefix: str, label_count: int) -> list[tuple[tuple[str, ...], int]]:
    """The counters of one family: their labels, split from the name, and values."""
    found = []
    for name, value in sorted(store.counters_with_prefix(prefix).items()):
        labels = tuple(name[len(prefix) :].split(":", label_count - 1))
        if len(labels) == label_count:
            found.append((labels, value))
    return found


class HistogramReading(NamedTuple):
    """One series of a histogram: cumulative bucket counts, total and sum."""

    #: (upper bound, observations at or below it), ascending, without +Inf.
    buckets: list[tuple[float, int]]
    count: int
    sum: float


@dataclass(frozen=True)
class StoredHistogram:
    """
    A histogram whose buckets are counters in the store.

    Each observation adds one to the smallest bucket that holds it (or to
    none, past the last bound), to the count, and its microseconds to the
    sum; a reading makes the buckets cumulative, as Prometheus has them.
    """

    name: str
    bounds: tuple[float, ...]

    def observe(self, seconds: float, series: str) -> None:
        """Record one observation of ``series`` (inside the caller's transaction)."""
        prefix = f"{_HISTOGRAMS}{self.name}:{series}:"
        changes = {f"{prefix}count": 1, f"{prefix}sum_us": round(seconds * 1e6)}
        bound = next((b for b in self.bounds if seconds <= b), None)
        if bound is not None:
            changes[f"{prefix}bucket:{_bound_text(bound)}"] = 1
        store.bump_counters(changes)

    def read(self) -> dict[str, HistogramReading]:
        """Every series observed so far, by series name."""
        prefix = f"{_HISTOGRAMS}{self.name}:"
        raw: dict[str, dict[str, int]] = {}
        for name, value in store.counters_with_prefix(prefix).items():
            series, _, part = name[len(prefix) :].partition(":")
            raw.setdefault(series, {})[part] = value
        return {series: self._reading(parts) for series, parts in raw.items()}

    def _reading(self, parts: Mapping[str, int]) -> HistogramReading:
        running = 0
        buckets = []
        for bound in self.bounds:
            running += parts.get(f"bucket:{_bound_text(bound)}", 0)
            buckets.append((bound, running))
        return HistogramReading(
            buckets=buckets,
            count=parts.get("count", 0),
            sum=parts.get("sum_us", 0) / 1e6,
        )


def _bound_text(bound: float) -> str:
    return str(int(bound)) if math.isclose(bound, round(bound)) else repr(bound)


#: How long worker runs take, by mode (``dry``, ``live``).
WORKER_RUN_SECONDS = StoredHistogram(
    "worker_run_seconds",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
#: From a decision's ``not_before`` to the start of the live attempt it let go.
CLAIM_LAG_SECONDS = StoredHistogram(
    "claim_lag_seconds",
    (
        1.0,
        5.0,
        15.0,
        30.0,
        60.0,
        300.0,
        900.0,
        1800.0,
        3600.0,
        7200.0,
        21600.0,
        86400.0,
    ),
)
