"""
Standard Webhooks signatures for webhook deliveries.

A receiver that holds the connector's secret can tell that a delivery comes
from cavra and arrived unchanged. Each signed request carries three headers
(the symmetric ``v1`` scheme of the Standard Webhooks specification 1.0):

``webhook-id``
    The lineage's event id: the same on every retry, so a receiver can drop
    duplicates.
``webhook-timestamp``
    When this attempt was sent, in integer Unix seconds; receivers refuse
    stale ones, which stops replays.
``webhook-signature``
    ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one entry per
    configured secret, separated by spaces. Sending the old and the new
    secret's signatures side by side is how a secret is rotated without a
    moment in which the receiver refuses deliveries.

A secret is written ``whsec_<base64 of 24 to 64 random bytes>``. Keys live in
:class:`SigningKey` objects whose ``repr`` shows nothing of them, and every
error raised here names the environment variable, never its value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

SECRET_PREFIX = "whsec_"
#: Key sizes the specification allows for HMAC-SHA256 secrets, in bytes.
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
SIGNATURE_VERSION = "v1"

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"


class SecretError(Exception):
    """
    A signing secret cannot be used.

    ``error_class`` is ``missing_secret`` (the variable is unset or empty) or
    ``invalid_secret`` (it holds something that is not a ``whsec_`` secret).
    The message names the variable and the reason, never the value.
    """

    def __init__(self, variable: str, error_class: str, reason: str) -> None:
        super().__init__(f"{variable} {reason}")
        self.variable = variable
        self.error_class = error_class
        self.reason = reason


@dataclass(frozen=True)
class SigningKey:
    """One decoded signing secret and the variable it was read from."""

    variable: str
    key: bytes = field(repr=False)


def decode_secret(variable: str, value: str | None) -> SigningKey:
    """
    Decode the ``whsec_`` secret ``value`` read from ``variable``.

    Surrounding whitespace (a newline left by a secrets file) is ignored and
    so is missing base64 padding, as the reference verifiers do; anything
    else that is not standard base64 of 24 to 64 bytes is refused.

    :raises SecretError: naming the variable and what is wrong.
    """
    text = (value or "").strip()
    if not text:
        raise SecretError(variable, "missing_secret", "is not set or empty")
    if not text.startswith(SECRET_PREFIX):
        raise SecretError(
            variable, "invalid_secret", f"does not start with {SECRET_PREFIX!r}"
        )

    encoded = text[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SecretError(
            variable, "invalid_secret", f"is not base64 after {SECRET_PREFIX!r}"
        ) from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise SecretError(
            variable,
            "invalid_secret",
            f"does not decode to {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes",
        )
    return SigningKey(variable=variable, key=key)


def load_signing_keys(
    variables: Iterable[str], environ: Mapping[str, str] | None = None
) -> tuple[SigningKey, ...]:
    """
    Read and decode the secret of every variable, in order.

    All must be usable: a variable that is configured but unset is a mistake
    to fix, not a signature to leave out.

    :raises SecretError: for the first variable that is missing or malformed.
    """
    source = os.environ if environ is None else environ
    return tuple(decode_secret(name, source.get(name)) for name in variables)


def is_signable_id(message_id: str) -> bool:
    """
    Whether ``message_id`` can go into the signed content and a header.

    The specification forbids ``.`` (it would make ``{id}.{timestamp}``
    ambiguous); header values allow printable ASCII without spaces here.
    """
    return (
        0 < len(message_id) <= 256
        and "." not in message_id
        and all("!" <= character <= "~" for character in message_id)
    )


def signed_content(message_id: str, timestamp: int, body: bytes) -> bytes:
    """The bytes that are signed: ``{id}.{timestamp}.`` and the body as sent."""
    return f"{message_id}.{timestamp}.".encode("ascii") + body


def sign(key: SigningKey, message_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of the request."""
    digest = hmac.new(
        key.key, signed_content(message_id, timestamp, body), hashlib.sha256
    ).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_headers(
    keys: Iterable[SigningKey], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """
    The three Standard Webhooks headers for one request.

    ``webhook-signature`` is present only when ``keys`` holds at least one
    key; the id and timestamp are useful to receivers either way.
    """
    headers = {ID_HEADER: message_id, TIMESTAMP_HEADER: str(timestamp)}
    signatures = [sign(key, message_id, timestamp, body) for key in keys]
    if signatures:
        headers[SIGNATURE_HEADER] = " ".join(signatures)
    return headers
