"""
``cavra worker serve``: schedules, one scheduled run per window, stopping.

The schedules and the engine's window key are tested in this process; the
service itself runs as real ``cavra worker serve`` processes with windows of
a second or two, alone and two at a time on one store (SQLite and
PostgreSQL), and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from plugins_fixtures import T0, record_failure, rfc3339
from receivers import ScriptedReceiver, delay, status

from cavra_core import Conflict, Engine
from cavra_core.engine import schedule_window_key
from cavra_core.store import WorkerRun
from cavra_server.worker_service import (
    ScheduleError,
    WorkerService,
    cron,
    every,
    interval_minutes,
)

SERVE_TIMEOUT = 30


# -- schedules -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "cadence"),
    [
        ("30m", 1800, "every 30 minutes"),
        ("2s", 2, "every 2 seconds"),
        ("1h", 3600, "every 1 hour"),
        ("1d", 86400, "every 1 day"),
        ("15", 900, "every 15 minutes"),
    ],
)
def test_every_reads_a_number_and_a_unit(text, seconds, cadence) -> None:
    schedule = every(text)

    assert (schedule.seconds, schedule.cadence) == (seconds, cadence)


@pytest.mark.parametrize("text", ["", "0m", "5 minutes", "-1s", "1.5h", "8d"])
def test_every_refuses_what_it_cannot_use(text) -> None:
    with pytest.raises(ScheduleError) as caught:
        every(text)

    assert "--every" in str(caught.value)


def test_every_windows_are_aligned_on_the_epoch() -> None:
    """Services started at different moments agree on the windows."""
    schedule = every("30m")

    window = schedule.window_at(datetime(2026, 12, 3, 18, 47, 12, tzinfo=UTC))

    assert window == (
        datetime(2026, 12, 3, 18, 30, tzinfo=UTC),
        datetime(2026, 12, 3, 19, 0, tzinfo=UTC),
    )


def test_cron_windows_run_from_one_fire_time_to_the_next() -> None:
    schedule = cron("0 */6 * * *")

    inside = schedule.window_at(datetime(2026, 12, 3, 13, 5, tzinfo=UTC))
    on_fire_time = schedule.window_at(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))

    expected = (
        datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 3, 18, 0, tzinfo=UTC),
    )
    assert inside == expected
    assert on_fire_time == expected
    assert interval_minutes(expected) == 360


def test_cron_labels_runs_without_the_characters_run_records_refuse() -> None:
    assert cron("0 */6 * * *").cadence == "cron schedule"
    assert cron("30 2 1 1 0").cadence == "cron 30 2 1 1 0"


def test_cron_refuses_an_expression_it_cannot_read() -> None:
    with pytest.raises(ScheduleError) as caught:
        cron("every tuesday")

    assert "--cron" in str(caught.value)


# -- one scheduled run per window, in the database --------------------------------


def scheduled(**extra: Any) -> dict[str, Any]:
    return {"generated_by": "scheduler", "trigger": "schedule", **extra}


def test_a_window_takes_one_scheduled_run(make_engine) -> None:
    """The second scheduled run of a window is refused by the unique key."""
    engine = make_engine()
    window = (T0, T0 + timedelta(seconds=2))
    first = engine.run_worker(scheduled(), window=window, now=T0)

    with pytest.raises(Conflict) as caught:
        engine.run_worker(scheduled(), window=window, now=T0 + timedelta(seconds=1))

    assert caught.value.problems[0].reason == "scheduled_run_exists"
    assert first["run_id"] in caught.value.detail
    row = WorkerRun.get_by_id(first["run_id"])
    assert row.schedule_window_key == schedule_window_key(*window)
    assert (first["trigger"], first["schedule"]["window_start"]) == (
        "schedule",
        rfc3339(T0),
    )


def test_manual_dry_runs_are_not_limited_by_a_scheduled_run(make_engine) -> None:
    engine = make_engine()
    engine.run_worker(scheduled(), now=T0)

    manual = [engine.run_worker({"generated_by": "po"}, now=T0) for _ in range(2)]

    assert [run["trigger"] for run in manual] == ["manual", "manual"]
    assert WorkerRun.select().count() == 3


def test_the_next_window_takes_its_own_scheduled_run(make_engine) -> None:
    engine = make_engine()
    engine.run_worker(scheduled(), window=(T0, T0 + timedelta(seconds=2)), now=T0)

    later = engine.run_worker(
        scheduled(),
        window=(T0 + timedelta(seconds=2), T0 + timedelta(seconds=4)),
        now=T0 + timedelta(seconds=2),
    )

    assert later["schedule"]["window_start"] == rfc3339(T0 + timedelta(seconds=2))


def test_the_service_skips_a_taken_window_with_one_log_line(
    make_engine, caplog
) -> None:
    engine = make_engine()
    service = WorkerService(
        engine, every("2s"), {"generated_by": "scheduler"}, clock=lambda: T0
    )
    window = every("2s").window_at(T0)
    caplog.set_level(logging.INFO, logger="cavra_server.worker_service")

    recorded = [service.run_window(window), service.run_window(window)]

    assert recorded == [1, 0]
    skipped = [r for r in caplog.records if "scheduled run skipped" in r.message]
    assert len(skipped) == 1
    assert skipped[0].levelno == logging.INFO
    assert "reason=scheduled_run_exists" in skipped[0].getMessage()


# -- the service as a process ------------------------------------------------------


class Serve:
    """One ``cavra worker serve`` process; its log goes to a file."""

    def __init__(self, home: Path, database_url: str, *arguments: str) -> None:
        self.home = home
        self.env = {**os.environ, "CAVRA_DATABASE_URL": database_url}
        self.log_path = home / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "worker", "serve", *arguments],
            cwd=home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.process.stdout.readline()
        if "cavra worker serving" not in line:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"cavra worker serve did not start: {line!r} {self.errors()}"
            )

    def errors(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then the exit status (the process is killed after a timeout)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=SERVE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.process.stdout.close()
            self.log.close()
        return code


def scheduled_runs(home: Path, database_url: str) -> list[dict[str, Any]]:
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cavra_server.cli",
            "worker",
            "runs",
            "--json",
            "--limit",
            "500",
            "--database",
            database_url,
        ],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)["items"]
    return [run for run in runs if run["trigger"] == "schedule"]


def wait_for_runs(home: Path, database_url: str, count: int) -> list[dict]:
    deadline = time.monotonic() + SERVE_TIMEOUT
    while time.monotonic() < deadline:
        runs = scheduled_runs(home, database_url)
        if len(runs) >= count:
            return runs
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} scheduled runs in {SERVE_TIMEOUT}s")


@pytest.mark.e2e
def test_serve_records_a_dry_run_per_window_and_stops_on_sigterm(
    database_url, tmp_path
) -> None:
    service = Serve(tmp_path, database_url, "--every", "1s")

    runs = wait_for_runs(tmp_path, database_url, 2)
    code = service.stop()

    assert code == 0, service.errors()
    assert all(run["dry_run"] for run in runs)
    assert all(run["schedule"]["cadence"] == "every 1 second" for run in runs)
    starts = sorted(run["schedule"]["window_start"] for run in runs)
    assert len(set(starts)) == len(starts)
    for run in runs:
        start = datetime.fromisoformat(run["schedule"]["window_start"])
        end = datetime.fromisoformat(run["schedule"]["window_end"])
        assert end - start == timedelta(seconds=1)
    assert "worker service stopped" in service.errors()


@pytest.mark.e2e
def test_two_services_on_one_store_record_one_run_per_window(
    database_url, tmp_path
) -> None:
    first = Serve(tmp_path, database_url, "--every", "1s")
    second = Serve(tmp_path, database_url, "--every", "1s")

    wait_for_runs(tmp_path, database_url, 4)
    codes = [first.stop(), second.stop()]
    runs = scheduled_runs(tmp_path, database_url)

    assert codes == [0, 0], first.errors() + second.errors()
    windows = [run["schedule"]["window_start"] for run in runs]
    assert len(windows) == len(set(windows)), sorted(windows)
    logs = first.errors() + second.errors()
    assert logs.count("worker run finished") == len(runs)
    assert "scheduled run skipped" in logs
    assert "Traceback" not in logs


@pytest.mark.e2e
def test_missed_windows_are_skipped_unless_catching_up(sqlite_url, tmp_path) -> None:
    """Started mid-window, a service waits for the next window's start."""
    waiting = Serve(tmp_path, sqlite_url, "--every", "1h")
    time.sleep(1)
    assert waiting.stop() == 0
    assert scheduled_runs(tmp_path, sqlite_url) == []

    catching_up = Serve(tmp_path, sqlite_url, "--every", "1h", "--catch-up")
    runs = wait_for_runs(tmp_path, sqlite_url, 1)
    assert catching_up.stop() == 0

    again = Serve(tmp_path, sqlite_url, "--every", "1h", "--catch-up")
    time.sleep(1)
    assert again.stop() == 0
    assert scheduled_runs(tmp_path, sqlite_url) == runs
    assert "scheduled run skipped" in again.errors()


