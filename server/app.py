"""
The app factory: the Falcon app that serves cavra's HTTP API.

```python
from cavra_core import open_engine
from cavra_server import create_app, serve

serve(create_app(open_engine()))
```

Every route is listed in :func:`api_routes`; the OpenAPI document at
``/openapi.json`` is built from the same list.
"""

from __future__ import annotations

from pathlib import Path

import falcon

from cavra_core import Engine
from cavra_server import resources
from cavra_server.auth import TokenAuthentication
from cavra_server.idempotency import IdempotencyKeys
from cavra_server.middleware import DatabaseConnection, SecurityHeaders
from cavra_server.openapi import build_openapi
from cavra_server.paths import API_PREFIX, api_path
from cavra_server.problems import register_error_handlers
from cavra_server.resources.metrics import METRICS_PATH, Metrics
from cavra_server.resources.service import CONSOLE_PATH, OPENAPI_PATH

#: The prefix every API path starts with.
P = API_PREFIX
#: The console's static files; the console is served only when index.html exists.
STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_MAX_BODY_BYTES = 1_048_576


def api_routes(
    engine: Engine, *, max_body_bytes: int, static_dir: Path = STATIC_DIR
) -> list[tuple[str, resources.Resource]]:
    """Every route of the app: a URI template and the resource answering it."""
    options = {"max_body_bytes": max_body_bytes}
    return [
        ("/", resources.ServiceIndex(engine, static_dir=static_dir, **options)),
        ("/healthz", resources.Health(engine, **options)),
        (OPENAPI_PATH, resources.OpenApiDocument(engine, **options)),
        (METRICS_PATH, Metrics(engine, **options)),
        (api_path(), resources.PackageDeliveries(engine, **options)),
        (api_path("/attempts"), resources.DeliveryAttempts(engine, **options)),
        (
            api_path("/attempt-activity"),
            resources.AttemptActivity(engine, **options),
        ),
        (
            api_path("/lineages/{lineage_id}"),
            resources.Lineage(engine, **options),
        ),
        (api_path("/session"), resources.Session(engine, **options)),
        (api_path("/retry-plan"), resources.RetryPlanRequests(engine, **options)),
        (api_path("/retry-plans"), resources.RetryPlans(engine, **options)),
        (
            api_path("/retry-plans/{retry_plan_id}"),
            resources.RetryPlan(engine, **options),
        ),
        (api_path("/worker-run"), resources.WorkerRunRequests(engine, **options)),
        (api_path("/worker-runs"), resources.WorkerRuns(engine, **options)),
        (api_path("/worker-runs/{run_id}"), resources.WorkerRun(engine, **options)),
        (api_path("/worker-dashboard"), resources.WorkerDashboard(engine, **options)),
        (api_path("/connectors"), resources.Connectors(engine, **options)),
        (
            api_path("/connectors/{connector_id}"),
            resources.Connector(engine, **options),
        ),
        (
            api_path("/connectors/{connector_id}/resume"),
            resources.ConnectorResume(engine, **options),
        ),
        (
            api_path("/retry-plans/{retry_plan_id}/approvals"),
            resources.PlanApprovals(engine, **options),
        ),
        (api_path("/approvals"), resources.Approvals(engine, **options)),
        (
            api_path("/approvals/{approval_id}"),
            resources.Approval(engine, **options),
        ),
        (
            api_path("/approvals/{approval_id}/revoke"),
            resources.ApprovalRevocation(engine, **options),
        ),
        (api_path("/executions"), resources.Executions(engine, **options)),
        (
            api_path("/executions/{execution_id}"),
            resources.Execution(engine, **options),
        ),
        (api_path("/evidence"), resources.EvidenceEntries(engine, **options)),
        (
            api_path("/evidence/verify"),
            resources.EvidenceVerification(engine, **options),
        ),
        (
            api_path("/connector-recovery-playbook"),
            resources.RecoveryPlaybookRequests(engine, **options),
        ),
        (
            api_path("/connector-recovery-playbooks"),
            resources.RecoveryPlaybooks(engine, **options),
        ),
        (
            api_path("/connector-recovery-playbooks/{playbook_id}"),
            resources.RecoveryPlaybook(engine, **options),
        ),
        (
            api_path("/connector-recovery-playbooks/{playbook_id}/closures"),
            resources.RecoveryClosures(engine, **options),
        ),
        (
            api_path("/connector-recovery-report"),
            resources.RecoveryReport(engine, **options),
        ),
    ]


def create_app(
    engine: Engine,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    static_dir: Path = STATIC_DIR,
) -> falcon.App:
    """
    Build the app around an open engine.

    Args:
        engine: the engine every resource calls; its database is connected
            per request and closed after.
        max_body_bytes: the largest request body accepted (413 beyond).
        static_dir: where the Evidence Console's files are; without an
            ``index.html`` there, ``/`` describes the API instead.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be at least 1")
    app = falcon.App(
        middleware=[
            SecurityHeaders(),
            DatabaseConnection(engine.database),
            # After the connection (they query the store), tokens before keys
            # (keys are scoped by the caller's token).
            TokenAuthentication(),
            IdempotencyKeys(),
        ]
    )
    register_error_handlers(app)

    routes = api_routes(engine, max_body_bytes=max_body_bytes, static_dir=static_dir)
    for template, resource in routes:
        app.add_route(template, resource)
    document = build_openapi(routes)
    for _, resource in routes:
        if isinstance(resource, resources.OpenApiDocument):
            resource.document = document

    if (static_dir / "index.html").is_file():
        app.add_static_route(
            CONSOLE_PATH.rstrip("/"), str(static_dir), fallback_filename="index.html"
        )
    return app
