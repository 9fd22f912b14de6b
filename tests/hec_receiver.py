"""
A fake Splunk HTTP Event Collector on loopback, for tests of the HEC connector.

```python
with FakeHec(tokens={"tok-1"}, acknowledgement=True, confirm_after_polls=2) as hec:
    hec.answer_busy(retry_after="30")      # the next request: 503, code 9
    send(hec.url)                          # refused as busy
    send(hec.url)                          # accepted: {"code": 0, "ackId": 0}
    assert hec.events[0].envelope["event"] == ...
```

It follows HEC's documented behaviour where the connector can meet it:

* ``Authorization: Splunk <token>``: no header is 401 code 2, another scheme
  or no token 401 code 3, a disabled token 403 code 1, an unknown one 403
  code 4. (Splunk also takes Basic authentication and a query string token;
  the fake does not.)
* the channel, from ``X-Splunk-Request-Channel`` or ``?channel=``: required
  while acknowledgement is on (400 code 10) and a GUID whenever present (400
  code 11).
* ``/services/collector/event``: a body of one or more JSON objects. Empty is
  400 code 5; not JSON, not objects, or a ``time`` that is not a number is
  400 code 6; an ``index`` outside ``indexes`` 400 code 7; no ``event`` 400
  code 12; a blank one 400 code 13; ``fields`` that are not strings or lists
  of strings 400 code 15. Every event is checked in that order before any is
  accepted (Splunk does not document its order; it may index the events of a
  batch that precede a bad one). Accepted: 200 code 0, with an ``ackId`` per
  channel, counting from 0, while acknowledgement is on.
* ``/services/collector/ack``: 400 code 14 while acknowledgement is off; a
  body ``{"acks": [ids]}`` (else 400 code 6) answered ``{"acks": {"id":
  bool}}``. An id is confirmed at its ``confirm_after_polls``-th poll (never
  when that is None) and, as on Splunk, forgotten once reported true.
* ``/services/collector/health``: 200 code 17, or 503 code 18 when
  ``healthy`` is false; no token needed.
* any other path: 404 code 404.

:meth:`answer_next` makes the next requests answer with one documented code
(with that code's documented HTTP status and text) before anything above is
checked; :meth:`answer_busy` and :meth:`answer_internal_error` are the common
cases. Every request is recorded, answered or not, and every accepted event
is kept with its channel and ack id.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import socketserver
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

LOOPBACK = "127.0.0.1"
EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATHS = ("/services/collector/health", "/services/collector/health/1.0")

#: Splunk's documented HEC answers: code -> (HTTP status, text).
HEC_ANSWERS: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
    19: (503, "HEC is unhealthy, ack service unavailable"),
    20: (503, "HEC is unhealthy, queues are full, ack service unavailable"),
    23: (503, "Server is shutting down"),
    26: (429, "HEC queue is at capacity"),
    27: (429, "HEC ACK channel is at capacity"),
}

_GUID = re.compile(r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")


@dataclass(frozen=True)
class HecRequest:
    """One request as the fake saw it; header names are lower-case."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def json(self) -> Any:
        """The body decoded as one JSON document, or None."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass(frozen=True)
class AcceptedEvent:
    """One event HEC accepted, with the channel and ack id it was given."""

    envelope: dict[str, Any]
    channel: str | None
    ack_id: int | None


@dataclass(frozen=True)
class _Scripted:
    code: int
    headers: Mapping[str, str]
    path: str | None


class _Refusal(Exception):
    """Stop evaluating a request and answer it with an HEC code."""

    def __init__(self, code: int, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


class FakeHec:
    """
    A fake HEC on ``127.0.0.1`` and an ephemeral port.

    :param tokens: the tokens HEC accepts.
    :param disabled_tokens: tokens HEC knows but has disabled.
    :param indexes: the indexes the tokens may write to; None allows any.
    :param acknowledgement: whether the tokens have indexer acknowledgement on.
    :param confirm_after_polls: at which poll an ack id is confirmed; None
        never confirms.
    :param tls: a server-side :class:`ssl.SSLContext` to speak HTTPS.
    """

    def __init__(
        self,
        tokens: Iterable[str] = ("hec-token-0001",),
        *,
        disabled_tokens: Iterable[str] = (),
        indexes: Iterable[str] | None = None,
        acknowledgement: bool = False,
        confirm_after_polls: int | None = 1,
        healthy: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tokens = frozenset(tokens)
        self.disabled_tokens = frozenset(disabled_tokens)
        self.indexes = None if indexes is None else frozenset(indexes)
        self.acknowledgement = acknowledgement
        self.confirm_after_polls = confirm_after_polls
        self.healthy = healthy
        self._tls = tls
        self._lock = threading.Lock()
        self._scripted: deque[_Scripted] = deque()
        self._requests: list[HecRequest] = []
        self._events: list[AcceptedEvent] = []
        # channel -> next ack id; (channel, ack id) -> polls so far.
        self._next_ack: dict[str, int] = {}
        self._pending_acks: dict[tuple[str, int], int] = {}
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------

    def start(self) -> FakeHec:
        """Start serving in a background thread; returns self."""
        if self._server is not None:
            return self
        server = _Server((LOOPBACK, 0), _Handler)
        server.hec = self
        if self._tls is not None:
            server.socket = self._tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-hec",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        thread.join(timeout=2)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeHec:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake HEC is not started; use start() or `with`")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, as the connector's ``url`` setting wants it."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    # -- scripting --------------------------------------------------------

    def answer_next(
        self,
        code: int,
        count: int = 1,
        headers: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> None:
        """
        Answer the next ``count`` requests (to ``path``, or to any path) with
        HEC code ``code`` and its documented status and text.
        """
        if code not in HEC_ANSWERS:
            raise ValueError(f"HEC documents no code {code}")
        with self._lock:
            for _ in range(count):
                self._scripted.append(_Scripted(code, dict(headers or {}), path))

    def answer_busy(self, count: int = 1, retry_after: str | None = "30") -> None:
        """The next ``count`` requests: 503, code 9, with ``Retry-After``."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.answer_next(9, count, headers)

    def answer_internal_error(self, count: int = 1) -> None:
        """The next ``count`` requests: 500, code 8."""
        self.answer_next(8, count)

    # -- what arrived -----------------------------------------------------

    @property
    def requests(self) -> list[HecRequest]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def events(self) -> list[AcceptedEvent]:
        """Every event accepted so far, in arrival order."""
        with self._lock:
            return list(self._events)

    def requests_to(self, path: str) -> list[HecRequest]:
        return [request for request in self.requests if request.path == path]

    # -- HEC's behaviour ----------------------------------------------------

    def _handle(self, request: HecRequest) -> tuple[int, dict[str, Any], dict]:
        """Return (status, HEC answer, extra headers) for one request."""
        with self._lock:
            self._requests.append(request)
            scripted = self._take_scripted(request.path)
        if scripted is not None:
            status, text = HEC_ANSWERS[scripted.code]
            return status, {"text": text, "code": scripted.code}, dict(scripted.headers)

        try:
            if request.path in HEALTH_PATHS:
                return self._answer(17 if self.healthy else 18)
            if request.path == EVENT_PATH:
                channel = self._authorize(request)
                return self._accept_events(request.body, channel)
            if request.path == ACK_PATH:
                channel = self._authorize(request)
                return self._report_acks(request.body, channel)
        except _Refusal as refusal:
            return self._answer(refusal.code, **refusal.extra)
        not_found = {"text": "The requested URL was not found on this server."}
        return 404, {**not_found, "code": 404}, {}

    def _take_scripted(self, path: str) -> _Scripted | None:
        for position, scripted in enumerate(self._scripted):
            if scripted.path in (None, path):
                del self._scripted[position]
                return scripted
        return None

    def _authorize(self, request: HecRequest) -> str | None:
        """Check the token and the channel; return the channel."""
        header = request.headers.get("authorization")
        if header is None:
            raise _Refusal(2)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "splunk" or not token:
            raise _Refusal(3)
        if token in self.disabled_tokens:
            raise _Refusal(1)
        if token not in self.tokens:
            raise _Refusal(4)

        channel = request.headers.get("x-splunk-request-channel")
        if channel is None:
            channel = (parse_qs(request.query).get("channel") or [None])[0]
        if channel is None:
            if self.acknowledgement:
                raise _Refusal(10)
            return None
        if not _GUID.fullmatch(channel):
            raise _Refusal(11)
        return channel

    def _accept_events(self, body: bytes, channel: str | None) -> tuple:
        if not body.strip():
            raise _Refusal(5)
        envelopes = _decode_stacked_json(body)
        if envelopes is None:
            raise _Refusal(6)
        for number, envelope in enumerate(envelopes):
            self._check_envelope(envelope, number)

        with self._lock:
            ack_id = None
            if self.acknowledgement and channel is not None:
                ack_id = self._next_ack.get(channel, 0)
                self._next_ack[channel] = ack_id + 1
                self._pending_acks[(channel, ack_id)] = 0
            for envelope in envelopes:
                self._events.append(AcceptedEvent(envelope, channel, ack_id))
        if ack_id is None:
            return self._answer(0)
        return self._answer(0, ackId=ack_id)

    def _check_envelope(self, envelope: Any, number: int) -> None:
        if not isinstance(envelope, dict):
            raise _Refusal(6, **{"invalid-event-number": number})
        moment = envelope.get("time")
        if moment is not None and not _is_time(moment):
            raise _Refusal(6, **{"invalid-event-number": number})
        index = envelope.get("index")
        if index is not None and self.indexes is not None and index not in self.indexes:
            raise _Refusal(7, **{"invalid-event-number": number})
        if "event" not in envelope:
            raise _Refusal(12, **{"invalid-event-number": number})
        event = envelope["event"]
        if event is None or (isinstance(event, str) and not event.strip()):
            raise _Refusal(13, **{"invalid-event-number": number})
        fields = envelope.get("fields")
        if fields is not None and not _are_indexed_fields(fields):
            raise _Refusal(15, **{"invalid-event-number": number})

    def _report_acks(self, body: bytes, channel: str | None) -> tuple:
        if not self.acknowledgement:
            raise _Refusal(14)
        if channel is None:
            raise _Refusal(10)
        try:
            query = json.loads(body)
        except ValueError:
            raise _Refusal(6) from None
        ids = query.get("acks") if isinstance(query, dict) else None
        if not isinstance(ids, list) or not all(_is_ack_id(i) for i in ids):
            raise _Refusal(6)

        statuses: dict[str, bool] = {}
        with self._lock:
            for ack_id in ids:
                key = (channel, ack_id)
                if key not in self._pending_acks:
                    statuses[str(ack_id)] = False
                    continue
                self._pending_acks[key] += 1
                polls = self._pending_acks[key]
                confirmed = (
                    self.confirm_after_polls is not None
                    and polls >= self.confirm_after_polls
                )
                if confirmed:
                    del self._pending_acks[key]
                statuses[str(ack_id)] = confirmed
        return 200, {"acks": statuses}, {}

    @staticmethod
    def _answer(code: int, **extra: Any) -> tuple[int, dict[str, Any], dict]:
        status, text = HEC_ANSWERS[code]
        return status, {"text": text, "code": code, **extra}, {}

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


def _decode_stacked_json(body: bytes) -> list[Any] | None:
    """HEC's batch format: JSON documents one after another."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()
    documents = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return documents
        try:
            document, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        documents.append(document)


def _is_time(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _are_indexed_fields(fields: Any) -> bool:
    if not isinstance(fields, dict):
        return False
    for value in fields.values():
        if isinstance(value, str):
            continue
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            continue
        return False
    return True


def _is_ack_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hec: FakeHec

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (a probe timing out, a test ending) are normal.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHec/1"
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.hec._opened(self.connection)

    def finish(self) -> None:
        self.server.hec._closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value

        status, answer, extra_headers = self.server.hec._handle(
            HecRequest(
                method=self.command,
                path=path,
                query=query,
                headers=headers,
                body=body,
                received_at=time.monotonic(),
            )
        )
        payload = json.dumps(answer).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    do_GET = do_POST = _serve
