"""
``GET /metrics``: scraped through the real app, read with prometheus_client's
own parser, on both stores. The figures come from the store, so a new engine
(another process, or the same one restarted) reads the same ones.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from falcon import testing
from playhouse.migrations import Runner
from plugins_fixtures import T0, Clock, FakePlugin, FakeType, failed, package
from prometheus_client.parser import text_string_to_metric_families

from cavra_core import Engine, identity
from cavra_core.identity import Actor
from cavra_core.store import MIGRATIONS_DIR, Counter, migrate
from cavra_server import create_app

MINUTE = timedelta(minutes=1)
CONNECTORS = {"hook-a": {"type": "fake"}, "hook-b": {"type": "fake"}}
PLANNER = Actor("rm-alice", True, "release_manager")
APPROVER = Actor("po-bob", True, "platform_owner")


@pytest.fixture
def fake() -> FakeType:
    return FakeType("fake")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(make_engine, fake, clock) -> Engine:
    return make_engine(
        CONNECTORS, plugins=[FakePlugin(fake)], load_entry_points=False, clock=clock
    )


def scrape(engine: Engine, **headers: str) -> testing.Result:
    return testing.TestClient(create_app(engine)).simulate_get(
        "/metrics", headers=headers
    )


def samples(response: testing.Result) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, parsed as Prometheus would."""
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def governed_flow(engine: Engine, fake: FakeType, clock: Clock) -> None:
    """A failure on each connector (hook-b paused by a 401), a plan, an approval,
    a live run that delivers hook-a's retry, then a dry run."""
    fake.script(failed(503), failed(401))
    with engine.database.connection_context():
        engine.deliver_package(
            {"package": package(), "connectors": ["hook-a"], "generated_by": "rm"}
        )
        engine.deliver_package(
            {"package": package(), "connectors": ["hook-b"], "generated_by": "rm"}
        )
        clock.advance(minutes=20)
        plan = engine.plan_retries({}, actor=PLANNER)
        engine.approvals.create(
            plan["retry_plan_id"],
            {"reason": "receiver is back", "all_retry_decisions": True},
            actor=APPROVER,
        )
        clock.advance(minutes=1)
        engine.run_worker({"dry_run": False}, actor=APPROVER)
        engine.run_worker({}, actor=APPROVER)


def test_metrics_are_served_in_the_prometheus_text_format(engine) -> None:
    response = scrape(engine)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert names == {
        "cavra_deliveries",
        "cavra_decisions",
        "cavra_executions",
        "cavra_worker_runs",
        "cavra_worker_run_duration_seconds",
        "cavra_claim_lag_seconds",
        "cavra_lease_rescues",
        "cavra_paused_connectors",
    }


def test_deliveries_are_counted_by_connector_outcome_and_source(
    engine, fake, clock
) -> None:
    governed_flow(engine, fake, clock)

    found = samples(scrape(engine))

    total = "cavra_deliveries_total"
    assert value(found, total, connector="hook-a", outcome="failed", source="api") == 1
    assert value(found, total, connector="hook-b", outcome="failed", source="api") == 1
    assert (
        value(found, total, connector="hook-a", outcome="delivered", source="worker")
        == 1
    )


def test_decisions_are_counted_by_action_and_reason(engine, fake, clock) -> None:
    governed_flow(engine, fake, clock)

    found = samples(scrape(engine))

    total = "cavra_decisions_total"
    assert value(found, total, made_by="plan", action="retry", reason="retry_due") == 1
    assert (
        value(found, total, made_by="plan", action="wait", reason="connector_paused")
        == 1
    )
    # The live run saw both failures; the dry run only hook-b's, still paused.
    assert (
        value(
            found, total, made_by="worker_run", action="wait", reason="connector_paused"
        )
        == 2
    )
    assert (
        value(found, total, made_by="worker_run", action="retry", reason="retry_due")
        == 1
    )


def test_runs_executions_claim_lag_and_paused_connectors(engine, fake, clock) -> None:
    governed_flow(engine, fake, clock)

    found = samples(scrape(engine))

    assert value(found, "cavra_executions_total", outcome="delivered") == 1
    assert value(found, "cavra_executions_total", outcome="failed") == 0
    assert value(found, "cavra_worker_runs_total", mode="live") == 1
    assert value(found, "cavra_worker_runs_total", mode="dry") == 1
    duration = "cavra_worker_run_duration_seconds"
    assert value(found, f"{duration}_count", mode="live") == 1
    assert value(found, f"{duration}_bucket", mode="dry", le="+Inf") == 1
    # The retry was due at T0 + 15 minutes (jitter aside) and sent at T0 + 21.
    lag = "cavra_claim_lag_seconds"
    assert value(found, f"{lag}_count", connector="hook-a") == 1
    assert 60 < value(found, f"{lag}_sum", connector="hook-a") < 7 * 60
    assert value(found, f"{lag}_bucket", connector="hook-a", le="60.0") == 0
    assert value(found, f"{lag}_bucket", connector="hook-a", le="900.0") == 1
    assert value(found, "cavra_paused_connectors", state="paused") == 1
    assert value(found, "cavra_paused_connectors", state="disabled") == 0


def test_another_engine_on_the_store_reads_the_same_figures(
    engine, fake, clock, database_url
) -> None:
    """What one process counted, another (or the same, restarted) sees."""
    governed_flow(engine, fake, clock)
    before = samples(scrape(engine))
    engine.close()

    with Engine(
        database_url, CONNECTORS, plugins=[FakePlugin(fake)], load_entry_points=False
    ) as restarted:
        after = samples(scrape(restarted))

    assert after == before


def test_metrics_need_a_token_once_tokens_exist(engine) -> None:
    with engine.database.connection_context():
        token, _ = identity.create_token("auditor-1", "auditor", T0)

    refused = scrape(engine)
    allowed = scrape(engine, Authorization=f"Bearer {token}")

    assert refused.status_code == 401
    assert allowed.status_code == 200


def test_the_openapi_document_describes_metrics_as_text(engine) -> None:
    document = testing.TestClient(create_app(engine)).simulate_get("/openapi.json")

    operation = document.json["paths"]["/metrics"]["get"]

    assert operation["operationId"] == "getMetrics"
    assert set(operation["responses"]["200"]["content"]) == {"text/plain"}
    assert operation["security"] == [{"apiToken": []}]


def test_upgrading_counts_the_deliveries_recorded_before(
    engine, fake, database_url
) -> None:
    """The migration that adds the delivery counters fills them from history."""
    fake.script(failed(503))
    with engine.database.connection_context():
        engine.deliver_package(
            {"package": package(), "connectors": ["hook-a"], "generated_by": "rm"}
        )
        runner = Runner(engine.database, directory=str(MIGRATIONS_DIR))
        runner.down(target=_migration_before("schedule_window"))
        Counter.delete().where(Counter.name.startswith("deliveries:")).execute()
    migrate(engine.database)

    found = samples(scrape(engine))

    assert (
        value(
            found,
            "cavra_deliveries_total",
            connector="hook-a",
            outcome="failed",
            source="api",
        )
        == 1
    )


def _migration_before(suffix: str) -> str:
    names = sorted(path.stem for path in MIGRATIONS_DIR.glob("[0-9]*.py"))
    position = next(i for i, name in enumerate(names) if name.endswith(suffix))
    return names[position - 1]
