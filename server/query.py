"""
Query parameters: declared once, used to parse requests and to describe them.

A :class:`QueryParameter` carries the parser that reads one parameter and the
schema the OpenAPI document shows for it. :func:`read_query` reads every
declared parameter of a request and refuses, all at once, unknown names,
repeated names, NUL characters and values a parser rejects: one 400 whose
``errors`` name each parameter and never repeat its value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import falcon

from cavra_core import redaction, validation
from cavra_core.errors import FieldProblem, InvalidInput
from cavra_core.paging import decode_cursor
from cavra_server.problems import ApiProblem

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

_DIGITS = re.compile(r"[0-9]{1,6}")
_CONNECTOR_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")
_SHOWN_NAME = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")
_INT64 = (-(2**63), 2**63 - 1)


class ParameterError(ValueError):
    """A parameter's value cannot be used; ``detail`` says what it must be."""

    def __init__(self, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


@dataclass(frozen=True)
class QueryParameter:
    """
    One optional query parameter of an operation.

    Attributes:
        name: the parameter's name in the query string.
        description: what it does, for the OpenAPI document.
        schema: its JSON Schema, for the OpenAPI document.
        parse: turns the raw text into the value, raising :class:`ParameterError`.
        default: the value when the parameter is absent.
    """

    name: str
    description: str
    schema: dict[str, Any]
    parse: Callable[[str], Any]
    default: Any = None


def read_query(
    req: falcon.Request, parameters: Sequence[QueryParameter]
) -> dict[str, Any]:
    """
    The values of ``parameters`` in the query of ``req``, defaults filled in.

    Raises:
        ApiProblem: 400 listing every parameter that is unknown, repeated or
            has a value its parser refuses.
    """
    declared = {parameter.name: parameter for parameter in parameters}
    problems: list[FieldProblem] = []
    values = {parameter.name: parameter.default for parameter in parameters}

    for name, raw in req.params.items():
        safe = _SHOWN_NAME.fullmatch(name) and not redaction.find_problems(name)
        shown = name if safe else "unnamed"
        if name not in declared:
            known = ", ".join(declared) or "none"
            problems.append(
                _problem(
                    shown,
                    f"is not a parameter of this operation (it takes: {known}); "
                    "remove it",
                    "unknown_parameter",
                )
            )
            continue
        if isinstance(raw, list):
            problems.append(
                _problem(name, "is given more than once; send it once", "repeated")
            )
            continue
        if "\x00" in raw:
            problems.append(
                _problem(name, "holds a NUL character; remove it", "nul_character")
            )
            continue
        try:
            values[name] = declared[name].parse(raw)
        except ParameterError as error:
            problems.append(_problem(name, error.detail, error.reason))

    if not problems:
        problems.extend(_check_time_range(values))
    if problems:
        raise ApiProblem(
            400,
            "invalid-query",
            "Invalid query parameter",
            "The query string cannot be used as sent; fix the parameters "
            "listed under errors.",
            problems,
        )
    return values


def _problem(name: str, detail: str, reason: str) -> FieldProblem:
    return FieldProblem("", detail, reason, parameter=name)


def _check_time_range(values: dict[str, Any]) -> list[FieldProblem]:
    since, until = values.get("since"), values.get("until")
    if since is not None and until is not None and until <= since:
        return [_problem("until", "must be later than since", "time_order")]
    return []


# -- parsers ---------------------------------------------------------------------


def parse_limit(maximum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not _DIGITS.fullmatch(raw) or not 1 <= int(raw) <= maximum:
            raise ParameterError(
                f"must be a whole number from 1 to {maximum}", "limit_range"
            )
        return int(raw)

    return parse


def parse_boolean(raw: str) -> bool:
    if raw not in ("true", "false"):
        raise ParameterError("must be true or false", "boolean")
    return raw == "true"


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ParameterError("must be one of: " + ", ".join(choices), "enum")
        return raw

    return parse


def parse_time(raw: str) -> datetime:
    if len(raw) > 40:
        raise ParameterError(f"must be {validation.DATE_TIME_HINT}", "date_time")
    try:
        return validation.parse_time(raw)
    except ValueError:
        raise ParameterError(
            f"must be {validation.DATE_TIME_HINT}", "date_time"
        ) from None


def parse_connector_id(raw: str) -> str:
    if not _CONNECTOR_ID.fullmatch(raw):
        raise ParameterError(
            "must be a connector id: 1-100 lower-case letters, digits, '_', '.' "
            "or '-', starting with a letter or digit",
            "pattern",
        )
    return raw


def parse_cursor(id_prefix: str) -> Callable[[str], str]:
    """A cursor issued for this list: its ids start with ``id_prefix``."""

    def parse(raw: str) -> str:
        refused = ParameterError(
            "is not a cursor this list issued; pass next_cursor from the "
            "previous page unchanged",
            "invalid_cursor",
        )
        if not 1 <= len(raw) <= 512:
            raise refused
        try:
            micros, row_id = decode_cursor(raw)
        except InvalidInput:
            raise refused from None
        if not row_id.startswith(id_prefix) or not _INT64[0] <= micros <= _INT64[1]:
            raise refused
        return raw

    return parse


# -- the parameters of the API ---------------------------------------------------

_TIME_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    "(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$",
    "maxLength": 40,
}


def limit_parameter(maximum: int = MAX_LIMIT) -> QueryParameter:
    return QueryParameter(
        "limit",
        f"Most items on one page, 1 to {maximum}.",
        {"type": "integer", "minimum": 1, "maximum": maximum, "default": DEFAULT_LIMIT},
        parse_limit(maximum),
        DEFAULT_LIMIT,
    )


def cursor_parameter(id_prefix: str) -> QueryParameter:
    return QueryParameter(
        "cursor",
        "next_cursor of the previous page, unchanged; absent for the first page.",
        {"type": "string", "minLength": 1, "maxLength": 512},
        parse_cursor(id_prefix),
    )


def since_parameter(what: str) -> QueryParameter:
    return QueryParameter(
        "since",
        f"Only {what} at or after this time (RFC 3339 with an offset).",
        _TIME_SCHEMA,
        parse_time,
    )


def until_parameter(what: str) -> QueryParameter:
    return QueryParameter(
        "until",
        f"Only {what} before this time (RFC 3339 with an offset).",
        _TIME_SCHEMA,
        parse_time,
    )


def parse_prefixed_id(prefix: str) -> Callable[[str], str]:
    """An id of one kind: ``prefix`` and then 32 lower-case hex digits."""
    pattern = re.compile(re.escape(prefix) + r"_[0-9a-f]{32}")

    def parse(raw: str) -> str:
        if not pattern.fullmatch(raw):
            raise ParameterError(
                f"must be an id like {prefix}_ followed by 32 hex digits", "pattern"
            )
        return raw

    return parse


def id_parameter(name: str, description: str, prefix: str, ref: str) -> QueryParameter:
    """A filter by one id, e.g. ``run_id`` (``wr_...``)."""
    return QueryParameter(name, description, {"$ref": ref}, parse_prefixed_id(prefix))
