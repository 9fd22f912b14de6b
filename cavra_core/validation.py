"""
Validation of every document that enters or leaves cavra against ``schemas/``.

Schemas are draft 2020-12 files shipped in the ``cavra_schemas`` package and
looked up by the short names of ``index.json``. Format checking is on, and a
``date-time`` must carry a UTC offset. Error messages are built from the
schema, never from the offending value, so nothing from the input is echoed.

Two validators read the same schemas. ``jsonschema_rs`` (compiled, Rust)
answers first, whether a document is valid; ``jsonschema`` describes what is
wrong once a document has been refused, because its errors carry what the
messages and JSON pointers below are built from, and it judges alone the few
documents that are not plain JSON values (see :func:`_is_plain_json`). Both
check formats with the same Python functions. ``tests/test_validation.py``
holds the two to the same answers on every schema.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urljoin

import jsonschema
import jsonschema_rs
import referencing
from jsonschema import Draft202012Validator, FormatChecker

from cavra_core.errors import FieldProblem, InvalidInput

log = logging.getLogger(__name__)

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
DATE_TIME_HINT = "an RFC 3339 date-time with an offset, e.g. 2026-12-03T10:00:00Z"
OUT_OF_RANGE = "must lie between 1970-01-01 and 9000-01-01 (UTC)"

format_checker = FormatChecker()


@format_checker.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parse_time(value)  # raises ValueError for anything but an RFC 3339 time
    return True


#: Times cavra accepts, in UTC: wide enough for any evidence, narrow enough
#: that no arithmetic on them can overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 date-time; no offset, or a year out of range, is refused."""
    if not _RFC3339.match(value):
        raise ValueError(f"must be {DATE_TIME_HINT}")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
        if parsed.tzinfo is None:
            raise ValueError(f"must be {DATE_TIME_HINT}")
        parsed = parsed.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(OUT_OF_RANGE) from exc
    if not EARLIEST <= parsed < LATEST:
        raise ValueError(OUT_OF_RANGE)
    return parsed


def _schema_files() -> Any:
    return resources.files("cavra_schemas")


@cache
def _registry() -> referencing.Registry:
    registry = referencing.Registry()
    for entry in _schema_files().iterdir():
        if not entry.name.endswith(".json") or entry.name == "index.json":
            continue
        schema = json.loads(entry.read_text(encoding="utf-8"))
        resource = referencing.Resource.from_contents(schema)
        registry = registry.with_resource(schema["$id"], resource)
    return registry


@cache
def _compiled_registry() -> jsonschema_rs.Registry:
    resources_by_id = []
    for entry in _schema_files().iterdir():
        if not entry.name.endswith(".json") or entry.name == "index.json":
            continue
        schema = json.loads(entry.read_text(encoding="utf-8"))
        resources_by_id.append((schema["$id"], schema))
    return jsonschema_rs.Registry(resources_by_id)


@cache
def schema_index() -> dict[str, str]:
    """Short document name -> schema file name."""
    return json.loads((_schema_files() / "index.json").read_text(encoding="utf-8"))


