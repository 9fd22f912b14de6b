"""The caller's session: who it is, by its token, and what it may call."""

from __future__ import annotations

import falcon

from cavra_server.auth import caller_session
from cavra_server.resources.base import COMMON_PROBLEMS, Operation, Resource, respond


class Session(Resource):
    """Who the caller is and which operations it may call; no token needed."""

    operations = {
        "GET": Operation(
            operation_id="getSession",
            summary="Learn who the caller is and which operations it may call.",
            responses={200: "session"},
            # Public, yet a token that is presented must be valid.
            problems=(*COMMON_PROBLEMS, 401),
        )
    }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        session = caller_session(req)

        respond(resp, session, schema="session")
