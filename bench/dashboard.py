"""
Benchmark: the dashboard and the paged lists over a large store, through HTTP.

Two stores are seeded with bulk inserts in the shape cavra leaves them: a
small one (``--small`` attempts, 10k by default) and a large one
(``--attempts``, 1M by default), with the same mix:

* lineages spread over ``--history-days`` (a year): 89 % recovered (most
  deliveries succeed at once or after a retry or two), 10 % closed as
  exhausted or suppressed, and 1 % still failing. The open failures are
  recent (the last three days) because the worker recovers or closes a
  failure within its retry window, so their number stays bounded however
  long the history grows;
* one to three connectors per package, five connectors with different
  policies, HTTP and transport failures in realistic proportions;
* worker runs every few minutes over the same history, one for every 100
  attempts (10k runs at 1M attempts), 80 % of them dry runs.

Requests go through the real Falcon app (``cavra_server.create_app``) with
``falcon.testing.TestClient``, so routing, the per-request database
connection, output validation and JSON encoding are all counted. Each request
is repeated ``--repeat`` times after a warm-up; the median and the 95th
percentile are reported. Deep pages use a cursor for the row 90 % of the way
into the data, or as deep as still leaves a full page (built from the store,
exactly as the API would have issued it), and the large store also follows
``next_cursor`` for ``--follow`` pages.

Run ``python bench/dashboard.py`` (about four minutes on two cores, most of it
seeding), or ``--attempts 200000`` for a quicker look.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from falcon.testing import TestClient  # noqa: E402
from seeding import (  # noqa: E402
    CONNECTORS,
    connector_fingerprints,
    load_average,
    print_machine,
    seed_store,
    seed_worker_runs,
)

from cavra_core import Engine  # noqa: E402
from cavra_core.paging import encode_cursor  # noqa: E402
from cavra_server import create_app  # noqa: E402
from cavra_server.paths import api_path  # noqa: E402

#: Attempts per lineage by outcome, on average, as seeding makes them.
ATTEMPTS_PER_LINEAGE = {"open": 2.0, "closed": 3.2, "recovered": 1.57}
MIX = {"open": 0.01, "closed": 0.10, "recovered": 0.89}
LATENCY_TARGET_MS = 50.0
#: The API's default page size.
PAGE = 50
SCALING_TARGET = 1.5


def seed(path: Path, attempts: int, history_days: float) -> dict[str, int]:
    """
    A store holding about ``attempts`` delivery attempts in the mix above.

    Times lead up to the present, because the dashboard counts "due now".
    """
    now = datetime.now(UTC).replace(microsecond=0)
    engine = Engine(f"sqlite:///{path}", CONNECTORS, load_entry_points=True)
    fingerprints = connector_fingerprints(engine)
    engine.close()
    per_lineage = sum(MIX[kind] * ATTEMPTS_PER_LINEAGE[kind] for kind in MIX)
    lineages = int(attempts / per_lineage)
    totals = seed_store(
        str(path),
        fingerprints,
        open_failed=int(lineages * MIX["open"]),
        closed=int(lineages * MIX["closed"]),
        recovered=int(lineages * MIX["recovered"]),
        history_days=history_days,
        with_attempts=True,
        now=now,
    )
    runs = max(attempts // 100, 10)
    started = time.perf_counter()
    seed_worker_runs(str(path), runs, history_days=history_days, now=now)
    totals["runs"] = runs
    totals["seconds"] += round(time.perf_counter() - started, 1)
    return totals


def deep_cursor(path: Path, table: str, time_column: str, id_column: str) -> str:
    """
    The cursor the API issues for the row 90 % of the way down the list.

    Never so deep that less than a full page (50 items) follows, so that deep
    pages of a small and a large store carry the same number of items.
    """
    connection = sqlite3.connect(path)
    (count,) = connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    offset = max(0, min(int(count * 0.9), count - PAGE - 1))
    # OFFSET is fine here: the benchmark builds the cursor once, the API never.
    micros, row_id = connection.execute(
        f'SELECT "{time_column}", "{id_column}" FROM "{table}" '
        f'ORDER BY "{time_column}" DESC, "{id_column}" DESC LIMIT 1 OFFSET ?',
        (offset,),
    ).fetchone()
    connection.close()
    return encode_cursor(micros, row_id)


def timed(client: TestClient, path: str, repeat: int, **params: str) -> dict:
    """Median and p95 of ``repeat`` GETs, after a warm-up; the last response."""
    for _ in range(3):
        result = client.simulate_get(path, params=params)
        assert result.status_code == 200, (path, result.status_code, result.text[:300])
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = client.simulate_get(path, params=params)
        times.append((time.perf_counter() - started) * 1000)
        assert result.status_code == 200, (path, result.status_code)
    times.sort()
    return {
        "median": statistics.median(times),
        "p95": times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)],
        "json": result.json,
    }


def follow(client: TestClient, path: str, pages: int) -> tuple[int, float]:
    """Follow next_cursor ``pages`` times; return how deep and the last page's ms."""
    cursor = None
    elapsed = 0.0
    depth = 0
    for _ in range(pages):
        params = {"cursor": cursor} if cursor else {}
        started = time.perf_counter()
        result = client.simulate_get(path, params=params)
        elapsed = (time.perf_counter() - started) * 1000
        assert result.status_code == 200
        depth += len(result.json["items"])
        cursor = result.json["next_cursor"]
        if cursor is None:
            break
    return depth, elapsed


