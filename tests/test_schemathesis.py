"""
Property-based API tests: schemathesis against a real ``cavra api`` process.

The server runs as a child process on an SQLite store in a temporary folder,
with two webhook connectors: one pointing at a loopback receiver that answers
204, one at a closed port. The store is seeded first (a delivered and a
failed lineage, a plan, a dry run), so lists and stored documents have
content. Schemathesis then loads ``/openapi.json`` over HTTP and every
operation gets three sets of generated requests:

* schemathesis's *coverage* cases: boundary values, missing, wrong-typed and
  unknown fields and parameters, and methods the path does not take;
* Hypothesis fuzzing with schema-valid data (``GenerationMode.POSITIVE``);
* Hypothesis fuzzing with schema-breaking data (``GenerationMode.NEGATIVE``).

Every answer is checked with schemathesis's own checks (:data:`CHECKS`): no
500 whatever was sent (``not_a_server_error``; every operation documents a
500, so status conformance alone would let one pass), a documented status,
a documented media type, a body that validates against the documented schema
for that status, documented headers, and 405 with ``Allow`` for methods the
path does not take.

Refusals the schemas cannot express (a cursor this list did not issue,
``until`` not later than ``since``, a policy that cannot be applied, a string
the redaction guard refuses, an unknown connector) are documented 400s and
422s, so they pass every check.

Generation is deterministic (``derandomize``, no example database) and bounded
per operation, so a run is repeatable; the module takes about a minute on two
cores.

NOTE(tests): ``schemathesis.pytest.from_fixture`` (the loader for a schema
that only exists once a fixture has started the server) fails under pytest
9.2 (``'Function' object has no attribute '_nodeid'``, schemathesis 4.32.5),
so the schema is loaded with ``schemathesis.openapi.from_url`` in a fixture
and its cases are generated with ``APIOperation.as_strategy`` (documented for
use with ``@given``) and ``iter_coverage_cases``, one subtest per operation
and source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from receivers import ScriptedReceiver, closed_port_url
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

pytestmark = pytest.mark.e2e

PREFIX = (
    "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
)
#: Hypothesis examples per operation and generation mode.
MAX_EXAMPLES = 30
SEED = 20261203
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
    allow_header_conformance,
]
#: The operations of the API; the served document must describe all of them.
OPERATION_COUNT = 32
_LISTED_FAILURES = 5


class Server:
    """A ``cavra api`` child process on an ephemeral port, its log in a file."""

    def __init__(self, home: Path, connectors: Path) -> None:
        env = {
            **os.environ,
            "CAVRA_DATABASE_URL": f"sqlite:///{home}/cavra.db",
            "CAVRA_CONNECTORS": str(connectors),
        }
        env.pop("CAVRA_LOG_LEVEL", None)
        self.log_path = home / "server.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cavra_server.cli", "api", "--port", "0"],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise AssertionError(
                f"cavra api did not start: {line!r} {self.log_path.read_text()}"
            )
        self.base = line.strip().rsplit(" ", 1)[-1]
        self.seeded: dict[str, str] = {}

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def stop(self) -> str:
        """Stop the server; what it logged."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self._log.close()
        return self.log_path.read_text()


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
            }
        ],
    }


