"""
Where a retry plan is written: one transaction, on one connection.

:meth:`Engine.plan_retries <cavra_core.engine.Engine.plan_retries>` evaluates
lineages in the caller's thread, where plugins are always called, and hands
the decisions' rows to a plan writer. The writer owns the plan's transaction:
it inserts the plan, reads the failed lineages batch by batch, inserts the
decisions and records the plan's summary, then commits; any exception rolls
the whole plan back.

:class:`PlanWriter` does that on the caller's own connection.
:class:`BackgroundPlanWriter` does it on a thread of its own, which opens its
own connection, so the database's work overlaps the evaluation: while the
caller evaluates some batches of lineages, the writer inserts the previous
ones' decisions and reads the next ones. SQLite and psycopg2 release the GIL
while the database works; on SQLite the read ahead is one statement that
returns the batches as JSON, one array per column, because a row-by-row read
would wait for the GIL between rows while the caller computes. The caller
hands over the rows it made when it asks for more lineages, so no more than
three turns of :data:`BATCHES_PER_TURN` batches (read ahead, being evaluated,
being inserted) are in memory.

:func:`open_plan_writer` picks the background writer unless the caller's
connection must see the plan: inside a transaction the caller opened.
While a plan is made, :func:`fewer_collections` keeps the garbage collector
from walking the batches in flight over and over.
"""

from __future__ import annotations

import gc
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import chain, islice
from operator import ge
from typing import Any

import peewee

from cavra_core.store import RetryDecision, RetryPlan, insert_sql

#: Decision rows in database form, in the order of :data:`DECISION_COLUMNS`.
Rows = list[tuple]
#: ``batch_query(after, aliased=False, batches=1)``: the query for the next
#: batches of failed lineages after the lineage id ``after`` (first column: the
#: lineage id), its columns named ``c0``, ``c1``... when ``aliased``.
BatchQuery = Callable[..., Any]
#: Batches the writer thread reads, and inserts, per turn. Every turn costs
#: both threads a hand-over of the GIL, which on a busy machine can wait for
#: the operating system to schedule the other thread; fewer, larger turns
#: keep that cost small. Memory stays bounded by this many batches.
BATCHES_PER_TURN = 5

#: The columns of a decision row, in the order the rows carry them.
DECISION_COLUMNS = (
    "decision_id",
    "plan",
    "position",
    "lineage_id",
    "lineage_version",
    "package_id",
    "connector_id",
    "action",
    "reason",
    "explanation",
    "retry_count",
    "max_retry_attempts",
    "retry_delay_seconds",
    "not_before",
    "not_after",
    "failed_status_codes",
)


class PlanWriter:
    """
    Write one plan inside the caller's transaction, on the caller's connection.

    :param database: the engine's database.
    :param plan: the plan row to insert first (``RetryPlan`` field values).
    :param batch_query: builds the query for each batch of failed lineages
        (see :data:`BatchQuery`).
    """

    def __init__(
        self,
        database: peewee.Database,
        plan: Mapping[str, Any],
        batch_query: BatchQuery,
    ) -> None:
        self.database = database
        self.plan = dict(plan)
        self.batch_query = batch_query
        self._transaction: Any = None

    def __enter__(self) -> PlanWriter:
        self._transaction = self.database.atomic()
        self._transaction.__enter__()
        RetryPlan.insert(**self.plan).execute()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._transaction.__exit__(*exc_info)

    def lineage_batches(self) -> Iterator[list[tuple]]:
        """The failed lineages, one batch of raw rows at a time."""
        return read_lineage_rows(self.database, self.batch_query)

    def write(self, rows: Rows) -> None:
        """Store a batch of decision rows."""
        insert_decisions(rows)

    def finish(
        self, summary: Mapping[str, Any], then: Callable[[], Any] | None = None
    ) -> None:
        """
        Record the plan's summary (hash and counts); the commit follows on exit.

        ``then`` runs right after, in the plan's transaction (the evidence
        entry for the plan is appended there, so both commit or neither).
        """
        _update_plan(self.plan["retry_plan_id"], summary)
        if then is not None:
            then()


