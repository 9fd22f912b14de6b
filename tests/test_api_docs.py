"""
docs/api.md against the OpenAPI document the real app serves.

The reference documents each operation under a heading of the form
``### `METHOD PATH` ``, where ``...`` stands for the API prefix
(``### `POST .../retry-plan` ``) and the service's own paths are written in
full (``### `GET /healthz` ``). These tests hold the two in step: every
operation of ``/openapi.json`` has its section, every section and every path
the text mentions exists in the app, every request and response schema of an
operation is linked from its section, and every relative link leads to a file
of the repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from cavra_core import Engine, validation
from cavra_server import create_app
from cavra_server.paths import API_PREFIX

DOCS = Path(__file__).resolve().parent.parent / "docs"
API_DOC = DOCS / "api.md"
#: How docs/api.md abbreviates the prefix every API path starts with.
SHORT_PREFIX = "..."
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$", re.MULTILINE)
_OPERATION_HEADING = re.compile(r"^`([A-Z]+) (\S+)`$")
_SCHEMA_REF = "#/components/schemas/"
# A path written with the short prefix (".../worker-runs/wr_…"), or in full.
_MENTIONED_PATH = re.compile(
    r"(?<![\w.])\.\.\.((?:/[A-Za-z0-9_{}.~-]+)+)"
    r"|" + re.escape(API_PREFIX) + r"((?:/[A-Za-z0-9_{}.~-]+)*)"
)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api-docs')}/cavra.db"
    engine = Engine(url, {}, load_entry_points=False)
    try:
        response = testing.TestClient(create_app(engine)).simulate_get("/openapi.json")
    finally:
        engine.close()
    assert response.status_code == 200
    return response.json


@pytest.fixture(scope="module")
def text() -> str:
    return API_DOC.read_text(encoding="utf-8")


def full_path(path: str) -> str:
    """The path as the OpenAPI document writes it."""
    if path.startswith(SHORT_PREFIX):
        return API_PREFIX + path[len(SHORT_PREFIX) :]
    return path


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method.upper(), path, operation


def sections(text: str) -> dict[tuple[str, str], str]:
    """(METHOD, full path) -> the text of its section, up to the next heading
    of the same or a higher level."""
    headings = list(_HEADING.finditer(text))
    found: dict[tuple[str, str], str] = {}
    for index, heading in enumerate(headings):
        match = _OPERATION_HEADING.match(heading.group(2))
        if match is None:
            continue
        level = len(heading.group(1))
        end = len(text)
        for later in headings[index + 1 :]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        key = (match.group(1), full_path(match.group(2)))
        assert key not in found, f"{key} is documented twice"
        found[key] = text[heading.end() : end]
    return found


def template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}/]+\})", template)
    return re.compile(
        "".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts)
    )


def schema_files(node: Any) -> Iterator[str]:
    """Files of schemas/ that a part of the OpenAPI document refers to."""
    index = validation.schema_index()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMA_REF):
            yield index[ref[len(_SCHEMA_REF) :].split("/", 1)[0]]
        for value in node.values():
            yield from schema_files(value)
    elif isinstance(node, list):
        for item in node:
            yield from schema_files(item)


def test_every_operation_of_the_openapi_document_has_a_section(document, text) -> None:
    documented = set(sections(text))

    missing = {
        (method, path)
        for method, path, _ in operations(document)
        if (method, path) not in documented
    }

    assert not missing, f"operations without a section in docs/api.md: {missing}"


def test_every_section_documents_an_operation_of_the_app(document, text) -> None:
    served = {(method, path) for method, path, _ in operations(document)}

    unknown = set(sections(text)) - served

    assert not unknown, f"docs/api.md documents operations the app lacks: {unknown}"


def test_every_path_the_text_mentions_exists(document, text) -> None:
    patterns = [template_pattern(path) for path in document["paths"]]
    mentioned = {
        API_PREFIX + (match.group(1) or match.group(2) or "").rstrip(".")
        for match in _MENTIONED_PATH.finditer(text)
    }

    assert len(mentioned) > 10
    unknown = sorted(
        path
        for path in mentioned
        if not any(pattern.fullmatch(path) for pattern in patterns)
    )
    assert not unknown, f"docs/api.md mentions paths the app lacks: {unknown}"


def test_each_section_links_the_schemas_of_its_operation(document, text) -> None:
    documented = sections(text)
    problem_file = validation.schema_index()["problem"]

    for method, path, operation in operations(document):
        section = documented.get((method, path), "")
        wanted = set(schema_files(operation.get("requestBody", {})))
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                wanted |= set(schema_files(response))
        unlinked = {file for file in wanted if f"(../schemas/{file})" not in section}

        assert not unlinked, f"{method} {path}: link {sorted(unlinked)}"
    assert f"(../schemas/{problem_file})" in text


def test_every_relative_link_leads_to_a_file(text) -> None:
    targets = [
        link.split("#", 1)[0]
        for link in _LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", link)
    ]
    schema_links = [target for target in targets if "schemas/" in target]

    assert schema_links
    missing = sorted(
        {target for target in targets if target and not (DOCS / target).is_file()}
    )
    assert not missing, f"docs/api.md links files that do not exist: {missing}"


def test_every_schema_file_linked_is_one_of_the_index(text) -> None:
    files = set(validation.schema_index().values()) | {"index.json"}

    linked = set(re.findall(r"\(\.\./schemas/([^)#\s]+)", text))

    assert linked
    assert linked <= files, sorted(linked - files)


def test_every_anchor_of_the_text_names_one_of_its_headings(text) -> None:
    slugs = {_slug(heading.group(2)) for heading in _HEADING.finditer(text)}
    anchors = {link[1:] for link in _LINK.findall(text) if link.startswith("#")}

    assert anchors
    assert anchors <= slugs, sorted(anchors - slugs)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
