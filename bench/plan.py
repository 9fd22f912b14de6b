"""
Benchmark: planning retries for many failed lineages on SQLite.

What it measures, each time on a fresh copy of the seeded store:

1. ``Engine.plan_retries`` over ``--lineages`` failed lineages (plus a quarter
   as many recovered ones that planning must skip), as decisions per second.
2. The floor: the very decision rows that plan wrote, with fresh random
   ``rd_`` ids, inserted by the raw ``sqlite3`` driver with ``executemany`` in
   one transaction, into a table created from the same DDL (copied from
   ``sqlite_master``: columns, foreign key, indexes), with the pragmas cavra's
   store sets. The rows are built before the clock starts, so the floor is
   the bare cost of writing them. Also shown: the same rows through
   multi-row ``INSERT ... VALUES`` statements, the raw form cavra itself uses.
3. Plan and floor runs alternate, and the share is the median of the
   per-pair ratios, so a noisy neighbour on a shared machine hits both.
4. Once, the plan made inside a transaction the caller opened, where it runs
   on the caller's connection without the writer thread.
5. Memory of planning at ``--memory-sizes``: each size in a fresh process,
   once for the resident set's peak during the plan (Linux ``/proc``) and
   once for the ``tracemalloc`` peak. Flat figures mean memory is bounded by
   the batch size, not the number of lineages.

Run ``python bench/plan.py`` (about three minutes on two cores), or
``python bench/plan.py --lineages 20000 --memory-sizes 5000,10000 --repeat 1``
for a quick look. ``--check FILE`` writes the plan hash and a digest of every
stored decision (ids excepted), to compare two versions of the engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seeding import (  # noqa: E402
    CONNECTORS,
    NOW,
    connector_fingerprints,
    load_average,
    print_machine,
    seed_store,
)

from cavra_core import Engine  # noqa: E402

DECISION_COLUMNS = (
    "decision_id",
    "plan_id",
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
#: The pragmas cavra's store sets on every SQLite connection.
STORE_PRAGMAS = ("journal_mode=wal", "synchronous=normal", "foreign_keys=1")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def open_bench_engine(path: Path) -> Engine:
    return Engine(sqlite_url(path), CONNECTORS, load_entry_points=True)


def seed(path: Path, failed: int) -> dict[str, int]:
    """A store with ``failed`` lineages to plan: 70 % open, 30 % closed."""
    engine = open_bench_engine(path)
    fingerprints = connector_fingerprints(engine)
    engine.close()
    open_failed = int(failed * 0.7)
    return seed_store(
        str(path),
        fingerprints,
        open_failed=open_failed,
        closed=failed - open_failed,
        recovered=failed // 4,
        history_days=30,
        recent_hours=30,
        with_attempts=False,
    )


def fresh_copy(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(source, target)


def time_plan(path: Path, *, in_transaction: bool = False) -> tuple[float, dict]:
    engine = open_bench_engine(path)
    with engine.database.connection_context():
        started = time.perf_counter()
        if in_transaction:
            with engine.database.atomic():
                summary = engine.plan_retries({"generated_by": "bench"}, now=NOW)
        else:
            summary = engine.plan_retries({"generated_by": "bench"}, now=NOW)
        elapsed = time.perf_counter() - started
    engine.close()
    return elapsed, summary


def stored_decisions(path: Path, plan_id: str) -> list[tuple]:
    connection = sqlite3.connect(path)
    columns = ", ".join(f'"{name}"' for name in DECISION_COLUMNS)
    rows = connection.execute(
        f'SELECT {columns} FROM "retry_decision" WHERE "plan_id" = ? '
        'ORDER BY "position"',
        (plan_id,),
    ).fetchall()
    connection.close()
    return rows


def decision_ddl(path: Path) -> list[str]:
    """The CREATE statements of cavra's plan and decision tables, as stored."""
    connection = sqlite3.connect(path)
    statements = [
        sql
        for (sql,) in connection.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name IN "
            "('retry_plan', 'retry_decision') AND sql IS NOT NULL "
            "ORDER BY tbl_name = 'retry_decision', type = 'index'"
        )
    ]
    connection.close()
    return statements


