"""
A scripted HTTP receiver on loopback, for tests of anything that delivers.

```python
with ScriptedReceiver() as receiver:
    receiver.enqueue(status(503, {"Retry-After": "120"}), status(200), path="/hook")
    deliver_to(receiver.url + "/hook")        # answered 503
    deliver_to(receiver.url + "/hook")        # answered 200
    deliver_to(receiver.url + "/hook")        # script used up: the fallback, 204
    assert receiver.requests[0].json == package
```

Each request takes the next step of its path's queue, else of the default
queue (``enqueue(..., path=None)``), else the receiver's ``fallback``. A step
is :func:`status` (answer), :func:`delay` (sleep, then another step: a read
timeout for a client with a shorter one) or :func:`close` (drop the
connection without an answer). Every request is recorded before its step is
played, including those that are never answered.

The server runs in daemon threads and speaks HTTP/1.1 with keep-alive.
Stopping it wakes every pending delay, drops open connections and returns
within a fraction of a second, so a test that fails midway never hangs the
session.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOPBACK = "127.0.0.1"

# Statuses whose responses never have a body (RFC 9110 section 6.4.1).
_NO_BODY_STATUSES = frozenset({204, 304}) | frozenset(range(100, 200))


@dataclass(frozen=True)
class Status:
    """Answer with ``code``, ``headers`` and ``body``."""

    code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` (cut short when the receiver stops), then play ``then``."""

    seconds: float
    then: Step


@dataclass(frozen=True)
class Close:
    """Drop the connection without answering, with a TCP reset."""


Step = Status | Delay | Close


def status(
    code: int, headers: Mapping[str, str] | None = None, body: bytes | str = b""
) -> Status:
    """Answer with ``code``; a ``str`` body is sent as UTF-8."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return Status(code=code, headers=dict(headers or {}), body=body)


def delay(seconds: float, then: Step | None = None) -> Delay:
    """Sleep ``seconds`` before playing ``then`` (by default ``status(204)``)."""
    return Delay(seconds=seconds, then=then if then is not None else status(204))


def close() -> Close:
    """Drop the connection without an answer."""
    return Close()


@dataclass(frozen=True)
class ReceivedRequest:
    """
    One request as the receiver saw it.

    ``headers`` has lower-cased names (HTTP names are case-insensitive);
    repeated headers are joined with ``", "``. ``json`` is the decoded body,
    or None when the body is empty or not JSON.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any
    #: ``time.monotonic()`` when the request was read completely.
    received_at: float