class BackgroundPlanWriter(PlanWriter):
    """
    Write one plan on a writer thread that owns the plan's connection.

    The interface is :class:`PlanWriter`'s. Rows handed to :meth:`write` are
    inserted once the next batch of lineages has been handed back, while the
    caller evaluates it. An error on the writer's side is raised in the
    caller's thread at its next request, and the plan is rolled back.
    """

    def __init__(
        self,
        database: peewee.Database,
        plan: Mapping[str, Any],
        batch_query: BatchQuery,
    ) -> None:
        super().__init__(database, plan, batch_query)
        self._requests: queue.SimpleQueue[tuple[str, list[Rows], Any]] = (
            queue.SimpleQueue()
        )
        self._replies: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._pending: list[Rows] = []
        self._decode: Callable[[Any], list] = _as_is
        self._thread = threading.Thread(
            target=self._serve, name="cavra-plan-writer", daemon=True
        )

    def __enter__(self) -> BackgroundPlanWriter:
        self._thread.start()
        self._decode = self._reply("started")
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is not None:
            self._requests.put(("abort", [], None))
        self._thread.join()

    def lineage_batches(self) -> Iterator[Iterable[tuple]]:
        while True:
            self._requests.put(("next", self._take_pending(), None))
            batch = self._reply("batch")
            if batch is None:
                return
            yield self._decode(batch)

    def write(self, rows: Rows) -> None:
        self._pending.append(rows)

    def finish(
        self, summary: Mapping[str, Any], then: Callable[[], Any] | None = None
    ) -> None:
        self._requests.put(("finish", self._take_pending(), (dict(summary), then)))
        self._reply("committed")

    def _take_pending(self) -> list[Rows]:
        pending, self._pending = self._pending, []
        return pending

    def _reply(self, expected: str) -> Any:
        kind, value = self._replies.get()
        if kind == "error":
            raise value
        if kind != expected:  # pragma: no cover - a broken protocol is a bug
            raise RuntimeError(f"plan writer replied {kind!r}, expected {expected!r}")
        return value

    def _serve(self) -> None:
        """The writer thread: one connection, one transaction, the caller's requests."""
        try:
            with self.database.connection_context(), self.database.atomic():
                RetryPlan.insert(**self.plan).execute()
                batches, decode, ahead = _reader(self.database, self.batch_query)
                upcoming = next(batches, None) if ahead else None
                self._replies.put(("started", decode))
                while True:
                    kind, rows, summary = self._requests.get()
                    if kind == "abort":
                        raise _Aborted
                    if kind == "next":
                        if not ahead:
                            upcoming = next(batches, None)
                        self._replies.put(("batch", upcoming))
                        # The caller evaluates that batch meanwhile.
                        insert_decisions(list(chain.from_iterable(rows)))
                        if ahead and upcoming is not None:
                            upcoming = next(batches, None)
                        continue
                    insert_decisions(list(chain.from_iterable(rows)))
                    values, then = summary
                    _update_plan(self.plan["retry_plan_id"], values)
                    if then is not None:
                        then()
                    break
            self._replies.put(("committed", None))
        except _Aborted:
            pass
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            self._replies.put(("error", error))


def read_lineage_rows(
    database: peewee.Database, batch_query: BatchQuery, batches: int = 1
) -> Iterator[list[tuple]]:
    """Every failed lineage as raw rows, ``batches`` batches per query."""
    after = ""
    while True:
        query = batch_query(after, batches=batches)
        rows = database.execute_sql(*query.sql()).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def _reader(
    database: peewee.Database, batch_query: BatchQuery
) -> tuple[Iterator[Any], Callable[[Any], list], bool]:
    """
    How the writer thread reads lineages: (batches, decode, read ahead).

    Batches are decoded by the caller. PostgreSQL returns a whole result in
    one call, so its rows are read ahead as they are. SQLite steps row by row,
    taking the GIL back after each row: read ahead while the caller computes,
    that would wait up to the interpreter's switch interval per row. So on
    SQLite the batch is read ahead as one JSON document built by SQLite in a
    single step, or, without SQLite's JSON functions, read when asked for.
    """
    per_turn = BATCHES_PER_TURN
    if not isinstance(database, peewee.SqliteDatabase):
        return read_lineage_rows(database, batch_query, per_turn), _as_is, True
    try:
        database.execute_sql("SELECT json_group_array(json_array(1, 'a', NULL))")
    except peewee.OperationalError:
        return read_lineage_rows(database, batch_query, per_turn), _as_is, False
    return (
        _read_lineage_json(database, batch_query, per_turn),
        _decode_json_rows,
        True,
    )


def _read_lineage_json(
    database: peewee.Database, batch_query: BatchQuery, batches: int
) -> Iterator[str]:
    after = ""
    while True:
        query = batch_query(after, aliased=True, batches=batches)
        inner, params = query.sql()
        values = ", ".join(
            f'json_group_array("c{index}")'
            for index in range(len(query.selected_columns))
        )
        text, last = database.execute_sql(
            f'SELECT json_array({values}), max("c0") FROM ({inner})',
            params,
        ).fetchone()
        if last is None:
            return
        yield text
        after = last


