"""
Validation of every document that enters or leaves cavra against ``schemas/``.

Schemas are draft 2020-12 files shipped in the ``cavra_schemas`` package and
looked up by the short names of ``index.json``. Format checking is on, and a
``date-time`` must carry a UTC offset. Error messages are built from the
schema, never from the offending value, so nothing from the input is echoed.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urljoin

import jsonschema
import referencing
from jsonschema import Draft202012Validator, FormatChecker

from cavra_core.errors import FieldProblem, InvalidInput

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
    if not _RFC3339.match(value):
        return False
    parse_time(value)
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
    errors = sorted(
        validator(name).iter_errors(document), key=lambda error: list(error.path)
    )
    if not errors:
        return
    problems = [problem for error in errors for problem in _describe(error)]
    raise InvalidInput(
        f"The request body does not match the {name} schema: "
        + "; ".join(f"{p.pointer or '/'} {p.detail}" for p in problems[:5]),
        problems,
    )


class OutputSchemaError(RuntimeError):
    """A document cavra built breaks its own schema: a bug, never the caller's fault."""


def check_output(name: str, document: Any) -> None:
    """Validate a document on its way out; a failure is a bug and is raised as one."""
    errors = list(validator(name).iter_errors(document))
    if errors:
        where = ", ".join(pointer(error.absolute_path) or "/" for error in errors[:5])
        raise OutputSchemaError(f"{name} document breaks its schema at {where}")


def is_valid(name: str, document: Any) -> bool:
    return validator(name).is_valid(document)


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
