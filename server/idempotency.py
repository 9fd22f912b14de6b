"""
Idempotency keys: a POST sent again with the same key gets the first answer.

A client that lost an answer (a timeout, a dropped connection) sends the
request again with the same ``Idempotency-Key`` header and gets the answer the
first request got, with ``Idempotent-Replayed: true``, instead of a second
plan or a second delivery. A key is scoped to its caller (the token, or
"anonymous" without one), the method and the path, and kept
:data:`RETENTION`; after that the key may be used for a new request.

* same key, same body: the first answer, replayed (status, body, its media
  type and ``Location``);
* same key, another body: 422 naming the header;
* same key while the first request is still being answered: 409.

The first request claims its key by inserting an ``in_progress`` row: the
primary key of :class:`~cavra_core.store.IdempotencyRecord` decides between
two requests that race. Answers below 500 are kept; after a 5xx or a failure
the claim is dropped, so the client can try again.

Bodies are compared by the SHA-256 of their canonical JSON when they parse,
of their bytes otherwise. The canonical JSON has sorted keys, no spacing and
every number written as the value the API reads: a number with a fraction or
an exponent is read as a float, and one whose value is whole is written as
the integer it equals. So a body sent again with other spacing, key order or
number spelling (``0``, ``0.0``, ``0e0``, ``-0.0``; ``1.5`` and ``1.50``) is
the same body; numbers of different values stay different.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import falcon
import peewee

from cavra_core.errors import FieldProblem
from cavra_core.store import IdempotencyRecord, database_proxy
from cavra_server.bodies import read_body_bytes
from cavra_server.problems import ApiProblem

log = logging.getLogger(__name__)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 200
#: How long a key and its answer are kept.
RETENTION = timedelta(hours=24)
#: Stored answers are purged at most this often by each middleware instance.
PURGE_INTERVAL = timedelta(hours=1)

IN_PROGRESS = "in_progress"
DONE = "done"

#: The key header's value in OpenAPI terms.
KEY_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_KEY_LENGTH,
    "pattern": "^[^\\u0000-\\u001f\\u007f]+$",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CLAIM = "idempotency_scope"
_CLAIM_ATTEMPTS = 3


def scope_key(token_id: str | None, method: str, path: str, key: str) -> str:
    """The stored name of a key: SHA-256 of caller, method, path and key."""
    # The key comes last and holds no control character, so "\n" cannot be
    # moved across a boundary to make two scopes collide.
    text = "\n".join((token_id or "anonymous", method, path, key))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def request_hash(body: bytes) -> str:
    """SHA-256 of the body's canonical JSON, or of its bytes if it does not parse."""
    try:
        document = json.loads(body, parse_float=_json_number)
    except (ValueError, RecursionError):
        return hashlib.sha256(b"bytes\n" + body).hexdigest()
    try:
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    except (ValueError, RecursionError):
        return hashlib.sha256(b"bytes\n" + body).hexdigest()
    return hashlib.sha256(b"json\n" + canonical.encode("ascii")).hexdigest()


def _json_number(text: str) -> int | float:
    """A number with a fraction or exponent as canonical JSON writes it."""
    value = float(text)
    # 0.0 and 0 are one value to the API (and to the schemas' "integer"),
    # so they must be one body here too.
    return int(value) if value.is_integer() else value