def time_floor(
    directory: Path, ddl: list[str], rows: list[tuple], plan_id: str, *, multi_row: bool
) -> float:
    """Write ``rows`` with fresh random ids through the raw driver, one transaction."""
    path = directory / "floor.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in STORE_PRAGMAS:
        connection.execute(f"PRAGMA {pragma}")
    for statement in ddl:
        connection.execute(statement)
    connection.execute(
        'INSERT INTO "retry_plan" ("retry_plan_id", "plan_hash", "generated_at", '
        '"generated_by", "policy", "decision_count", "retryable_count", '
        '"waiting_count", "suppressed_count", "alert_level", "actor_verified") '
        "VALUES (?, '', 0, 'bench', '{}', 0, 0, 0, 0, 'healthy', 0)",
        (plan_id,),
    )
    fresh = [(f"rd_{random.getrandbits(128):032x}", *row[1:]) for row in rows]
    columns = ", ".join(f'"{name}"' for name in DECISION_COLUMNS)
    one_row = "(" + ", ".join("?" for _ in DECISION_COLUMNS) + ")"
    per_statement = 1000
    if multi_row:
        chunks = [
            [value for row in fresh[start : start + per_statement] for value in row]
            for start in range(0, len(fresh), per_statement)
        ]
        statements = {
            len(chunk): f'INSERT INTO "retry_decision" ({columns}) VALUES '
            + ", ".join([one_row] * (len(chunk) // len(DECISION_COLUMNS)))
            for chunk in chunks
        }

    started = time.perf_counter()
    connection.execute("BEGIN")
    if multi_row:
        for chunk in chunks:
            connection.execute(statements[len(chunk)], chunk)
    else:
        connection.executemany(
            f'INSERT INTO "retry_decision" ({columns}) VALUES {one_row}', fresh
        )
    connection.execute("COMMIT")
    elapsed = time.perf_counter() - started

    connection.close()
    return elapsed


def memory_status() -> dict[str, int]:
    """This process's resident set now and at its peak (KiB), from /proc."""
    figures = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0])
    return figures


