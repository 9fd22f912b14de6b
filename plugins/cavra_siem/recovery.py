"""
Recovery steps for SIEM connectors: Splunk HEC and syslog, in their own terms.

For HEC, a failure's error class is HEC's own status code, so the steps can
say exactly which of the token, the index, the channel or indexer
acknowledgement to look at. For syslog, which answers nothing, the steps
read the transport: a TLS certificate that does not verify, a listener that
is not there, a message larger than the receiver takes. Failures with
nothing protocol-specific to them get cavra's generic steps after these.
Steps name settings, variables and indexes, never a secret or a URL's path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from cavra_core.default_policy import failure_summary, generic_recovery_steps
from cavra_core.types import Connector, FailureCount, RecoveryStep

Detail = Callable[[Connector, Sequence[FailureCount]], str]

# -- HEC ------------------------------------------------------------------------

HEC_TITLES = {
    "enable_hec_token": "Enable the HEC token in Splunk",
    "set_hec_token": "Set the HEC token's variable",
    "replace_hec_token": "Replace the HEC token",
    "check_hec_index": "Check the index and sourcetype the token may write",
    "check_hec_channel": "Check the HEC channel",
    "enable_hec_acknowledgement": "Turn on indexer acknowledgement for the token",
    "check_hec_address": "Point url at the collector itself",
    "check_hec_tls": "Check the collector's certificate",
    "check_hec_event_format": "Check why HEC refuses the event",
    "relieve_hec_indexers": "Relieve the busy indexers",
    "check_hec_acknowledgement": "Check why indexing is not confirmed",
}

_HEC_NEEDS = {
    "hec_token_disabled": "enable_hec_token",
    "missing_secret": "set_hec_token",
    "invalid_secret": "set_hec_token",
    "hec_token_required": "replace_hec_token",
    "hec_invalid_authorization": "replace_hec_token",
    "hec_invalid_token": "replace_hec_token",
    "hec_incorrect_index": "check_hec_index",
    "hec_channel_missing": "check_hec_channel",
    "hec_invalid_channel": "check_hec_channel",
    "hec_ack_disabled": "enable_hec_acknowledgement",
    "hec_unreadable_response": "check_hec_address",
    "redirect": "check_hec_address",
    "tls_error": "check_hec_tls",
    "hec_no_data": "check_hec_event_format",
    "hec_invalid_data_format": "check_hec_event_format",
    "hec_event_field_required": "check_hec_event_format",
    "hec_event_field_blank": "check_hec_event_format",
    "hec_indexed_fields_error": "check_hec_event_format",
    "hec_server_busy": "relieve_hec_indexers",
    "hec_unhealthy": "relieve_hec_indexers",
    "hec_at_capacity": "relieve_hec_indexers",
    "ack_timeout": "check_hec_acknowledgement",
}


def hec_need(failure: FailureCount) -> str | None:
    """The HEC-specific step a failure calls for; None for a generic one."""
    need = _HEC_NEEDS.get(failure.error_class)
    if need is None and failure.http_status in (401, 403):
        return "replace_hec_token"
    if need is None and failure.http_status == 404:
        return "check_hec_address"
    return need


def _token(connector: Connector) -> str:
    variable = connector.settings.get("token_env")
    return variable if isinstance(variable, str) and variable else "token_env"


def _enable_token(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"Splunk has the token in {_token(connector)} disabled: "
        f"{failure_summary(failures)}. Enable it under Settings > Data inputs > "
        "HTTP Event Collector, or issue a new token into that variable and "
        "restart cavra's processes."
    )


def _set_token(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"{_token(connector)} is unset, empty or holds characters a header "
        f"cannot carry: {failure_summary(failures)}. Set it to the HEC token in "
        "the environment of every cavra process and restart them; the token "
        "never goes in the connectors file."
    )


def _replace_token(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"HEC does not accept the token in {_token(connector)}: "
        f"{failure_summary(failures)}. Copy the token value of the HEC input "
        "again (or create a new input), put it in that variable, restart "
        f"cavra's processes and run `cavra connectors check "
        f"{connector.connector_id}`, which sends the token without evidence."
    )


def _check_index(connector: Connector, failures: Sequence[FailureCount]) -> str:
    index = connector.settings.get("index")
    sourcetype = connector.settings.get("sourcetype", "cavra:audit_package")
    target = f"index {index}" if index else "the token's default index"
    return (
        f"HEC refused {target}: {failure_summary(failures)}. Check that the "
        "index exists on the indexers and is among the token's allowed "
        f"indexes, and that sourcetype {sourcetype} is allowed for it; then "
        "correct index in the connectors file or the token's settings."
    )


def _check_channel(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"HEC refused the request channel: {failure_summary(failures)}. A "
        "token with indexer acknowledgement needs a channel GUID on every "
        f"request; remove channel from {connector.connector_id} to use the "
        "GUID cavra derives from the connector id, or set it to a valid GUID."
    )


def _enable_ack(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"{connector.connector_id} asks for indexer acknowledgement, but the "
        f"token has it switched off: {failure_summary(failures)}. Enable "
        "indexer acknowledgement on the HEC token, or set "
        "indexer_acknowledgement = false (HEC's answer then confirms receipt "
        "only, not indexing)."
    )


def _check_address(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"Something other than HEC answered: {failure_summary(failures)}. Set "
        "url to the collector's base address (its scheme, host and port, "
        "usually 8088), not a search head, a proxy's login page or a path "
        "under /services; cavra never follows a redirect."
    )


def _check_hec_tls(connector: Connector, failures: Sequence[FailureCount]) -> str:
    trust = (
        "the CA certificates in ca_bundle"
        if connector.settings.get("ca_bundle")
        else "the system's CAs (Splunk's default certificate needs its CA in ca_bundle)"
    )
    return (
        f"The TLS handshake with the collector failed: {failure_summary(failures)}."
        f" Check that its certificate is unexpired, issued for the host in url "
        f"and signed by {trust}. `cavra connectors check "
        f"{connector.connector_id}` repeats the handshake."
    )


def _event_format(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"HEC refused the event itself: {failure_summary(failures)}. It refuses "
        "the same event on every retry. Check the input's props and "
        "transforms for sourcetype rules that reject cavra's JSON events, "
        "and that cavra and Splunk agree on the event endpoint; deliver the "
        "packages again once fixed."
    )


def _relieve(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"HEC's indexers are busy or unhealthy: {failure_summary(failures)}. "
        "Check the indexing queues and /services/collector/health on the "
        "collector; retries back off and honour HEC's Retry-After. If it "
        "lasts, lower max_retry_deliveries per worker run or add capacity."
    )


def _check_ack(connector: Connector, failures: Sequence[FailureCount]) -> str:
    polls = connector.settings.get("ack_poll_seconds")
    schedule = f" ({polls} seconds)" if isinstance(polls, list) else ""
    return (
        "HEC received events but did not confirm indexing within the "
        f"acknowledgement polls{schedule}: {failure_summary(failures)}. Check "
        "the indexers' queues and replication; lengthen ack_poll_seconds if "
        "indexing is merely slow."
    )


_HEC_DETAILS: dict[str, Detail] = {
    "enable_hec_token": _enable_token,
    "set_hec_token": _set_token,
    "replace_hec_token": _replace_token,
    "check_hec_index": _check_index,
    "check_hec_channel": _check_channel,
    "enable_hec_acknowledgement": _enable_ack,
    "check_hec_address": _check_address,
    "check_hec_tls": _check_hec_tls,
    "check_hec_event_format": _event_format,
    "relieve_hec_indexers": _relieve,
    "check_hec_acknowledgement": _check_ack,
}

# -- syslog ---------------------------------------------------------------------

SYSLOG_TITLES = {
    "check_syslog_tls_certificate": "Check the syslog receiver's TLS certificate",
    "raise_syslog_message_limit": "Let the syslog messages through",
    "check_syslog_listener": "Check that the syslog receiver listens",
    "check_syslog_framing": "Check the transport the receiver expects",
    "fix_syslog_settings": "Fix the syslog connector's settings",
}

_SYSLOG_NEEDS = {
    "tls_error": "check_syslog_tls_certificate",
    "message_too_large": "raise_syslog_message_limit",
    "connection_refused": "check_syslog_listener",
    "connect_timeout": "check_syslog_listener",
    "dns_error": "check_syslog_listener",
    "connection_reset": "check_syslog_framing",
    "config_error": "fix_syslog_settings",
}


def syslog_need(failure: FailureCount) -> str | None:
    """The syslog-specific step a failure calls for; None for a generic one."""
    return _SYSLOG_NEEDS.get(failure.error_class)


def _listener(connector: Connector) -> str:
    settings = connector.settings
    transport = settings.get("transport", "tcp")
    port = settings.get("port") or {"udp": 514, "tcp": 514, "tls": 6514}.get(
        transport, 514
    )
    return f"{str(transport).upper()} port {port}"


def _syslog_tls(connector: Connector, failures: Sequence[FailureCount]) -> str:
    settings = connector.settings
    name = settings.get("server_name") or settings.get("host") or "the host"
    trust = (
        "the CA certificates in ca_bundle"
        if settings.get("ca_bundle")
        else "the system's CAs (name a private CA's certificates in ca_bundle)"
    )
    return (
        f"The TLS handshake with the syslog receiver failed: "
        f"{failure_summary(failures)}. Its certificate must be unexpired, "
        f"issued for {name} (server_name, or host when unset) and signed by "
        f"{trust}, and it must offer TLS 1.2 or later. `cavra connectors check "
        f"{connector.connector_id}` repeats the handshake without sending a "
        "message."
    )


def _message_limit(connector: Connector, failures: Sequence[FailureCount]) -> str:
    limit = connector.settings.get("max_message_bytes")
    current = f" ({limit} bytes)" if isinstance(limit, int) else ""
    return (
        f"Packages were larger than max_message_bytes{current} and were not "
        f"sent: {failure_summary(failures)}. Raise max_message_bytes together "
        "with the receiver's own limit (rsyslog's maxMessageSize), or move "
        "from udp to tcp or tls, whose messages may be far larger; cavra never "
        "truncates evidence."
    )


def _check_listener(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"cavra could not connect to the syslog receiver on "
        f"{_listener(connector)}: {failure_summary(failures)}. Check that host "
        "resolves, that the receiver has an input listening on that port, and "
        f"that firewalls let cavra's hosts through; `cavra connectors check "
        f"{connector.connector_id}` connects without sending a message."
    )


def _check_framing(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"The syslog receiver reset connections: {failure_summary(failures)}. "
        f"Check that its input on {_listener(connector)} expects this "
        "transport (plain TCP or TLS) and octet-counted framing (RFC 6587), "
        "and that it is not restarting or dropping senders."
    )


def _fix_syslog(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"The settings of {connector.connector_id} stopped validating while "
        f"cavra ran: {failure_summary(failures)}. A ca_bundle file that was "
        f"removed is the usual cause; `cavra connectors check "
        f"{connector.connector_id}` names the setting to fix."
    )


_SYSLOG_DETAILS: dict[str, Detail] = {
    "check_syslog_tls_certificate": _syslog_tls,
    "raise_syslog_message_limit": _message_limit,
    "check_syslog_listener": _check_listener,
    "check_syslog_framing": _check_framing,
    "fix_syslog_settings": _fix_syslog,
}


# -- both -----------------------------------------------------------------------


def hec_recovery_steps(
    connector: Connector, failure_classes: Sequence[FailureCount]
) -> list[RecoveryStep]:
    """HEC steps first, then cavra's generic steps for the other failures."""
    return _steps(connector, failure_classes, hec_need, HEC_TITLES, _HEC_DETAILS)


def syslog_recovery_steps(
    connector: Connector, failure_classes: Sequence[FailureCount]
) -> list[RecoveryStep]:
    """Syslog steps first, then cavra's generic steps for the other failures."""
    return _steps(
        connector, failure_classes, syslog_need, SYSLOG_TITLES, _SYSLOG_DETAILS
    )


def _steps(
    connector: Connector,
    failure_classes: Sequence[FailureCount],
    need_of: Callable[[FailureCount], str | None],
    titles: Mapping[str, str],
    details: Mapping[str, Detail],
) -> list[RecoveryStep]:
    grouped: dict[str, list[FailureCount]] = {}
    generic: list[FailureCount] = []
    for failure in failure_classes:
        need = need_of(failure)
        if need is None:
            generic.append(failure)
        else:
            grouped.setdefault(need, []).append(failure)
    steps = [
        RecoveryStep(code, title, details[code](connector, grouped[code]))
        for code, title in titles.items()
        if code in grouped
    ]
    return steps + generic_recovery_steps(connector, generic)
