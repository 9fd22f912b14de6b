"""Executions: what live worker runs did with approved decisions."""

from __future__ import annotations

import re

import falcon

from cavra_server.paths import api_path
from cavra_server.query import (
    QueryParameter,
    cursor_parameter,
    id_parameter,
    limit_parameter,
    parse_choice,
    parse_connector_id,
    since_parameter,
    until_parameter,
)
from cavra_server.resources.base import (
    COMMON_PROBLEMS,
    Operation,
    PathParameter,
    Resource,
    not_found,
    respond,
)

_EXECUTION_ID = re.compile(r"ex_[0-9a-f]{32}")
_EXECUTIONS_PATH = api_path("/executions")
_OUTCOMES = ("queued", "claimed", "delivered", "failed", "skipped")


class Executions(Resource):
    """Every execution record, newest first."""

    operations = {
        "GET": Operation(
            operation_id="listExecutions",
            summary="List execution records of live runs, newest first.",
            responses={200: "execution_page"},
            problems=COMMON_PROBLEMS,
            query=(
                id_parameter(
                    "run_id",
                    "Only this run's executions.",
                    "wr",
                    "ids.json#/$defs/run_id",
                ),
                id_parameter(
                    "lineage_id",
                    "Only executions of this lineage.",
                    "lin",
                    "lineage-id.json",
                ),
                QueryParameter(
                    "connector_id",
                    "Only executions sent to this connector.",
                    {"$ref": "connector-id.json"},
                    parse_connector_id,
                ),
                QueryParameter(
                    "outcome",
                    "Only executions with this outcome.",
                    {"type": "string", "enum": list(_OUTCOMES)},
                    parse_choice(*_OUTCOMES),
                ),
                since_parameter("executions started"),
                until_parameter("executions started"),
                limit_parameter(),
                cursor_parameter("ex_"),
            ),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.executions.list(**query)

        respond(resp, page)


class Execution(Resource):
    """One execution record."""

    operations = {
        "GET": Operation(
            operation_id="getExecution",
            summary="Read one execution record.",
            responses={200: "execution"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (
        PathParameter(
            "execution_id",
            "The execution's id, as execution_id in the record.",
            {"$ref": "ids.json#/$defs/execution_id"},
        ),
    )

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, execution_id: str
    ) -> None:
        self.query(req)
        if not _EXECUTION_ID.fullmatch(execution_id):
            raise not_found("execution", _EXECUTIONS_PATH)

        execution = self.engine.executions.get(execution_id)

        respond(resp, execution)
