"""
Error answers: every failure leaves as ``application/problem+json`` (RFC 9457).

Domain errors from :mod:`cavra_core.errors` are mapped to a status here and
nowhere else. Details say how to fix the call and never repeat a value from
the request; anything unexpected becomes a 500 whose traceback is logged and
whose answer says nothing about the internals.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import falcon

from cavra_core import store, validation
from cavra_core.errors import (
    CavraError,
    Conflict,
    FieldProblem,
    Forbidden,
    InvalidInput,
    NotFound,
    UnprocessableInput,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "https://cavra.dev/problems/"

#: At most this many entries are listed under ``errors``; the rest are counted.
MAX_LISTED_ERRORS = 100

_DETAIL_LIMIT = 2000
_ENTRY_DETAIL_LIMIT = 1000
_POINTER_LIMIT = 1000
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")

INTERNAL_ERROR_DETAIL = (
    "The server failed while answering; nothing in the request was at fault. "
    "Try again later; if it keeps failing, report the time of the request to "
    "the operators, who will find the cause in the server log."
)


class ApiProblem(Exception):
    """
    An error answer raised by the HTTP layer itself (media type, size, query).

    Args:
        status: the HTTP status code.
        slug: the last segment of the problem ``type`` URI.
        title: a short summary of the problem type.
        detail: what was wrong and how to fix the request.
        errors: one :class:`FieldProblem` per offending place.
        headers: extra response headers, e.g. ``Allow`` for a 405.
    """

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        errors: Iterable[FieldProblem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


#: Domain error -> (status, slug). Subclasses match their nearest entry.
DOMAIN_ERRORS: dict[type[CavraError], tuple[int, str]] = {
    InvalidInput: (400, "invalid-body"),
    UnprocessableInput: (422, "unprocessable-body"),
    NotFound: (404, "not-found"),
    Conflict: (409, "conflict"),
    Forbidden: (403, "forbidden"),
}

#: Statuses the API answers with problems, with their OpenAPI descriptions.
PROBLEM_STATUSES: dict[int, str] = {
    400: "The request is malformed: the body, a query parameter or its JSON.",
    401: "The request needs an API token (Authorization: Bearer TOKEN).",
    403: "The token's role may not do this, or the rule forbids it for anyone.",
    404: "Nothing exists at this path or with this id.",
    405: "The resource does not take this method; see the Allow header.",
    409: "The request conflicts with the state of the store.",
    413: "The body is larger than the server accepts.",
    415: "The body is not sent as application/json.",
    422: "The body is well formed but cannot be applied as it stands.",
    500: "The server failed; nothing in the request was at fault.",
    503: "The store was busy past its timeout; nothing changed, send it again.",
}


def problem_document(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: Iterable[FieldProblem] = (),
) -> dict[str, Any]:
    """
    Build a problem document that fits ``schemas/problem.json``.

    Entries beyond :data:`MAX_LISTED_ERRORS` are dropped (the detail says how
    many), and over-long texts are shortened, so that no input, however
    large, can make the answer itself break its schema.
    """
    entries = [_entry(problem) for problem in errors]
    if len(entries) > MAX_LISTED_ERRORS:
        dropped = len(entries) - MAX_LISTED_ERRORS
        entries = entries[:MAX_LISTED_ERRORS]
        detail = f"{detail} ({dropped} further problems are not listed.)"
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": _shorten(detail, _DETAIL_LIMIT),
    }
    if entries:
        document["errors"] = entries
    return document


def _entry(problem: FieldProblem) -> dict[str, str]:
    entry = problem.as_document()
    entry["detail"] = _shorten(entry["detail"], _ENTRY_DETAIL_LIMIT) or "is not valid"
    if "pointer" in entry:
        entry["pointer"] = _bounded_pointer(entry["pointer"])
    if "reason" in entry and not _REASON.fullmatch(entry["reason"]):
        del entry["reason"]
    return entry


def _bounded_pointer(pointer: str) -> str:
    """The pointer, or its nearest ancestor short enough for the schema."""
    while len(pointer) > _POINTER_LIMIT:
        pointer = pointer[: pointer.rindex("/")]
    return pointer


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def write_problem(
    resp: falcon.Response,
    document: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> None:
    """Fill ``resp`` with a problem document, checked against its schema."""
    try:
        validation.check_output("problem", document)
    except validation.OutputSchemaError:
        log.exception(
            "problem document breaks its schema status=%s", document["status"]
        )
        document, headers = _internal_error_document(), None
    resp.status = document["status"]
    resp.content_type = PROBLEM_JSON
    resp.data = json.dumps(document, ensure_ascii=False).encode("utf-8")
    for name, value in (headers or {}).items():
        resp.set_header(name, value)


def _internal_error_document() -> dict[str, Any]:
    return problem_document(
        500, "internal-error", "Internal server error", INTERNAL_ERROR_DETAIL
    )


# -- error handlers ------------------------------------------------------------


def handle_api_problem(
    req: falcon.Request, resp: falcon.Response, error: ApiProblem, params: dict
) -> None:
    document = problem_document(
        error.status, error.slug, error.title, error.detail, error.errors
    )
    write_problem(resp, document, error.headers)


def handle_domain_error(
    req: falcon.Request, resp: falcon.Response, error: CavraError, params: dict
) -> None:
    mapped = [pair for kind, pair in DOMAIN_ERRORS.items() if isinstance(error, kind)]
    if not mapped:
        handle_unexpected_error(req, resp, error, params)
        return
    status, slug = mapped[0]
    title = error.title
    if status == 400 and error.problems and all(p.parameter for p in error.problems):
        slug, title = "invalid-query", "Invalid query parameter"
    detail = error.detail
    if status == 404:
        # NOTE(api): the engine names the missing id in its detail; ids are
        # input, so the answer gets a detail of its own.
        detail = "Nothing exists with this id; list the collection to find one."
    write_problem(resp, problem_document(status, slug, title, detail, error.problems))


def handle_http_error(
    req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError, params: dict
) -> None:
    """Falcon's own errors (no route, wrong method, unreadable request)."""
    status = error.status_code
    headers = {
        name: value
        for name, value in (error.headers or {}).items()
        if name.lower() == "allow"
    }
    if status == 404:
        document = problem_document(
            404, "not-found", "Not found", _not_found_detail(req)
        )
    elif status == 405:
        document = problem_document(
            405,
            "method-not-allowed",
            "Method not allowed",
            "This resource does not take this method; use one of the methods "
            "listed in the Allow header.",
        )
    else:
        # Falcon's descriptions may quote the request, so only the title is kept.
        document = problem_document(
            status,
            "bad-request" if status < 500 else "internal-error",
            error.title or "Request failed",
            "The request could not be read as sent; check its headers and its "
            "syntax against /openapi.json.",
        )
    write_problem(resp, document, headers)


