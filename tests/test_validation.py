"""
The two validators of ``cavra_core.validation`` give the same answers.

``jsonschema_rs`` answers whether a document is valid and ``jsonschema``
describes what is wrong, so the two must accept and refuse exactly the same
documents of every schema: the examples of ``test_schemas.py``, mutations of
them, and strings against every pattern and format the schemas use.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_schemas import BAD, GOOD

from cavra_core import validation
from cavra_core.errors import InvalidInput

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
NAME_BY_FILE = {file: name for name, file in validation.schema_index().items()}
#: (document name, example) for every good and bad example with a schema.
EXAMPLES = [
    (NAME_BY_FILE[file], document)
    for file, documents in GOOD.items()
    if file in NAME_BY_FILE
    for document in documents
] + [
    (NAME_BY_FILE[file], document)
    for file, cases in BAD.items()
    if file in NAME_BY_FILE
    for _, document in cases
]
GOOD_NAMES = sorted(
    {NAME_BY_FILE[file] for file, documents in GOOD.items() if file in NAME_BY_FILE}
)


def schema_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of a schema, ``enum`` and ``const`` values left out."""
    if isinstance(node, list):
        for item in node:
            yield from schema_nodes(item)
    elif isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in ("enum", "const"):
                yield from schema_nodes(value)


SCHEMA_FILES = sorted(
    path for path in SCHEMA_DIR.glob("*.json") if path.name != "index.json"
)
PATTERNS = sorted(
    {
        node["pattern"]
        for path in SCHEMA_FILES
        for node in schema_nodes(json.loads(path.read_text(encoding="utf-8")))
        if isinstance(node.get("pattern"), str)
    }
)
FORMATS = sorted(
    {
        node["format"]
        for path in SCHEMA_FILES
        for node in schema_nodes(json.loads(path.read_text(encoding="utf-8")))
        if isinstance(node.get("format"), str)
    }
)


def reference_answer(name: str, document: Any) -> bool:
    return validation.validator(name).is_valid(document)


def compiled_answer(name: str, document: Any) -> bool:
    return validation.compiled_validator(name).is_valid(document)


def assert_same_answer(name: str, document: Any) -> None:
    expected = reference_answer(name, document)

    compiled = compiled_answer(name, document)
    combined = validation.is_valid(name, document)

    assert compiled == expected, (name, expected, document)
    assert combined == expected, (name, expected, document)


# ---- the examples -----------------------------------------------------------


@pytest.mark.parametrize(("name", "document"), EXAMPLES)
def test_both_validators_agree_on_every_example(name: str, document: Any) -> None:
    assert_same_answer(name, document)


def test_every_document_name_has_good_examples_to_compare() -> None:
    missing = sorted(set(validation.schema_index()) - set(GOOD_NAMES))

    assert not missing, f"no good example in test_schemas.GOOD for {missing}"


# ---- mutations of the good examples -------------------------------------------


def paths(document: Any, where: tuple = ()) -> Iterator[tuple]:
    """The path of every value in ``document``, the document itself first."""
    yield where
    if isinstance(document, dict):
        for key, value in document.items():
            yield from paths(value, (*where, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from paths(value, (*where, index))


def value_at(document: Any, path: tuple) -> Any:
    for part in path:
        document = document[part]
    return document


def replaced(document: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    result = copy.deepcopy(document)
    value_at(result, path[:-1])[path[-1]] = value
    return result


def string_variants(text: str) -> list[str]:
    """Strings near ``text``: what a pattern or format most likely gets wrong."""
    return [
        text + "\n",
        "\n" + text,
        text + "\n\n",
        text[:-1],
        text[1:],
        text + text,
        text.upper(),
        text.lower(),
        text.replace("Z", "z").replace("T", "t"),
        text.replace("Z", "+00:00"),
        text.replace("Z", "+14:00"),
        text.replace("Z", ""),
        text + " ",
        " " + text,
        text + "\x00",
        text + "\x7f",
        text + "\u2028",
        text + "é",
        text.replace("-", "/"),
        text.replace("0", "9"),
        text.replace("1", "0"),
        "",
    ]


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 99, 100, 101, 599, 600, 2**31, 2**53, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 1.0, 2.5, -0.1, 1.5, 100.0, 1e300]),
    st.text(max_size=30),
    st.text(alphabet="abc_-.:/ ~01\n\t\x00\x7fZT+", max_size=12),
    st.sampled_from(
        [
            "2025-03-01T10:00:00Z",
            "2025-03-01T10:00:00",
            "2025-02-30T10:00:00Z",
            "2025-03-01T24:00:00Z",
            "2025-03-01T23:59:60Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "8999-12-31T23:59:59.999999999Z",
            "9000-01-01T00:00:00Z",
            "2025-03-01T10:00:00+24:00",
            "2025-03-01T10:00:00.1234567890Z",
            "about:blank",
            "/retry_policy/jitter",
            "lin_" + "0" * 32,
            "rd_" + "f" * 32,
            "ab" * 32,
        ]
    ),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=8,
)