class IdempotencyKeys:
    """
    Falcon middleware for ``Idempotency-Key`` on every POST of the API.

    Comes after :class:`~cavra_server.auth.TokenAuthentication` (it scopes keys
    by ``req.context.token_id``) and after the database connection middleware
    (it stores the answer before the connection is closed).
    """

    def __init__(self) -> None:
        self._last_purge: datetime | None = None

    def process_resource(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        params: dict[str, Any],
    ) -> None:
        if req.method != "POST" or "POST" not in getattr(resource, "operations", {}):
            return
        key = req.get_header(KEY_HEADER)
        if key is None:
            return
        _check_key(key)

        body = read_body_bytes(req, resource.max_body_bytes)
        scope = scope_key(req.context.get("token_id"), req.method, req.path, key)
        body_hash = request_hash(body)
        now = _now(resource)
        self._purge(now)

        record = _claim(scope, body_hash, now)
        if record is None:
            req.context[_CLAIM] = scope
            return
        if record.request_hash != body_hash:
            raise ApiProblem(
                422,
                "idempotency-key-reused",
                "Idempotency key reused",
                f"This {KEY_HEADER} was sent before with another body; send a "
                "new key for a new request, or the first body to get its answer.",
                [_key_problem("was used with another body", "key_reused")],
            )
        if record.state != DONE:
            raise ApiProblem(
                409,
                "idempotency-key-in-use",
                "Idempotency key in use",
                f"A request with this {KEY_HEADER} is still being answered; "
                "wait a moment and send it again to get its answer.",
                [_key_problem("is in use by a request in progress", "key_in_use")],
            )
        _replay(resp, record)

    def process_response(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        req_succeeded: bool,
    ) -> None:
        scope = req.context.get(_CLAIM)
        if scope is None:
            return
        req.context[_CLAIM] = None
        status = resp.status_code
        try:
            if status >= 500 or resp.stream is not None:
                _release(scope)
                return
            body = resp.render_body() or b""
            stored = (
                IdempotencyRecord.update(
                    state=DONE,
                    status=status,
                    content_type=resp.content_type,
                    location=resp.get_header("Location"),
                    body=body.decode("utf-8"),
                )
                .where(
                    (IdempotencyRecord.scope_key == scope)
                    & (IdempotencyRecord.state == IN_PROGRESS)
                )
                .execute()
            )
        except (peewee.PeeweeException, UnicodeDecodeError):
            # The answer itself is complete; only its replay is lost.
            log.exception("idempotent answer not stored status=%s", status)
            _release_quietly(scope)
            return
        if not stored:
            log.warning("idempotency claim vanished before its answer was stored")

    def _purge(self, now: datetime) -> None:
        """Drop expired answers now and then; an index range on created_at."""
        if self._last_purge is not None and now - self._last_purge < PURGE_INTERVAL:
            return
        self._last_purge = now
        purged = (
            IdempotencyRecord.delete()
            .where(IdempotencyRecord.created_at <= now - RETENTION)
            .execute()
        )
        if purged:
            log.info("idempotency keys expired count=%d", purged)


def _check_key(key: str) -> None:
    if not key:
        problem = "is empty"
    elif len(key) > MAX_KEY_LENGTH:
        problem = f"is longer than {MAX_KEY_LENGTH} characters"
    elif _CONTROL.search(key):
        problem = "holds a control character"
    else:
        return
    raise ApiProblem(
        400,
        "invalid-header",
        "Invalid request header",
        f"The {KEY_HEADER} header {problem}; send 1 to {MAX_KEY_LENGTH} "
        "printable characters, e.g. a UUID.",
        [_key_problem(problem, "invalid_idempotency_key")],
    )


def _key_problem(detail: str, reason: str) -> FieldProblem:
    return FieldProblem("", detail, reason, KEY_HEADER)


def _now(resource: Any) -> datetime:
    engine = getattr(resource, "engine", None)
    clock = getattr(engine, "clock", None)
    return clock() if clock is not None else datetime.now(UTC)


def _claim(scope: str, body_hash: str, now: datetime) -> IdempotencyRecord | None:
    """
    Claim ``scope`` for this request: ``None`` when claimed, else the record
    of the request that holds it.
    """
    for _ in range(_CLAIM_ATTEMPTS):
        record = IdempotencyRecord.get_or_none(IdempotencyRecord.scope_key == scope)
        if record is not None and record.created_at <= now - RETENTION:
            IdempotencyRecord.delete().where(
                (IdempotencyRecord.scope_key == scope)
                & (IdempotencyRecord.created_at == record.created_at)
            ).execute()
            record = None
        if record is not None:
            return record
        try:
            with database_proxy.atomic():
                IdempotencyRecord.insert(
                    scope_key=scope,
                    request_hash=body_hash,
                    state=IN_PROGRESS,
                    created_at=now,
                ).execute()
        except peewee.IntegrityError:
            # Another request claimed the key between the read and the
            # insert: read its record on the next pass.
            continue
        return None
    # The key was claimed and released again on every pass: a request with
    # it is being tried right now.
    return IdempotencyRecord(request_hash=body_hash, state=IN_PROGRESS)


def _replay(resp: falcon.Response, record: IdempotencyRecord) -> None:
    resp.status = record.status
    if record.content_type:
        resp.content_type = record.content_type
    resp.data = (record.body or "").encode("utf-8")
    if record.location:
        resp.set_header("Location", record.location)
    resp.set_header(REPLAYED_HEADER, "true")
    resp.complete = True


def _release(scope: str) -> None:
    IdempotencyRecord.delete().where(
        (IdempotencyRecord.scope_key == scope)
        & (IdempotencyRecord.state == IN_PROGRESS)
    ).execute()


def _release_quietly(scope: str) -> None:
    try:
        _release(scope)
    except peewee.PeeweeException:
        log.exception("idempotency claim not released; the key waits until expiry")
