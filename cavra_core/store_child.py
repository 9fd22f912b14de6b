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
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import IO, Any

from cavra_core.errors import CavraError

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


class StoreProcessFailed(CavraError):
    """The store process could not start; the message says why."""

    title = "Store process could not start"


class StoreProcess:
    """
    A child process doing the jobs of a worker's store, started again when
    it ended.

    :meth:`submit` hands a job (``claim``, ``record``, ``forget``, ``hold``:
    the methods of :class:`_InChild`) to the child and returns its future
    answer. A job the child did not answer because it ended fails with
    :class:`StoreProcessEnded`, and the next job starts a new child (a
    child found ended before a job is handed over is replaced first). The
    claims handed out and not yet recorded are known here too, so a new
    child is told to keep them alive and not to rescue them: the worker
    may still be sending them. The first child that cannot start raises
    :class:`StoreProcessFailed`; a replacement that cannot start fails the
    job with :class:`StoreProcessEnded`, and the next job tries again.
    """

    def __init__(self, recipe: Mapping[str, Any], leases: Any) -> None:
        self.recipe = dict(recipe)
        self.leases = leases
        self._lock = threading.Lock()
        self._closed = False
        #: Claims handed out and not yet recorded or forgotten, by holders.
        self._held: Counter[str] = Counter()
        self._held_lock = threading.Lock()
        self._child: _Child | None = self._start()

    @property
    def pid(self) -> int | None:
        """The current child's process id (None while none runs)."""
        child = self._child
        return None if child is None else child.process.pid

    def submit(self, job: str, *args: Any) -> Future[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine's store process was closed")
            child = self._child
            if child is None or child.ended or child.process.poll() is not None:
                if child is not None:
                    log.error(
                        "worker store process ended worker_id=%s pid=%d; "
                        "starting another",
                        self.leases.worker_id,
                        child.process.pid,
                    )
                    child.close()
                    self._child = None
                try:
                    child = self._child = self._start()
                except StoreProcessFailed as error:
                    log.error(
                        "worker store process not started worker_id=%s",
                        self.leases.worker_id,
                    )
                    ended = StoreProcessEnded(str(error))
                    self._answered(job, args, ended)  # nobody holds them now
                    failed: Future[Any] = Future()
                    failed.set_exception(ended)
                    return failed
            return child.submit(job, args)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            child.close()

    def _start(self) -> _Child:
        child = _Child.start(self.recipe, self.leases, self._answered)
        with self._held_lock:
            held = list(self._held.elements())
        if held:
            child.submit("hold", (held,))
        return child

    def _answered(self, job: str, args: tuple[Any, ...], value: Any) -> None:
        """Keep the claims in hand up to date with the child's answers."""
        with self._held_lock:
            if job == "claim" and not isinstance(value, BaseException):
                self._held.update(claim.row.execution_id for claim in value.claims)
            elif job == "record":  # (done, unsent, ids, actor)
                uncount(self._held, args[2])
            elif job == "forget":  # (ids,)
                uncount(self._held, args[0])


class _Child:
    """One store process and the thread that hands it jobs, one at a time."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        answered: Callable[[str, tuple[Any, ...], Any], None],
    ) -> None:
        self.process = process
        self.ended = False
        self._answered = answered
        self._jobs: queue.SimpleQueue[
            tuple[Future[Any], str, tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._hand_over, name=f"store-process-{process.pid}", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(
        cls,
        recipe: Mapping[str, Any],
        leases: Any,
        answered: Callable[[str, tuple[Any, ...], Any], None],
    ) -> _Child:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        # SIGINT and SIGTERM are blocked across the start, so the child
        # begins with them blocked (a mask is inherited) and ignores them
        # before it lets them through: a stop signalled to the whole group
        # while the child starts does not end it. The worker gets its own
        # once they are unblocked here.
        stops = {signal.SIGINT, signal.SIGTERM}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=environment,
            )
        except OSError as error:
            raise StoreProcessFailed(
                f"the store process could not be started ({error})"
            ) from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        assert process.stdin is not None and process.stdout is not None
        try:
            _write(process.stdin, ("start", recipe, leases, log_setup(), os.getpid()))
            ready, _, _ = select.select([process.stdout], [], [], START_SECONDS)
            if not ready:
                raise TimeoutError
            status, detail = _read(process.stdout)
        except (OSError, EOFError) as error:  # TimeoutError is an OSError
            _end(process)
            raise StoreProcessFailed(
                f"the store process did not start within {START_SECONDS:g} s"
                if isinstance(error, TimeoutError)
                else f"the store process ended while starting ({type(error).__name__})"
            ) from None
        if status != "ready":
            _end(process)
            raise StoreProcessFailed(f"the store process could not start: {detail}")
        return cls(process, answered)

    def submit(self, job: str, args: tuple[Any, ...]) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, job, args))
        return future

    def close(self) -> None:
        """No more jobs: the child ends after those in hand."""
        self._jobs.put(None)
        self._thread.join()
        _end(self.process)

    def _hand_over(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job, args = item
            if not future.set_running_or_notify_cancel():
                continue
            status, value = self._exchange(job, args)
            self._answered(job, args, value)
            if status == "ok":
                future.set_result(value)
            else:
                future.set_exception(value)

    def _exchange(self, job: str, args: tuple[Any, ...]) -> tuple[str, Any]:
        """The child's answer to one job: ``("ok", value)`` or an error."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self.ended:
            try:
                _write(self.process.stdin, (job, args))
                return _read(self.process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):
                self.ended = True
        return "error", StoreProcessEnded(self.process.pid)


def uncount(counts: Counter[str], ids: Iterable[str]) -> None:
    """Take one holder off each id; ids left with none go."""
    counts.subtract(ids)
    for key in [key for key, n in counts.items() if n <= 0]:
        del counts[key]


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
    body = pickle.dumps(message, protocol=5)
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


class _InChild:
    """
    The store side as a store process runs it. It keeps the claims it
    handed out, as taken, by execution id: the worker gets what sending
    needs of them and names them by id in their record. Claims another
    store process took (one that ended since) are read from the database
    for their record, which checks in its own transaction that they are
    still this worker's and reads their lineages as they are now.
    """

    def __init__(self, side: Any) -> None:
        self.side = side
        self.claimed: dict[str, Any] = {}

    def claim(self, actor: Any, limit: int) -> Any:
        from cavra_core.executions import sendable

        batch = self.side.claim(actor, limit)
        self.claimed.update((c.row.execution_id, c) for c in batch.claims)
        return sendable(batch)

    def record(self, done: Any, unsent: Any, ids: Any, actor: Any) -> None:
        from cavra_core.executions import claims_of

        claimed = self.claimed
        try:
            unknown = [i for i in ids if i not in claimed]
            if unknown:
                claimed.update(claims_of(unknown))
            outcomes = [
                (claimed[execution_id], attempt, reason)
                for execution_id, attempt, reason in done
                if execution_id in claimed
            ]
            left = [claimed[i] for i in unsent if i in claimed]
            self.side.record(outcomes, left, ids, actor)
        finally:
            for execution_id in ids:
                claimed.pop(execution_id, None)

    def forget(self, ids: Any) -> None:
        for execution_id in ids:
            self.claimed.pop(execution_id, None)
        self.side.forget(ids)

    def hold(self, ids: Any) -> None:
        self.side.heartbeat.hold(ids)


#: The jobs a store process does: methods of :class:`_InChild`.
JOBS = frozenset({"claim", "record", "forget", "hold"})


def main() -> int:
    # Answers go out on a descriptor of their own; standard output becomes
    # standard error, so that nothing printed can garble them.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
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
    in_child = _InChild(side)
    _write(answers, ("ready", os.getpid()))
    try:
        while True:
            try:
                job, args = _read(requests)
            except EOFError:
                return 0
            try:
                answer = ("ok", _run(in_child, engine, job, args))
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


def _run(in_child: _InChild, engine: Any, job: str, args: tuple[Any, ...]) -> Any:
    from cavra_core.executions import run_store_job

    if job not in JOBS:
        raise ValueError(f"no such store job: {job}")
    return run_store_job(engine.database, lambda: getattr(in_child, job)(*args))


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