@st.composite
def mutated(draw: st.DrawFn, name: str) -> Any:
    """A good example of ``name`` with one to three values changed."""
    file = validation.schema_index()[name]
    document = copy.deepcopy(draw(st.sampled_from(GOOD[file])))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        path = draw(st.sampled_from(list(paths(document))))
        current = value_at(document, path)
        choice = draw(st.integers(min_value=0, max_value=9))
        if choice <= 2 and isinstance(current, str):
            value = draw(st.sampled_from(string_variants(current)))
        elif choice == 3 and isinstance(current, dict) and current:
            key = draw(st.sampled_from(sorted(current)))
            value = {k: v for k, v in current.items() if k != key}
        elif choice == 4 and isinstance(current, dict):
            value = {**current, draw(st.text(max_size=10)): draw(JSON_SCALARS)}
        elif choice == 5 and isinstance(current, list) and current:
            value = [*current, current[0]]
        elif choice == 6 and isinstance(current, list):
            value = []
        elif choice == 7 and isinstance(current, int | float):
            value = draw(st.sampled_from([current - 1, current + 1, -current, 0]))
            value = value if isinstance(current, int) else float(value)
        else:
            value = draw(JSON_VALUES)
        document = replaced(document, path, value)
    return document


@pytest.mark.parametrize("name", GOOD_NAMES)
@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_both_validators_agree_on_mutated_documents(name: str, data: Any) -> None:
    document = data.draw(mutated(name))

    assert_same_answer(name, document)


# ---- patterns and formats -----------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_compiles_in_both_engines(pattern: str) -> None:
    re.compile(pattern)
    jsonschema_rs.validator_for({"type": "string", "pattern": pattern})


def python_matches(pattern: str, text: str) -> bool:
    """What ``jsonschema`` does with a pattern: ``re.search``."""
    return re.search(pattern, text) is not None


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_every_pattern_means_the_same_in_both_engines(pattern: str, data: Any) -> None:
    compiled = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
    matching = st.from_regex(pattern)
    text = data.draw(
        st.one_of(
            matching,
            matching.flatmap(lambda text: st.sampled_from(string_variants(text))),
            st.text(max_size=20),
            st.text(alphabet="aZ09_-.:/~ \n\r\t\x00\x1f\x7f\u0085é", max_size=12),
        )
    )

    assert compiled.is_valid(text) == python_matches(pattern, text), (pattern, text)


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "abc\n",
        "abc\n\n",
        "\nabc",
        "abc\r",
        "abc\r\n",
        "abc\u2028",
        "abc\u0085",
        "",
    ],
)
def test_dollar_with_a_lookahead_refuses_a_trailing_newline_in_both(text: str) -> None:
    pattern = "^[a-z]+$(?!\\n)"
    compiled = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})

    assert compiled.is_valid(text) == python_matches(pattern, text) == (text == "abc")


def test_every_format_is_checked_by_the_functions_jsonschema_uses() -> None:
    formats = validation._compiled_formats()

    assert sorted(formats) == FORMATS
    for name, function in formats.items():
        if name in validation.format_checker.checkers:
            assert function("2025-03-01T10:00:00Z") == (
                validation.format_checker.conforms("2025-03-01T10:00:00Z", name)
            )
        else:
            assert function is validation._unchecked, name


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-03-01T10:00:00Z",
        "2025-03-01T10:00:00.5+05:30",
        "2025-03-01t10:00:00z",
        "2025-03-01T10:00:00",
        "2025-03-01T10:00:00Z\n",
        "2025-02-29T10:00:00Z",
        "2024-02-29T10:00:00Z",
        "2025-13-01T10:00:00Z",
        "2025-03-01T23:59:60Z",
        "1969-12-31T23:59:59Z",
        "1970-01-01T00:00:00Z",
        "1970-01-01T00:30:00+01:00",
        "8999-12-31T23:59:59.999999999Z",
        "9000-01-01T00:00:00Z",
        "2025-03-01T10:00:00+23:59",
        "2025-03-01T10:00:00+24:00",
    ],
)
def test_both_validators_agree_on_times(stamp: str) -> None:
    document = copy.deepcopy(GOOD["audit-package.json"][0])
    document["generated_at"] = stamp

    assert_same_answer("audit_package", document)


