"""
Concurrent writers against one ``cavra api`` process: nothing sent is lost.

Many deliveries, plans, dry runs and playbooks at once used to find SQLite
busy: a transaction that read first and wrote later was refused at once, and
a delivery already sent to the receiver was never recorded. Every answer must
be a success (or a 503 asking to send again), never a 500, and every package
the receiver got must have its attempt recorded. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from receivers import ScriptedReceiver, status

pytestmark = pytest.mark.e2e

P = "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
DELIVERIES = 24


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


@pytest.fixture
def server(database_url: str, tmp_path: Path):
    with ScriptedReceiver(fallback=status(503)) as receiver:
        connectors = tmp_path / "connectors.toml"
        connectors.write_text(
            textwrap.dedent(
                f"""
                [hook-a]
                type = "webhook"
                url = "{receiver.url}/a"

                [hook-b]
                type = "webhook"
                url = "{receiver.url}/b"
                """
            )
        )
        env = {
            **os.environ,
            "CAVRA_DATABASE_URL": database_url,
            "CAVRA_CONNECTORS": str(connectors),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = process.stdout.readline()
        assert "listening on" in line, line
        try:
            yield line.strip().rsplit(" ", 1)[-1], receiver
        finally:
            process.terminate()
            _, errors = process.communicate(timeout=10)
            assert "Traceback" not in errors, errors


def _post(base: str, path: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        base + P + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_concurrent_writes_lose_no_sent_delivery(server) -> None:
    base, receiver = server
    requests = [
        (
            "",
            {
                "package": _package(f"drill-{n}"),
                "connectors": ["hook-a", "hook-b"],
                "generated_by": "rm",
            },
        )
        for n in range(DELIVERIES)
    ]
    requests += [("/retry-plan", {"generated_by": "rm"})] * 6
    requests += [("/worker-run", {"generated_by": "po"})] * 6
    requests += [("/connector-recovery-playbook", {"generated_by": "soc"})] * 4

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda item: _post(base, *item), requests))

    codes = [code for code, _ in answers]
    assert all(code in (201, 503) for code in codes), codes
    delivered = [body for code, body in answers[:DELIVERIES] if code == 201]
    sent = {seen.headers.get("webhook-id") for seen in receiver.requests}
    recorded = {
        item["lineage_id"]
        for report in delivered
        for item in report["deliveries"]
        if item["attempt_id"]
    }
    assert sent <= recorded
    request = urllib.request.Request(base + P + "/attempts?limit=500")
    with urllib.request.urlopen(request, timeout=30) as response:
        stored = {item["lineage_id"] for item in json.load(response)["items"]}
    assert sent <= stored
