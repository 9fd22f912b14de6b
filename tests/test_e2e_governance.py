"""
The governed flow end to end: a real ``cavra api`` process with API tokens,
a receiver on loopback that fails and then recovers, and the evidence log.

A release manager delivers and plans; a platform owner approves and runs the
worker live. The test walks every rule an auditor relies on: self-approval
refused; stale, expired and revoked approvals not used; one live run per
window; an idempotent POST answered once; the lineage recovered and never
delivered again; a closure citing the delivering execution; the evidence
chain verified, then broken by editing one row and reported at that entry.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from receivers import ScriptedReceiver, status

pytestmark = pytest.mark.e2e

P = "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
#: One window for the whole test: a week, aligned on the epoch.
WEEK = {"interval_minutes": 10080}


def _package(drill: str) -> dict[str, Any]:
    generated = datetime.now(UTC) - timedelta(minutes=5)
    return {
        "drill_id": drill,
        "generated_at": generated.isoformat(),
        "generated_by": "drill-runner",
        "acknowledgements": [
            {
                "notification_id": f"{drill}-n1",
                "role": "incident commander",
                "state": "accepted",
                "acknowledged_at": (generated + timedelta(seconds=30)).isoformat(),
            }
        ],
    }


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Cavra:
    """The command line and one ``cavra api`` process on one store."""

    def __init__(self, database_url: str, connectors: Path, home: Path) -> None:
        self.database_url = database_url
        self.env = {
            **os.environ,
            "CAVRA_DATABASE_URL": database_url,
            "CAVRA_CONNECTORS": str(connectors),
        }
        self.home = home
        self.process: subprocess.Popen[str] | None = None
        self.base = ""

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cavra_server.cli", *arguments],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def token(self, role: str, name: str) -> str:
        made = self.cli("tokens", "create", "--role", role, "--name", name, "--create")
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"],
            cwd=self.home,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.process.kill()
            raise AssertionError(f"cavra api did not start: {line!r}")
        self.base = line.strip().rsplit(" ", 1)[-1]

    def stop(self) -> str:
        assert self.process is not None
        self.process.terminate()
        try:
            _, errors = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        return errors

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if data is not None:
            sent["Content-Type"] = "application/json"
        if token:
            sent["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.base + P + path, data=data, method=method, headers=sent
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.load(error)

    def edit_row(self, sql: str, *parameters: Any) -> int:
        """Change the store behind cavra's back, as a tamperer would."""
        if self.database_url.startswith("sqlite"):
            path = self.database_url[len("sqlite:///") :]
            with sqlite3.connect(path) as connection:
                return connection.execute(sql.replace("%s", "?"), parameters).rowcount
        import psycopg2

        parsed = urlparse(self.database_url)
        connection = psycopg2.connect(
            host=parsed.hostname,
            port=parsed.port,
            user=parsed.username,
            dbname=parsed.path.lstrip("/"),
        )
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(sql, parameters)
                return cursor.rowcount
        finally:
            connection.close()


@pytest.fixture
def receiver():
    with ScriptedReceiver() as running:
        yield running


@pytest.fixture
def cavra(database_url: str, receiver: ScriptedReceiver, tmp_path: Path):
    connectors = tmp_path / "connectors.toml"
    connectors.write_text(
        textwrap.dedent(
            f"""
            [audit-hook]
            type = "webhook"
            url = "{receiver.url}/hook"
            retry_policy = {{ retry_delay_minutes = 0, allow_immediate_retry = true }}
            """
        )
    )
    # The first four deliveries fail; the receiver has recovered after that.
    receiver.enqueue(*[status(503)] * 4, path="/hook")
    running = Cavra(database_url, connectors, tmp_path)
    yield running
    if running.process is not None:
        errors = running.stop()
        assert "Traceback" not in errors, errors


def deliveries_of(receiver: ScriptedReceiver, lineage_id: str) -> int:
    return sum(
        1 for seen in receiver.requests if seen.headers.get("webhook-id") == lineage_id
    )


