"""Connector recovery: playbooks for failing connectors, closures, the report."""

from __future__ import annotations

import re

import falcon

from cavra_core.recovery import DEFAULT_REPORT_LIMIT, DEFAULT_SLO_MINUTES
from cavra_server.paths import api_path
from cavra_server.query import (
    MAX_LIMIT,
    QueryParameter,
    cursor_parameter,
    limit_parameter,
    parse_limit,
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

_PLAYBOOK_ID = re.compile(r"pb_[0-9a-f]{32}")
_PLAYBOOKS_PATH = api_path("/connector-recovery-playbooks")
_PLAYBOOK_PARAMETER = PathParameter(
    "playbook_id",
    "The playbook's id, as playbook_id in the playbook.",
    {"$ref": "ids.json#/$defs/playbook_id"},
)
MAX_SLO_MINUTES = 100_000


def playbook_path(playbook_id: str) -> str:
    return f"{_PLAYBOOKS_PATH}/{playbook_id}"


def _known_shape(playbook_id: str) -> None:
    if not _PLAYBOOK_ID.fullmatch(playbook_id):
        raise not_found("recovery playbook", _PLAYBOOKS_PATH)


class RecoveryPlaybookRequests(Resource):
    """Making a recovery playbook for the connectors that keep failing."""

    operations = {
        "POST": Operation(
            operation_id="createRecoveryPlaybook",
            summary="Make a recovery playbook for connectors with repeated failures.",
            request="recovery_playbook_request",
            responses={201: "recovery_playbook"},
            problems=(*BODY_PROBLEMS, 422),
            response_headers={201: {"Location": "The path of the stored playbook."}},
        )
    }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)
        request = self.body(req)

        playbook = self.engine.recovery.create_playbook(
            request, actor=req.context.get("actor")
        )

        respond(resp, playbook, status=201)
        resp.location = playbook_path(playbook["playbook_id"])


class RecoveryPlaybooks(Resource):
    """The stored recovery playbooks, newest first."""

    operations = {
        "GET": Operation(
            operation_id="listRecoveryPlaybooks",
            summary="List recovery playbooks with their closures, newest first.",
            responses={200: "recovery_playbook_page"},
            problems=COMMON_PROBLEMS,
            query=(limit_parameter(), cursor_parameter("pb_")),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.recovery.list_playbooks(**query)

        respond(resp, page)


class RecoveryPlaybook(Resource):
    """One recovery playbook with its items' states and every closure."""

    operations = {
        "GET": Operation(
            operation_id="getRecoveryPlaybook",
            summary="Read one recovery playbook with its closures.",
            responses={200: "recovery_playbook"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (_PLAYBOOK_PARAMETER,)

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, playbook_id: str
    ) -> None:
        self.query(req)
        _known_shape(playbook_id)

        playbook = self.engine.recovery.get_playbook(playbook_id)

        respond(resp, playbook)


class RecoveryClosures(Resource):
    """Closing (or reopening) one connector of a recovery playbook."""

    operations = {
        "POST": Operation(
            operation_id="closeRecovery",
            summary="Record a closure (resolved, mitigated...) of a playbook item.",
            request="recovery_closure_request",
            responses={201: "recovery_closure"},
            problems=(*BODY_PROBLEMS, 404, 422),
        )
    }
    path_parameters = (_PLAYBOOK_PARAMETER,)

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, playbook_id: str
    ) -> None:
        self.query(req)
        _known_shape(playbook_id)
        request = self.body(req)

        closure = self.engine.recovery.close(
            playbook_id, request, actor=req.context.get("actor")
        )

        respond(resp, closure, status=201)


class RecoveryReport(Resource):
    """Open, closed and overdue playbook items against a service level."""

    operations = {
        "GET": Operation(
            operation_id="getRecoveryReport",
            summary="Count open, closed and overdue recovery items against an SLO.",
            responses={200: "recovery_report"},
            problems=COMMON_PROBLEMS,
            query=(
                QueryParameter(
                    "slo_minutes",
                    "Minutes after its playbook an open item becomes overdue, "
                    f"1 to {MAX_SLO_MINUTES}.",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_SLO_MINUTES,
                        "default": DEFAULT_SLO_MINUTES,
                    },
                    parse_limit(MAX_SLO_MINUTES),
                    DEFAULT_SLO_MINUTES,
                ),
                QueryParameter(
                    "limit",
                    f"Most items in each list, 1 to {MAX_LIMIT}; the counts are "
                    "always complete.",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_LIMIT,
                        "default": DEFAULT_REPORT_LIMIT,
                    },
                    parse_limit(MAX_LIMIT),
                    DEFAULT_REPORT_LIMIT,
                ),
            ),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        report = self.engine.recovery.report(**query)

        respond(resp, report)