@pytest.mark.e2e
def test_serve_refuses_a_schedule_it_cannot_read(sqlite_url, tmp_path) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "cavra_server.cli", "worker", "serve"]
        + ["--cron", "sometimes", "--database", sqlite_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode == 2
    assert "--cron 'sometimes' is not a cron expression" in started.stderr


@pytest.mark.e2e
def test_sigterm_lets_the_live_run_in_progress_finish(database_url, tmp_path) -> None:
    """Stopped while an approved retry is being sent, the service records it."""
    with ScriptedReceiver() as receiver:
        receiver.enqueue(delay(3, status(204)), path="/hook")
        connectors = tmp_path / "connectors.toml"
        connectors.write_text(
            textwrap.dedent(
                f"""
                [audit-webhook]
                type = "webhook"
                url = "{receiver.url}/hook"
                read_timeout_seconds = 30
                """
            )
        )
        approved_retry_due_now(database_url, connectors)
        service = Serve(
            tmp_path,
            database_url,
            "--every",
            "1s",
            "--execute",
            "--connectors",
            str(connectors),
        )

        receiver.wait_for_requests(1, timeout=SERVE_TIMEOUT)
        code = service.stop()

    assert code == 0, service.errors()
    runs = scheduled_runs(tmp_path, database_url)
    live = [run for run in runs if not run["dry_run"]]
    assert [run["summary"]["executed_count"] for run in live] == [1]
    assert live[0]["selected_retries"][0]["outcome"] == "delivered"
    assert "retry sent" in service.errors()


def approved_retry_due_now(database_url: str, connectors: Path) -> None:
    """A lineage that failed an hour ago, planned and approved by two people."""
    now = datetime.now(UTC)
    with Engine(database_url, connectors) as engine:
        failed_at = now - timedelta(hours=1)
        record_failure(
            engine,
            failed_at,
            connector_id="audit-webhook",
            evidence={
                "drill_id": "drill-serve",
                "generated_at": rfc3339(failed_at - timedelta(minutes=5)),
                "generated_by": "drill-runner",
                "acknowledgements": [
                    {
                        "notification_id": "n-1",
                        "role": "incident commander",
                        "state": "accepted",
                        "acknowledged_at": rfc3339(failed_at - timedelta(minutes=4)),
                    }
                ],
            },
        )
        plan = engine.plan_retries({"generated_by": "rm"}, now=now)
        assert plan["retryable_count"] == 1
        engine.approvals.create(
            plan["retry_plan_id"],
            {
                "approved_by": "po",
                "reason": "receiver is back",
                "all_retry_decisions": True,
            },
            now=now,
        )
