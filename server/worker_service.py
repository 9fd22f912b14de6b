"""
The worker as a service: ``cavra worker serve`` runs it on a schedule.

A schedule cuts time into windows: ``--every 30m`` into 30-minute windows
aligned on the Unix epoch (so every host agrees on them), ``--cron EXPR``
into the spans between the expression's fire times, in UTC. The service runs
the worker once at the start of each window, recorded with trigger
``schedule``. Its run claims the window in the database first (a unique key
on the window's bounds, see :meth:`cavra_core.Engine.run_worker`), so however
many services share a database each window gets one scheduled run; a
service that finds its window taken logs one line and waits for the next.

Windows missed while no service ran, or while a run outlasted its window,
are skipped: the service runs at the next window's start. With catch-up it
first runs once at start, for the window in progress, unless that window has
its run.

A live service (``--execute``) that finds its window taken joins the
window's live run instead: it claims batches of the run's queued retries
under leases, like the run's own worker, until the run is finished or the
window is over (see :mod:`cavra_core.executions`). So N services on one
PostgreSQL share each window's deliveries, and rescue the claims of one that
died.

SIGTERM and SIGINT stop the service: the deliveries in hand are sent and
recorded, the rest of a claimed batch goes back to the queue, a run in
progress records itself, then :meth:`WorkerService.serve` returns.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import peewee
from croniter import croniter

from cavra_core import CavraError, Conflict, Engine, store
from cavra_core.executions import Leases
from cavra_core.store import from_micros, to_micros

log = logging.getLogger(__name__)

#: The largest ``interval_minutes`` a run record takes (a week).
MAX_INTERVAL_MINUTES = 10080
#: The longest one wait lasts before the clock is read again, so that a
#: changed wall clock (a suspended host, a corrected time) is noticed.
LONGEST_WAIT_SECONDS = 30.0
#: The reasons of the Conflict a run gets when its window is taken.
WINDOW_TAKEN = frozenset({"scheduled_run_exists", "live_run_exists"})

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_NAMES = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
# The cadence label of a run record (worker-run.json).
_CADENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _:./-]*")


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message says how to write one."""


class Schedule(Protocol):
    """Cuts time into windows; the worker runs once at each window's start."""

    #: A label for people, recorded with each run (``every 30 minutes``).
    cadence: str

    def window_at(self, moment: datetime) -> tuple[datetime, datetime]:
        """The window holding ``moment``: start (included) and end (excluded)."""
        ...


@dataclass(frozen=True)
class EverySchedule:
    """Windows of a fixed length, aligned on multiples of it since the epoch."""

    seconds: int
    cadence: str

    def window_at(self, moment: datetime) -> tuple[datetime, datetime]:
        width = self.seconds * 1_000_000
        micros = to_micros(moment)
        start = micros - micros % width
        return from_micros(start), from_micros(start + width)


@dataclass(frozen=True)
class CronSchedule:
    """Windows between consecutive fire times of a cron expression, in UTC."""

    expression: str
    cadence: str

    def window_at(self, moment: datetime) -> tuple[datetime, datetime]:
        moment = moment.astimezone(UTC)
        end = croniter(self.expression, moment).get_next(datetime)
        start = croniter(self.expression, end).get_prev(datetime)
        return start.astimezone(UTC), end.astimezone(UTC)


def every(text: str) -> EverySchedule:
    """
    The schedule of ``--every``: a whole number and a unit, ``30m``, ``2s``.

    Units are ``s``, ``m``, ``h`` and ``d``; a bare number counts minutes,
    as ``cavra worker run --interval`` does.
    """
    cleaned = text.strip().lower()
    if cleaned.isdigit():
        cleaned += "m"
    match = _DURATION.fullmatch(cleaned)
    if match is None or int(match.group(1)) < 1:
        raise ScheduleError(
            f"--every {text!r} is not a duration: write a whole number and a "
            "unit, e.g. 30m, 1h, 2s or 1d"
        )
    count, unit = int(match.group(1)), match.group(2)
    seconds = count * _UNIT_SECONDS[unit]
    if seconds > MAX_INTERVAL_MINUTES * 60:
        raise ScheduleError(f"--every {text!r} is longer than a week, the longest")
    name = _UNIT_NAMES[unit] + ("s" if count != 1 else "")
    return EverySchedule(seconds, f"every {count} {name}")