def _decode_json_rows(text: str) -> Iterable[tuple]:
    """
    The rows of a batch read as one JSON array per column, by lineage id.

    PERF(plan): a list per column rather than per row, so the caller builds
    each row as it takes it, and the cyclic garbage collector has a few
    lists to walk instead of thousands that live until the turn ends.
    """
    columns = json.loads(text)
    ids = columns[0]
    # The aggregate's order is not promised; the batch's order is the lineage id.
    if any(map(ge, ids, islice(ids, 1, None))):
        order = sorted(range(len(ids)), key=ids.__getitem__)
        columns = [[column[index] for index in order] for column in columns]
    return zip(*columns, strict=True)


def _as_is(batch: Any) -> Any:
    return batch


class _Aborted(Exception):
    """The caller gave up (it raised); roll the plan back."""


def open_plan_writer(
    database: peewee.Database, plan: Mapping[str, Any], batch_query: BatchQuery
) -> PlanWriter:
    """The background writer where a second connection can hold the plan."""
    if database.in_transaction():
        return PlanWriter(database, plan, batch_query)
    return BackgroundPlanWriter(database, plan, batch_query)


#: Net new container objects between two young garbage collections while a
#: plan is made (the interpreter's default is 700).
PLANNING_GC_THRESHOLD = 20_000
_collector_lock = threading.Lock()
_planning = 0
_saved_threshold: tuple[int, ...] = ()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """
    Run the cyclic garbage collector less often while a plan is made.

    A plan allocates millions of small tuples that die young and form no
    cycles, and with the default threshold the collector walked the live
    batches about 165 times per 100,000 lineages (0.3 s, holding the GIL, so
    the writer thread waited too). The young generation's threshold is
    raised, never lowered; collections still happen, so memory stays bounded
    if a plugin makes cycles. The threshold is process-wide: it is restored
    when the last plan running in the process ends.
    """
    global _planning, _saved_threshold
    with _collector_lock:
        if _planning == 0:
            _saved_threshold = gc.get_threshold()
            young, *older = _saved_threshold
            if young:  # zero: collection is off, and stays so
                gc.set_threshold(max(young, PLANNING_GC_THRESHOLD), *older)
        _planning += 1
    try:
        yield
    finally:
        with _collector_lock:
            _planning -= 1
            if _planning == 0:
                gc.set_threshold(*_saved_threshold)


def _update_plan(retry_plan_id: str, summary: Mapping[str, Any]) -> None:
    RetryPlan.update(**summary).where(
        RetryPlan.retry_plan_id == retry_plan_id
    ).execute()


def insert_decisions(rows: Rows) -> None:
    """
    Insert decision rows already in database form (times as microseconds).

    PERF(plan): prepared statements, never the query builder, which costs
    more than the insert. On SQLite one statement carries
    :data:`ROWS_PER_STATEMENT` rows: binding them all at once and stepping
    once is cheaper than ``executemany`` stepping row by row, and keeps the
    GIL free for the whole insert rather than between rows. The rows left
    over go through ``executemany``, so a connection's statement cache only
    ever holds two insert statements (a compiled 1000-row statement takes
    about 1.5 MiB).
    """
    if not rows:
        return
    database = RetryDecision._meta.database
    table = RetryDecision._meta.table_name
    columns = tuple(
        RetryDecision._meta.fields[name].column_name for name in DECISION_COLUMNS
    )
    if isinstance(database.obj, peewee.PostgresqlDatabase):
        from psycopg2.extras import execute_values

        names = ", ".join(f'"{column}"' for column in columns)
        cursor = database.cursor()
        execute_values(cursor, f'INSERT INTO "{table}" ({names}) VALUES %s', rows)
        return
    width = len(DECISION_COLUMNS)
    limit = database.connection().getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per_statement = max(1, min(ROWS_PER_STATEMENT, limit // width))
    whole = len(rows) - len(rows) % per_statement
    cursor = database.cursor()
    statement = insert_sql(table, columns, per_statement, "?")
    for start in range(0, whole, per_statement):
        values = list(chain.from_iterable(rows[start : start + per_statement]))
        cursor.execute(statement, values)
    if whole < len(rows):
        cursor.executemany(insert_sql(table, columns, 1, "?"), rows[whole:])


#: Rows per multi-row INSERT on SQLite (fewer where the variable limit is low).
ROWS_PER_STATEMENT = 1000
