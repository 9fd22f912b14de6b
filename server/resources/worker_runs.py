"""Worker runs: the retry worker started once, and the evidence it left."""

from __future__ import annotations

import re

import falcon

from cavra_server.paths import api_path
from cavra_server.query import (
    QueryParameter,
    cursor_parameter,
    limit_parameter,
    parse_boolean,
    since_parameter,
    until_parameter,
)
from cavra_server.resources.base import (
    BODY_PROBLEMS,
    COMMON_PROBLEMS,
    Operation,
    PathParameter,
    Resource,
    not_found,
    respond,
)

_RUN_ID = re.compile(r"wr_[0-9a-f]{32}")
_RUNS_PATH = api_path("/worker-runs")


class WorkerRunRequests(Resource):
    """Running the retry worker once; a dry run unless told otherwise."""

    operations = {
        "POST": Operation(
            operation_id="runWorker",
            summary="Run the retry worker once (a dry run by default).",
            request="worker_run_request",
            responses={201: "worker_run"},
            problems=(*BODY_PROBLEMS, 409),
            response_headers={201: {"Location": "The path of the recorded run."}},
        )
    }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)
        request = self.body(req)

        run = self.engine.run_worker(request, actor=req.context.get("actor"))

        respond(resp, run, status=201)
        resp.location = f"{_RUNS_PATH}/{run['run_id']}"


class WorkerRuns(Resource):
    """The recorded worker runs, newest first."""

    operations = {
        "GET": Operation(
            operation_id="listWorkerRuns",
            summary="List worker runs, newest first, one page at a time.",
            responses={200: "worker_run_page"},
            problems=COMMON_PROBLEMS,
            query=(
                QueryParameter(
                    "dry_run",
                    "Only dry runs (true) or only live runs (false).",
                    {"type": "boolean"},
                    parse_boolean,
                ),
                since_parameter("runs started"),
                until_parameter("runs started"),
                limit_parameter(),
                cursor_parameter("wr_"),
            ),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.list_runs(**query)

        respond(resp, page)


class WorkerRun(Resource):
    """One recorded worker run."""

    operations = {
        "GET": Operation(
            operation_id="getWorkerRun",
            summary="Read one worker run.",
            responses={200: "worker_run"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (
        PathParameter(
            "run_id",
            "The run's id, as run_id in the run.",
            {"$ref": "ids.json#/$defs/run_id"},
        ),
    )

    def on_get(self, req: falcon.Request, resp: falcon.Response, run_id: str) -> None:
        self.query(req)
        if not _RUN_ID.fullmatch(run_id):
            raise not_found("worker run", _RUNS_PATH)

        run = self.engine.get_run(run_id)

        respond(resp, run)
