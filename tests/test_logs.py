"""
Structured logs: ``--log-format json`` prints one JSON object per line.

The formatter is tested on records made here; then ``cavra api`` and
``cavra worker serve`` run as processes and every line of their standard
error is parsed.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cavra_server.logs import JsonLineFormatter, split_pairs

P = "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
#: A token-shaped secret that no store knows; it must never reach a log line.
UNKNOWN_TOKEN = "cavra_" + "s3cr3t" * 6


def record(name: str, message: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)


def test_pairs_become_typed_fields_and_the_words_the_message() -> None:
    words, fields = split_pairs(
        "worker run finished run_id=wr_1 dry_run=True selected=2 lag=1.5 next=None"
    )

    assert words == "worker run finished"
    assert fields == {
        "run_id": "wr_1",
        "dry_run": True,
        "selected": 2,
        "lag": 1.5,
        "next": None,
    }


def test_a_json_line_has_time_level_logger_message_and_fields() -> None:
    line = JsonLineFormatter().format(
        record(
            "cavra_core.engine",
            "retry plan made retry_plan_id=%s decisions=%d",
            "rp_1",
            3,
        )
    )

    document = json.loads(line)
    assert set(document) == {
        "time",
        "level",
        "logger",
        "message",
        "retry_plan_id",
        "decisions",
    }
    assert (document["level"], document["logger"]) == ("INFO", "cavra_core.engine")
    assert document["message"] == "retry plan made"
    assert (document["retry_plan_id"], document["decisions"]) == ("rp_1", 3)
    assert document["time"].endswith("Z")
    assert datetime.fromisoformat(document["time"].replace("Z", "+00:00"))


def test_a_pair_named_like_a_fixed_field_does_not_replace_it() -> None:
    document = json.loads(
        JsonLineFormatter().format(record("cavra_server.cli", "odd level=debug"))
    )

    assert (document["level"], document["field_level"]) == ("INFO", "debug")


def test_other_libraries_keep_their_message_whole() -> None:
    document = json.loads(
        JsonLineFormatter().format(record("waitress", "task queue depth=3"))
    )

    assert document["message"] == "task queue depth=3"
    assert "depth" not in document


def test_a_traceback_is_one_field_of_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failing = logging.LogRecord(
            "cavra_server.problems",
            logging.ERROR,
            __file__,
            1,
            "failed",
            (),
            sys.exc_info(),
        )

    line = JsonLineFormatter().format(failing)

    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (each must be one)."""
    lines = [line for line in text.splitlines() if line.strip()]
    documents = [json.loads(line) for line in lines]
    for document in documents:
        assert {"time", "level", "logger", "message"} <= set(document)
    return documents


def run_and_stop(process: subprocess.Popen, errors: Path) -> list[dict]:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, errors.read_text()
    return json_lines(errors.read_text())


def cli(home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cavra_server.cli", *arguments],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=60,
    )


def post(url: str, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps({}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.mark.e2e
def test_cavra_api_logs_json_lines_without_the_tokens(sqlite_url, tmp_path) -> None:
    made = cli(
        tmp_path,
        "tokens",
        "create",
        "--role",
        "admin",
        "--name",
        "ops",
        "--database",
        sqlite_url,
        "--create",
    )
    token = made.stdout.strip()
    errors = tmp_path / "api.log"
    with open(errors, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"]
            + ["--log-format", "json", "--database", sqlite_url],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
        base = process.stdout.readline().strip().rsplit(" ", 1)[-1]
        status, run = post(base + P + "/worker-run", token)
        refused, _ = post(base + P + "/worker-run", UNKNOWN_TOKEN)
        documents = run_and_stop(process, errors)
        process.stdout.close()

    assert (made.returncode, status, refused) == (0, 201, 401)
    finished = [d for d in documents if d["message"] == "worker run finished"]
    assert [d["run_id"] for d in finished] == [run["run_id"]]
    assert finished[0]["dry_run"] is True
    assert any(
        d["message"] == "request refused" and d["token"] == "invalid" for d in documents
    )
    assert any(d["message"] == "cavra api stopped" for d in documents)
    text = errors.read_text()
    assert token not in text and UNKNOWN_TOKEN not in text


@pytest.mark.e2e
def test_cavra_worker_serve_logs_json_lines(sqlite_url, tmp_path) -> None:
    errors = tmp_path / "serve.log"
    with open(errors, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "worker", "serve"]
            + ["--every", "1h", "--catch-up", "--log-format", "json"]
            + ["--database", sqlite_url],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=sink,
            text=True,
        )
        assert "cavra worker serving" in process.stdout.readline()
        documents = run_and_stop(process, errors)
        process.stdout.close()

    by_message = {d["message"]: d for d in documents}
    assert by_message["worker service started"]["dry_run"] is True
    finished = by_message["worker run finished"]
    assert (finished["trigger"], finished["logger"]) == (
        "schedule",
        "cavra_core.engine",
    )
    assert by_message["worker service stopped"]["runs"] == 1
    assert any(d["level"] == "WARNING" for d in documents)
