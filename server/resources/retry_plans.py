"""Retry plans: one explained decision per failed delivery, kept as evidence."""

from __future__ import annotations

import re

import falcon

from cavra_server.paths import api_path
from cavra_server.query import cursor_parameter, limit_parameter
from cavra_server.resources.base import (
    BODY_PROBLEMS,
    COMMON_PROBLEMS,
    Operation,
    PathParameter,
    Resource,
    not_found,
    respond,
)

_PLAN_ID = re.compile(r"rp_[0-9a-f]{32}")
_PLANS_PATH = api_path("/retry-plans")


def plan_path(retry_plan_id: str) -> str:
    return f"{_PLANS_PATH}/{retry_plan_id}"


class RetryPlanRequests(Resource):
    """Making a retry plan over every failed lineage."""

    operations = {
        "POST": Operation(
            operation_id="planRetries",
            summary="Make and store a retry plan over every failed delivery.",
            request="retry_plan_request",
            responses={201: "retry_plan"},
            problems=BODY_PROBLEMS,
            response_headers={201: {"Location": "The path of the stored plan."}},
        )
    }

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)
        request = self.body(req)

        summary = self.engine.plan_retries(request, actor=req.context.get("actor"))
        # PERF(api): the whole plan is held in memory to answer; a plan of very
        # many decisions would be better streamed from iter_plan_decisions.
        plan = {
            **summary,
            "retry_decisions": list(
                self.engine.iter_plan_decisions(summary["retry_plan_id"])
            ),
        }

        respond(resp, plan, status=201, schema="retry_plan")
        resp.location = plan_path(plan["retry_plan_id"])


class RetryPlans(Resource):
    """The stored retry plans, newest first, without their decisions."""

    operations = {
        "GET": Operation(
            operation_id="listRetryPlans",
            summary="List retry plan summaries, newest first, one page at a time.",
            responses={200: "retry_plan_page"},
            problems=COMMON_PROBLEMS,
            query=(limit_parameter(), cursor_parameter("rp_")),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.list_plans(**query)

        respond(resp, page)


class RetryPlan(Resource):
    """One stored retry plan with every decision."""

    operations = {
        "GET": Operation(
            operation_id="getRetryPlan",
            summary="Read one retry plan with all its decisions.",
            responses={200: "retry_plan"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (
        PathParameter(
            "retry_plan_id",
            "The plan's id, as retry_plan_id in its summary.",
            {"$ref": "ids.json#/$defs/retry_plan_id"},
        ),
    )

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, retry_plan_id: str
    ) -> None:
        self.query(req)
        if not _PLAN_ID.fullmatch(retry_plan_id):
            raise not_found("retry plan", _PLANS_PATH)

        plan = self.engine.get_plan(retry_plan_id)

        respond(resp, plan)