def cron(expression: str) -> CronSchedule:
    """The schedule of ``--cron``: five fields (or six, seconds last), in UTC."""
    cleaned = " ".join(expression.split())
    if not croniter.is_valid(cleaned):
        raise ScheduleError(
            f"--cron {expression!r} is not a cron expression: write five "
            "fields, minute hour day-of-month month day-of-week, e.g. "
            "'*/15 * * * *' (times are UTC)"
        )
    label = f"cron {cleaned}"
    if len(label) > 64 or not _CADENCE.fullmatch(label):
        # Run records take a plain label; cron's * and , are not allowed there.
        label = "cron schedule"
    return CronSchedule(cleaned, label)


def interval_minutes(window: tuple[datetime, datetime]) -> int:
    """A window's length in whole minutes, rounded up, as run records keep it."""
    seconds = (window[1] - window[0]).total_seconds()
    return min(MAX_INTERVAL_MINUTES, max(1, math.ceil(seconds / 60)))


class WorkerService:
    """
    Run the worker at the start of every window of ``schedule`` until stopped.

    Args:
        engine: the open engine; its database is connected for each run and
            closed after, so an idle service holds no connection.
        schedule: the windows.
        request: the worker-run request of every run (``dry_run``,
            ``max_retry_deliveries``, ``retry_policy``, ``generated_by``);
            the service adds the trigger and the schedule.
        catch_up: run once at start for the window in progress.
        clock: the current time (aware); tests pass their own.
        leases: how live runs claim queued retries (worker id, lease, batch).
        max_deliveries: the most retries each live run queues (1 to 10,000),
            in place of the request's ``max_retry_deliveries``.
    """

    def __init__(
        self,
        engine: Engine,
        schedule: Schedule,
        request: Mapping[str, Any],
        *,
        catch_up: bool = False,
        clock: Callable[[], datetime] | None = None,
        leases: Leases | None = None,
        max_deliveries: int | None = None,
    ) -> None:
        self.engine = engine
        self.schedule = schedule
        self.request = dict(request)
        self.catch_up = catch_up
        self.clock = clock or (lambda: datetime.now(UTC))
        self.leases = leases or Leases()
        self.max_deliveries = max_deliveries
        self.live = not self.request.get("dry_run", True)
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Ask the service to stop once the run in progress, if any, is recorded."""
        self.stopping.set()

    def serve(self, ready: Callable[[], None] | None = None) -> int:
        """
        Run until :meth:`stop` (or SIGTERM, SIGINT); return the runs recorded.

        ``ready`` is called once the signals are handled, so that a stop sent
        as soon as it reports is a clean one.
        """
        recorded = 0
        with self._stop_on_signals():
            if ready is not None:
                ready()
            now = self.clock()
            if self.catch_up:
                window = self.schedule.window_at(now)
                log.info("catching up window_start=%s", _iso(window[0]))
                recorded += self.run_window(window)
            next_start = self.schedule.window_at(now)[1]
            while self._wait_until(next_start):
                window = self.schedule.window_at(self.clock())
                recorded += self.run_window(window)
                # Windows that passed while the run went on are skipped.
                next_start = max(window[1], self.schedule.window_at(self.clock())[1])
        log.info("worker service stopped runs=%d", recorded)
        return recorded

    def run_window(self, window: tuple[datetime, datetime]) -> int:
        """Run the worker for ``window``; 1 when a run was recorded, else 0."""
        request = {
            **self.request,
            "trigger": "schedule",
            "schedule": {
                "interval_minutes": interval_minutes(window),
                "cadence": self.schedule.cadence,
            },
        }
        try:
            with store.connected(self.engine.database):
                self.engine.run_worker(
                    request,
                    window=window,
                    leases=self.leases,
                    max_deliveries=self.max_deliveries,
                    stop=self.stopping.is_set,
                )
        except (CavraError, peewee.PeeweeException) as error:
            taken = sorted(
                {problem.reason for problem in getattr(error, "problems", [])}
                & WINDOW_TAKEN
            )
            if isinstance(error, Conflict) and taken:
                log.info(
                    "scheduled run skipped window_start=%s reason=%s",
                    _iso(window[0]),
                    taken[0],
                )
                if self.live:
                    self.join_window(window)
                return 0
            # The next window tries again: a database that is back by then,
            # a connector fixed meanwhile. Only the error's kind is logged;
            # a driver's message may name hosts and users.
            log.error(
                "scheduled run failed window_start=%s error=%s",
                _iso(window[0]),
                type(error).__name__,
            )
            return 0
        return 1

    def join_window(self, window: tuple[datetime, datetime]) -> int:
        """
        Help send the queued retries of the live run that owns ``window``.

        Claims batches until that run is finished or the window is over
        (whichever comes first), rescuing expired claims on the way; the
        number of retries this service sent.
        """
        engine = self.engine
        actor = engine.actor_of(self.request, None)
        try:
            with store.connected(engine.database):
                run_id = engine.window_run_id(window)

                def finished() -> bool:
                    # The run is done when its owner recorded it and none of
                    # its retries is left queued or claimed (a dead worker's
                    # claims are rescued once their lease runs out).
                    return (
                        self.clock() >= window[1]
                        or run_id is None
                        or (
                            engine.run_state(run_id) != "running"
                            and not engine.executions.pending(run_id)
                        )
                    )

                sent = engine.executions.work(
                    self.leases,
                    actor,
                    until=finished,
                    stop=self.stopping.is_set,
                )
        except (CavraError, peewee.PeeweeException) as error:
            log.error(
                "joining the window's run failed window_start=%s error=%s",
                _iso(window[0]),
                type(error).__name__,
            )
            return 0
        log.info(
            "joined window's run window_start=%s run_id=%s sent=%d",
            _iso(window[0]),
            run_id,
            sent,
        )
        return sent

    def rescue(self) -> int:
        """
        Send what is left in the queue and what dead workers held, now.

        A live service does this between windows, every lease, so a claim
        whose worker died is rescued one lease after it ran out, not at the
        next window; the number sent.
        """
        engine = self.engine
        try:
            with store.connected(engine.database):
                return engine.executions.work(
                    self.leases,
                    engine.actor_of(self.request, None),
                    stop=self.stopping.is_set,
                )
        except (CavraError, peewee.PeeweeException) as error:
            log.error("rescuing claims failed error=%s", type(error).__name__)
            return 0

    def _wait_until(self, moment: datetime) -> bool:
        """
        Sleep until ``moment``; False when asked to stop first.

        A live service looks for expired claims and leftovers every lease
        while it waits (see :meth:`rescue`).
        """
        every = self.leases.lease_seconds
        next_rescue = self.clock() + timedelta(seconds=every)
        while not self.stopping.is_set():
            now = self.clock()
            remaining = (moment - now).total_seconds()
            if remaining <= 0:
                return True
            if self.live and now >= next_rescue:
                self.rescue()
                next_rescue = self.clock() + timedelta(seconds=every)
                continue
            wait = min(remaining, LONGEST_WAIT_SECONDS)
            if self.live:
                wait = min(wait, max(0.0, (next_rescue - now).total_seconds()))
            self.stopping.wait(wait)
        return False

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT call :meth:`stop` (from the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            number: signal.signal(number, lambda *_: self.stop())
            for number in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
