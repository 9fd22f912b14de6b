"""The evidence log: its entries, oldest first, and a check of the whole chain."""

from __future__ import annotations

import falcon

from cavra_core import evidence
from cavra_core.errors import InvalidInput
from cavra_server.query import (
    ParameterError,
    QueryParameter,
    limit_parameter,
    parse_choice,
)
from cavra_server.resources.base import (
    COMMON_PROBLEMS,
    Operation,
    Resource,
    respond,
)


def parse_subject_id(raw: str) -> str:
    if not evidence.SUBJECT_ID.fullmatch(raw):
        raise ParameterError(
            "must be the id of a plan, run, approval, execution, playbook or "
            "closure: rp_, wr_, apv_, ex_, pb_ or cl_ and 32 hex digits",
            "pattern",
        )
    return raw


def parse_evidence_cursor(raw: str) -> str:
    try:
        evidence.decode_cursor(raw)
    except InvalidInput:
        raise ParameterError(
            "is not a cursor this list issued; pass next_cursor from the "
            "previous page unchanged",
            "invalid_cursor",
        ) from None
    return raw


class EvidenceEntries(Resource):
    """The entries of the evidence log, oldest first: an auditor reads forward."""

    operations = {
        "GET": Operation(
            operation_id="listEvidence",
            summary="List evidence log entries, oldest first, one page at a time.",
            responses={200: "evidence_page"},
            problems=COMMON_PROBLEMS,
            query=(
                QueryParameter(
                    "kind",
                    "Only entries of this kind.",
                    {"type": "string", "enum": list(evidence.KINDS)},
                    parse_choice(*evidence.KINDS),
                ),
                QueryParameter(
                    "subject_id",
                    "Only entries vouching for the record with this id.",
                    {"$ref": "evidence-entry.json#/$defs/subject_id"},
                    parse_subject_id,
                ),
                limit_parameter(),
                QueryParameter(
                    "cursor",
                    "next_cursor of the previous page, unchanged; absent for the "
                    "first page.",
                    {"type": "string", "minLength": 1, "maxLength": 512},
                    parse_evidence_cursor,
                ),
            ),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = self.query(req)

        page = self.engine.evidence.list_entries(**query)

        respond(resp, page)


class EvidenceVerification(Resource):
    """A check of the whole log and of the records it vouches for."""

    operations = {
        "GET": Operation(
            operation_id="verifyEvidence",
            summary="Verify the evidence log's hash chain and the records it "
            "vouches for; a broken chain is reported, not refused.",
            responses={200: "evidence_verification"},
            problems=COMMON_PROBLEMS,
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        report = self.engine.evidence.verify()

        respond(resp, report)