def reset_peak_rss() -> bool:
    """Start the kernel's peak-RSS mark afresh (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def measure_memory(path: Path, mode: str) -> dict:
    """
    Run in a child process: plan once and report the memory it took.

    ``rss``: the resident set before the plan and its peak during it. The
    peak mark is reset just before planning (ru_maxrss cannot be: it keeps
    the parent's size across fork and exec). ``tracemalloc``: the peak of
    Python allocations during the plan, and what is still held after it.
    """
    engine = open_bench_engine(path)
    with engine.database.connection_context():
        engine.database.execute_sql("SELECT count(*) FROM lineage").fetchone()
        if mode == "tracemalloc":
            import tracemalloc

            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            summary = engine.plan_retries({"generated_by": "bench"}, now=NOW)
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            result = {"peak_bytes": peak - base, "retained_bytes": current - base}
        else:
            if not reset_peak_rss():  # pragma: no cover - not Linux
                raise SystemExit("needs Linux /proc/self/clear_refs")
            before = memory_status()
            summary = engine.plan_retries({"generated_by": "bench"}, now=NOW)
            after = memory_status()
            result = {"rss_before_kib": before["VmRSS"], "rss_peak_kib": after["VmHWM"]}
    engine.close()
    result["decisions"] = summary["decision_count"]
    return result


def child_memory(script: Path, path: Path, mode: str) -> dict:
    output = subprocess.run(
        [sys.executable, str(script), "--measure-memory", str(path), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def reason_counts(rows: list[tuple]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[8]] = counts.get(row[8], 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def write_check(path: Path, rows: list[tuple], summary: dict) -> None:
    """The plan hash and a digest of the stored decisions, without their ids."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row[2:]).encode())
        digest.update(b"\n")
    document = {
        "plan_hash": summary["plan_hash"],
        "rows_digest": digest.hexdigest(),
        "decision_count": summary["decision_count"],
        "reasons": dict(sorted(reason_counts(rows).items())),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def seconds(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lineages", type=int, default=100_000, help="failed lineages to plan"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="plan/floor pairs (medians reported)"
    )
    parser.add_argument(
        "--memory-sizes",
        default="20000,50000,100000",
        help="comma-separated lineage counts for the memory check; empty to skip",
    )
    parser.add_argument(
        "--workdir", help="where the stores go (default: a temporary folder)"
    )
    parser.add_argument(
        "--check", type=Path, help="write the plan hash and decision digest here"
    )
    parser.add_argument("--measure-memory", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="rss", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure_memory:
        print(json.dumps(measure_memory(args.measure_memory, args.mode)))
        return 0

    directory = Path(args.workdir or tempfile.mkdtemp(prefix="cavra-bench-plan-"))
    directory.mkdir(parents=True, exist_ok=True)
    print_machine()
    print(f"store: {directory}")

    seed_path = directory / f"seed-{args.lineages}.db"
    if not seed_path.exists():
        totals = seed(seed_path, args.lineages)
        print(
            f"seeded {totals['lineages']} lineages ({args.lineages} failed, "
            f"{totals['lineages'] - args.lineages} recovered) in "
            f"{totals['seconds']} s"
        )

    run_path = directory / "run.db"
    fresh_copy(seed_path, run_path)
    _, summary = time_plan(run_path)  # warms the OS cache and gives the rows
    rows = stored_decisions(run_path, summary["retry_plan_id"])
    ddl = decision_ddl(run_path)
    plan_id = summary["retry_plan_id"]
    count = summary["decision_count"]
    if args.check:
        write_check(args.check, rows, summary)
    print(
        f"\nplan: {count} decisions, retry={summary['retryable_count']} "
        f"wait={summary['waiting_count']} suppress={summary['suppressed_count']}, "
        f"plan_hash={summary['plan_hash'][:16]}..."
    )
    print("  reasons: " + ", ".join(f"{k} {v}" for k, v in reason_counts(rows).items()))

    plan_times, floor_times, multi_times, shares = [], [], [], []
    for _ in range(args.repeat):
        fresh_copy(seed_path, run_path)
        elapsed, _ = time_plan(run_path)
        floor = time_floor(directory, ddl, rows, plan_id, multi_row=False)
        multi = time_floor(directory, ddl, rows, plan_id, multi_row=True)
        plan_times.append(elapsed)
        floor_times.append(floor)
        multi_times.append(multi)
        shares.append(floor / elapsed)
    fresh_copy(seed_path, run_path)
    inline_time, _ = time_plan(run_path, in_transaction=True)
    del rows

    plan_seconds = statistics.median(plan_times)
    floor_seconds = statistics.median(floor_times)
    multi_seconds = statistics.median(multi_times)
    share = statistics.median(shares)
    print(
        f"\nplan_retries: median {plan_seconds:.2f} s ({seconds(plan_times)}) "
        f"-> {count / plan_seconds:,.0f} decisions/s"
    )
    print(
        f"floor, executemany: median {floor_seconds:.2f} s ({seconds(floor_times)})"
        f" -> {count / floor_seconds:,.0f} rows/s"
    )
    print(
        f"raw multi-row VALUES: median {multi_seconds:.2f} s "
        f"({seconds(multi_times)}) -> {count / multi_seconds:,.0f} rows/s"
    )
    print(
        f"inside the caller's transaction (no writer thread): {inline_time:.2f} s "
        f"-> {count / inline_time:,.0f} decisions/s"
    )
    print(
        f"plan rate / floor = {share:.0%}, median of pairs "
        f"({', '.join(f'{value:.0%}' for value in shares)}); target >= 40%: "
        f"{'met' if share >= 0.4 else 'NOT met'}"
    )
    multi_share = statistics.median(
        multi / plan for multi, plan in zip(multi_times, plan_times, strict=True)
    )
    print(f"plan rate / raw multi-row = {multi_share:.0%}")

    sizes = [int(size) for size in args.memory_sizes.split(",") if size.strip()]
    if sizes:
        print("\nmemory of one plan, each in a fresh process:")
        print(
            f"  {'lineages':>9} {'RSS before':>11} {'RSS peak':>10} {'growth':>9} "
            f"{'tracemalloc peak':>17} {'retained':>9}"
        )
        script = Path(__file__).resolve()
        for size in sizes:
            path = directory / f"seed-{size}.db"
            if not path.exists():
                seed(path, size)
            fresh_copy(path, run_path)
            rss = child_memory(script, run_path, "rss")
            fresh_copy(path, run_path)
            traced = child_memory(script, run_path, "tracemalloc")
            before = rss["rss_before_kib"] / 1024
            peak = rss["rss_peak_kib"] / 1024
            print(
                f"  {rss['decisions']:>9} {before:>7.1f} MiB {peak:>6.1f} MiB "
                f"{peak - before:>5.1f} MiB {traced['peak_bytes'] / 2**20:>13.1f} MiB "
                f"{traced['retained_bytes'] / 2**20:>5.1f} MiB"
            )

    print(f"\nload average at the end: {load_average()}")
    if not args.workdir:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