def closed_port_url() -> str:
    """
    Return a loopback URL on which nothing listens.

    The port was free a moment ago; nothing in a test run takes it back so
    quickly in practice, so a connection to it is refused.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"


class ScriptedReceiver:
    """
    An HTTP server on ``127.0.0.1`` and an ephemeral port that plays a script.

    :param fallback: the step played when no script has a step left.
    :param tls: a server-side :class:`ssl.SSLContext`; the receiver then
        speaks HTTPS and :attr:`url` starts with ``https://``.
    """

    def __init__(
        self, fallback: Step | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.fallback: Step = fallback if fallback is not None else status(204)
        self._tls = tls
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._scripts: dict[str | None, deque[Step]] = {}
        self._requests: list[ReceivedRequest] = []
        self._connections: set[socket.socket] = set()
        self._handshake_failures = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------

    def start(self) -> ScriptedReceiver:
        """Start serving in a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((LOOPBACK, 0), _Handler)
        server.receiver = self
        if self._tls is not None:
            # The handshake happens in the connection's thread, not in accept.
            server.socket = self._tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut pending delays short and drop open connections."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
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

    def __enter__(self) -> ScriptedReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the receiver is not started; use start() or `with`")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash: ``http://127.0.0.1:PORT``."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    # -- the script -------------------------------------------------------

    def enqueue(self, *steps: Step, path: str | None = None) -> None:
        """
        Append ``steps`` to the script of ``path`` (for example ``"/hook"``).

        With ``path=None`` the steps go to the default script, played for
        paths whose own script is empty.
        """
        for step in steps:
            if not isinstance(step, Status | Delay | Close):
                raise TypeError(f"not a receiver step: {step!r}")
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(steps)

    def pending_steps(self, path: str | None = None) -> int:
        """How many steps of ``path``'s script (or the default) are left."""
        with self._lock:
            return len(self._scripts.get(path, ()))

    # -- what arrived -----------------------------------------------------

    @property
    def requests(self) -> list[ReceivedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def handshake_failures(self) -> int:
        """How many TLS handshakes failed (a client refusing the certificate)."""
        with self._lock:
            return self._handshake_failures

    def wait_for_requests(
        self, count: int, timeout: float = 5.0
    ) -> list[ReceivedRequest]:
        """
        Wait until at least ``count`` requests arrived and return them all.

        Raises :class:`TimeoutError` (saying how many came) after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self._requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"expected {count} requests within {timeout}s, "
                        f"got {len(self._requests)}"
                    )
                self._arrived.wait(remaining)
            return list(self._requests)

    # -- used by the handler ----------------------------------------------

    def _record(self, request: ReceivedRequest) -> Step:
        with self._arrived:
            self._requests.append(request)
            self._arrived.notify_all()
            for key in (request.path, None):
                script = self._scripts.get(key)
                if script:
                    return script.popleft()
            return self.fallback

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _handshake_failed(self) -> None:
        with self._lock:
            self._handshake_failures += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: ScriptedReceiver

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._aborted: set[int] = set()
        self._aborted_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look up the host's FQDN: a DNS query
        # that can stall on machines without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def abort(self, connection: socket.socket) -> None:
        """Make the coming close of ``connection`` a reset instead of a FIN."""
        connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        with self._aborted_lock:
            self._aborted.add(id(connection))

    def shutdown_request(self, request: Any) -> None:
        with self._aborted_lock:
            aborted = id(request) in self._aborted
            self._aborted.discard(id(request))
        if aborted:
            # shutdown(SHUT_WR) would send a FIN before the reset.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up mid-answer are part of the scripts; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedReceiver/1"
    # An idle keep-alive connection ends after this long.
    timeout = 30
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.receiver._opened(self.connection)
        self._handshake_ok = True
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                self._handshake_ok = False
                self.server.receiver._handshake_failed()

    def handle(self) -> None:
        if self._handshake_ok:
            super().handle()

    def finish(self) -> None:
        self.server.receiver._closed(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "unreadable body")
            return

        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        step = self.server.receiver._record(
            ReceivedRequest(
                method=self.command,
                path=path,
                query=query,
                headers=headers,
                body=body,
                json=_decode_json(body),
                received_at=time.monotonic(),
            )
        )
        self._play(step)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def _play(self, step: Step) -> None:
        if isinstance(step, Delay):
            if self.server.receiver._stopping.wait(step.seconds):
                self._abort()
                return
            self._play(step.then)
        elif isinstance(step, Close):
            self._abort()
        else:
            self._respond(step)

    def _respond(self, step: Status) -> None:
        self.send_response(step.code)
        names = {name.lower() for name in step.headers}
        for name, value in step.headers.items():
            self.send_header(name, value)
        has_body = step.code not in _NO_BODY_STATUSES
        if has_body and "content-length" not in names:
            self.send_header("Content-Length", str(len(step.body)))
        self.end_headers()
        if has_body and self.command != "HEAD":
            self.wfile.write(step.body)
        self.wfile.flush()

    def _abort(self) -> None:
        self.close_connection = True
        self.server.abort(self.connection)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunks()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(size)

    def _read_chunks(self) -> bytes:
        chunks = []
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        # Trailer fields, up to the blank line that ends the message.
        while self.rfile.readline(1024).strip():
            pass
        return b"".join(chunks)


def _decode_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
