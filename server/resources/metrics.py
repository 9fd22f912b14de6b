"""
``/metrics``: figures for Prometheus, in its text exposition format.

Every figure is read from the store when scraped: running totals and
histogram buckets kept in the ``counter`` table by whichever process did the
work (see :mod:`cavra_core.metrics`), and the connectors' states. So any API
process answers for every worker sharing the database, and nothing resets
when a process restarts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry
from prometheus_client import generate_latest as render_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from cavra_core import Engine, health, metrics, store
from cavra_core.executions import EXECUTION_COUNTERS, LEASE_RESCUES
from cavra_server.resources.base import COMMON_PROBLEMS, Operation, Resource

METRICS_PATH = "/metrics"
#: How the OpenAPI document describes the body: text, not JSON.
_TEXT_SCHEMA = {
    "type": "string",
    "description": "Prometheus text exposition format 0.0.4.",
}


class StoreCollector:
    """A prometheus_client collector that reads cavra's figures from the store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not touch the database.
        return []

    def collect(self) -> Iterator[Metric]:
        yield self._deliveries()
        yield self._decisions()
        yield self._executions()
        yield self._worker_runs()
        yield self._histogram(
            metrics.WORKER_RUN_SECONDS,
            "cavra_worker_run_duration_seconds",
            "How long worker runs took, from start to recorded end.",
            "mode",
        )
        yield self._histogram(
            metrics.CLAIM_LAG_SECONDS,
            "cavra_claim_lag_seconds",
            "Seconds from a decision's not_before to the start of the live "
            "attempt that sent it.",
            "connector",
        )
        yield self._lease_rescues()
        yield self._paused_connectors()

    def _deliveries(self) -> Metric:
        family = CounterMetricFamily(
            "cavra_deliveries",
            "Delivery attempts recorded, by connector, outcome and source.",
            labels=["connector", "outcome", "source"],
        )
        for (source, outcome, connector), value in metrics.read_family(
            metrics.DELIVERIES, 3
        ):
            family.add_metric([connector, outcome, source], value)
        return family

    def _decisions(self) -> Metric:
        family = CounterMetricFamily(
            "cavra_decisions",
            "Retry decisions made by plans and worker runs, by action and reason.",
            labels=["made_by", "action", "reason"],
        )
        for labels, value in metrics.read_family(metrics.DECISIONS, 3):
            family.add_metric(list(labels), value)
        return family

    def _executions(self) -> Metric:
        family = CounterMetricFamily(
            "cavra_executions",
            "Approved decisions live runs acted on, by outcome.",
            labels=["outcome"],
        )
        for name, value in store.read_counters(*EXECUTION_COUNTERS).items():
            family.add_metric([name.split(":", 1)[1]], value)
        return family

    def _lease_rescues(self) -> Metric:
        family = CounterMetricFamily(
            "cavra_lease_rescues",
            "Claimed retries taken over by another worker after their lease ran "
            "out (the worker holding them died or lost the database), by "
            "connector.",
            labels=["connector"],
        )
        for (connector,), value in metrics.read_family(LEASE_RESCUES, 1):
            family.add_metric([connector], value)
        return family

    def _worker_runs(self) -> Metric:
        family = CounterMetricFamily(
            "cavra_worker_runs",
            "Worker runs recorded, dry and live.",
            labels=["mode"],
        )
        found = store.read_counters("worker_dry_runs", "worker_live_runs")
        family.add_metric(["dry"], found["worker_dry_runs"])
        family.add_metric(["live"], found["worker_live_runs"])
        return family

    def _histogram(
        self,
        histogram: metrics.StoredHistogram,
        name: str,
        documentation: str,
        label: str,
    ) -> Metric:
        family = HistogramMetricFamily(name, documentation, labels=[label])
        for series, reading in sorted(histogram.read().items()):
            buckets: list[tuple[str, float]] = [
                (_bound(bound), count) for bound, count in reading.buckets
            ]
            buckets.append(("+Inf", reading.count))
            family.add_metric([series], buckets, reading.sum)
        return family

    def _paused_connectors(self) -> Metric:
        family = GaugeMetricFamily(
            "cavra_paused_connectors",
            "Configured connectors that are not active: paused (a "
            "configuration failure) or disabled (the receiver asked for no more).",
            labels=["state"],
        )
        states = health.load_health(list(self.engine.connectors))
        for state in (health.PAUSED, health.DISABLED):
            count = sum(1 for found in states.values() if found.state == state)
            family.add_metric([state], count)
        return family


def _bound(value: float) -> str:
    return str(float(value))


class Metrics(Resource):
    """``/metrics``: cavra's figures for Prometheus; a read like any other."""

    operations = {
        "GET": Operation(
            operation_id="getMetrics",
            summary="Read cavra's figures in the Prometheus text format.",
            responses={200: _TEXT_SCHEMA},
            problems=COMMON_PROBLEMS,
            media_type="text/plain",
        )
    }

    def __init__(self, engine: Any, *, max_body_bytes: int) -> None:
        super().__init__(engine, max_body_bytes=max_body_bytes)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(engine))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.query(req)

        body = render_metrics(self.registry)

        resp.status = 200
        resp.content_type = CONTENT_TYPE_PLAIN_0_0_4
        resp.data = body
