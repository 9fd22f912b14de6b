"""Connectors: each configured connector with its health, and resuming one."""

from __future__ import annotations

import re

import falcon

from cavra_server.paths import api_path
from cavra_server.resources.base import (
    BODY_PROBLEMS,
    COMMON_PROBLEMS,
    Operation,
    PathParameter,
    Resource,
    not_found,
    respond,
)

_CONNECTOR_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_CONNECTORS_PATH = api_path("/connectors")
_CONNECTOR_PARAMETER = PathParameter(
    "connector_id",
    "The connector's id: its table name in the connectors file.",
    {"$ref": "connector-id.json"},
)


def _known(connector_id: str, engine) -> None:
    if not _CONNECTOR_ID.fullmatch(connector_id) or connector_id not in (
        engine.connectors
    ):
        raise not_found("connector", _CONNECTORS_PATH)


class Connectors(Resource):
    """Every configured connector, with its health."""

    operations = {
        "GET": Operation(
            operation_id="listConnectors",
            summary="List the configured connectors with their health.",
            responses={200: "connector_list"},
            problems=COMMON_PROBLEMS,
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        connectors = self.engine.list_connectors()

        respond(resp, connectors)


class Connector(Resource):
    """One configured connector."""

    operations = {
        "GET": Operation(
            operation_id="getConnector",
            summary="Read one connector's health.",
            responses={200: "connector"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (_CONNECTOR_PARAMETER,)

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, connector_id: str
    ) -> None:
        self.query(req)
        _known(connector_id, self.engine)

        connector = self.engine.get_connector(connector_id)

        respond(resp, connector)


class ConnectorResume(Resource):
    """Resuming a paused or disabled connector."""

    operations = {
        "POST": Operation(
            operation_id="resumeConnector",
            summary="Make a paused or disabled connector active again.",
            request="connector_resume_request",
            responses={200: "connector"},
            problems=(*BODY_PROBLEMS, 404),
        )
    }
    path_parameters = (_CONNECTOR_PARAMETER,)

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, connector_id: str
    ) -> None:
        self.query(req)
        _known(connector_id, self.engine)
        request = self.body(req)

        connector = self.engine.resume_connector(
            connector_id, request, actor=req.context.get("actor")
        )

        respond(resp, connector)
