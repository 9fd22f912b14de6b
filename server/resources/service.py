"""The service's own resources: the index, liveness and the API description."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon

from cavra_server.resources.base import COMMON_PROBLEMS, Operation, Resource, respond

CONSOLE_PATH = "/console/"
OPENAPI_PATH = "/openapi.json"

_INDEX_SCHEMA = {
    "title": "Service index",
    "description": "Where the API is described, when no console is built in.",
    "type": "object",
    "properties": {
        "service": {"type": "string", "const": "cavra"},
        "api": {"type": "string", "const": OPENAPI_PATH},
    },
    "required": ["service", "api"],
    "additionalProperties": False,
}


class ServiceIndex(Resource):
    """``/``: the console when it is built in, else where the API is described."""

    operations = {
        "GET": Operation(
            operation_id="getServiceIndex",
            summary="Go to the Evidence Console, or learn where the API is described.",
            responses={200: _INDEX_SCHEMA, 302: None},
            problems=COMMON_PROBLEMS,
            response_headers={302: {"Location": "The Evidence Console."}},
        )
    }
    uses_database = False

    def __init__(self, engine: Any, *, max_body_bytes: int, static_dir: Path) -> None:
        super().__init__(engine, max_body_bytes=max_body_bytes)
        self.console_built = (static_dir / "index.html").is_file()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        if self.console_built:
            resp.status = 302
            resp.location = CONSOLE_PATH
            return
        respond(resp, {"service": "cavra", "api": OPENAPI_PATH})


class Health(Resource):
    """``/healthz``: the server answers and its database does too."""

    operations = {
        "GET": Operation(
            operation_id="getHealth",
            summary="Check that the server and its database answer.",
            responses={200: "health"},
            problems=COMMON_PROBLEMS,
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        health = self.engine.health()

        respond(resp, health, schema="health")


class OpenApiDocument(Resource):
    """``/openapi.json``: the OpenAPI 3.1 description of this app's routes."""

    operations = {
        "GET": Operation(
            operation_id="getOpenApiDocument",
            summary="Read the OpenAPI 3.1 description of the API.",
            responses={200: {"type": "object"}},
            problems=COMMON_PROBLEMS,
        )
    }
    uses_database = False

    def __init__(self, engine: Any, *, max_body_bytes: int) -> None:
        super().__init__(engine, max_body_bytes=max_body_bytes)
        #: Set by the app factory once every route is known.
        self.document: dict[str, Any] = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        respond(resp, self.document)
