"""
SIEM connectors for cavra: Splunk HTTP Event Collector and syslog.

An ordinary cavra plugin, registered through the entry point group ``cavra``
and written against ``cavra_core``'s public API only, as any third-party
connector would be.
"""

from __future__ import annotations

from cavra_core import hookimpl
from cavra_siem.hec import HecConnectorType
from cavra_siem.syslog import SyslogConnectorType

__all__ = ["HecConnectorType", "SyslogConnectorType", "cavra_register_connector_types"]


@hookimpl
def cavra_register_connector_types() -> list[object]:
    return [HecConnectorType(), SyslogConnectorType()]
