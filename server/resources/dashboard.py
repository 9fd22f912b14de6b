"""The worker dashboard: what is due, waiting and suppressed, and recent runs."""

from __future__ import annotations

import falcon

from cavra_server.resources.base import COMMON_PROBLEMS, Operation, Resource, respond


class WorkerDashboard(Resource):
    """Figures for the Evidence Console, from counters and index range counts."""

    operations = {
        "GET": Operation(
            operation_id="getWorkerDashboard",
            summary="Read the worker dashboard.",
            responses={200: "dashboard"},
            problems=COMMON_PROBLEMS,
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        dashboard = self.engine.dashboard()

        respond(resp, dashboard)