def _not_found_detail(req: falcon.Request) -> str:
    if req.path == "/console" or req.path.startswith("/console/"):
        return (
            "The Evidence Console is not built into this installation; use the "
            "HTTP API (see /openapi.json) or install a build that ships it."
        )
    return "No resource exists at this path; see /openapi.json for the API's paths."


def handle_unexpected_error(
    req: falcon.Request, resp: falcon.Response, error: Exception, params: dict
) -> None:
    """A bug: log the traceback, answer 500 without a word about internals."""
    if store.is_busy(error):
        # Not a bug: another writer held the store past the busy timeout.
        log.warning(
            "store busy method=%s route=%s", req.method, req.uri_template or "-"
        )
        document = problem_document(
            503,
            "store-busy",
            "Store busy",
            "The store was busy with other writes and this request could not "
            "wait longer; nothing was changed. Send it again in a moment.",
        )
        write_problem(resp, document, {"Retry-After": "1"})
        return
    log.exception(
        "unexpected error while answering method=%s route=%s",
        req.method,
        req.uri_template or "-",
    )
    write_problem(resp, _internal_error_document())


def register_error_handlers(app: falcon.App) -> None:
    """Install the handlers; Falcon picks the most specific one per error."""
    app.add_error_handler(Exception, handle_unexpected_error)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(CavraError, handle_domain_error)
    app.add_error_handler(ApiProblem, handle_api_problem)
