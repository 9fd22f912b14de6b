"""
SIEM connectors for cavra: Splunk HTTP Event Collector and syslog.

An ordinary cavra plugin, registered through the entry point group ``cavra``
and written against ``cavra_core``'s public API only, as any third-party
connector would be.
"""

from __future__ import annotations

from cavra_core import hookimpl
from cavra_core.types import Connector, FailureCount, RecoveryStep
from cavra_siem.hec import HecConnectorType
from cavra_siem.recovery import hec_recovery_steps, syslog_recovery_steps
from cavra_siem.syslog import SyslogConnectorType

__all__ = [
    "HecConnectorType",
    "SyslogConnectorType",
    "cavra_recovery_steps",
    "cavra_register_connector_types",
]


@hookimpl
def cavra_register_connector_types() -> list[object]:
    return [HecConnectorType(), SyslogConnectorType()]


@hookimpl
def cavra_recovery_steps(
    connector: Connector, failure_classes: tuple[FailureCount, ...]
) -> list[RecoveryStep] | None:
    """Steps in HEC or syslog terms for those connectors; other types are not ours."""
    if connector.type == HecConnectorType.name:
        return hec_recovery_steps(connector, failure_classes)
    if connector.type == SyslogConnectorType.name:
        return syslog_recovery_steps(connector, failure_classes)
    return None
