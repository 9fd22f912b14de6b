"""
Middleware: a database connection per request, and security headers.

Waitress answers on several threads; peewee keeps one connection per thread,
so each request opens its thread's connection and closes it when answered,
and no idle connection outlives its request.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon
import peewee

log = logging.getLogger(__name__)

CONSOLE_PREFIX = "/console/"
_JSON_TYPES = ("application/json", "application/problem+json")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
JSON_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
#: The console's files: its own scripts, styles and API calls, nothing inline,
#: nothing from elsewhere.
CONSOLE_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


class DatabaseConnection:
    """Open the database for resources that use it; close it after every request."""

    def __init__(self, database: peewee.Database) -> None:
        self.database = database

    def process_resource(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        params: dict[str, Any],
    ) -> None:
        if getattr(resource, "uses_database", False):
            self.database.connect(reuse_if_open=True)

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        if self.database.is_closed():
            return
        try:
            self.database.close()
        except peewee.PeeweeException:
            # The answer is complete; a connection that will not close is
            # logged rather than turned into a failed response.
            log.exception("database connection did not close")


class SecurityHeaders:
    """The same hardening headers on every answer, errors included."""

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        for name, value in SECURITY_HEADERS.items():
            resp.set_header(name, value)
        # Static console files (served without a resource) may be cached.
        if resource is not None or not req.path.startswith(CONSOLE_PREFIX):
            resp.set_header("Cache-Control", "no-store")
        media_type = (resp.content_type or "").split(";", 1)[0].strip().lower()
        if media_type in _JSON_TYPES:
            resp.set_header("Content-Security-Policy", JSON_CONTENT_SECURITY_POLICY)
        elif req.path.startswith(CONSOLE_PREFIX):
            resp.set_header("Content-Security-Policy", CONSOLE_CONTENT_SECURITY_POLICY)
