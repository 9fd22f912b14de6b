"""
A third-party connector plugin, packaged, installed and served by ``cavra api``.

The test writes a small connector distribution into a temporary folder (a
``pyproject.toml`` with an entry point in the group ``cavra`` and one module),
installs it into the running virtual environment with pip, starts ``cavra api``
as a child process on a connectors file that uses the plugin's type, and
checks the whole path: a delivery through the HTTP API lands in the plugin's
file, the retry plan follows the plugin's classification table and its
``cavra_classify_failure`` hook, and ``cavra connectors check`` reports the
plugin's probe. The distribution is uninstalled at the end, pass or fail;
its names carry a per-run suffix, so concurrent runs in one venv stay apart.

The venv has setuptools but not the ``wheel`` package that setuptools
releases before 70.1 need to build a wheel, so the distribution carries a
tiny PEP 517 backend of its own (``backend-path``); pip builds and installs
it offline exactly as it would any other. A plugin whose hook name is
misspelt is never installed into the shared venv (every engine started
meanwhile would refuse to start): its distribution metadata is put on the
child's ``PYTHONPATH`` instead, which ``importlib.metadata`` reads the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

PREFIX = (
    "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
)
#: Unique per test run, so that two runs sharing the venv (two engineers, or
#: CI jobs on one machine) never install, find or uninstall each other's copy.
RUN = uuid.uuid4().hex[:8]
DISTRIBUTION = f"cavra-dropfile-test-{RUN}"
MODULE = f"cavra_dropfile_{RUN}"
#: The entry point's name, which is the plugin's name for CAVRA_DISABLED_PLUGINS.
PLUGIN_NAME = f"dropfile-test-{RUN}"
TYPE_NAME = f"dropfile_{RUN}"

PYPROJECT = f"""
[build-system]
requires = []
build-backend = "inline_backend"
backend-path = ["."]

[project]
name = "{DISTRIBUTION}"
version = "0.1.0"
description = "A connector that appends audit packages to a local file"

[project.entry-points.cavra]
{PLUGIN_NAME} = "{MODULE}"
"""

PLUGIN_MODULE = '''
"""A connector that appends each audit package to a JSON-lines file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cavra_core import DeliveryResult, FailureClassification, hookimpl
from cavra_core.types import ConnectorConfigError, ProbeCheck, ProbeResult

SETTINGS = ("path", "fail_with")


class DropFileType:
    name = "@TYPE_NAME@"
    category = "archive"
    classification = {
        "disk_full": "throttle",
        "read_only": "config",
        "http:507": "throttle",
    }
    honours_retry_after = False
    acknowledgement = "none"
    batching = "one JSON line per package"

    def validate_settings(self, connector_id, settings):
        for key in settings:
            if key not in SETTINGS:
                raise ConnectorConfigError(
                    f"{connector_id}.{key}", "is not a setting of this type; remove it"
                )
        path = settings.get("path")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ConnectorConfigError(
                f"{connector_id}.path", "is required: an absolute file path"
            )

    def deliver(self, connector, delivery):
        failure = connector.settings.get("fail_with")
        if failure:
            return DeliveryResult(outcome="failed", error_class=failure)
        line = {
            "event_id": delivery.event_id,
            "lineage_id": delivery.lineage_id,
            "attempt_number": delivery.attempt_number,
            "package": delivery.package,
        }
        try:
            with open(connector.settings["path"], "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line, sort_keys=True) + "\\n")
        except OSError:
            return DeliveryResult(outcome="failed", error_class="read_only")
        return DeliveryResult(outcome="delivered")

    def probe(self, connector):
        folder = Path(connector.settings["path"]).parent
        writable = folder.is_dir() and os.access(folder, os.W_OK)
        detail = (
            "The drop file's folder exists and is writable."
            if writable
            else "The drop file's folder is missing or not writable."
        )
        return ProbeResult(writable, (ProbeCheck("writable", writable, detail),))


@hookimpl
def cavra_register_connector_types():
    return [DropFileType()]


@hookimpl
def cavra_classify_failure(connector, attempt):
    """A used-up quota never clears by itself: permanent, for this type only."""
    if connector.type != "@TYPE_NAME@" or attempt.error_class != "quota_exceeded":
        return None
    return FailureClassification(
        "quota_exceeded", "permanent", False, "the archive quota is used up"
    )
'''

#: A PEP 517 backend small enough to read: one pure-Python wheel, offline.
INLINE_BACKEND = '''
"""Build a pure-Python wheel from pyproject.toml and the top-level modules."""

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    name = project["name"].replace("-", "_")
    dist_info = f"{name}-{project['version']}.dist-info"
    groups = project.get("entry-points", {})
    files = {
        path.name: path.read_bytes()
        for path in sorted(Path(".").glob("*.py"))
        if path.name != "inline_backend.py"
    }
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\\nName: {project['name']}\\n"
        f"Version: {project['version']}\\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: inline_backend\\n"
        b"Root-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    files[f"{dist_info}/entry_points.txt"] = "".join(
        f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in points.items())
        for group, points in groups.items()
    ).encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest())
        record.append(f"{path},sha256={digest.rstrip(b'=').decode()},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\\n".join(record) + "\\n").encode()

    wheel_name = f"{name}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / wheel_name, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return wheel_name