def measure(path: Path, repeat: int, follow_pages: int) -> dict[str, dict]:
    engine = Engine(f"sqlite:///{path}", CONNECTORS, load_entry_points=True)
    client = TestClient(create_app(engine))
    runs_cursor = deep_cursor(path, "worker_run", "started_at", "run_id")
    attempts_cursor = deep_cursor(path, "delivery_attempt", "started_at", "attempt_id")
    figures = {
        "dashboard": timed(client, api_path("/worker-dashboard"), repeat),
        "worker-runs, first page": timed(client, api_path("/worker-runs"), repeat),
        "worker-runs, page at 90 %": timed(
            client, api_path("/worker-runs"), repeat, cursor=runs_cursor
        ),
        "attempts, first page": timed(client, api_path("/attempts"), repeat),
        "attempts, page at 90 %": timed(
            client, api_path("/attempts"), repeat, cursor=attempts_cursor
        ),
    }
    for name in ("worker-runs", "attempts"):
        depth, last = follow(client, api_path(f"/{name}"), follow_pages)
        figures[f"{name}, followed"] = {"depth": depth, "last_ms": last}
    engine.close()
    return figures


def store_counts(path: Path) -> dict[str, int]:
    connection = sqlite3.connect(path)
    counts = {
        table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        for table in ("delivery_attempt", "lineage", "audit_package", "worker_run")
    }
    counts["open failed"] = connection.execute(
        "SELECT count(*) FROM lineage WHERE state = 'failed'"
    ).fetchone()[0]
    connection.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--history-days", type=float, default=365)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--follow", type=int, default=200, help="pages to follow")
    parser.add_argument("--workdir", help="where the stores go (default: temporary)")
    args = parser.parse_args(argv)

    directory = Path(args.workdir or tempfile.mkdtemp(prefix="cavra-bench-dash-"))
    directory.mkdir(parents=True, exist_ok=True)
    print_machine()
    print(f"stores: {directory}")

    results = {}
    for size in (args.small, args.attempts):
        path = directory / f"dashboard-{size}.db"
        if not path.exists():
            totals = seed(path, size, args.history_days)
            print(f"seeded {size:,} attempts in {totals['seconds']:.1f} s")
        counts = store_counts(path)
        print(
            f"store {size:,}: "
            + ", ".join(f"{name} {value:,}" for name, value in counts.items())
        )
        results[size] = measure(path, args.repeat, args.follow)

    small, large = results[args.small], results[args.attempts]
    print(
        f"\n{'request':28} {args.small:>10,} median/p95 ms "
        f"{args.attempts:>10,} median/p95 ms   ratio  verdict"
    )
    all_met = True
    for name, figure in large.items():
        if "median" not in figure:
            continue
        base = small[name]
        ratio = figure["median"] / base["median"]
        met = figure["p95"] < LATENCY_TARGET_MS and ratio <= SCALING_TARGET
        all_met &= met
        print(
            f"{name:28} {base['median']:>10.1f} / {base['p95']:<6.1f}       "
            f"{figure['median']:>10.1f} / {figure['p95']:<6.1f}      {ratio:>5.2f}  "
            f"{'met' if met else 'NOT met'}"
        )
    for name in ("worker-runs, followed", "attempts, followed"):
        figure = large[name]
        print(
            f"{name}: {figure['depth']:,} items deep, last page "
            f"{figure['last_ms']:.1f} ms"
        )
    print(
        f"\ntargets (p95 < {LATENCY_TARGET_MS:g} ms, median within "
        f"{SCALING_TARGET}x of {args.small:,}): {'met' if all_met else 'NOT met'}"
    )

    print(f"\nload average at the end: {load_average()}")
    if not args.workdir:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
