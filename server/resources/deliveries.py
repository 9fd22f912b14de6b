"""Delivering an audit package to its connectors now."""

from __future__ import annotations

import falcon

from cavra_server.resources.base import BODY_PROBLEMS, Operation, Resource, respond


class PackageDeliveries(Resource):
    """The first delivery of audit packages; retries go through plans and runs."""

    operations = {
        "POST": Operation(
            operation_id="deliverPackage",
            summary="Deliver an audit package to one or more connectors now.",
            request="delivery_request",
            responses={201: "delivery_report"},
            problems=(*BODY_PROBLEMS, 409, 422),
        )
    }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)
        request = self.body(req)

        report = self.engine.deliver_package(request, actor=req.context.get("actor"))

        respond(resp, report, status=201)
