"""Keyset paging: opaque cursors that carry the last row's sort key."""

from __future__ import annotations

import base64
import binascii
import re

from cavra_core.errors import FieldProblem, InvalidInput

_KEY = re.compile(r"^(\d{1,19}):([a-z]{2,3}_[0-9a-f]{32})$")


def encode_cursor(micros: int, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{micros}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, parameter: str = "cursor") -> tuple[int, str]:
    """The (time, id) a cursor carries; a cursor not made by cavra is refused."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    match = _KEY.match(text)
    if not match or int(match.group(1)) >= 2**63:
        raise InvalidInput(
            f"{parameter} is not a cursor cavra issued; pass next_cursor from the "
            "previous page unchanged",
            [FieldProblem("", "is not a valid cursor", "invalid_cursor", parameter)],
        )
    return int(match.group(1)), match.group(2)
