"""
cavra's core: the retry engine, its store, hook specifications and policies.

Other tools embed cavra through the names exported here; connector plugins use
:mod:`cavra_core.types` and :data:`hookimpl`.
"""

from __future__ import annotations

from cavra_core.engine import Engine, open_engine
from cavra_core.errors import (
    CavraError,
    Conflict,
    FieldProblem,
    InvalidInput,
    NotFound,
    UnprocessableInput,
)
from cavra_core.hookspecs import hookimpl
from cavra_core.policy import DEFAULT_POLICY, RetryPolicy
from cavra_core.types import (
    AttemptFacts,
    Connector,
    ConnectorConfigError,
    ConnectorType,
    Delivery,
    DeliveryResult,
    Eligibility,
    FailureClassification,
    LineageFacts,
    ScheduleWindow,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_POLICY",
    "AttemptFacts",
    "CavraError",
    "Conflict",
    "Connector",
    "ConnectorConfigError",
    "ConnectorType",
    "Delivery",
    "DeliveryResult",
    "Eligibility",
    "Engine",
    "FailureClassification",
    "FieldProblem",
    "InvalidInput",
    "LineageFacts",
    "NotFound",
    "RetryPolicy",
    "ScheduleWindow",
    "UnprocessableInput",
    "__version__",
    "hookimpl",
    "open_engine",
]
