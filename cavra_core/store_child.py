"""
A worker's store process: its claims and records in a child process.

Two threads of one Python process take turns at one interpreter lock, so
on a store thread the bookkeeping of a batch (reading rows, building
statements, hashing evidence) slows the sends beside it. A
:class:`StoreProcess` runs that work in a child process with an
interpreter and a database connection of its own.

The child runs :func:`main` in a new Python, with the parent's import
path. They talk over the child's standard input and output:
length-prefixed pickles, one request and then its answer, in the order the
requests were made (as on a store thread). At start the child is handed a
recipe to build the engine again (:attr:`cavra_core.engine.Engine.rebuild`),
the worker's leases and how the worker writes its log lines; it answers
once it is ready, or with why it could not start. Its standard output is
kept for the answers (anything a plugin prints goes to standard error).

The child ignores SIGINT and SIGTERM: a Ctrl-C or a service manager's stop
reaches the whole process group, and the worker, which settles what is in
hand, must still be able to record what it sent; it then closes the
child's input and the child ends. When the worker is gone (killed, say)
the child stops extending leases at once and ends after the job in hand,
so a dead worker's claims run out after one lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import IO, Any

log = logging.getLogger(__name__)

#: How long a store process may take to start (import, build its engine).
START_SECONDS = 60.0
#: How long a store process may take to end once its input is closed.
STOP_SECONDS = 30.0
#: How often the child looks whether the worker that started it still runs.
PARENT_CHECK_SECONDS = 0.2
#: Loggers whose levels the worker set apart from the root's.
_OWN_LEVELS = ("urllib3", "peewee")
_FRAME = struct.Struct("!Q")
#: The child's program.
_CHILD_MAIN = "from cavra_core.store_child import main; raise SystemExit(main())"


class StoreProcessEnded(Exception):
    """The store process ended before it answered (killed, out of memory)."""


class StoreProcessFailed(RuntimeError):
    """The store process could not start; the message says why."""


class StoreProcess:
    """
    A child process doing the jobs of a worker's store, started again when
    it ended.

    :meth:`submit` hands a job (``claim``, ``record`` or ``forget``, see
    :data:`JOBS`) to the child and returns its future answer. A job the
    child did not answer because it ended fails with
    :class:`StoreProcessEnded`, and the next job starts a new child; a
    child that cannot start raises :class:`StoreProcessFailed`.
    """

    def __init__(self, recipe: Mapping[str, Any], leases: Any) -> None:
        self.recipe = dict(recipe)
        self.leases = leases
        self._lock = threading.Lock()
        self._child = _Child.start(self.recipe, leases)

    @property
    def pid(self) -> int:
        """The current child's process id."""
        return self._child.process.pid

    def submit(self, job: str, *args: Any) -> Future[Any]:
        with self._lock:
            if self._child.ended:
                log.error(
                    "worker store process ended worker_id=%s pid=%d; starting another",
                    self.leases.worker_id,
                    self._child.process.pid,
                )
                self._child.close()
                self._child = _Child.start(self.recipe, self.leases)
            return self._child.submit(job, args)

    def close(self) -> None:
        with self._lock:
            self._child.close()


class _Child:
    """One store process and the thread that hands it jobs, one at a time."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.ended = False
        self._jobs: queue.SimpleQueue[tuple[Future[Any], bytes] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(
            target=self._hand_over, name=f"store-process-{process.pid}", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(cls, recipe: Mapping[str, Any], leases: Any) -> _Child:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            _write(process.stdin, ("start", recipe, leases, log_setup(), os.getpid()))
            ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
            if not ready:
                raise StoreProcessFailed(
                    f"the store process did not start within {START_SECONDS:g} s"
                )
            status, detail = _read(process.stdout)
        except (OSError, EOFError) as error:
            _end(process)
            raise StoreProcessFailed(
                f"the store process ended while starting ({type(error).__name__})"
            ) from None
        except StoreProcessFailed:
            _end(process)
            raise
        if status != "ready":
            _end(process)
            raise StoreProcessFailed(f"the store process could not start: {detail}")
        return cls(process)

    def submit(self, job: str, args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, pickle.dumps((job, args), protocol=5)))
        return future

    def close(self) -> None:
        """No more jobs: the child ends after those in hand."""
        self._jobs.put(None)
        self._thread.join()
        _end(self.process)

    def _hand_over(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        while (item := self._jobs.get()) is not None:
            future, message = item
            if not future.set_running_or_notify_cancel():
                continue
            if self.ended:
                future.set_exception(StoreProcessEnded(self.process.pid))
                continue
            try:
                _write_frame(self.process.stdin, message)
                status, value = _read(self.process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                self.ended = True
                future.set_exception(StoreProcessEnded(self.process.pid))
                continue
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(value)


def _end(process: subprocess.Popen[bytes]) -> None:
    """Close the child's input and wait for it to end; kill it if it does not."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _write(stream: IO[bytes], message: Any) -> None:
    _write_frame(stream, pickle.dumps(message, protocol=5))


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_FRAME.pack(len(body)) + body)
    stream.flush()


