"""Where the API lives: one prefix for every API path, kept in one place."""

from __future__ import annotations

API_PREFIX = (
    "/runtime/go-pilot/rollback-drill-notifications/acknowledgements/audit-delivery"
)


def api_path(suffix: str = "") -> str:
    """The full path of an API resource, e.g. ``api_path("/worker-runs")``."""
    return API_PREFIX + suffix
