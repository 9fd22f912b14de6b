"""Approvals: a person's word on retry decisions, and taking it back."""

from __future__ import annotations

import re

import falcon

from cavra_server.paths import api_path
from cavra_server.query import (
    QueryParameter,
    cursor_parameter,
    id_parameter,
    limit_parameter,
    parse_choice,
    since_parameter,
    until_parameter,
)
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
_APPROVAL_ID = re.compile(r"apv_[0-9a-f]{32}")
_APPROVALS_PATH = api_path("/approvals")
_PLANS_PATH = api_path("/retry-plans")
_STATES = ("active", "used", "expired", "revoked", "stale")

_PLAN_PARAMETER = PathParameter(
    "retry_plan_id",
    "The plan's id, as retry_plan_id in its summary.",
    {"$ref": "ids.json#/$defs/retry_plan_id"},
)
_APPROVAL_PARAMETER = PathParameter(
    "approval_id",
    "The approval's id, as approval_id in the approval.",
    {"$ref": "ids.json#/$defs/approval_id"},
)


def approval_path(approval_id: str) -> str:
    return f"{_APPROVALS_PATH}/{approval_id}"


class PlanApprovals(Resource):
    """Approving or denying decisions of one retry plan."""

    operations = {
        "POST": Operation(
            operation_id="createApprovals",
            summary="Approve (or deny) decisions of a retry plan for live runs.",
            request="approval_request",
            responses={201: "approval"},
            problems=(*BODY_PROBLEMS, 403, 404, 422),
            response_headers={201: {"Location": "The path of the approval."}},
        )
    }
    path_parameters = (_PLAN_PARAMETER,)

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, retry_plan_id: str
    ) -> None:
        self.query(req)
        if not _PLAN_ID.fullmatch(retry_plan_id):
            raise not_found("retry plan", _PLANS_PATH)
        request = self.body(req)

        approval = self.engine.approvals.create(
            retry_plan_id, request, actor=req.context.get("actor")
        )

        respond(resp, approval, status=201)
        resp.location = approval_path(approval["approval_id"])


class Approvals(Resource):
    """Every approval and denial, newest first."""

    operations = {
        "GET": Operation(
            operation_id="listApprovals",
            summary="List approvals and denials with their states, newest first.",
            responses={200: "approval_page"},
            problems=COMMON_PROBLEMS,
            query=(
                id_parameter(
                    "retry_plan_id",
                    "Only words on this plan's decisions.",
                    "rp",
                    "ids.json#/$defs/retry_plan_id",
                ),
                id_parameter(
                    "lineage_id",
                    "Only words covering this lineage.",
                    "lin",
                    "lineage-id.json",
                ),
                QueryParameter(
                    "state",
                    "Only approvals in this state now.",
                    {"type": "string", "enum": list(_STATES)},
                    parse_choice(*_STATES),
                ),
                QueryParameter(
                    "verdict",
                    "Only approvals (approve) or only denials (deny).",
                    {"type": "string", "enum": ["approve", "deny"]},
                    parse_choice("approve", "deny"),
                ),
                since_parameter("words given"),
                until_parameter("words given"),
                limit_parameter(),
                cursor_parameter("apv_"),
            ),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.approvals.list(**query)

        respond(resp, page)


class Approval(Resource):
    """One approval or denial with the decisions it covers."""

    operations = {
        "GET": Operation(
            operation_id="getApproval",
            summary="Read one approval with the state of each decision it covers.",
            responses={200: "approval"},
            problems=(*COMMON_PROBLEMS, 404),
        )
    }
    path_parameters = (_APPROVAL_PARAMETER,)

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, approval_id: str
    ) -> None:
        self.query(req)
        if not _APPROVAL_ID.fullmatch(approval_id):
            raise not_found("approval", _APPROVALS_PATH)

        approval = self.engine.approvals.get(approval_id)

        respond(resp, approval)


class ApprovalRevocation(Resource):
    """Taking an approval or a denial back."""

    operations = {
        "POST": Operation(
            operation_id="revokeApproval",
            summary="Revoke an approval or a denial; it serves no further attempt.",
            request="approval_revoke_request",
            responses={200: "approval"},
            problems=(*BODY_PROBLEMS, 404, 409, 422),
        )
    }
    path_parameters = (_APPROVAL_PARAMETER,)

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, approval_id: str
    ) -> None:
        self.query(req)
        if not _APPROVAL_ID.fullmatch(approval_id):
            raise not_found("approval", _APPROVALS_PATH)
        request = self.body(req)

        approval = self.engine.approvals.revoke(
            approval_id, request, actor=req.context.get("actor")
        )

        respond(resp, approval)
