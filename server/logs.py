"""
Log output for the command line and the services: plain text or JSON lines.

cavra's log lines are a short message followed by ``key=value`` pairs of ids,
counts and codes (``worker run finished run_id=wr_… selected=2``), never a
secret or a metadata value. In JSON mode each record becomes one object on
one line, with ``time`` (UTC, RFC 3339), ``level``, ``logger``, ``message``
(the words of the line) and each pair as a field of its own, so a log
collector can index them without parsing text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_PAIR = re.compile(r"([a-z_][a-z0-9_]*)=(\S*)")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")
#: The fields every line has; a pair of the same name is kept under ``field_``.
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})
_WORDS = {"True": True, "False": False, "None": None}
#: Loggers whose messages follow cavra's ``key=value`` convention.
_CAVRA_LOGGERS = ("cavra_core", "cavra_server", "cavra_webhook", "cavra_siem")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record, with cavra's ``key=value`` pairs as fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields: dict[str, Any] = {}
        if record.name.split(".", 1)[0] in _CAVRA_LOGGERS:
            message, fields = split_pairs(message)
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in fields.items():
            document[f"field_{key}" if key in _RESERVED else key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def split_pairs(message: str) -> tuple[str, dict[str, Any]]:
    """
    The words of ``message`` and its ``key=value`` pairs, values typed.

    ``"run finished run_id=wr_1 selected=2"`` gives ``("run finished",
    {"run_id": "wr_1", "selected": 2})``; numbers become numbers and
    ``True``, ``False`` and ``None`` JSON's literals.
    """
    words = []
    fields: dict[str, Any] = {}
    for token in message.split():
        pair = _PAIR.fullmatch(token)
        if pair is None:
            words.append(token)
            continue
        fields[pair.group(1)] = _typed(pair.group(2))
    return " ".join(words), fields


def _typed(text: str) -> Any:
    if text in _WORDS:
        return _WORDS[text]
    if _NUMBER.fullmatch(text):
        return float(text) if "." in text else int(text)
    return text


def configure_logging(level: str, log_format: str = "text") -> None:
    """
    Send log records of ``level`` and above to standard error, as text or JSON.

    Like :func:`logging.basicConfig`, it leaves a root logger that already
    has handlers alone (an embedding program's, or pytest's).
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    # urllib3's debug lines carry hosts and paths, which may hold secrets;
    # peewee's carry every SQL statement with its values.
    for noisy in ("urllib3", "peewee"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.root.level))
