"""
What every resource shares: its description for OpenAPI and one way to answer.

A resource declares its operations as :class:`Operation` values (one per HTTP
method) next to its responders; the OpenAPI document is built from them and
the query parameters a responder reads are the very ones declared there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import falcon

from cavra_core import Engine, validation
from cavra_server.bodies import read_json_object
from cavra_server.problems import ApiProblem
from cavra_server.query import QueryParameter, read_query

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class PathParameter:
    """A ``{name}`` field of a route; ``schema`` may ``$ref`` the schemas."""

    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Operation:
    """
    One method of one resource, as the OpenAPI document describes it.

    Attributes:
        operation_id: unique name of the operation.
        summary: one line for people reading the API reference.
        responses: success status -> the response body's schema: a name from
            ``schemas/index.json``, an inline schema, or ``None`` for no body.
        problems: the error statuses the operation can answer with.
        request: name of the request body's schema, if it takes a body.
        query: the query parameters it reads.
        response_headers: success status -> header name -> description.
        media_type: the media type of its success bodies.
    """

    operation_id: str
    summary: str
    responses: Mapping[int, str | dict[str, Any] | None]
    problems: tuple[int, ...]
    request: str | None = None
    query: tuple[QueryParameter, ...] = ()
    response_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    media_type: str = JSON_TYPE


#: Problems every operation may answer with.
COMMON_PROBLEMS = (400, 405, 500)
#: Problems of an operation that reads a JSON body, on top of the common ones.
BODY_PROBLEMS = (*COMMON_PROBLEMS, 413, 415)


class Resource:
    """
    Base of the API's resources: the engine, the body limit, shared helpers.

    Subclasses set ``operations`` (HTTP method -> :class:`Operation`) and, for
    templated routes, ``path_parameters``.
    """

    operations: Mapping[str, Operation] = {}
    path_parameters: tuple[PathParameter, ...] = ()
    #: The connection middleware opens the database only for these resources.
    uses_database = True

    def __init__(self, engine: Engine, *, max_body_bytes: int) -> None:
        self.engine = engine
        self.max_body_bytes = max_body_bytes

    def query(self, req: falcon.Request) -> dict[str, Any]:
        """The validated query parameters of this request's operation."""
        return read_query(req, self.operations[req.method].query)

    def body(self, req: falcon.Request) -> dict[str, Any]:
        """The request body: one JSON object (see :mod:`cavra_server.bodies`)."""
        return read_json_object(req, self.max_body_bytes)


def respond(
    resp: falcon.Response,
    document: Any,
    *,
    status: int = 200,
    schema: str | None = None,
) -> None:
    """
    Fill ``resp`` with a JSON document.

    Args:
        schema: the schema to check ``document`` against first; leave it out
            only for documents the engine has already checked.
    """
    if schema is not None:
        validation.check_output(schema, document)
    resp.status = status
    resp.content_type = JSON_TYPE
    resp.data = json.dumps(document, ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def not_found(what: str, where: str) -> ApiProblem:
    """The 404 for an id that names nothing, or that no such id could have."""
    return ApiProblem(
        404,
        "not-found",
        "Not found",
        f"No {what} has this id; list them at {where} to find one.",
    )
