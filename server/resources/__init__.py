"""The API's resources, one small module per noun."""

from __future__ import annotations

from cavra_server.resources.approvals import (
    Approval,
    ApprovalRevocation,
    Approvals,
    PlanApprovals,
)
from cavra_server.resources.attempts import AttemptActivity, DeliveryAttempts
from cavra_server.resources.base import Operation, PathParameter, Resource
from cavra_server.resources.connectors import Connector, ConnectorResume, Connectors
from cavra_server.resources.dashboard import WorkerDashboard
from cavra_server.resources.deliveries import PackageDeliveries
from cavra_server.resources.evidence import EvidenceEntries, EvidenceVerification
from cavra_server.resources.executions import Execution, Executions
from cavra_server.resources.lineages import Lineage
from cavra_server.resources.recovery import (
    RecoveryClosures,
    RecoveryPlaybook,
    RecoveryPlaybookRequests,
    RecoveryPlaybooks,
    RecoveryReport,
)
from cavra_server.resources.retry_plans import RetryPlan, RetryPlanRequests, RetryPlans
from cavra_server.resources.service import Health, OpenApiDocument, ServiceIndex
from cavra_server.resources.session import Session
from cavra_server.resources.worker_runs import WorkerRun, WorkerRunRequests, WorkerRuns

__all__ = [
    "Approval",
    "ApprovalRevocation",
    "Approvals",
    "AttemptActivity",
    "Execution",
    "Executions",
    "PlanApprovals",
    "Connector",
    "ConnectorResume",
    "Connectors",
    "DeliveryAttempts",
    "EvidenceEntries",
    "EvidenceVerification",
    "Health",
    "Lineage",
    "OpenApiDocument",
    "Operation",
    "PackageDeliveries",
    "PathParameter",
    "RecoveryClosures",
    "RecoveryPlaybook",
    "RecoveryPlaybookRequests",
    "RecoveryPlaybooks",
    "RecoveryReport",
    "Resource",
    "RetryPlan",
    "RetryPlanRequests",
    "RetryPlans",
    "ServiceIndex",
    "Session",
    "WorkerDashboard",
    "WorkerRun",
    "WorkerRunRequests",
    "WorkerRuns",
]
