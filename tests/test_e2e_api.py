"""
End to end: a real ``cavra api`` process, a real receiver, real failures.

The receiver on loopback fails in scripted ways (503 with Retry-After, 429,
400, 410, 401, a read timeout), one connector points at a closed port, and one
receiver answers 204. Packages are delivered over HTTP, a plan is made, the
worker is dry-run, and every decision, window and dashboard figure is checked.
Then the command line reads the same store. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from receivers import ScriptedReceiver, closed_port_url, delay, status

from cavra_core.validation import check_output

pytestmark = pytest.mark.e2e

PREFIX = (
    "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _normal(package: dict[str, Any]) -> dict[str, Any]:
    """The package with its times parsed, to compare spellings of one instant."""
    return {
        **package,
        "generated_at": _time(package["generated_at"]),
        "acknowledgements": [
            {**ack, "acknowledged_at": _time(ack["acknowledged_at"])}
            for ack in package["acknowledgements"]
        ],
    }


def _package(drill: str) -> dict[str, Any]:
    generated = datetime.now(UTC) - timedelta(minutes=5)
    return {
        "drill_id": drill,
        "generated_at": generated.isoformat(),
        "generated_by": "drill-runner",
        "acknowledgements": [
            {
                "notification_id": f"{drill}-n1",
                "role": "incident_commander",
                "state": "accepted",
                "acknowledged_at": (generated + timedelta(seconds=30)).isoformat(),
            },
            {
                "notification_id": f"{drill}-n2",
                "role": "sre oncall",
                "state": "escalated",
                "acknowledged_at": (generated + timedelta(seconds=90)).isoformat(),
            },
        ],
    }


class Api:
    """A ``cavra api`` child process and a tiny JSON client for it."""

    def __init__(self, database_url: str, connectors: Path, home: Path) -> None:
        self.env = {
            **os.environ,
            "CAVRA_DATABASE_URL": database_url,
            "CAVRA_CONNECTORS": str(connectors),
        }
        self.home = home
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"],
            cwd=home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise AssertionError(
                f"cavra api did not start: {line!r} {self.process.stderr.read()}"
            )
        self.base = line.strip().rsplit(" ", 1)[-1]

    def request(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.load(error)

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cavra_server.cli", *arguments],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, errors = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        return errors


@pytest.fixture
def receiver():
    with ScriptedReceiver() as running:
        yield running


@pytest.fixture
def api(database_url: str, receiver: ScriptedReceiver, tmp_path: Path):
    base = receiver.url
    connectors = tmp_path / "connectors.toml"
    connectors.write_text(
        textwrap.dedent(
            f"""
            [siem-busy]
            type = "webhook"
            url = "{base}/busy"

            [siem-throttled]
            type = "webhook"
            url = "{base}/throttled"
            retry_policy = {{ retry_delay_minutes = 0, allow_immediate_retry = true }}

            [hook-bad-request]
            type = "webhook"
            url = "{base}/bad"

            [hook-gone]
            type = "webhook"
            url = "{base}/gone"

            [hook-unauthorized]
            type = "webhook"
            url = "{base}/auth"

            [hook-down]
            type = "webhook"
            url = "{closed_port_url()}/hook"

            [hook-slow]
            type = "webhook"
            url = "{base}/slow"
            read_timeout_seconds = 0.5

            [hook-healthy]
            type = "webhook"
            url = "{base}/ok"
            """
        )
    )
    receiver.enqueue(status(503, {"Retry-After": "3600"}), path="/busy")
    receiver.enqueue(status(429), path="/throttled")
    receiver.enqueue(status(400), path="/bad")
    receiver.enqueue(status(410), path="/gone")
    receiver.enqueue(status(401), path="/auth")
    receiver.enqueue(delay(3, then=status(204)), path="/slow")
    receiver.enqueue(status(204), path="/ok")

    running = Api(database_url, connectors, tmp_path)
    yield running
    errors = running.stop()
    assert "Traceback" not in errors, errors


CONNECTORS = [
    "siem-busy",
    "siem-throttled",
    "hook-bad-request",
    "hook-gone",
    "hook-unauthorized",
    "hook-down",
    "hook-slow",
    "hook-healthy",
]


def test_failed_deliveries_are_planned_and_dry_run_over_http(
    api: Api, receiver: ScriptedReceiver
) -> None:
    """Deliver, plan and dry-run through a real server; check every figure."""
    package = _package("drill-e2e-1")

    code, _, report = api.request(
        "POST",
        PREFIX,
        {"package": package, "connectors": CONNECTORS, "generated_by": "rm"},
    )

    assert code == 201, report
    check_output("delivery_report", report)
    outcomes = {d["connector_id"]: d for d in report["deliveries"]}
    assert {
        k: (v["outcome"], v["http_status"], v["error_class"])
        for k, v in outcomes.items()
    } == {
        "siem-busy": ("failed", 503, "http_status"),
        "siem-throttled": ("failed", 429, "http_status"),
        "hook-bad-request": ("failed", 400, "http_status"),
        "hook-gone": ("failed", 410, "http_status"),
        "hook-unauthorized": ("failed", 401, "http_status"),
        "hook-down": ("failed", None, "connection_refused"),
        "hook-slow": ("failed", None, "timeout"),
        "hook-healthy": ("delivered", 204, None),
    }
    [delivered] = [r for r in receiver.requests if r.path == "/ok"]
    assert _normal(delivered.json) == _normal(package)

    code, _, plan = api.request("POST", f"{PREFIX}/retry-plan", {"generated_by": "rm"})

    assert code == 201, plan
    check_output("retry_plan", plan)
    decisions = {d["connector_id"]: d for d in plan["retry_decisions"]}
    assert "hook-healthy" not in decisions
    assert {k: (v["action"], v["reason"]) for k, v in decisions.items()} == {
        "siem-busy": ("wait", "retry_after_pending"),
        "siem-throttled": ("retry", "retry_due"),
        "hook-bad-request": ("suppress", "permanent_failure"),
        "hook-gone": ("suppress", "receiver_stop"),
        "hook-unauthorized": ("wait", "connector_paused"),
        "hook-down": ("wait", "delay_not_elapsed"),
        "hook-slow": ("wait", "delay_not_elapsed"),
    }
    assert (plan["retryable_count"], plan["waiting_count"]) == (1, 4)
    assert (plan["suppressed_count"], plan["alert_level"]) == (2, "critical")

    busy = decisions["siem-busy"]
    attempts = api.request("GET", f"{PREFIX}/attempts?connector_id=siem-busy")[2]
    failed_at = _time(attempts["items"][0]["finished_at"])
    assert abs(_time(busy["not_before"]) - (failed_at + timedelta(hours=1))) < (
        timedelta(seconds=2)
    )
    assert "3600" in attempts["items"][0]["retry_after"]
    assert _time(busy["not_after"]) == _time(busy["not_before"]) - timedelta(
        seconds=3600
    ) + timedelta(minutes=15) + timedelta(hours=24)
    down = decisions["hook-down"]
    assert down["retry_delay_seconds"] == 900
    assert _time(down["not_after"]) - _time(down["not_before"]) == timedelta(hours=24)
    assert "1 of 3" in down["explanation"]
    assert decisions["hook-unauthorized"]["failed_status_codes"] == [401]

    code, _, run = api.request("POST", f"{PREFIX}/worker-run", {"generated_by": "po"})

    assert code == 201, run
    check_output("worker_run", run)
    assert run["dry_run"] is True
    assert run["summary"] == {
        "retryable_count": 1,
        "waiting_count": 4,
        "suppressed_count": 2,
        "selected_retry_count": 1,
        "executed_count": 0,
        "skipped_count": 0,
    }
    [selected] = run["selected_retries"]
    assert selected["connector_id"] == "siem-throttled"
    assert selected["next_attempt_number"] == 2
    assert len([r for r in receiver.requests if r.path == "/throttled"]) == 1

    code, _, board = api.request("GET", f"{PREFIX}/worker-dashboard")

    assert code == 200
    check_output("dashboard", board)
    assert board["retryable_count"] == 1
    assert board["waiting_count"] == 4
    assert board["suppressed_count"] == 2
    assert (board["run_count"], board["dry_run_count"], board["executed_count"]) == (
        1,
        1,
        0,
    )
    assert board["selected_retry_count"] == 1
    assert board["paused_connector_count"] == 2
    assert board["latest_runs"][0]["run_id"] == run["run_id"]

    code, _, connectors = api.request("GET", f"{PREFIX}/connectors")
    assert code == 200
    states = {c["connector_id"]: c["state"] for c in connectors["items"]}
    assert (states["hook-unauthorized"], states["hook-gone"]) == ("paused", "disabled")
    assert states["hook-healthy"] == "active"

    code, _, runs = api.request("GET", f"{PREFIX}/worker-runs?dry_run=true")
    assert code == 200 and runs["items"][0]["run_id"] == run["run_id"]
    code, _, one = api.request("GET", f"{PREFIX}/worker-runs/{run['run_id']}")
    assert code == 200 and one == run


def test_a_recovery_observed_elsewhere_closes_the_lineage(api: Api) -> None:
    """An imported delivered attempt recovers the lineage; plans skip it after."""
    package = _package("drill-e2e-2")
    _, _, report = api.request(
        "POST",
        PREFIX,
        {"package": package, "connectors": ["hook-down"], "generated_by": "rm"},
    )
    package_id = report["package_id"]
    now = datetime.now(UTC)

    code, _, imported = api.request(
        "POST",
        f"{PREFIX}/attempts",
        {
            "attempts": [
                {
                    "package_id": package_id,
                    "connector_id": "hook-down",
                    "outcome": "delivered",
                    "http_status": 200,
                    "started_at": now.isoformat(),
                    "finished_at": (now + timedelta(milliseconds=40)).isoformat(),
                }
            ]
        },
    )

    assert code == 201, imported
    assert imported["attempts"][0]["lineage_state"] == "recovered"
    assert imported["attempts"][0]["attempt_number"] == 2
    _, _, plan = api.request("POST", f"{PREFIX}/retry-plan", {"generated_by": "rm"})
    assert plan["decision_count"] == 0
    code, _, again = api.request(
        "POST",
        PREFIX,
        {"package": package, "connectors": ["hook-down"], "generated_by": "rm"},
    )
    assert again["deliveries"][0]["skipped_reason"] == "already_recovered"


def test_bad_input_over_http_gets_problem_details_and_changes_nothing(
    api: Api,
) -> None:
    """Bad bodies get 4xx problem+json naming the field; nothing is stored."""
    code, headers, problem = api.request(
        "POST",
        f"{PREFIX}/retry-plan",
        {"generated_by": "rm", "retry_policy": {"jitter": 3}},
    )

    assert code == 400
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["errors"][0]["pointer"] == "/retry_policy/jitter"
    assert api.request("GET", f"{PREFIX}/retry-plans")[2]["items"] == []


def test_the_command_line_reads_the_same_store(api: Api) -> None:
    """cavra plan, worker run, worker runs and dashboard against the same store."""
    api.request(
        "POST",
        PREFIX,
        {
            "package": _package("drill-e2e-3"),
            "connectors": ["siem-throttled", "hook-bad-request"],
            "generated_by": "rm",
        },
    )

    plan = api.cli("plan", "--json", "--generated-by", "release-manager")
    run = api.cli("worker", "run", "--json", "--generated-by", "platform-owner")
    runs = api.cli("worker", "runs")
    board = api.cli("dashboard")

    assert plan.returncode == 0, plan.stderr
    plan_document = json.loads(plan.stdout)
    check_output("retry_plan", plan_document)
    assert plan_document["generated_by"] == "release-manager"
    assert (plan_document["retryable_count"], plan_document["suppressed_count"]) == (
        1,
        1,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["summary"]["selected_retry_count"] == 1
    assert runs.returncode == 0 and "dry" in runs.stdout
    assert board.returncode == 0 and "retryable now" in board.stdout
    assert "alert level: critical" in board.stdout


def test_the_command_line_reports_bad_input_as_a_message(api: Api) -> None:
    """A bad policy value is a readable message and a non-zero exit code."""
    result = api.cli("plan", "--policy", "max_retry_attempts=0")

    assert result.returncode == 2
    assert "max_retry_attempts" in result.stderr
    assert "Traceback" not in result.stderr