@cache
def load_schema(name: str) -> dict[str, Any]:
    file_name = schema_index()[name]
    return json.loads((_schema_files() / file_name).read_text(encoding="utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    """
    The validator of one document, its references resolved once.

    PERF(lists): jsonschema resolves a ``$ref`` through the registry on
    every use, which doubles the cost of checking a page of 50 records; the
    schemas hold no recursive references, so they are inlined up front.
    """
    schema = load_schema(name)
    return Draft202012Validator(
        _inline(schema, schema["$id"], 0),
        registry=_registry(),
        format_checker=format_checker,
    )


@cache
def compiled_validator(name: str) -> jsonschema_rs.Validator:
    """
    The compiled validator of one document, its references resolved once.

    PERF(lists): ``jsonschema`` takes 1.5-2 ms per worker run of a page (each
    with its selected retries) and most of a request's time; the compiled
    validator takes a few percent of that. Formats are checked by the same
    functions as ``jsonschema``'s (:func:`_compiled_formats`).
    """
    return jsonschema_rs.Draft202012Validator(
        load_schema(name),
        registry=_compiled_registry(),
        formats=_compiled_formats(),
        validate_formats=True,
        offline=True,
    )


@cache
def _compiled_formats() -> dict[str, Any]:
    """
    Format checks for ``jsonschema_rs``, each the one ``jsonschema`` applies.

    Every format our schemas name gets an entry, so ``jsonschema_rs``
    applies none of its own: a format ``format_checker`` checks is checked by
    the very same function; one it leaves unchecked (``json-pointer`` and
    ``uri-reference``, whose checkers need packages cavra does not install)
    is left unchecked here too. The JSON pointer fields carry a pattern that
    spells out RFC 6901's syntax, so they are checked all the same.
    """
    names = set()
    for entry in _schema_files().iterdir():
        if entry.name.endswith(".json") and entry.name != "index.json":
            _collect_formats(json.loads(entry.read_text(encoding="utf-8")), names)
    return {name: _format_function(name) for name in sorted(names)}


def _collect_formats(node: Any, names: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _collect_formats(item, names)
    elif isinstance(node, dict):
        if isinstance(node.get("format"), str):
            names.add(node["format"])
        for key, value in node.items():
            if key not in ("enum", "const"):
                _collect_formats(value, names)


def _format_function(name: str) -> Any:
    """``format_checker``'s answer for format ``name``, as a function of a string."""
    if name not in format_checker.checkers:
        return _unchecked
    function, raises = format_checker.checkers[name]

    def conforms(value: str) -> bool:
        # What FormatChecker.conforms does, without its lookup and error object.
        try:
            return bool(function(value))
        except raises:
            return False

    return conforms


def _unchecked(value: str) -> bool:
    return True


def _compiled_verdict(name: str, document: Any) -> bool | None:
    """
    ``jsonschema_rs``'s answer: valid or not, or None where ``jsonschema`` decides.

    ``jsonschema`` decides documents that are not plain JSON values, on which
    the two may answer differently (``jsonschema_rs`` reads a tuple as an
    array, compares infinity with a maximum as if it were finite, and refuses
    NaN as a number), and any document ``jsonschema_rs`` cannot read (a lone
    surrogate, a key that is not a string) or fails on.
    """
    if not _is_plain_json(document):
        return None
    try:
        return compiled_validator(name).is_valid(document)
    except Exception as exc:  # noqa: BLE001 - jsonschema decides instead
        log.debug(
            "compiled validator failed name=%s error=%s", name, type(exc).__name__
        )
        return None


_isfinite = math.isfinite


def _is_plain_json(document: Any) -> bool:
    """
    Whether ``document`` is made only of what ``json.loads`` returns.

    That is: dicts with string keys, lists, strings, integers, booleans,
    ``None`` and finite floats, exactly those types. About 0.5 ms for a
    page of 50 worker runs.
    """
    stack = [document]
    pop = stack.pop
    extend = stack.extend
    while stack:
        value = pop()
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    return False
            extend(value.values())
        elif kind is list:
            extend(value)
        elif kind is float:
            if not _isfinite(value):
                return False
        else:
            return False
    return True


def _compiled_problem(name: str, document: Any) -> FieldProblem:
    """
    Where ``jsonschema_rs`` refuses a document that ``jsonschema`` accepts.

    The two are held to the same answers, so this is a bug in one of them;
    the document is refused all the same, as the stricter answer.
    """
    log.error("validators disagree name=%s: only jsonschema_rs refuses", name)
    try:
        first = next(iter(compiled_validator(name).iter_errors(document)))
        where = pointer(first.instance_path)
    except Exception:  # noqa: BLE001 - the refusal stands without a place
        where = ""
    return FieldProblem(where, "is not valid here", "schema")


def _inline(node: Any, base: str, depth: int) -> Any:
    """``node`` with every ``$ref`` replaced by what it points to."""
    if depth > 50:
        raise RecursionError("schema references nest too deep to inline")
    if isinstance(node, list):
        return [_inline(item, base, depth) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        reference = node["$ref"]
        resolved = _registry().resolver(base_uri=base).lookup(reference)
        file_part = reference.split("#", 1)[0]
        target_base = urljoin(base, file_part) if file_part else base
        inlined = _inline(resolved.contents, target_base, depth + 1)
        inlined = {k: v for k, v in inlined.items() if k not in ("$id", "$schema")}
        siblings = {
            key: _inline(value, base, depth)
            for key, value in node.items()
            if key not in ("$ref", "title", "description")
        }
        if siblings:
            return {"allOf": [inlined], **siblings}
        return inlined
    return {
        key: (value if key in ("enum", "const") else _inline(value, base, depth))
        for key, value in node.items()
    }


def check(name: str, document: Any) -> None:
    """Raise :class:`InvalidInput` listing every problem of ``document``."""
    verdict = _compiled_verdict(name, document)
    if verdict:
        return
    errors = sorted(
        validator(name).iter_errors(document), key=lambda error: list(error.path)
    )
    if errors:
        problems = [problem for error in errors for problem in _describe(error)]
    elif verdict is None:
        return
    else:
        problems = [_compiled_problem(name, document)]
    raise InvalidInput(
        f"The request body does not match the {name} schema: "
        + "; ".join(f"{p.pointer or '/'} {p.detail}" for p in problems[:5]),
        problems,
    )


class OutputSchemaError(RuntimeError):
    """A document cavra built breaks its own schema: a bug, never the caller's fault."""


def check_output(name: str, document: Any) -> None:
    """Validate a document on its way out; a failure is a bug and is raised as one."""
    verdict = _compiled_verdict(name, document)
    if verdict:
        return
    errors = list(validator(name).iter_errors(document))
    if errors:
        where = ", ".join(pointer(error.absolute_path) or "/" for error in errors[:5])
        raise OutputSchemaError(f"{name} document breaks its schema at {where}")
    if verdict is False:
        where = _compiled_problem(name, document).pointer or "/"
        raise OutputSchemaError(f"{name} document breaks its schema at {where}")


def is_valid(name: str, document: Any) -> bool:
    verdict = _compiled_verdict(name, document)
    if verdict is None:
        return validator(name).is_valid(document)
    return verdict


def pointer(parts: Any) -> str:
    """A JSON pointer (RFC 6901) for a path of keys and indexes."""
    return "".join(
        "/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts
    )


def _leaf(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf/anyOf failures, the most specific underlying error."""
    if error.context:
        return min(
            error.context,
            key=lambda sub: (-len(sub.absolute_path), sub.validator != "type"),
        )
    return error


def _describe(error: jsonschema.ValidationError) -> list[FieldProblem]:
    if error.validator in ("oneOf", "anyOf") and error.context:
        types = [
            sub.validator_value for sub in error.context if sub.validator == "type"
        ]
        if len(types) == len(error.context):
            expected = " or ".join(str(t) for t in types)
            return [FieldProblem(pointer(error.absolute_path), f"must be {expected}")]
        return _describe(_leaf(error))

    path = list(error.absolute_path)
    kind = error.validator
    value = error.validator_value
    instance = error.instance

    if kind == "required":
        missing = [key for key in value if key not in instance]
        return [
            FieldProblem(pointer([*path, key]), "is required", "required")
            for key in missing
        ]
    if kind in ("additionalProperties", "unevaluatedProperties"):
        known = set(error.schema.get("properties", {}))
        extra = sorted(key for key in instance if key not in known)
        return [
            FieldProblem(
                pointer([*path, key]),
                "is not a known field; remove it (see the schema for the fields "
                "this document takes)",
                "unknown_field",
            )
            for key in extra
        ]
    messages = {
        "type": lambda: f"must be of type {_join(value)}",
        "enum": lambda: f"must be one of: {_join(value)}",
        "const": lambda: f"must be {json.dumps(value)}",
        "minimum": lambda: f"must be at least {value}",
        "maximum": lambda: f"must be at most {value}",
        "exclusiveMinimum": lambda: f"must be greater than {value}",
        "exclusiveMaximum": lambda: f"must be less than {value}",
        "minLength": lambda: f"must be at least {value} characters long",
        "maxLength": lambda: f"must be at most {value} characters long",
        "minItems": lambda: f"must hold at least {value} items",
        "maxItems": lambda: f"must hold at most {value} items",
        "uniqueItems": lambda: "must not repeat an item",
        "pattern": lambda: (
            f"has characters or a shape this field does not allow (allowed: {value})"
        ),
        "format": lambda: (
            f"must be {DATE_TIME_HINT}, between 1970 and 9000"
            if value == "date-time"
            else f"must be a valid {value}"
        ),
        "minProperties": lambda: f"must hold at least {value} fields",
        "maxProperties": lambda: f"must hold at most {value} fields",
    }
    detail = messages.get(kind, lambda: "is not valid here")()
    return [FieldProblem(pointer(path), detail, kind)]


def _join(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)
