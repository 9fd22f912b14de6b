"""
Benchmark: live workers re-delivering approved retries, on PostgreSQL.

``--retries`` failed lineages (10,000 by default) are seeded through the
embedded engine into a database of their own (created on the server of
``--admin-url`` and dropped at the end), planned by one person and approved
by another. Each measurement runs on a fresh copy of that database
(``CREATE DATABASE ... TEMPLATE``), with ``cavra worker serve --execute
--every 1s`` processes (1, then 2 by default) sending to a loopback receiver
that answers 204 at once and counts deliveries by ``Idempotency-Key``.
The retries become due a few seconds after the workers are ready (the
connector's retry delay is set so), so every run starts from the same place.

Reported for each run:

* deliveries per second, from the first request the receiver got to the
  last;
* due-to-attempt lag, p50 and p99: each worker attempt's start minus the
  moment its retry became due (the decision's ``not_before``);
* double deliveries: event ids the receiver got more than once (must be 0);
* CPU seconds per delivery of the worker processes and their store
  processes, from ``/proc/PID/stat`` (user and system) between ready and
  done, start-up excluded;
* how busy the machine's cores were from the first delivery to the last
  (``/proc/stat``): at 100 % the run is bound by the CPU the workers, the
  receiver and PostgreSQL share, and more workers cannot go faster.

The floor is the webhook connector's own HTTP client with no database: a
child process calls ``WebhookConnectorType.deliver`` in a tight loop against
the same receiver. The ratios 1 worker / floor and 2 workers / 1 worker
follow.

The receiver, the seeding and the worker processes are those of the fault
tests (``tests/workers_support.py``), so the benchmark runs what they check.
Run ``python bench/workers.py`` (about six minutes on two cores, a third of it
seeding), or ``--retries 2000`` for a quicker look.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from seeding import load_average, print_machine  # noqa: E402
from workers_support import (  # noqa: E402
    CONNECTOR_ID,
    CountingReceiver,
    connectors_table,
    create_database,
    drop_database,
    execution_outcomes,
    query,
    seed_approved_retries,
    sibling_url,
    start_workers,
    stop_all,
    wait_until_settled,
    write_connectors,
)

DEFAULT_ADMIN_URL = os.environ.get(
    "CAVRA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: How long after the workers are ready the retries become due.
DUE_LEAD = timedelta(seconds=3)
#: The most retries one window's run queues (``--max`` of the service).
MAX_PER_RUN = 10_000


def floor_child(url: str, count: int) -> dict[str, float]:
    """
    Deliver ``count`` packages through the webhook connector, no database.

    Runs in a process of its own, as a worker would, so the receiver in the
    parent does not share its interpreter.
    """
    from plugins_fixtures import package

    from cavra_core.connectors import build_registry
    from cavra_core.types import Delivery
    from cavra_webhook import WebhookConnectorType

    webhook = WebhookConnectorType()
    registry = build_registry(connectors_table(url), {"webhook": webhook})
    connector = registry.get(CONNECTOR_ID)
    document = package("drill-floor")
    started = time.perf_counter()
    cpu = time.process_time()
    delivered = 0
    for index in range(count):
        result = webhook.deliver(
            connector,
            Delivery(
                package_id="0" * 64,
                package=document,
                lineage_id=f"lin_{index:032x}",
                attempt_number=2,
                event_id=f"lin_{index:032x}",
            ),
        )
        delivered += result.outcome == "delivered"
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "delivered": delivered,
    }


def measure_floor(receiver: CountingReceiver, count: int) -> dict[str, float]:
    receiver.reset_counts()
    output = subprocess.run(
        [sys.executable, __file__, "--floor-child", receiver.url + "/hook"]
        + ["--retries", str(count)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    if figures["delivered"] != count:
        raise SystemExit(f"floor: only {figures['delivered']} of {count} delivered")
    first, last = receiver.arrival_span()
    figures["rate"] = (count - 1) / (last - first) if last > first else 0.0
    return figures


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure_workers(
    receiver: CountingReceiver,
    admin_url: str,
    template: str,
    failed_at: datetime,
    count: int,
    workers: int,
    args: argparse.Namespace,
    home: Path,
) -> dict[str, float]:
    """One run of ``workers`` processes over a fresh copy of the seeded store."""
    name = f"{template}_run{workers}"
    url = create_database(admin_url, name, template=template)
    receiver.reset_counts()
    processes = []
    try:
        due_at = datetime.now(UTC) + DUE_LEAD
        delay = (due_at - failed_at).total_seconds() / 60
        connectors = write_connectors(
            home, receiver.url, read_timeout=10, retry_delay_minutes=delay
        )
        processes = start_workers(
            workers,
            home,
            url,
            connectors,
            prefix=f"bench{workers}",
            max_retries=min(count, MAX_PER_RUN),
            batch=args.batch,
            lease=args.lease,
            extra=["--bookkeeping", args.bookkeeping],
        )
        cpu_at_ready = [process.cpu_seconds() for process in processes]
        receiver.wait_for_keys(1, timeout=120)
        machine_at_first = machine_ticks()
        receiver.wait_for_keys(count, timeout=max(300.0, count / 10))
        busy = machine_busy(machine_at_first, machine_ticks())
        wait_until_settled(url, count, timeout=120)
        cpu_used = sum(
            process.cpu_seconds() - before
            for process, before in zip(processes, cpu_at_ready, strict=True)
        )
        codes = stop_all(processes)
        if any(codes):
            raise SystemExit(f"a worker exited with {codes}")
        outcomes = execution_outcomes(url)
        due_micros = int(due_at.timestamp() * 1_000_000)
        lags = [
            (started - due_micros) / 1_000_000
            for (started,) in query(
                url,
                'SELECT "started_at" FROM "delivery_attempt" '
                "WHERE \"source\" = 'worker'",
            )
        ]
    finally:
        for process in processes:
            process.kill()
        drop_database(admin_url, name)

    counts = receiver.counts()
    first, last = receiver.arrival_span()
    return {
        "rate": (count - 1) / (last - first) if last > first else 0.0,
        "seconds": last - first,
        "lag_p50": percentile(lags, 0.50),
        "lag_p99": percentile(lags, 0.99),
        "doubles": sum(n - 1 for n in counts.values()),
        "cpu_per_delivery": cpu_used / count,
        "machine_busy": busy,
        "delivered": outcomes["delivered"],
    }


def machine_ticks() -> tuple[int, int]:
    """All the cores' busy and total clock ticks so far (``/proc/stat``)."""
    with open("/proc/stat") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # up to steal; guest time is counted in user
    return total - idle, total


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--retries", type=int, default=10_000, help="approved due retries to send"
    )
    parser.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts to run"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1000,
        help="most claims per batch (the service default)",
    )
    parser.add_argument("--lease", type=float, default=30, help="lease in seconds")
    parser.add_argument(
        "--bookkeeping",
        choices=("process", "thread"),
        default="process",
        help="where the workers claim and record (the service default: process)",
    )
    parser.add_argument(
        "--admin-url",
        default=DEFAULT_ADMIN_URL,
        help="a PostgreSQL database to create and drop the benchmark's from",
    )
    parser.add_argument(
        "--workdir", help="where logs and files go (default: a temporary folder)"
    )
    parser.add_argument("--floor-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.floor_child:
        print(json.dumps(floor_child(args.floor_child, args.retries)))
        return 0

    home = Path(args.workdir or tempfile.mkdtemp(prefix="cavra-bench-workers-"))
    home.mkdir(parents=True, exist_ok=True)
    counts = [int(value) for value in args.workers.split(",") if value.strip()]
    print_machine()
    print(f"files: {home}")

    template = f"cavra_bench_workers_{uuid.uuid4().hex[:8]}"
    template_url = create_database(args.admin_url, template)
    results: dict[int, dict[str, float]] = {}
    try:
        started = time.perf_counter()
        # Failed a minute ago: with the default delay the plan's decisions
        # wait (an approval covers those too); each run sets the delay so
        # that they become due just after its workers are ready.
        failed_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        seed_approved_retries(
            template_url,
            connectors_table("http://127.0.0.1:9/hook"),
            args.retries,
            failed_at=failed_at,
        )
        print(
            f"seeded {args.retries} approved retries through the engine in "
            f"{time.perf_counter() - started:.1f} s "
            f"({describe(sibling_url(args.admin_url, template))})"
        )

        with CountingReceiver() as receiver:
            floor = measure_floor(receiver, args.retries)
            print(
                f"\nfloor, webhook connector's client alone: {args.retries} in "
                f"{floor['seconds']:.2f} s -> {floor['rate']:,.0f} deliveries/s, "
                f"{floor['cpu_seconds'] / args.retries * 1000:.3f} ms CPU each"
            )
            print(
                f"\n{'workers':>7} {'deliveries/s':>13} {'seconds':>8} "
                f"{'lag p50':>8} {'lag p99':>8} {'doubles':>8} "
                f"{'CPU ms/delivery':>16} {'machine busy':>13}"
            )
            for workers in counts:
                figures = measure_workers(
                    receiver,
                    args.admin_url,
                    template,
                    failed_at,
                    args.retries,
                    workers,
                    args,
                    home,
                )
                results[workers] = figures
                print(
                    f"{workers:>7} {figures['rate']:>13,.0f} "
                    f"{figures['seconds']:>8.2f} {figures['lag_p50']:>7.2f}s "
                    f"{figures['lag_p99']:>7.2f}s {figures['doubles']:>8} "
                    f"{figures['cpu_per_delivery'] * 1000:>16.2f} "
                    f"{figures['machine_busy']:>12.0%}"
                )
                if figures["delivered"] != args.retries:
                    raise SystemExit(
                        f"{workers} workers delivered {figures['delivered']} "
                        f"of {args.retries}"
                    )
    finally:
        drop_database(args.admin_url, template)

    print()
    if 1 in results and floor["rate"]:
        print(f"1 worker / floor = {results[1]['rate'] / floor['rate']:.0%}")
    if 1 in results and 2 in results and results[1]["rate"]:
        print(f"2 workers / 1 worker = {results[2]['rate'] / results[1]['rate']:.2f}x")
    doubles = sum(figures["doubles"] for figures in results.values())
    print(f"double deliveries: {doubles} ({'ok' if not doubles else 'NOT ok'})")
    print(f"load average at the end: {load_average()}")
    return 1 if doubles else 0


def describe(url: str) -> str:
    """A database URL without its user, as logs show it."""
    return url.split("@", 1)[-1]


if __name__ == "__main__":
    raise SystemExit(main())