# ---- documents that are not plain JSON ------------------------------------------

POLICY_REQUEST = {"generated_by": "dana", "retry_policy": {"jitter": 0.5}}


@pytest.mark.parametrize(
    ("label", "document"),
    [
        (
            "infinity above a maximum",
            {**POLICY_REQUEST, "retry_policy": {"jitter": 1e999}},
        ),
        (
            "NaN for a number",
            {**POLICY_REQUEST, "retry_policy": {"jitter": float("nan")}},
        ),
        ("a tuple for an array", {"generated_by": ("dana",)}),
        ("an integer key", {"generated_by": "dana", 1: 2}),
        ("a lone surrogate", {"generated_by": "dana\ud800"}),
        ("bytes for a string", {"generated_by": b"dana"}),
    ],
)
def test_jsonschema_decides_documents_that_are_not_plain_json(
    label: str, document: Any
) -> None:
    expected = reference_answer("retry_plan_request", document)

    answer = validation.is_valid("retry_plan_request", document)

    assert answer == expected, label


def test_infinity_above_a_maximum_is_refused_with_its_pointer() -> None:
    document = {**POLICY_REQUEST, "retry_policy": {"jitter": float("inf")}}

    with pytest.raises(InvalidInput) as raised:
        validation.check("retry_plan_request", document)

    assert [p.pointer for p in raised.value.problems] == ["/retry_policy/jitter"]


# ---- errors -------------------------------------------------------------------

INPUT_EXAMPLES = [
    (NAME_BY_FILE[file], label, document)
    for file, cases in BAD.items()
    if file.endswith("-request.json") and file in NAME_BY_FILE
    for label, document in cases
]


@pytest.mark.parametrize(("name", "label", "document"), INPUT_EXAMPLES)
def test_refused_input_names_the_fields_jsonschema_finds(
    name: str, label: str, document: Any
) -> None:
    errors = sorted(
        validation.validator(name).iter_errors(document),
        key=lambda error: list(error.path),
    )
    expected = [p for error in errors for p in validation._describe(error)]

    with pytest.raises(InvalidInput) as raised:
        validation.check(name, document)

    assert raised.value.problems == expected, label
    assert all(p.pointer == "" or p.pointer.startswith("/") for p in expected)


class Refusing:
    """A compiled validator that refuses everything: a disagreement."""

    def is_valid(self, document: Any) -> bool:
        return False

    def iter_errors(self, document: Any) -> Iterator[Any]:
        yield type("Error", (), {"instance_path": ["generated_by"]})()


class Failing:
    """A compiled validator that cannot read the document."""

    def is_valid(self, document: Any) -> bool:
        raise ValueError("unreadable")


def test_input_only_the_compiled_validator_refuses_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(validation, "compiled_validator", lambda name: Refusing())

    with pytest.raises(InvalidInput) as raised:
        validation.check("retry_plan_request", {"generated_by": "dana"})

    assert [p.pointer for p in raised.value.problems] == ["/generated_by"]


def test_output_only_the_compiled_validator_refuses_is_a_bug(monkeypatch) -> None:
    monkeypatch.setattr(validation, "compiled_validator", lambda name: Refusing())

    with pytest.raises(validation.OutputSchemaError, match="/generated_by"):
        validation.check_output("retry_plan_request", {"generated_by": "dana"})


def test_a_document_the_compiled_validator_cannot_read_is_left_to_jsonschema(
    monkeypatch,
) -> None:
    monkeypatch.setattr(validation, "compiled_validator", lambda name: Failing())

    validation.check("retry_plan_request", {"generated_by": "dana"})
    with pytest.raises(InvalidInput):
        validation.check("retry_plan_request", {"generated_by": ""})