def _read(stream: IO[bytes]) -> Any:
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise EOFError
    (size,) = _FRAME.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError
    return pickle.loads(body)


# -- the parent's log lines ------------------------------------------------------------


def log_setup() -> dict[str, Any]:
    """
    How this process writes log lines to standard error: the root level,
    the formatters of its standard-error handlers and the levels set apart.
    A formatter that cannot be pickled is left out (the child then writes
    nothing through it).
    """
    formatters = []
    for handler in logging.root.handlers:
        stream = getattr(handler, "stream", None)
        if stream is sys.stderr and handler.formatter is not None:
            try:
                pickle.dumps(handler.formatter)
            except (pickle.PicklingError, TypeError, AttributeError):
                continue
            formatters.append(handler.formatter)
    return {
        "level": logging.root.level,
        "formatters": formatters,
        "levels": {name: logging.getLogger(name).level for name in _OWN_LEVELS},
    }


def _write_logs(logs: Mapping[str, Any]) -> None:
    root = logging.getLogger()
    root.setLevel(logs["level"])
    for formatter in logs["formatters"]:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for name, level in logs["levels"].items():
        logging.getLogger(name).setLevel(level)


# -- the child -----------------------------------------------------------------------


def _claim(side: Any, actor: Any, limit: int) -> Any:
    return side.claim(actor, limit)


def _record(side: Any, done: Any, unsent: Any, ids: Any, actor: Any) -> None:
    side.record(done, unsent, ids, actor)


def _forget(side: Any, ids: Any) -> None:
    side.forget(ids)


#: The jobs a store process does, by name.
JOBS = {"claim": _claim, "record": _record, "forget": _forget}


def main() -> int:
    # Answers go out on a descriptor of their own; standard output becomes
    # standard error, so that nothing printed can garble them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _, recipe, leases, logs, parent_pid = _read(requests)
    except EOFError:
        return 0
    try:
        _write_logs(logs)
        side, engine = _begin(recipe, leases)
    except Exception as error:  # noqa: BLE001 - told to the worker, which raises
        _write(answers, ("failed", f"{type(error).__name__}: {error}"))
        return 1
    _watch_parent(parent_pid, side.heartbeat)
    _write(answers, ("ready", os.getpid()))
    try:
        while True:
            try:
                job, args = _read(requests)
            except EOFError:
                return 0
            try:
                answer = ("ok", _run(side, engine, job, args))
            except Exception as error:  # noqa: BLE001 - handed to the worker
                answer = ("error", _picklable(error))
            try:
                _write(answers, answer)
            except BrokenPipeError:  # the worker is gone
                return 0
    finally:
        side.heartbeat.__exit__()
        engine.close()


def _begin(recipe: Mapping[str, Any], leases: Any) -> tuple[Any, Any]:
    from cavra_core import executions
    from cavra_core.engine import Engine

    engine = Engine(**recipe, apply_migrations=False)
    heartbeat = executions._Heartbeat(engine.database, leases, engine.now)
    heartbeat.__enter__()
    side = executions._StoreSide(engine.executions, leases, heartbeat, engine.now)
    return side, engine


def _run(side: Any, engine: Any, job: str, args: tuple[Any, ...]) -> Any:
    from cavra_core.executions import run_store_job

    return run_store_job(engine.database, lambda: JOBS[job](side, *args))


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any error must reach the worker somehow
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


def _watch_parent(parent_pid: int, heartbeat: Any) -> None:
    """
    Once the worker is gone, stop extending its leases: they must run out
    after one lease, not be kept alive by an orphan.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        heartbeat.stopping.set()

    threading.Thread(target=watch, name="store-parent-watch", daemon=True).start()
