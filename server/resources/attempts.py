"""Delivery attempts: recorded by cavra, or imported from elsewhere."""

from __future__ import annotations

import re

import falcon

from cavra_core.errors import InvalidInput
from cavra_core.lineages import DEFAULT_BUCKET_MINUTES, MAX_BUCKET_MINUTES
from cavra_core.types import LINEAGE_STATES
from cavra_server.problems import ApiProblem
from cavra_server.query import (
    ParameterError,
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
    BODY_PROBLEMS,
    COMMON_PROBLEMS,
    Operation,
    Resource,
    respond,
)

_OUTCOMES = ("delivered", "failed")
_ERROR_CLASS = re.compile(r"[a-z][a-z0-9_]{0,49}")
_BUCKET_MINUTES = re.compile(r"[0-9]{1,4}")


def _parse_error_class(raw: str) -> str:
    if not _ERROR_CLASS.fullmatch(raw):
        raise ParameterError(
            "must be an error class: 1-50 lower-case letters, digits or '_', "
            "starting with a letter",
            "pattern",
        )
    return raw


def _parse_bucket_minutes(raw: str) -> int:
    if not _BUCKET_MINUTES.fullmatch(raw) or not 1 <= int(raw) <= MAX_BUCKET_MINUTES:
        raise ParameterError(
            f"must be a whole number from 1 to {MAX_BUCKET_MINUTES}", "range"
        )
    return int(raw)


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
                QueryParameter(
                    "error_class",
                    "Only failed attempts with this error class.",
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 50,
                        "pattern": "^[a-z][a-z0-9_]{0,49}$",
                    },
                    _parse_error_class,
                ),
                id_parameter(
                    "lineage_id",
                    "Only attempts of this lineage.",
                    "lin",
                    "lineage-id.json",
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


class AttemptActivity(Resource):
    """Attempts per connector over time, counted in buckets, for a chart."""

    operations = {
        "GET": Operation(
            operation_id="getAttemptActivity",
            summary="Count failed, delivered and recovered attempts per connector "
            "over time.",
            responses={200: "attempt_activity"},
            problems=COMMON_PROBLEMS,
            query=(
                QueryParameter(
                    "connector_id",
                    "Only this connector.",
                    {"$ref": "connector-id.json"},
                    parse_connector_id,
                ),
                since_parameter("attempts started"),
                until_parameter("attempts started"),
                QueryParameter(
                    "bucket_minutes",
                    f"Minutes each bucket spans, 1 to {MAX_BUCKET_MINUTES}; "
                    "at most 500 buckets between since and until.",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_BUCKET_MINUTES,
                        "default": DEFAULT_BUCKET_MINUTES,
                    },
                    _parse_bucket_minutes,
                    DEFAULT_BUCKET_MINUTES,
                ),
            ),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        try:
            activity = self.engine.lineages.activity(**query)
        except InvalidInput as error:
            # The engine names the parameters; they are refused as the query's.
            raise ApiProblem(
                400,
                "invalid-query",
                "Invalid query parameter",
                "The query string cannot be used as sent; fix the parameters "
                "listed under errors.",
                error.problems,
            ) from None

        respond(resp, activity)
