"""Lineages: one package on its way to one connector, read in full."""

from __future__ import annotations

import re

import falcon

from cavra_server.paths import api_path
from cavra_server.resources.base import (
    COMMON_PROBLEMS,
    Operation,
    PathParameter,
    Resource,
    not_found,
    respond,
)

_LINEAGE_ID = re.compile(r"lin_[0-9a-f]{32}")
_ATTEMPTS_PATH = api_path("/attempts")


class Lineage(Resource):
    """One lineage with its attempts, its decision now and its latest plan's."""

    operations = {
        "GET": Operation(
            operation_id="getLineage",
            summary="Read one lineage with its attempts and its retry decisions.",
            responses={200: "lineage"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (
        PathParameter(
            "lineage_id",
            "The lineage's id, as lineage_id in its attempts.",
            {"$ref": "lineage-id.json"},
        ),
    )

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, lineage_id: str
    ) -> None:
        self.query(req)
        if not _LINEAGE_ID.fullmatch(lineage_id):
            raise not_found("lineage", _ATTEMPTS_PATH)

        lineage = self.engine.lineages.get(lineage_id)

        respond(resp, lineage)
