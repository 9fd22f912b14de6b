"""
Reading request bodies: JSON objects only, UTF-8, bounded in size.

Everything refused here is refused before the engine sees the document, with
a problem that says how to send it instead. Beyond what :func:`json.loads`
refuses, a body is refused for ``NaN``/``Infinity`` and numbers too large for
a float, for an object that repeats a key, for unpaired surrogate escapes
(they cannot be stored as UTF-8) and NUL characters, for nesting deeper
than :data:`MAX_DEPTH`, and for times (fields named ``*_at``) outside
:data:`TIME_RANGE`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import falcon

from cavra_core.errors import FieldProblem
from cavra_core.validation import pointer
from cavra_server.problems import ApiProblem

JSON_MEDIA_TYPE = "application/json"

#: No document of the API nests this deep; deeper input is refused unread.
MAX_DEPTH = 32

_MALFORMED_TITLE = "Malformed JSON body"
#: Where the body's bytes are kept on ``req.context`` once read.
_BODY_BYTES = "body_bytes"


class _RefusedJson(ValueError):
    """A JSON text that parses but is refused; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def read_json_object(req: falcon.Request, max_bytes: int) -> dict[str, Any]:
    """
    Read the body of ``req`` as one JSON object.

    Args:
        req: the request; its body is read at most ``max_bytes + 1`` bytes far.
        max_bytes: the largest body accepted, in bytes.

    Raises:
        ApiProblem: 415 for another media type, 413 for a body that is too
            large, 400 for a body that is not one well-formed JSON object.
    """
    _require_json_media_type(req)
    raw = read_body_bytes(req, max_bytes)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("The body is not valid UTF-8; encode it as UTF-8.") from None
    try:
        document = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_object_without_repeated_keys,
        )
    except _RefusedJson as refused:
        raise _malformed(refused.detail) from None
    except (ValueError, RecursionError):
        raise _malformed(
            "The body is not well-formed JSON; send one JSON object (RFC 8259)."
        ) from None

    if not isinstance(document, dict):
        raise ApiProblem(
            400,
            "invalid-body",
            "Invalid request",
            "The body must be a JSON object; wrap the fields in {...}.",
            [FieldProblem("", "must be a JSON object", "type")],
        )
    _check_contents(document)
    return document


def read_body_bytes(req: falcon.Request, max_bytes: int) -> bytes:
    """
    The body of ``req`` as bytes, read from the stream once per request.

    The first caller reads it (the idempotency middleware, or else
    :func:`read_json_object`); later callers get the same bytes.

    Raises:
        ApiProblem: 413 for a body larger than ``max_bytes``.
    """
    cached = req.context.get(_BODY_BYTES)
    if cached is not None:
        return cached
    too_large = ApiProblem(
        413,
        "body-too-large",
        "Request body too large",
        f"The body is larger than {max_bytes} bytes; send fewer items per "
        "request and split the rest over several requests.",
    )
    if req.content_length is not None and req.content_length > max_bytes:
        raise too_large
    raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large
    req.context[_BODY_BYTES] = raw
    return raw


def _require_json_media_type(req: falcon.Request) -> None:
    media_type, options = falcon.parse_header(req.content_type or "")
    charset = options.get("charset", "utf-8").lower()
    if media_type.strip().lower() == JSON_MEDIA_TYPE and charset == "utf-8":
        return
    raise ApiProblem(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        f"Send the body as {JSON_MEDIA_TYPE} (UTF-8) and say so in the "
        "Content-Type header.",
    )


def _malformed(detail: str) -> ApiProblem:
    return ApiProblem(
        400,
        "malformed-json",
        _MALFORMED_TITLE,
        detail,
        [FieldProblem("", detail, "malformed_json")],
    )


def _refuse_constant(name: str) -> Any:
    raise _RefusedJson(
        "The body uses NaN or Infinity, which are not JSON numbers; send a "
        "finite number."
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _RefusedJson(
            "The body holds a number too large for a 64-bit float; send a "
            "smaller number."
        )
    return value


def _object_without_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _RefusedJson(
            "An object in the body repeats a key; send every field once."
        )
    return document


def _check_contents(document: dict[str, Any]) -> None:
    """Refuse nesting, surrogates and NUL characters, naming the place."""
    pending: list[tuple[Any, list[Any]]] = [(document, [])]
    while pending:
        value, path = pending.pop()
        if len(path) > MAX_DEPTH:
            raise _invalid(path, f"nests deeper than {MAX_DEPTH} levels", "depth")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, path)
                pending.append((item, [*path, key]))
        elif isinstance(value, list):
            pending.extend((item, [*path, index]) for index, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path)


def _check_text(text: str, path: list[Any]) -> None:
    if "\x00" in text:
        raise _invalid(
            path, "holds a NUL character (\\u0000); remove it", "nul_character"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid(
            path,
            "holds an unpaired UTF-16 surrogate escape; send valid Unicode",
            "unpaired_surrogate",
        ) from None


def _invalid(path: list[Any], detail: str, reason: str) -> ApiProblem:
    where = pointer(path)
    return ApiProblem(
        400,
        "invalid-body",
        "Invalid request",
        f"{where or 'The body'} {detail}.",
        [FieldProblem(where, detail, reason)],
    )
