"""Delivery attempts: recorded by cavra, or imported from elsewhere."""

from __future__ import annotations

import falcon

from cavra_core.types import LINEAGE_STATES
from cavra_server.query import (
    QueryParameter,
    cursor_parameter,
    limit_parameter,
    parse_choice,
    parse_connector_id,
    since_parameter,
    until_parameter,
)
from cavra_server.resources.base import (
    BODY_PROBLEMS,
    COMMON_PROBLEMS,
    Operation,
    Resource,
    respond,
)

_OUTCOMES = ("delivered", "failed")


class DeliveryAttempts(Resource):
    """Every recorded attempt, newest first; attempts made elsewhere are imported."""

    operations = {
        "POST": Operation(
            operation_id="recordAttempts",
            summary="Record delivery attempts made outside cavra (all or nothing).",
            request="attempt_import_request",
            responses={201: "attempt_import_result"},
            problems=(*BODY_PROBLEMS, 409, 422),
        ),
        "GET": Operation(
            operation_id="listAttempts",
            summary="List delivery attempts, newest first, one page at a time.",
            responses={200: "attempt_page"},
            problems=COMMON_PROBLEMS,
            query=(
                QueryParameter(
                    "connector_id",
                    "Only attempts sent to this connector.",
                    {"$ref": "connector-id.json"},
                    parse_connector_id,
                ),
                QueryParameter(
                    "outcome",
                    "Only attempts with this outcome.",
                    {"type": "string", "enum": list(_OUTCOMES)},
                    parse_choice(*_OUTCOMES),
                ),
                QueryParameter(
                    "lineage_state",
                    "Only attempts whose lineage is now in this state.",
                    {"type": "string", "enum": list(LINEAGE_STATES)},
                    parse_choice(*LINEAGE_STATES),
                ),
                since_parameter("attempts started"),
                until_parameter("attempts started"),
                limit_parameter(),
                cursor_parameter("att_"),
            ),
        ),
    }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)
        request = self.body(req)

        result = self.engine.record_attempts(request)

        respond(resp, result, status=201)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.list_attempts(**query)

        respond(resp, page)
