"""
Serving the app with waitress until SIGTERM or SIGINT.

Once the socket is bound, exactly one line goes to standard output:
``cavra api listening on http://HOST:PORT``, with the real port when port 0
asked for an ephemeral one, so a supervisor or a test can wait for it.

Without an API token the API has no authentication, so it is served on a
loopback address only (:func:`refuse_unprotected_bind`).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import waitress
from waitress import wasyncore

from cavra_server.auth import is_loopback

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class UnprotectedBind(RuntimeError):
    """Serving on this address would open the API to the network without tokens."""


def refuse_unprotected_bind(host: str, tokens_configured: bool) -> None:
    """
    Refuse to serve on ``host`` when it is not a loopback address and the
    store has no unrevoked API token.

    Raises:
        UnprotectedBind: the message says how to serve safely.
    """
    if tokens_configured or is_loopback(host):
        return
    raise UnprotectedBind(
        f"refusing to serve on {host or 'every interface'}: no API token is "
        "configured, so anyone who reaches this address could use the API "
        "without one. Create a token first (cavra tokens create --role admin "
        "--name NAME) or serve on 127.0.0.1."
    )


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