'''

MISSPELT_MODULE = """
from cavra_core import hookimpl


@hookimpl
def cavra_clasify_failure(connector, attempt):
    return None
"""


def _pip(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *arguments],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dropfile distribution, pip-installed for this module's tests."""
    source = tmp_path_factory.mktemp("dropfile-plugin")
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    module = PLUGIN_MODULE.replace("@TYPE_NAME@", TYPE_NAME).lstrip()
    (source / f"{MODULE}.py").write_text(module)
    (source / "inline_backend.py").write_text(INLINE_BACKEND.lstrip())

    try:
        result = _pip(
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            str(source),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        yield DISTRIBUTION
    finally:
        _pip("uninstall", "--yes", "--quiet", DISTRIBUTION)


class Api:
    """A ``cavra api`` child process and a tiny JSON client for it."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env = env
        self.home = home
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"],
            cwd=home,
            env=env,
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

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, self.home, *arguments)

    def stop(self) -> str:
        self.process.terminate()
        try:
            _, errors = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, errors = self.process.communicate()
        return errors


def run_cli(
    env: dict[str, str], home: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cavra_server.cli", *arguments],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def connectors_file(folder: Path) -> Path:
    """Connectors of the plugin's type: one that works, three that fail."""
    drops = folder / "drops"
    drops.mkdir()
    path = folder / "connectors.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [drop-ok]
            type = "{TYPE_NAME}"
            path = "{drops}/evidence.jsonl"

            [drop-full]
            type = "{TYPE_NAME}"
            path = "{drops}/full.jsonl"
            fail_with = "disk_full"

            [drop-quota]
            type = "{TYPE_NAME}"
            path = "{drops}/quota.jsonl"
            fail_with = "quota_exceeded"

            [drop-readonly]
            type = "{TYPE_NAME}"
            path = "{drops}/readonly.jsonl"
            fail_with = "read_only"

            [drop-nowhere]
            type = "{TYPE_NAME}"
            path = "{folder}/no-such-folder/evidence.jsonl"
            """
        )
    )
    return path


def environment(database_url: str, connectors: Path, **extra: str) -> dict[str, str]:
    """The child's environment: this one, without a blocked-plugins list."""
    env = {**os.environ, "CAVRA_DATABASE_URL": database_url}
    env["CAVRA_CONNECTORS"] = str(connectors)
    env.pop("CAVRA_DISABLED_PLUGINS", None)
    env.update(extra)
    return env


def audit_package(drill: str) -> dict[str, Any]:
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
            }
        ],
    }


@pytest.fixture
def api(installed_plugin: str, database_url: str, tmp_path: Path) -> Iterator[Api]:
    running = Api(environment(database_url, connectors_file(tmp_path)), tmp_path)
    yield running
    errors = running.stop()
    assert "Traceback" not in errors, errors


def test_installed_plugin_delivers_plans_and_probes(api: Api, tmp_path: Path) -> None:
    """Deliver through the API, plan with the plugin's classification, probe."""
    package = audit_package("drill-plugin-1")
    connector_ids = ["drop-ok", "drop-full", "drop-quota", "drop-readonly"]

    code, report = api.request(
        "POST",
        PREFIX,
        {"package": package, "connectors": connector_ids, "generated_by": "rm"},
    )

    assert code == 201, report
    outcomes = {
        d["connector_id"]: (d["outcome"], d["error_class"])
        for d in report["deliveries"]
    }
    assert outcomes == {
        "drop-ok": ("delivered", None),
        "drop-full": ("failed", "disk_full"),
        "drop-quota": ("failed", "quota_exceeded"),
        "drop-readonly": ("failed", "read_only"),
    }
    [line] = (tmp_path / "drops" / "evidence.jsonl").read_text().splitlines()
    written = json.loads(line)
    delivered = next(d for d in report["deliveries"] if d["connector_id"] == "drop-ok")
    assert written["package"]["drill_id"] == "drill-plugin-1"
    assert written["event_id"] == written["lineage_id"] == delivered["lineage_id"]
    assert written["attempt_number"] == 1

    code, plan = api.request(
        "POST",
        f"{PREFIX}/retry-plan",
        {
            "generated_by": "rm",
            "retry_policy": {"retry_delay_minutes": 0, "allow_immediate_retry": True},
        },
    )

    assert code == 201, plan
    decisions = {
        d["connector_id"]: (d["action"], d["reason"]) for d in plan["retry_decisions"]
    }
    assert decisions == {
        # The plugin's table: disk_full is throttle, read_only is config.
        "drop-full": ("retry", "retry_due"),
        "drop-readonly": ("wait", "connector_paused"),
        # The plugin's own cavra_classify_failure hook.
        "drop-quota": ("suppress", "permanent_failure"),
    }

    code, listing = api.request("GET", f"{PREFIX}/connectors")

    assert code == 200
    connectors = {c["connector_id"]: c for c in listing["items"]}
    ok = connectors["drop-ok"]
    assert (ok["type"], ok["category"], ok["acknowledgement"]) == (
        TYPE_NAME,
        "archive",
        "none",
    )
    assert (ok["honours_retry_after"], ok["endpoint"]) == (False, None)
    assert connectors["drop-readonly"]["state"] == "paused"
    assert connectors["drop-readonly"]["state_error_class"] == "read_only"
    assert str(tmp_path) not in json.dumps(listing)

    check = api.cli("connectors", "check", "drop-ok", "--json")

    assert check.returncode == 0, check.stderr
    [result] = json.loads(check.stdout)["items"]
    assert result == {
        "connector_id": "drop-ok",
        "ok": True,
        "checks": [
            {
                "name": "writable",
                "ok": True,
                "detail": "The drop file's folder exists and is writable.",
            }
        ],
    }


def test_connectors_check_reports_a_failing_probe(api: Api, tmp_path: Path) -> None:
    """The plugin's failed check is shown per connector, with exit status 1."""
    check = api.cli("connectors", "check")

    assert check.returncode == 1, check.stderr
    assert "drop-ok: ok" in check.stdout
    assert "drop-nowhere: FAILED" in check.stdout
    assert "FAIL writable: The drop file's folder is missing" in check.stdout
    assert str(tmp_path) not in check.stdout


def test_disabled_plugin_makes_its_type_unknown(
    installed_plugin: str, sqlite_url: str, tmp_path: Path
) -> None:
    """CAVRA_DISABLED_PLUGINS=<name> blocks it: cavra api names the type key."""
    env = environment(
        sqlite_url, connectors_file(tmp_path), CAVRA_DISABLED_PLUGINS=PLUGIN_NAME
    )

    result = run_cli(env, tmp_path, "api", "--port", "0")

    assert result.returncode == 2
    assert "drop-ok.type" in result.stderr
    assert "must name an installed connector type" in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelt_hook_stops_cavra_api_naming_plugin_and_hook(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A plugin implementing cavra_clasify_failure cannot start the server."""
    site = tmp_path / "site"
    dist_info = site / "cavra_misspelt_test_plugin-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (site / "cavra_misspelt.py").write_text(MISSPELT_MODULE.lstrip())
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cavra-misspelt-test-plugin\nVersion: 0.1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[cavra]\nmisspelt = cavra_misspelt\n")
    connectors = tmp_path / "connectors.toml"
    connectors.write_text("")
    pythonpath = os.pathsep.join(
        filter(None, [str(site), os.environ.get("PYTHONPATH", "")])
    )
    env = environment(sqlite_url, connectors, PYTHONPATH=pythonpath)

    result = run_cli(env, tmp_path, "api", "--port", "0")

    assert result.returncode == 2
    assert "cavra_misspelt" in result.stderr
    assert "cavra_clasify_failure" in result.stderr
    assert "Traceback" not in result.stderr
