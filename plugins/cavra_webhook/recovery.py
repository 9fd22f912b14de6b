"""
Recovery steps for webhook connectors, in the terms of the webhook protocol.

A failing webhook connector gets steps that name its own settings: the
variable of its bearer token, its signing secrets and how to rotate them
without a gap, its ``ca_bundle``, and what Standard Webhooks means by
``410 Gone``. Failures with nothing webhook-specific to them (a busy
receiver, a refused connection) get cavra's generic steps after these.
Steps name settings and variables, never a secret or the URL's path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cavra_core.default_policy import failure_summary, generic_recovery_steps
from cavra_core.types import Connector, FailureCount, RecoveryStep

#: What each webhook-specific step is called, most urgent first.
TITLES = {
    "reenable_webhook_endpoint": "Re-enable the webhook endpoint at the receiver",
    "set_webhook_secret": "Set the webhook's token or signing secret",
    "rotate_bearer_token": "Rotate the webhook's bearer token",
    "rotate_signing_secret": "Rotate the signing secret without a gap",
    "check_webhook_tls": "Check the receiver's certificate against the CA bundle",
    "update_webhook_url": "Point url at the receiver's current address",
    "fix_webhook_settings": "Fix the webhook connector's settings",
    "shrink_webhook_payload": "Raise the receiver's body limit",
}

_CREDENTIAL_STATUSES = frozenset({401, 403})


def webhook_need(failure: FailureCount) -> str | None:
    """The webhook-specific step a failure calls for; None for a generic one."""
    status = failure.http_status
    error_class = failure.error_class
    if failure.category == "receiver_stop" and status == 410:
        return "reenable_webhook_endpoint"
    if error_class in ("missing_secret", "invalid_secret"):
        return "set_webhook_secret"
    if status in _CREDENTIAL_STATUSES:
        return "rotate_bearer_token"
    if error_class == "tls_error":
        return "check_webhook_tls"
    if error_class == "redirect" or status == 404:
        return "update_webhook_url"
    if error_class == "config_error":
        return "fix_webhook_settings"
    if status == 413:
        return "shrink_webhook_payload"
    return None


def recovery_steps(
    connector: Connector, failure_classes: Sequence[FailureCount]
) -> list[RecoveryStep]:
    """Webhook steps first, then cavra's generic steps for the other failures."""
    grouped: dict[str, list[FailureCount]] = {}
    generic: list[FailureCount] = []
    for failure in failure_classes:
        need = webhook_need(failure)
        if need is None:
            generic.append(failure)
        else:
            grouped.setdefault(need, []).append(failure)
    if "rotate_bearer_token" in grouped and _signing_variables(connector):
        # Receivers that verify signatures answer a wrong one with 401 or 403.
        grouped["rotate_signing_secret"] = grouped["rotate_bearer_token"]

    steps = [
        RecoveryStep(code, title, _DETAILS[code](connector, grouped[code]))
        for code, title in TITLES.items()
        if code in grouped
    ]
    return steps + generic_recovery_steps(connector, generic)


def _signing_variables(connector: Connector) -> list[str]:
    settings = connector.settings
    single = settings.get("signing_secret_env")
    listed = settings.get("signing_secrets_env") or []
    return [name for name in [single, *listed] if isinstance(name, str) and name]


def _token_variable(connector: Connector) -> str | None:
    variable = connector.settings.get("auth_token_env")
    return variable if isinstance(variable, str) and variable else None


def _reenable(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"The receiver answered 410 Gone: {failure_summary(failures)}. Under "
        "Standard Webhooks that means it disabled the endpoint and wants no "
        f"more deliveries, so cavra disabled {connector.connector_id}. Re-enable "
        "(or re-subscribe) the endpoint in the receiving application, or set "
        "url to a new endpoint; then resume the connector."
    )


def _set_secret(connector: Connector, failures: Sequence[FailureCount]) -> str:
    variables = [
        name for name in [_token_variable(connector)] if name
    ] + _signing_variables(connector)
    named = ", ".join(variables) or "the variables its *_env settings name"
    return (
        f"A secret of {connector.connector_id} is unset, empty or malformed: "
        f"{failure_summary(failures)}. Set {named} in the environment of every "
        "cavra process: the bearer token as printable ASCII, each signing "
        "secret as whsec_ followed by the base64 of 24 to 64 random bytes. "
        "`cavra connectors check` names the variable that is wrong."
    )


def _rotate_token(connector: Connector, failures: Sequence[FailureCount]) -> str:
    variable = _token_variable(connector)
    if variable is None:
        return (
            f"The receiver refused deliveries without a token: "
            f"{failure_summary(failures)}. Ask its owner for a bearer token, "
            "put it in an environment variable, and name that variable in "
            f"auth_token_env of {connector.connector_id}; the token never goes "
            "in the connectors file."
        )
    return (
        f"The receiver refused the bearer token: {failure_summary(failures)}. "
        f"Issue a new token at the receiver, put it in {variable}, restart "
        "cavra's processes so they read it, and check it with `cavra "
        f"connectors check {connector.connector_id}` (its credentials check "
        "sends the token without any evidence)."
    )


def _rotate_signing(connector: Connector, failures: Sequence[FailureCount]) -> str:
    variables = _signing_variables(connector)
    listed = ", ".join(variables)
    return (
        f"A receiver that verifies Standard Webhooks signatures refuses a "
        f"wrong one with 401 or 403, so the signing secret ({listed}) may no "
        "longer match the receiver's. Rotate without a gap: set "
        'signing_secrets_env = ["OLD_VARIABLE", "NEW_VARIABLE"] so every '
        "delivery carries both signatures, move the receiver to the new "
        "secret, then remove the old variable from the list."
    )


def _check_tls(connector: Connector, failures: Sequence[FailureCount]) -> str:
    bundle = connector.settings.get("ca_bundle")
    trust = (
        "the CA certificates in the connector's ca_bundle"
        if bundle
        else "the system's CAs (for a private CA, name its certificates in ca_bundle)"
    )
    return (
        f"The TLS handshake with the webhook receiver failed: "
        f"{failure_summary(failures)}. Check that its certificate is unexpired, "
        f"issued for the host in url and signed by {trust}; verification is "
        f"never switched off. `cavra connectors check {connector.connector_id}` "
        "repeats the handshake."
    )


def _update_url(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        "The receiver redirected deliveries or has no endpoint at the "
        f"configured path: {failure_summary(failures)}. Webhook deliveries never "
        "follow a redirect; set url of "
        f"{connector.connector_id} to the endpoint the receiver serves now."
    )


def _fix_settings(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"The settings of {connector.connector_id} stopped validating while "
        f"cavra ran: {failure_summary(failures)}. A ca_bundle file that was "
        f"removed is the usual cause; `cavra connectors check "
        f"{connector.connector_id}` names the setting to fix."
    )


def _shrink(connector: Connector, failures: Sequence[FailureCount]) -> str:
    return (
        f"The receiver refused packages as too large (413): "
        f"{failure_summary(failures)}. Each package is sent as one JSON body; "
        "raise the receiver's body limit, since the same package is refused "
        "on every retry."
    )


_DETAILS: dict[str, Callable[[Connector, Sequence[FailureCount]], str]] = {
    "reenable_webhook_endpoint": _reenable,
    "set_webhook_secret": _set_secret,
    "rotate_bearer_token": _rotate_token,
    "rotate_signing_secret": _rotate_signing,
    "check_webhook_tls": _check_tls,
    "update_webhook_url": _update_url,
    "fix_webhook_settings": _fix_settings,
    "shrink_webhook_payload": _shrink,
}