def _start_server(home: Path, receiver: ScriptedReceiver) -> Server:
    connectors = home / "connectors.toml"
    connectors.write_text(
        textwrap.dedent(
            f"""
            [hook-ok]
            type = "webhook"
            url = "{receiver.url}/ok"
            connect_timeout_seconds = 2
            read_timeout_seconds = 2

            [hook-down]
            type = "webhook"
            url = "{closed_port_url()}/hook"
            connect_timeout_seconds = 1
            """
        )
    )
    return Server(home, connectors)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A seeded server: one delivered and one failed lineage, a plan, a run."""
    with ScriptedReceiver() as receiver:
        running = _start_server(tmp_path_factory.mktemp("schemathesis"), receiver)
        try:
            code, report = running.post(
                PREFIX,
                {
                    "package": _package("drill-schemathesis"),
                    "connectors": ["hook-ok", "hook-down"],
                    "generated_by": "release-manager",
                },
            )
            assert code == 201, report
            code, plan = running.post(f"{PREFIX}/retry-plan", {"generated_by": "rm"})
            assert code == 201, plan
            code, run = running.post(f"{PREFIX}/worker-run", {"generated_by": "po"})
            assert code == 201, run
            running.seeded = {
                "retry_plan_id": plan["retry_plan_id"],
                "run_id": run["run_id"],
                "connector_id": "hook-down",
            }
            yield running
        finally:
            log = running.stop()
    # A 500 fails a check already; a traceback logged anywhere else (a
    # connection that would not close, say) is a defect too.
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "request-timeout": 30,
        }
    )
    return schemathesis.openapi.from_url(
        f"{server.base}/openapi.json", config=config, timeout=30
    )


def _operations(api_schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    # ok() raises for an operation schemathesis cannot read: a broken document.
    return [result.ok() for result in api_schema.get_all_operations()]


def _describe(error: BaseException) -> str:
    failures = error.exceptions if isinstance(error, BaseExceptionGroup) else [error]
    return "\n".join(
        f"  {getattr(f, 'title', type(f).__name__)}: {getattr(f, 'message', f)}"
        for f in failures
    )


def _call(case: schemathesis.Case, base_url: str) -> None:
    """Send ``case`` and run :data:`CHECKS`; AssertionError naming the failures."""
    response = case.call(base_url=base_url, timeout=30)

    try:
        case.validate_response(
            response, checks=CHECKS, transport_kwargs={"base_url": base_url}
        )
    except (AssertionError, BaseExceptionGroup) as error:
        raise AssertionError(
            f"{case.as_curl_command(base_url=base_url)}\n"
            f"  answered {response.status_code}: {response.text[:300]}\n"
            f"{_describe(error)}"
        ) from None


def _run_coverage_cases(
    api_schema: schemathesis.BaseSchema,
    operation: schemathesis.APIOperation,
    base_url: str,
) -> None:
    failures = []
    cases = api_schema.iter_coverage_cases(
        operation,
        generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        generation_config=api_schema.config.generation_for(
            operation=operation, phase="coverage"
        ),
    )
    for case in cases:
        try:
            _call(case, base_url)
        except AssertionError as error:
            failures.append(str(error))
    assert not failures, (
        f"{len(failures)} coverage cases failed, the first ones:\n"
        + "\n\n".join(failures[:_LISTED_FAILURES])
    )


def _run_fuzzing(
    operation: schemathesis.APIOperation, mode: GenerationMode, base_url: str
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        _call(case, base_url)

    fuzz()


def _fuzzing_modes(operation: schemathesis.APIOperation) -> list[GenerationMode]:
    """Both modes, or positive only where there is no input to break."""
    has_input = len(operation.body) or next(operation.iter_parameters(), None)
    if has_input:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def test_the_served_document_describes_every_operation(
    api_schema: schemathesis.BaseSchema,
) -> None:
    """Schemathesis reads every operation of /openapi.json, none broken."""
    operations = _operations(api_schema)

    labels = {operation.label for operation in operations}

    assert len(labels) == OPERATION_COUNT, sorted(labels)
    assert f"POST {PREFIX}/worker-run" in labels


def test_generated_requests_get_documented_answers_and_never_a_500(
    api_schema: schemathesis.BaseSchema,
    server: Server,
    subtests: pytest.Subtests,
) -> None:
    """Coverage and fuzzed cases, valid and invalid, on every operation."""
    for operation in _operations(api_schema):
        with subtests.test(operation=operation.label, source="coverage"):
            _run_coverage_cases(api_schema, operation, server.base)
        for mode in _fuzzing_modes(operation):
            with subtests.test(operation=operation.label, source=f"fuzz-{mode}"):
                _run_fuzzing(operation, mode, server.base)


def test_stored_documents_conform_to_their_schemas(
    api_schema: schemathesis.BaseSchema, server: Server
) -> None:
    """Each stored plan, run and connector read by id, and a second page."""
    ids = server.seeded
    by_id = {
        f"{PREFIX}/retry-plans/{{retry_plan_id}}": {
            "retry_plan_id": ids["retry_plan_id"]
        },
        f"{PREFIX}/worker-runs/{{run_id}}": {"run_id": ids["run_id"]},
        f"{PREFIX}/connectors/{{connector_id}}": {"connector_id": ids["connector_id"]},
    }

    for path, parameters in by_id.items():
        case = api_schema[path]["GET"].Case(path_parameters=parameters)
        response = case.call_and_validate(base_url=server.base, checks=CHECKS)
        assert response.status_code == 200, response.text
    listing = api_schema[f"{PREFIX}/attempts"]["GET"]
    first = listing.Case(query={"limit": "1"}).call_and_validate(
        base_url=server.base, checks=CHECKS
    )
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    second = listing.Case(query={"limit": "1", "cursor": cursor}).call_and_validate(
        base_url=server.base, checks=CHECKS
    )
    assert second.status_code == 200
    assert second.json()["items"] != first.json()["items"]


def test_an_unknown_query_parameter_with_a_dash_is_a_400(
    api_schema: schemathesis.BaseSchema, server: Server
) -> None:
    """``GET /healthz?x-unknown=1`` is a documented 400, not a 500."""
    # Found by the coverage cases (x-schemathesis-unknown-property): the
    # name was repeated in errors[].parameter, which problem.json refused.
    case = api_schema["/healthz"]["GET"].Case(query={"x-unknown": "1"})

    response = case.call_and_validate(base_url=server.base, checks=CHECKS)

    assert response.status_code == 400
    assert response.json()["errors"][0]["parameter"] == "x-unknown"
