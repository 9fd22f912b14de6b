"""
Who may call what: API tokens on every request, and the roles behind them.

With no unrevoked token in the store the API is open, but only to clients on
this machine: ``cavra api`` refuses to bind anything but a loopback address
then, and a request from elsewhere (possible once the last token is revoked
while the server runs) is refused. Actors are then the names requests give,
recorded as unverified.

Once a token exists, every operation but the public ones
(:data:`PUBLIC_OPERATIONS`) needs ``Authorization: Bearer TOKEN`` (RFC 6750).
A missing, unknown or revoked token is answered with 401; a valid token whose
role may not call the operation with 403 naming the roles that may. Which
roles may call an operation is :data:`PERMISSIONS`, keyed by operation id; an
operation missing from it is open to ``admin`` only, so a new endpoint is
never open by accident.

The token itself is never logged, stored or returned: only its SHA-256 is
looked up, through a unique index.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

import falcon

from cavra_core import identity
from cavra_server.problems import ApiProblem

log = logging.getLogger(__name__)

#: The challenge sent with every 401.
WWW_AUTHENTICATE = 'Bearer realm="cavra"'

#: Operations anyone may call, with or without a token. ``getSession`` still
#: refuses a token that is presented but not valid (see :func:`caller_session`).
PUBLIC_OPERATIONS = frozenset(
    {"getHealth", "getServiceIndex", "getOpenApiDocument", "getSession"}
)

ADMIN = "admin"
#: Every role; reads are open to all of them.
ANY_ROLE = frozenset(identity.ROLES)


def _roles(*names: str) -> frozenset[str]:
    """The roles named, and ``admin``, who may do everything."""
    unknown = set(names) - ANY_ROLE
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return frozenset({*names, ADMIN})


#: Operation id -> the roles whose tokens may call it. Public operations are
#: listed too, open to every role, so that the table covers the whole API.
PERMISSIONS: dict[str, frozenset[str]] = {
    # The service itself (no token needed at all, see PUBLIC_OPERATIONS).
    "getServiceIndex": ANY_ROLE,
    "getHealth": ANY_ROLE,
    "getOpenApiDocument": ANY_ROLE,
    "getSession": ANY_ROLE,
    # Reads: any valid token.
    "listAttempts": ANY_ROLE,
    "getAttemptActivity": ANY_ROLE,
    "getLineage": ANY_ROLE,
    "listRetryPlans": ANY_ROLE,
    "getRetryPlan": ANY_ROLE,
    "listWorkerRuns": ANY_ROLE,
    "getWorkerRun": ANY_ROLE,
    "getWorkerDashboard": ANY_ROLE,
    "listConnectors": ANY_ROLE,
    "getConnector": ANY_ROLE,
    "listApprovals": ANY_ROLE,
    "getApproval": ANY_ROLE,
    "listExecutions": ANY_ROLE,
    "getExecution": ANY_ROLE,
    "listRecoveryPlaybooks": ANY_ROLE,
    "getRecoveryPlaybook": ANY_ROLE,
    "getRecoveryReport": ANY_ROLE,
    "listEvidence": ANY_ROLE,
    "verifyEvidence": ANY_ROLE,
    "getMetrics": ANY_ROLE,
    # Deliveries and plans.
    "deliverPackage": _roles("release_manager"),
    "recordAttempts": _roles("release_manager"),
    "planRetries": _roles("release_manager"),
    # The worker, its approvals and the connectors.
    "runWorker": _roles("platform_owner"),
    "resumeConnector": _roles("platform_owner"),
    "createApprovals": _roles("platform_owner"),
    "revokeApproval": _roles("platform_owner"),
    # Recovery of failing connectors.
    "createRecoveryPlaybook": _roles("platform_owner", "soc_analyst"),
    "closeRecovery": _roles("platform_owner", "soc_analyst"),
}


def roles_allowed(operation_id: str) -> frozenset[str]:
    """The roles that may call ``operation_id``; ``admin`` alone if unlisted."""
    return PERMISSIONS.get(operation_id, frozenset({ADMIN}))


def auth_problems(operation_id: str) -> tuple[int, ...]:
    """The statuses the token check may answer ``operation_id`` with."""
    if operation_id in PUBLIC_OPERATIONS:
        return ()
    if roles_allowed(operation_id) == ANY_ROLE:
        return (401,)
    return (401, 403)


def is_loopback(host: str) -> bool:
    """
    True when ``host`` (an address or a name) means this machine only.

    A name counts when every address it resolves to is a loopback address;
    an empty host (every interface) or a name that does not resolve does not.
    """
    text = host.strip().strip("[]")
    if not text:
        return False
    try:
        return _loopback_address(text)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(text, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in found}
    return bool(addresses) and all(_loopback_address(a) for a in addresses)


def _loopback_address(text: str) -> bool:
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


class TokenAuthentication:
    """
    Falcon middleware: check the token of each request against its operation.

    Sets ``req.context.actor`` (an :class:`~cavra_core.identity.Actor`, or
    ``None`` when the request carried no valid token) and
    ``req.context.token_id`` (the token's id, or ``None``) on every request.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.actor = None
        req.context.token_id = None

    def process_resource(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        resource: Any,
        params: dict[str, Any],
    ) -> None:
        operation = getattr(resource, "operations", {}).get(req.method)
        # A method the resource does not take is answered 405 by Falcon.
        if operation is None or operation.operation_id in PUBLIC_OPERATIONS:
            return
        operation_id = operation.operation_id

        token_text = bearer_token(req)
        row = identity.find_token(token_text) if token_text else None
        if row is not None:
            actor = identity.token_actor(row)
            allowed = roles_allowed(operation_id)
            if actor.role not in allowed:
                log.info(
                    "request refused status=403 operation=%s token_id=%s role=%s",
                    operation_id,
                    row.token_id,
                    actor.role,
                )
                raise _forbidden(actor.role or "", operation_id, allowed)
            req.context.actor = actor
            req.context.token_id = row.token_id
            return

        if identity.tokens_configured():
            log.info(
                "request refused status=401 operation=%s token=%s",
                operation_id,
                "invalid" if token_text else "missing",
            )
            raise _unauthorized(
                "The token is not valid: it is unknown or it was revoked. Ask "
                "an admin for a token (`cavra tokens create`)."
                if token_text
                else "This API needs an API token: send it as "
                "`Authorization: Bearer TOKEN`. An admin makes one with "
                "`cavra tokens create`."
            )
        if not is_loopback(req.remote_addr or ""):
            log.info(
                "request refused status=401 operation=%s no token configured",
                operation_id,
            )
            raise _unauthorized(
                "No API token is configured, and without one this API answers "
                "only clients on its own machine; an admin makes a token with "
                "`cavra tokens create`."
            )


def caller_session(req: falcon.Request) -> dict[str, Any]:
    """
    Who the caller of ``req`` is and the operations it may call now.

    Without an ``Authorization`` header the caller is anonymous: it may call
    every operation while no token is configured (from this machine), else
    the public ones only. A header that is present must carry a valid token,
    whether tokens are configured or not.

    Raises:
        ApiProblem: 401 for a header that is malformed or names a token that
            is unknown or revoked.
    """
    required = identity.tokens_configured()
    if req.get_header("Authorization") is None:
        if required or not is_loopback(req.remote_addr or ""):
            allowed = PUBLIC_OPERATIONS
        else:
            allowed = frozenset(PERMISSIONS)
        return {
            "tokens_required": required,
            "authenticated": False,
            "actor": None,
            "role": None,
            "allowed_operations": sorted(allowed),
        }

    token_text = bearer_token(req)
    row = identity.find_token(token_text) if token_text else None
    if row is None:
        log.info(
            "request refused status=401 operation=getSession token=%s",
            "invalid" if token_text else "malformed",
        )
        raise _unauthorized(
            "The token is not valid: it is unknown or it was revoked, or the "
            "header is not `Authorization: Bearer TOKEN`. Send a valid token, "
            "or no Authorization header to learn what may be called without one."
        )
    actor = identity.token_actor(row)
    req.context.actor = actor
    req.context.token_id = row.token_id
    return {
        "tokens_required": required,
        "authenticated": True,
        "actor": actor.name,
        "role": actor.role,
        "allowed_operations": sorted(
            operation_id
            for operation_id, roles in PERMISSIONS.items()
            if actor.role in roles
        ),
    }


def bearer_token(req: falcon.Request) -> str | None:
    """The token of ``Authorization: Bearer TOKEN``, or ``None``."""
    header = req.get_header("Authorization")
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return None
    return credentials


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": WWW_AUTHENTICATE},
    )


def _forbidden(role: str, operation_id: str, allowed: Iterable[str]) -> ApiProblem:
    # The roles in the order ROLES lists them, admin last.
    needed = [name for name in identity.ROLES if name in allowed]
    detail = (
        f"A token with the role {role} may not call {operation_id}; it needs "
        f"a token with the role {' or '.join(needed)}."
    )
    return ApiProblem(403, "forbidden", "Forbidden", detail)
