"""
Serving the app with waitress until SIGTERM or SIGINT.

Once the socket is bound, exactly one line goes to standard output:
``cavra api listening on http://HOST:PORT``, with the real port when port 0
asked for an ephemeral one, so a supervisor or a test can wait for it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import waitress
from waitress import wasyncore

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = 8,
    **options: Any,
) -> None:
    """
    Serve ``app`` on ``host:port`` with ``threads`` worker threads.

    Returns once SIGTERM or SIGINT arrives (signals are handled only when
    called from the main thread) and the server has shut down: requests in
    progress finish, queued ones are dropped.

    Args:
        options: further ``waitress.create_server`` settings, e.g.
            ``max_request_body_size``.
    """
    server = waitress.create_server(
        app, host=host, port=port, threads=threads, **options
    )
    bound_port = _bound_port(server)
    shown_host = f"[{host}]" if ":" in host else host

    # Handlers first, so a stop sent as soon as the line is read is clean.
    previous = _install_stop_handlers()
    try:
        sys.stdout.write(f"cavra api listening on http://{shown_host}:{bound_port}\n")
        sys.stdout.flush()
        # waitress ends its loop and its task threads on SystemExit.
        server.run()
    except _StopServing:
        pass
    finally:
        _restore_handlers(previous)
        _close(server)
    log.info("cavra api stopped port=%d", bound_port)


def _bound_port(server: Any) -> int:
    # A host name that resolves to several addresses gives one socket each.
    if hasattr(server, "effective_listen"):
        return int(server.effective_listen[0][1])
    return int(server.effective_port)


def _close(server: Any) -> None:
    """Close the listening socket(s) and every open channel."""
    if hasattr(server, "effective_listen"):
        server.close()
        return
    server.close()
    # NOTE(server): waitress keeps a single server's channels in ``_map``
    # and offers no public way to close them with it.
    wasyncore.close_all(server._map)


class _StopServing(SystemExit):
    """Raised by the signal handlers; waitress treats it as SystemExit."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _StopServing(0)


def _install_stop_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {number: signal.signal(number, _raise_stop) for number in _STOP_SIGNALS}


def _restore_handlers(previous: dict[int, Any]) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler)
