"""
Who is acting: API tokens, their roles, and the actor recorded on evidence.

A token is shown once when it is created and kept only as its SHA-256: the
tokens are long random strings, so a plain digest cannot be turned back into
one, and a lookup by digest is all that checking a token takes. With no token
configured the API serves loopback only and records names as given, marked
unverified.
"""

from __future__ import annotations

from typing import NamedTuple

#: Every role and what it may do, for people reading ``cavra tokens``.
ROLES: dict[str, str] = {
    "release_manager": "deliver packages, record attempts, make retry plans",
    "platform_owner": "run the worker (live runs too), approve retries, "
    "manage connectors",
    "soc_analyst": "read everything, make recovery playbooks and close them",
    "auditor": "read everything and export the evidence log",
    "admin": "everything",
}


class Actor(NamedTuple):
    """
    The person or service behind a request.

    ``verified`` is true when the name is an API token's name; false when it
    is a name given in the request (no tokens configured).
    """

    name: str
    verified: bool = False
    role: str | None = None


def actor_for(given: str | None, actor: Actor | None) -> Actor | None:
    """
    The actor to record: the authenticated one, or else the name as given.

    Returns ``None`` when there is neither; the caller says which field to
    fill in.
    """
    if actor is not None and actor.verified:
        return actor
    if given:
        return Actor(given, False)
    return actor
