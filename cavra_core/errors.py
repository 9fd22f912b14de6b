"""
Domain errors. The HTTP layer maps each kind to a status once; the command
line prints them as messages. None of them carries a value from the input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """
    What is wrong at one place of the input, and how to fix it.

    ``pointer`` is a JSON pointer into the body; for a query parameter it is
    empty and ``parameter`` names it instead.
    """

    pointer: str
    detail: str
    reason: str | None = None
    parameter: str | None = None

    def as_document(self) -> dict[str, str]:
        if self.parameter:
            document = {"parameter": self.parameter, "detail": self.detail}
        else:
            document = {"pointer": self.pointer, "detail": self.detail}
        if self.reason:
            document["reason"] = self.reason
        return document


class CavraError(Exception):
    """Base class: ``title`` is short, ``detail`` says how to fix the call."""

    title = "Request failed"

    def __init__(self, detail: str, problems: list[FieldProblem] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.problems = problems or []


class InvalidInput(CavraError):
    """The document is malformed or breaks its schema (HTTP 400)."""

    title = "Invalid request"


class UnprocessableInput(CavraError):
    """The document is well formed but cannot be applied as it stands (HTTP 422)."""

    title = "Request cannot be applied"


class NotFound(CavraError):
    """An id names nothing that exists (HTTP 404)."""

    title = "Not found"


class Conflict(CavraError):
    """The request conflicts with the state of the store (HTTP 409)."""

    title = "Conflict"


class Forbidden(CavraError):
    """The caller may not do this, whoever asks (HTTP 403): e.g. self-approval."""

    title = "Forbidden"
