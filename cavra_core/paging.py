"""Keyset paging: opaque cursors that carry the last row's sort key."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cavra_core.errors import FieldProblem, InvalidInput
from cavra_core.store import to_micros

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


def newest_first(
    query: Any,
    time_field: Any,
    id_field: Any,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """
    One page of ``query`` newest first by (time, id), and the next page's cursor.

    PERF(lists): the cursor's condition bounds the time column first, so the
    index on (time, id) is entered at the cursor; the plain "time < t OR
    (time = t AND id < i)" makes SQLite walk the index from the newest row.
    """
    if cursor:
        micros, row_id = decode_cursor(cursor)
        query = query.where(
            (time_field <= micros) & ((time_field < micros) | (id_field < row_id))
        )
    rows = list(query.order_by(time_field.desc(), id_field.desc()).limit(limit + 1))
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(
            to_micros(getattr(last, time_field.name)), getattr(last, id_field.name)
        )
    return rows[:limit], next_cursor
