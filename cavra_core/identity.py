"""
Who is acting: API tokens, their roles, and the actor recorded on evidence.

A token is shown once when it is created and kept only as its SHA-256: the
tokens are long random strings, so a plain digest cannot be turned back into
one, and a lookup by digest is all that checking a token takes. With no token
configured the API serves loopback only and records names as given, marked
unverified.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import unicodedata
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import peewee

from cavra_core import redaction, validation
from cavra_core.decisions import format_time_precise
from cavra_core.errors import Conflict, FieldProblem, InvalidInput, NotFound
from cavra_core.store import ApiToken, database_proxy

__all__ = [
    "ROLES",
    "TOKEN_PREFIX",
    "Actor",
    "TokenInUse",
    "actor_for",
    "authenticate",
    "create_token",
    "find_token",
    "list_tokens",
    "normal_name",
    "revoke_token",
    "token_actor",
    "token_hash",
    "tokens_configured",
]

log = logging.getLogger(__name__)

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


def normal_name(name: str) -> str:
    """
    The form in which two names that read the same are equal.

    In order: NFKC (full-width letters, ligatures, superscripts and other
    compatibility forms become plain characters; a no-break space becomes a
    space), every format character removed (Unicode category ``Cf``: zero-width
    spaces and joiners, bidirectional marks, soft hyphens, the byte order
    mark), case folded, NFKC again (folding can undo it), and whitespace
    stripped from both ends. So ``" T-ADMIN"``, ``"t-admin\u200b"`` and the
    full-width ``"ｔ-ａｄｍｉｎ"`` all become ``"t-admin"``; a name of spaces
    and format characters only becomes ``""``. Inner whitespace is kept as it
    is: ``"t admin"`` and ``"t  admin"`` stay two names.

    NOTE(identity): letters of different scripts that merely look alike (a
    Cyrillic "а" for a Latin "a") stay different; telling those apart needs
    the Unicode confusables tables, which cavra does not ship.
    """
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", text.casefold()).strip()


# -- API tokens ------------------------------------------------------------------

#: Every token starts with this, so a leaked one is easy to recognise and scan for.
TOKEN_PREFIX = "cavra_"
#: Longer texts cannot be tokens; they are refused without a query.
_TOKEN_TEXT_LIMIT = 200
_TOKEN_ID = re.compile(r"tok_[0-9a-f]{32}")
#: PostgreSQL advisory lock that serialises token creation, so that two
#: look-alike names cannot both pass the check (SQLite serialises writers).
_CREATE_LOCK = 7260423


class TokenInUse(Conflict):
    """A token with this name exists already (revoked tokens keep their names)."""


def token_hash(token_text: str) -> str:
    """The SHA-256 (hex) a token is stored as."""
    return hashlib.sha256(token_text.encode("utf-8")).hexdigest()


def create_token(
    name: str,
    role: str,
    now: datetime | None = None,
    *,
    rules: Iterable[redaction.RedactionRule] = (),
) -> tuple[str, dict[str, Any]]:
    """
    Make an API token for ``name`` with ``role``.

    Returns the token itself, which is not kept and cannot be shown again, and
    its document (as :func:`list_tokens` lists it).

    Raises:
        InvalidInput: the name is blank, starts or ends with whitespace,
            breaks the actor rules (``schemas/actor.json``) or is refused by
            the redaction guard (with ``rules``, plugin rules too), or the
            role is not one of :data:`ROLES`.
        TokenInUse: a token, revoked or not, already has this name, or one
            that reads the same (:func:`normal_name`).
    """
    now = _utc(now)
    _check_name(name, rules)
    if role not in ROLES:
        raise InvalidInput(
            f"A token's role must be one of {', '.join(ROLES)}.",
            [FieldProblem("/role", "is not a known role", "enum")],
        )

    token_text = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = {
        "token_id": f"tok_{secrets.token_hex(16)}",
        "name": name,
        "role": role,
        "token_hash": token_hash(token_text),
        "created_at": now,
        "revoked_at": None,
    }
    try:
        with database_proxy.atomic():
            if isinstance(database_proxy.obj, peewee.PostgresqlDatabase):
                database_proxy.execute_sql(
                    "SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,)
                )
            _refuse_look_alikes(name)
            ApiToken.insert(row).execute()
    except peewee.IntegrityError:
        # Another process made a token of this name between the check and
        # the insert; the unique index decided.
        raise _name_in_use() from None
    log.info("api token created token_id=%s role=%s", row["token_id"], role)
    return token_text, _token_document(ApiToken(**row))


def _check_name(name: Any, rules: Iterable[redaction.RedactionRule]) -> None:
    """Refuse a name that cannot stand for a token's actor, saying how to fix it."""
    recorded = "it is recorded as the actor of everything done with the token"
    if not isinstance(name, str) or not name:
        pass  # the actor rules below say what a name must be
    elif not normal_name(name):
        raise InvalidInput(
            "A token's name must hold at least one visible character: "
            f"{recorded}, so give the name of a person or a service.",
            [FieldProblem("/name", "is blank", "blank")],
        )
    elif _invisible(name[0]) or _invisible(name[-1]):
        raise InvalidInput(
            "A token's name must not start or end with whitespace or an "
            f"invisible character: {recorded}. Remove them.",
            [
                FieldProblem(
                    "/name",
                    "starts or ends with whitespace or an invisible character",
                    "padded",
                )
            ],
        )
    if not isinstance(name, str) or not validation.is_valid("actor", name):
        raise InvalidInput(
            "A token's name must be 1 to 200 characters without control "
            f"characters; {recorded}.",
            [FieldProblem("/name", "is not a valid actor name", "actor")],
        )
    problems = redaction.find_problems({"name": name}, rules=rules)
    if problems:
        problem = problems[0]
        # The guard's detail is "what is wrong; how to fix it in a body".
        what = problem.detail.partition("; ")[0]
        raise InvalidInput(
            f"A token's name {what}: {recorded}, so the redaction guard reads "
            "it as it reads a request body. Choose a plain name, such as a "
            "person's or a service's.",
            [problem],
        )