def test_the_governed_flow_over_http(cavra: Cavra, receiver: ScriptedReceiver) -> None:
    planner = cavra.token("release_manager", "rm-alice")
    approver = cavra.token("platform_owner", "po-bob")
    lead = cavra.token("admin", "admin-carol")
    cavra.start()

    # Without a token nothing is served but health.
    assert cavra.call("GET", "/worker-dashboard")[0] == 401

    # Four deliveries fail with 503: four failed lineages, all due at once.
    lineages = {}
    for drill in ("expired", "revoked", "stale", "fresh"):
        code, _, report = cavra.call(
            "POST",
            "",
            {"package": _package(drill), "connectors": ["audit-hook"]},
            token=planner,
        )
        assert code == 201, report
        assert report["deliveries"][0]["http_status"] == 503
        lineages[drill] = report["deliveries"][0]["lineage_id"]

    code, _, plan = cavra.call(
        "POST", "/retry-plan", {"generated_by": "someone-else"}, token=planner
    )
    assert code == 201, plan
    assert (plan["generated_by"], plan["actor_verified"]) == ("rm-alice", True)
    assert plan["retryable_count"] == 4
    decision_of = {d["lineage_id"]: d["decision_id"] for d in plan["retry_decisions"]}
    approvals_path = f"/retry-plans/{plan['retry_plan_id']}/approvals"

    def approve(drill: str, token: str = approver, **extra: Any):
        body = {
            "decision_ids": [decision_of[lineages[drill]]],
            "reason": f"receiver fixed; retry the {drill} drill",
            "plan_hash": plan["plan_hash"],
            **extra,
        }
        return cavra.call("POST", approvals_path, body, token=token)

    # Self-approval: the planner's role may not approve; an admin who made
    # a plan may not approve that plan (four eyes).
    assert approve("fresh", token=planner)[0] == 403
    _, _, own_plan = cavra.call("POST", "/retry-plan", {}, token=lead)
    code, _, problem = cavra.call(
        "POST",
        f"/retry-plans/{own_plan['retry_plan_id']}/approvals",
        {"all_retry_decisions": True, "reason": "mine"},
        token=lead,
    )
    assert code == 403
    assert problem["errors"][0]["reason"] == "four_eyes"

    # Four approvals, each with its fate.
    soon = _rfc3339(datetime.now(UTC) + timedelta(seconds=2))
    code, _, expiring = approve("expired", expires_at=soon)
    assert code == 201, expiring
    code, _, revoked = approve("revoked")
    assert code == 201
    code, _, stale = approve("stale")
    assert code == 201
    key = {"Idempotency-Key": "approve-fresh-1"}
    code, _, fresh = cavra.call(
        "POST",
        approvals_path,
        {"decision_ids": [decision_of[lineages["fresh"]]], "reason": "go"},
        token=approver,
        headers=key,
    )
    assert code == 201, fresh

    # The same key and body: the first answer again, nothing made twice.
    code, replay_headers, replay = cavra.call(
        "POST",
        approvals_path,
        {"decision_ids": [decision_of[lineages["fresh"]]], "reason": "go"},
        token=approver,
        headers=key,
    )
    assert (code, replay["approval_id"]) == (201, fresh["approval_id"])
    assert replay_headers.get("Idempotent-Replayed") == "true"
    code, _, problem = cavra.call(
        "POST",
        approvals_path,
        {"decision_ids": [decision_of[lineages["fresh"]]], "reason": "other"},
        token=approver,
        headers=key,
    )
    assert code == 422, problem
    _, _, listed = cavra.call(
        "GET", f"/approvals?lineage_id={lineages['fresh']}", token=planner
    )
    assert [a["approval_id"] for a in listed["items"]] == [fresh["approval_id"]]

    code, _, taken_back = cavra.call(
        "POST",
        f"/approvals/{revoked['approval_id']}/revoke",
        {"reason": "the receiver for this drill is still down"},
        token=approver,
    )
    assert (code, taken_back["state"]) == (200, "revoked")

    # A failure observed elsewhere moves the stale lineage on after planning.
    package_id = next(
        d["package_id"]
        for d in plan["retry_decisions"]
        if d["lineage_id"] == lineages["stale"]
    )
    now = datetime.now(UTC)
    code, _, imported = cavra.call(
        "POST",
        "/attempts",
        {
            "attempts": [
                {
                    "package_id": package_id,
                    "connector_id": "audit-hook",
                    "outcome": "failed",
                    "error_class": "http_status",
                    "http_status": 503,
                    "started_at": _rfc3339(now - timedelta(seconds=1)),
                    "finished_at": _rfc3339(now),
                }
            ]
        },
        token=planner,
    )
    assert code == 201, imported

    # A SOC analyst's view of the failing connector, before it recovers.
    code, _, playbook = cavra.call(
        "POST", "/connector-recovery-playbook", {}, token=approver
    )
    assert code == 201, playbook
    assert [item["connector_id"] for item in playbook["items"]] == ["audit-hook"]

    time.sleep(max(0.0, 2.5 - (datetime.now(UTC) - now).total_seconds()))

    # The live run: only the fresh approval is used.
    code, _, run = cavra.call(
        "POST",
        "/worker-run",
        {"dry_run": False, "schedule": WEEK, "max_retry_deliveries": 10},
        token=approver,
    )
    assert code == 201, run
    outcomes = {s["lineage_id"]: s for s in run["selected_retries"]}
    assert outcomes[lineages["fresh"]]["outcome"] == "delivered"
    assert outcomes[lineages["expired"]]["skipped_reason"] == "approval_expired"
    assert outcomes[lineages["revoked"]]["skipped_reason"] == "approval_revoked"
    assert outcomes[lineages["stale"]]["skipped_reason"] == "approval_stale"
    assert run["summary"]["executed_count"] == 1
    assert deliveries_of(receiver, lineages["fresh"]) == 2
    for drill in ("expired", "revoked", "stale"):
        assert deliveries_of(receiver, lineages[drill]) == 1

    # A second live run in the same window is refused, naming the first.
    code, _, problem = cavra.call(
        "POST", "/worker-run", {"dry_run": False, "schedule": WEEK}, token=approver
    )
    assert code == 409
    assert run["run_id"] in problem["detail"]

    # The recovered lineage is never offered again.
    code, _, later_plan = cavra.call("POST", "/retry-plan", {}, token=planner)
    assert lineages["fresh"] not in {
        d["lineage_id"] for d in later_plan["retry_decisions"]
    }
    code, _, dry = cavra.call("POST", "/worker-run", {}, token=approver)
    assert lineages["fresh"] not in {s["lineage_id"] for s in dry["selected_retries"]}
    assert deliveries_of(receiver, lineages["fresh"]) == 2
    code, _, execution = cavra.call(
        "GET", f"/executions/{outcomes[lineages['fresh']]['execution_id']}", token=lead
    )
    assert (execution["outcome"], execution["attempt_number"]) == ("delivered", 2)

    # The connector recovered: a resolved closure must cite the execution.
    closures = f"/connector-recovery-playbooks/{playbook['playbook_id']}/closures"
    code, _, problem = cavra.call(
        "POST",
        closures,
        {"connector_id": "audit-hook", "closure_state": "resolved"},
        token=approver,
    )
    assert code == 422, problem
    code, _, closure = cavra.call(
        "POST",
        closures,
        {
            "connector_id": "audit-hook",
            "closure_state": "resolved",
            "external_ref": "INC-4711",
            "verification_refs": [execution["execution_id"]],
        },
        token=approver,
    )
    assert code == 201, closure
    code, _, dashboard = cavra.call("GET", "/worker-dashboard", token=lead)
    assert dashboard["delivered_retry_count"] == 1

    # The evidence chain holds; an export verifies offline.
    code, _, report = cavra.call("GET", "/evidence/verify", token=lead)
    assert (code, report["intact"]) == (200, True), report
    export = cavra.home / "evidence.jsonl"
    assert cavra.cli("evidence", "export", "--output", str(export)).returncode == 0
    assert cavra.cli("evidence", "verify", str(export)).returncode == 0

    # Editing one row behind cavra's back is found at the entry vouching for it.
    changed = cavra.edit_row(
        "UPDATE approval SET reason = %s WHERE approval_id = %s",
        "approved by nobody in particular",
        fresh["approval_id"],
    )
    assert changed == 1
    _, _, entries = cavra.call(
        "GET", f"/evidence?subject_id={fresh['approval_id']}", token=lead
    )
    [entry] = entries["items"]
    code, _, report = cavra.call("GET", "/evidence/verify", token=lead)
    assert report["intact"] is False
    assert report["first_broken_entry"]["sequence"] == entry["sequence"]
    assert report["first_broken_entry"]["problem"] == "record_modified"
