"""
The OpenAPI 3.1 document, built at start-up from the routes and ``schemas/``.

Every schema of ``schemas/index.json`` becomes ``components/schemas/<name>``
with its relative ``$ref``s rewritten to point inside the document (for
example ``ids.json#/$defs/run_id`` becomes
``#/components/schemas/ids/$defs/run_id``). Paths, methods, parameters,
bodies and responses come from the :class:`~cavra_server.resources.Operation`
values each resource declares, so the document cannot drift from the app.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from cavra_core import __version__, validation
from cavra_server import idempotency
from cavra_server.auth import PUBLIC_OPERATIONS, WWW_AUTHENTICATE, auth_problems
from cavra_server.problems import PROBLEM_JSON, PROBLEM_STATUSES
from cavra_server.resources.base import JSON_TYPE, Operation, Resource

OPENAPI_VERSION = "3.1.0"
_COMPONENT_SCHEMAS = "#/components/schemas/"
_COMPONENT_RESPONSES = "#/components/responses/"
_SUCCESS_DESCRIPTIONS = {200: "OK.", 201: "Created.", 302: "Found: a redirect."}
_SECURITY_SCHEME = "apiToken"
#: Problems of every POST, from its Idempotency-Key: in use, reused.
_IDEMPOTENCY_PROBLEMS = (409, 422)

_DESCRIPTION = (
    "Recoverable, governed delivery of acknowledgement audit packages to SIEM "
    "and webhook connectors: delivery attempts, explained retry plans and a "
    "retry worker that runs dry unless told otherwise. Errors are "
    "application/problem+json (RFC 9457)."
)


def build_openapi(routes: Sequence[tuple[str, Resource]]) -> dict[str, Any]:
    """
    The OpenAPI document for ``routes``, pairs of a URI template and its resource.

    Raises:
        ValueError: a schema refers to a file outside ``schemas/index.json``.
    """
    names = _names_by_file()
    schemas = {
        name: _component(validation.load_schema(name), name, names)
        for name in validation.schema_index()
    }
    paths = {template: _path_item(resource, names) for template, resource in routes}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "cavra", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": _problem_responses(),
            "securitySchemes": {
                _SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`cavra tokens create`). Needed "
                    "once any token exists; until then the API serves loopback "
                    "clients without one.",
                }
            },
        },
    }


def _names_by_file() -> dict[str, str]:
    return {file: name for name, file in validation.schema_index().items()}


def _component(schema: Mapping[str, Any], name: str, names: Mapping[str, str]) -> Any:
    component = {
        key: value for key, value in schema.items() if key not in ("$id", "$schema")
    }
    return _rewrite_refs(component, name, names)


def _rewrite_refs(node: Any, own_name: str | None, names: Mapping[str, str]) -> Any:
    """A copy of ``node`` whose ``$ref``s point into the OpenAPI document."""
    if isinstance(node, list):
        return [_rewrite_refs(item, own_name, names) for item in node]
    if not isinstance(node, dict):
        return copy.deepcopy(node)
    rewritten = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str):
            rewritten[key] = _target(value, own_name, names)
        else:
            rewritten[key] = _rewrite_refs(value, own_name, names)
    return rewritten


def _target(ref: str, own_name: str | None, names: Mapping[str, str]) -> str:
    file, _, fragment = ref.partition("#")
    if not file and own_name is not None:
        return _COMPONENT_SCHEMAS + own_name + fragment
    file = file.rsplit("/", 1)[-1]
    if file not in names:
        raise ValueError(f"$ref {ref!r} names no schema of schemas/index.json")
    return _COMPONENT_SCHEMAS + names[file] + fragment


def _schema_ref(name: str) -> dict[str, str]:
    if name not in validation.schema_index():
        raise ValueError(f"{name!r} is not a schema of schemas/index.json")
    return {"$ref": _COMPONENT_SCHEMAS + name}


def _path_item(resource: Resource, names: Mapping[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if resource.path_parameters:
        item["parameters"] = [
            {
                "name": parameter.name,
                "in": "path",
                "required": True,
                "description": parameter.description,
                "schema": _rewrite_refs(parameter.schema, None, names),
            }
            for parameter in resource.path_parameters
        ]
    for method, operation in resource.operations.items():
        item[method.lower()] = _operation(operation, names, method)
    return item


def _operation(
    operation: Operation, names: Mapping[str, str], method: str
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
    }
    parameters = [
        {
            "name": parameter.name,
            "in": "query",
            "required": False,
            "description": parameter.description,
            "schema": _rewrite_refs(parameter.schema, None, names),
        }
        for parameter in operation.query
    ]
    problems = {*operation.problems, *auth_problems(operation.operation_id)}
    if method == "POST":
        parameters.append(_idempotency_key_parameter())
        problems.update(_IDEMPOTENCY_PROBLEMS)
    if parameters:
        document["parameters"] = parameters
    if operation.operation_id not in PUBLIC_OPERATIONS:
        document["security"] = [{_SECURITY_SCHEME: []}]
    if operation.request is not None:
        document["requestBody"] = {
            "required": True,
            "content": {JSON_TYPE: {"schema": _schema_ref(operation.request)}},
        }
    responses: dict[str, Any] = {}
    for status, body in operation.responses.items():
        headers = dict(operation.response_headers.get(status, {}))
        if method == "POST":
            headers[idempotency.REPLAYED_HEADER] = (
                "true when this is the stored answer to an earlier request "
                "with the same Idempotency-Key."
            )
        responses[str(status)] = _success_response(
            status, body, headers, operation.media_type
        )
    for status in sorted(problems):
        responses[str(status)] = {"$ref": _COMPONENT_RESPONSES + _problem_key(status)}
    document["responses"] = responses
    return document


def _idempotency_key_parameter() -> dict[str, Any]:
    return {
        "name": idempotency.KEY_HEADER,
        "in": "header",
        "required": False,
        "description": "Send the request again with the same key to get the "
        "first answer again (marked Idempotent-Replayed: true) instead of "
        "doing it twice; kept 24 hours per caller, method and path.",
        "schema": copy.deepcopy(idempotency.KEY_SCHEMA),
    }


def _success_response(
    status: int,
    body: str | dict[str, Any] | None,
    headers: Mapping[str, str],
    media_type: str = JSON_TYPE,
) -> dict[str, Any]:
    response: dict[str, Any] = {"description": _SUCCESS_DESCRIPTIONS.get(status, "OK.")}
    if headers:
        response["headers"] = {
            name: {"description": description, "schema": {"type": "string"}}
            for name, description in headers.items()
        }
    if isinstance(body, str):
        response["content"] = {media_type: {"schema": _schema_ref(body)}}
    elif body is not None:
        response["content"] = {media_type: {"schema": copy.deepcopy(body)}}
    return response


def _problem_key(status: int) -> str:
    return f"Problem{status}"


def _problem_responses() -> dict[str, Any]:
    responses = {}
    for status, description in PROBLEM_STATUSES.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": _schema_ref("problem")}},
        }
        if status == 405:
            response["headers"] = {
                "Allow": {
                    "description": "The methods the resource takes.",
                    "schema": {"type": "string"},
                }
            }
        if status == 413:
            # The HTTP server refuses a body far over the limit itself, before
            # the app could read it, and answers in plain text.
            response["description"] += (
                " A body over 8 MiB is refused by the HTTP server itself, "
                "before cavra reads it, with a plain-text answer."
            )
            response["content"]["text/plain"] = {"schema": {"type": "string"}}
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": f"The challenge: {WWW_AUTHENTICATE}.",
                    "schema": {"type": "string"},
                }
            }
        responses[_problem_key(status)] = response
    return responses