def _invisible(character: str) -> bool:
    return character.isspace() or unicodedata.category(character) == "Cf"


def _refuse_look_alikes(name: str) -> None:
    """Refuse ``name`` when a token's name, revoked or not, reads the same."""
    wanted = normal_name(name)
    # Names are few (one per person or service) and look-alikes cannot be
    # found through an index on the stored name, so every name is read.
    for (existing,) in ApiToken.select(ApiToken.name).tuples():
        if normal_name(existing) == wanted:
            raise _name_in_use(look_alike=existing != name)


def _name_in_use(*, look_alike: bool = False) -> TokenInUse:
    which = (
        "A token with a name that reads the same exists already (names are "
        "compared without case, surrounding spaces, invisible characters or "
        "full-width forms)"
        if look_alike
        else "A token with this name exists already"
    )
    return TokenInUse(
        f"{which}; revoked tokens keep their names so that evidence names one "
        "token only. Choose another name (`cavra tokens list` shows them)."
    )


def list_tokens() -> list[dict[str, Any]]:
    """Every token, oldest first, revoked ones too; never a hash or a token."""
    query = ApiToken.select().order_by(ApiToken.created_at, ApiToken.token_id)
    return [_token_document(row) for row in query]


def revoke_token(name_or_id: str, now: datetime | None = None) -> dict[str, Any]:
    """
    Revoke the token with this id (``tok_...``) or name, from ``now`` on.

    Revoking a revoked token changes nothing; its document keeps the first
    revocation time.

    Raises:
        NotFound: no token has this id or name.
    """
    now = _utc(now)
    field = ApiToken.token_id if _TOKEN_ID.fullmatch(name_or_id) else ApiToken.name
    with database_proxy.atomic():
        row = ApiToken.get_or_none(field == name_or_id)
        if row is None:
            raise NotFound(
                "No token has this name or id; `cavra tokens list` shows them."
            )
        if row.revoked_at is None:
            ApiToken.update(revoked_at=now).where(
                (ApiToken.token_id == row.token_id) & ApiToken.revoked_at.is_null()
            ).execute()
            row = ApiToken.get_by_id(row.token_id)
            log.info("api token revoked token_id=%s", row.token_id)
    return _token_document(row)


def find_token(token_text: str) -> ApiToken | None:
    """The unrevoked token whose text this is, or ``None``."""
    if not token_text.startswith(TOKEN_PREFIX) or len(token_text) > _TOKEN_TEXT_LIMIT:
        return None
    return ApiToken.get_or_none(
        (ApiToken.token_hash == token_hash(token_text)) & ApiToken.revoked_at.is_null()
    )


def authenticate(token_text: str) -> Actor | None:
    """The verified actor of an unrevoked token, or ``None`` for any other text."""
    row = find_token(token_text)
    return None if row is None else token_actor(row)


def token_actor(row: ApiToken) -> Actor:
    """The actor a token stands for: its name, verified, with its role."""
    return Actor(row.name, True, row.role)


def tokens_configured() -> bool:
    """True while at least one token is unrevoked (the API then needs one)."""
    return ApiToken.select().where(ApiToken.revoked_at.is_null()).exists()


def _token_document(row: ApiToken) -> dict[str, Any]:
    return {
        "token_id": row.token_id,
        "name": row.name,
        "role": row.role,
        "created_at": format_time_precise(row.created_at),
        "revoked_at": (
            None if row.revoked_at is None else format_time_precise(row.revoked_at)
        ),
    }


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now has no UTC offset; pass an aware datetime")
    return now.astimezone(UTC)
