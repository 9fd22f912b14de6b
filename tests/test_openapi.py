"""The OpenAPI document at /openapi.json, against the app and ``schemas/``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import falcon
import pytest
from falcon import testing
from openapi_spec_validator import validate

from cavra_core import Engine, validation
from cavra_server import create_app

PROBLEM_STATUSES = {
    "400",
    "401",
    "403",
    "404",
    "405",
    "409",
    "413",
    "415",
    "422",
    "500",
}


@pytest.fixture
def app(sqlite_url: str) -> Iterator[falcon.App]:
    engine = Engine(sqlite_url, {}, load_entry_points=False)
    yield create_app(engine)
    engine.close()


@pytest.fixture
def document(app: falcon.App) -> dict[str, Any]:
    return testing.TestClient(app).simulate_get("/openapi.json").json


def app_routes(app: falcon.App) -> dict[str, set[str]]:
    """URI template -> methods with a responder, read from Falcon's router."""
    # NOTE(tests): Falcon has no public listing of routes; its compiled
    # router's node tree is read directly.
    routes: dict[str, set[str]] = {}
    pending = list(app._router._roots)
    while pending:
        node = pending.pop()
        pending.extend(node.children)
        if node.resource is None:
            continue
        routes[node.uri_template] = {
            method.lower()
            for method in falcon.COMBINED_METHODS
            if hasattr(node.resource, f"on_{method.lower()}")
        }
    return routes


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, operation


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    target: Any = document
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def test_the_document_is_valid_openapi_3_1(document) -> None:
    validate(document)

    assert document["openapi"].startswith("3.1.")


def test_the_document_is_served_as_json(app) -> None:
    response = testing.TestClient(app).simulate_get("/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"


def test_every_route_of_the_app_is_documented(app, document) -> None:
    routes = app_routes(app)

    documented = {
        path: {method for method in item if method != "parameters"}
        for path, item in document["paths"].items()
    }

    assert documented == routes


def test_every_component_schema_is_a_schema_of_the_schemas_folder(document) -> None:
    components = document["components"]["schemas"]

    assert set(components) == set(validation.schema_index())
    for name, schema in components.items():
        assert schema["title"] == validation.load_schema(name)["title"]
        assert "$id" not in schema and "$schema" not in schema


def test_every_ref_resolves_inside_the_document(document) -> None:
    found = list(refs(document))

    for ref in found:
        assert resolve(document, ref) is not None
    assert any("/$defs/" in ref for ref in found)


def test_every_body_schema_is_a_component(document) -> None:
    schemas = [
        media["schema"]
        for _, _, operation in operations(document)
        for media in operation.get("requestBody", {}).get("content", {}).values()
    ]

    assert schemas
    assert all(schema["$ref"].startswith("#/components/schemas/") for schema in schemas)


def test_every_operation_documents_problem_answers_as_problem_json(document) -> None:
    for path, method, operation in operations(document):
        problems = {status for status in operation["responses"] if status >= "400"}

        assert {"400", "405", "500"} <= problems, (path, method)
        assert problems <= PROBLEM_STATUSES, (path, method)
        for status in problems:
            response = resolve(document, operation["responses"][status]["$ref"])
            # Only a body far over the limit gets the HTTP server's plain text.
            extra = {"text/plain"} if status == "413" else set()
            assert set(response["content"]) == {"application/problem+json"} | extra


def test_every_body_taking_operation_documents_413_and_415(document) -> None:
    for path, method, operation in operations(document):
        if "requestBody" in operation:
            assert {"413", "415"} <= set(operation["responses"]), (path, method)


def test_every_parameter_has_a_schema_and_a_required_flag(document) -> None:
    parameters = [
        parameter
        for item in document["paths"].values()
        for parameter in item.get("parameters", [])
    ] + [
        parameter
        for _, _, operation in operations(document)
        for parameter in operation.get("parameters", [])
    ]

    assert parameters
    for parameter in parameters:
        assert "schema" in parameter and "required" in parameter
        assert parameter["required"] is (parameter["in"] == "path")


def test_templated_paths_declare_their_path_parameters(document) -> None:
    for path, item in document["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}

        assert declared == {
            part[1:-1] for part in path.split("/") if part.startswith("{")
        }, path
