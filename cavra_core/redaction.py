"""
The redaction guard: evidence never holds a secret, a private address or a
customer payload.

It works in both directions.

* **Inbound**, :func:`check_inbound` walks a request body (dicts, lists,
  strings, numbers) and raises :class:`~cavra_core.errors.InvalidInput` with
  one :class:`~cavra_core.errors.FieldProblem` per offending place, each
  naming its JSON pointer and a reason code. Neither the detail nor the log
  ever repeats the offending value.
* **Outbound**, evidence that cavra builds itself is scrubbed first
  (:func:`scrub_url`, :func:`scrub_text`, :func:`scrub_document`) and then
  checked by :func:`assert_public_safe`, whose failure is a bug in cavra
  (:class:`UnsafeEvidenceError`, a 500 without detail).

What is refused, by reason code:

``secret_key``
    A member name that carries a credential, in any case, with any
    separator, at any depth (see :func:`is_secret_key`).
``secret_value``
    A value shaped like a credential: ``Bearer``/``Basic`` credentials, JWTs,
    AWS access key ids, PEM private keys, Azure account keys and shared
    access signatures, ``whsec_`` webhook secrets, GitHub, GitLab, Slack,
    Stripe, npm and Google API tokens, ``password=...`` assignments, and a
    GUID where a Splunk HEC token is expected (under a member whose name
    mentions a token, HEC, Splunk, a secret, auth or a password, or right
    after "token", "HEC" or "Splunk" in text).
``credential_url``
    A URL with user information (``https://user:pass@host``) or a credential
    query or fragment parameter (``sig``, ``token``, ``X-Amz-Signature``, an
    Azure SAS, ...).
``private_host``
    A private, loopback, link-local, unique-local, CGNAT, reserved or cloud
    metadata host, in a URL or as a bare host in text, in every spelling a
    resolver accepts (see :func:`is_private_host`).
``text_too_long``
    A string longer than ``max_text_length`` (2000 characters by default).
``payload_body``
    A string that looks like a payload: JSON with three or more members,
    an HTTP message or header block, an XML or HTML document, a data URI or
    a base64 blob of 200 characters or more.

Plugins add rules through the ``cavra_redaction_rules`` hook
(:class:`RedactionRule`); they run after the built-in checks and can only
refuse more, never less.

NOTE(redaction): what is deliberately not detected, because in free text it
cannot be told from innocent input:

* legacy IPv4 spellings with fewer than four parts (``127.1``,
  ``2130706433``, ``0x7f000001``) outside a URL or a host-valued member:
  as bare text they are just numbers. Inside a URL or under a member named
  like a host (``host``, ``url``, ``endpoint``, ``address``, ...) every
  spelling is parsed.
* host names that only a private resolver knows (``splunk.acme.com`` that
  resolves to 10.0.0.5): the guard reads strings, it does not resolve them.
  Single-label hosts in ``http(s)``/``ws(s)``/``ftp`` URLs are refused as
  intranet names, though.
* opaque secrets with no recognisable shape (a random password in a member
  named ``note``), and an AWS secret access key outside a credential member.
* ``scheme:host`` URLs without slashes (``http:10.0.0.1`` is still refused
  through its bare dotted address), and user information in text that is
  not a URL (``user:pass@host``).
* e-mail addresses: actors may be named by one. :func:`scrub_text` does
  replace them in evidence cavra writes itself.
* IP documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
  2001:db8::/32) are not private and pass, so examples keep working.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cavra_core.errors import FieldProblem, InvalidInput
from cavra_core.validation import pointer

log = logging.getLogger(__name__)

SECRET_KEY = "secret_key"
SECRET_VALUE = "secret_value"
CREDENTIAL_URL = "credential_url"
PRIVATE_HOST = "private_host"
TEXT_TOO_LONG = "text_too_long"
PAYLOAD_BODY = "payload_body"

#: Longest free text accepted in a request, in characters. No schema allows a
#: longer string (``tests/test_schemas.py`` holds them to it), so a document
#: its schema accepts is never refused for its length alone.
MAX_TEXT_LENGTH = 2000
#: Most problems reported for one document; the walk stops there.
MAX_PROBLEMS = 50
#: JSON in a string with this many members (keys and items, nested) or more
#: is a payload body.
PAYLOAD_MIN_MEMBERS = 3
#: A run of base64 characters this long or longer is an encoded blob.
BASE64_BLOB_LENGTH = 200

REDACTED = "[redacted]"
PRIVATE_HOST_PLACEHOLDER = "[private-host]"
EMAIL_PLACEHOLDER = "[email]"
PAYLOAD_PLACEHOLDER = "[payload]"
#: The host :func:`scrub_url` puts in place of a private one: a reserved name
#: (RFC 2606) that keeps the result a valid, public-safe URL.
REDACTED_HOST = "redacted.invalid"

_SECRETS_FIX = (
    "remove the credential and send secrets only as environment variable references"
)
_FIXES = {
    SECRET_KEY: ("is a credential field", _SECRETS_FIX),
    SECRET_VALUE: ("holds what looks like a credential", _SECRETS_FIX),
    CREDENTIAL_URL: (
        "holds a URL that carries credentials (user information or a "
        "credential parameter)",
        "send the URL without user information or credential parameters, and "
        "secrets only as environment variable references",
    ),
    PRIVATE_HOST: (
        "names a private, loopback, link-local or metadata host",
        "remove the address; evidence may name public hosts only",
    ),
    PAYLOAD_BODY: (
        "looks like a payload body (JSON, an HTTP message, XML or HTML, or "
        "encoded data)",
        "send metadata only, never a request or response body",
    ),
}


class UnsafeEvidenceError(RuntimeError):
    """
    A document cavra built would leak a secret, a private host or a payload.

    This is a bug in cavra, never the caller's fault: the API answers 500
    without detail. The message names pointers and reasons, never values.
    """


@dataclass(frozen=True)
class RedactionRule:
    """
    An extra refusal a plugin adds to the guard.

    ``matches`` receives the name of the member holding the string (for an
    array item, the array's member name; ``None`` at the top level) and the
    string itself, and returns whether the string must be refused.
    ``reason`` becomes the problem's reason code; ``detail``, if given, says
    how to fix it and must not repeat the value.
    """

    name: str
    reason: str
    matches: Callable[[str | None, str], bool]
    detail: str | None = None


# -- member names ---------------------------------------------------------------

_KEY_NOISE = re.compile(r"[^0-9a-z]+")

#: Normalised member names that are credentials as a whole.
_SECRET_KEYS = frozenset(
    {
        "apikey",
        "auth",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "passphrase",
        "passwd",
        "password",
        "pwd",
        "sas",
        "secret",
        "session",
        "sessionid",
        "sessionkey",
        "sig",
        "signature",
        "token",
    }
)
#: Endings of normalised member names that carry a credential.
_SECRET_SUFFIXES = (
    "accesskey",
    "accountkey",
    "apikey",
    "auth",
    "authorization",
    "bearer",
    "connectionstring",
    "cookie",
    "credential",
    "credentials",
    "encryptionkey",
    "hmackey",
    "masterkey",
    "passphrase",
    "passwd",
    "password",
    "privatekey",
    "pwd",
    "secret",
    "secretkey",
    "sessionid",
    "sharedkey",
    "signature",
    "signingkey",
    "token",
)
#: Words in a normalised member name that say a Splunk HEC token (a GUID) is
#: expected in its value.
_TOKEN_CONTEXT_WORDS = ("token", "hec", "splunk", "secret", "auth", "password")
#: Endings of normalised member names whose whole value is a host.
_HOST_KEY_SUFFIXES = (
    "host",
    "hostname",
    "hosts",
    "url",
    "urls",
    "uri",
    "endpoint",
    "endpoints",
    "address",
    "addr",
    "server",
    "servers",
    "domain",
    "ip",
    "origin",
    "proxy",
)


@lru_cache(maxsize=4096)
def normalise_key(key: str) -> str:
    """A member name as matched: NFKC, case folded, only ASCII letters and digits."""
    return _KEY_NOISE.sub("", unicodedata.normalize("NFKC", key).casefold())


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """
    Whether a member name carries a credential.

    The name is normalised (:func:`normalise_key`, so ``X-Api-Key``,
    ``x_api.key`` and ``XAPIKEY`` are one name) and refused when it *is* a
    credential word (``token``, ``session``, ``signature``, ...) or *ends*
    with one (``hec_token``, ``client_secret``, ``set-cookie``,
    ``proxy-authorization``). A credential word followed by a qualifier is
    not a credential: ``token_count``, ``sessions``, ``secret_env`` and
    ``password_ref`` pass, so counts and environment variable references
    stay usable. Their values are still checked.
    """
    name = normalise_key(key)
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


@lru_cache(maxsize=4096)
def _key_context(key: str | None) -> tuple[bool, bool]:
    """(expects a token, holds a host) for the member named ``key``."""
    if key is None:
        return False, False
    name = normalise_key(key)
    token = any(word in name for word in _TOKEN_CONTEXT_WORDS)
    return token, name.endswith(_HOST_KEY_SUFFIXES)


# -- hosts ----------------------------------------------------------------------


def _networks(*cidrs: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


_PRIVATE_V4 = _networks(
    "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host
    "10.0.0.0/8",
    "100.64.0.0/10",  # CGNAT; holds Alibaba Cloud's metadata service
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local; 169.254.169.254 is the metadata service
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments, never routed
    "192.168.0.0/16",
    "198.18.0.0/15",  # benchmarking, never routed
    "240.0.0.0/4",  # reserved, and the broadcast address
)
_PRIVATE_V6 = _networks(
    "::/128",
    "::1/128",
    "fc00::/7",  # unique local; fd00:ec2::254 is AWS's metadata service
    "fe80::/10",
    "fec0::/10",  # deprecated site-local
)
_V4_IN_V6 = _networks(
    "::/96",  # deprecated IPv4-compatible form, ::127.0.0.1
    "::ffff:0:0/96",  # IPv4-mapped
    "::ffff:0:0:0/96",  # IPv4-translated
    "64:ff9b::/96",  # NAT64
    "64:ff9b:1::/48",  # local NAT64
)
_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "instance-data",  # AWS's metadata host
        "ip6-localhost",
        "ip6-loopback",
        "lvh.me",
        "localtest.me",
        "vcap.me",
    }
)
_LOCAL_SUFFIXES = (
    ".localhost",
    ".local",
    ".internal",  # metadata.google.internal, *.ec2.internal
    ".lan",
    ".localdomain",
    ".home.arpa",
    ".lvh.me",
    ".localtest.me",
    ".vcap.me",
)
#: Wildcard DNS services that resolve a name to the address written in it.
_ECHO_DNS_SUFFIXES = (".nip.io", ".sslip.io", ".xip.io")
_ECHO_DNS_ADDRESS = re.compile(
    r"(?<![0-9])((?:[0-9]{1,3}[.-]){3}[0-9]{1,3})(?![0-9])"
    r"|(?<![0-9a-f])([0-9a-f]{8})(?![0-9a-f])"
)
#: Full stops that IDNA maps to ".".
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_HEX_DIGITS = frozenset("0123456789abcdef")
_OCTAL_DIGITS = frozenset("01234567")


def parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """
    Read ``host`` the way ``inet_aton`` and URL parsers do, or return None.

    One to four parts separated by dots (a trailing dot allowed), each in
    decimal, hexadecimal (``0x``) or octal (a leading ``0``); the last part
    fills the remaining bytes. So ``127.1``, ``2130706433``, ``0x7f000001``,
    ``0x7f.0.0.1``, ``0177.0.0.1`` and ``017700000001`` are all 127.0.0.1.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = []
    for part in parts:
        if not part or len(part) > 40:
            return None
        if part[:2] in ("0x", "0X"):
            digits = part[2:].lower()
            if not _HEX_DIGITS.issuperset(digits):
                return None
            numbers.append(int(digits, 16) if digits else 0)
        elif len(part) > 1 and part[0] == "0":
            if not _OCTAL_DIGITS.issuperset(part):
                return None
            numbers.append(int(part, 8))
        elif part.isascii() and part.isdigit():
            numbers.append(int(part))
        else:
            return None
    *head, last = numbers
    if any(number > 255 for number in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _address_is_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.version == 4:
        return any(address in network for network in _PRIVATE_V4)
    if any(address in network for network in _PRIVATE_V6):
        return True
    if any(address in network for network in _V4_IN_V6):
        return _address_is_private(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.sixtofour is not None:
        return _address_is_private(address.sixtofour)
    return False


def _decode_host(host: str) -> str:
    """Percent-decoded (twice encoded too), compatibility form, lower case."""
    for _ in range(3):
        decoded = unquote(host)
        if decoded == host:
            break
        host = decoded
    host = unicodedata.normalize("NFKC", host).translate(_DOTS)
    return host.strip().lower()


@lru_cache(maxsize=8192)
def is_private_host(host: str, *, single_label: bool = False) -> bool:
    """
    Whether ``host`` names a private, loopback, link-local, unique-local,
    CGNAT, reserved or cloud metadata host.

    ``host`` may be percent-encoded, bracketed, carry an IPv6 zone or a
    trailing dot, use any legacy IPv4 spelling (:func:`parse_legacy_ipv4`)
    or embed IPv4 in IPv6 (mapped, compatible, NAT64, 6to4). Names such as
    ``localhost``, ``*.local``, ``*.internal``, ``*.lan``, ``instance-data``
    and wildcard-DNS names of a private address (``10.0.0.1.nip.io``) count
    as private too; with ``single_label`` so does any name without a dot, as
    an intranet name in a URL is.
    """
    host = _decode_host(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.rstrip(".")
    if not host:
        return False

    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return False
        return _address_is_private(address)

    legacy = parse_legacy_ipv4(host)
    if legacy is not None:
        return _address_is_private(legacy)
    if host[-1].isdigit() and host.rsplit(".", 1)[-1].isdigit():
        # A URL parser refuses a name ending in a number that is no address.
        return False

    if host in _LOCAL_NAMES or host.endswith(_LOCAL_SUFFIXES):
        return True
    if host.endswith(_ECHO_DNS_SUFFIXES):
        for match in _ECHO_DNS_ADDRESS.finditer(host):
            dotted, hexadecimal = match.groups()
            if dotted:
                embedded = parse_legacy_ipv4(dotted.replace("-", "."))
            else:
                embedded = ipaddress.IPv4Address(int(hexadecimal, 16))
            if embedded is not None and _address_is_private(embedded):
                return True
        return False
    return single_label and "." not in host


# -- patterns -------------------------------------------------------------------

_GUID = r"[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}"
_GUID_ANYWHERE = re.compile(rf"(?<![0-9A-Za-z]){_GUID}(?![0-9A-Za-z])")

#: Credential shapes in values. Each alternative is one named group; a group
#: ``<name>_v``, where present, is the secret part that scrubbing replaces.
_SECRET_VALUE = re.compile(
    r"""
    (?P<pem>-----BEGIN[A-Z0-9 ]{0,40}PRIVATE\ KEY(?:\ BLOCK)?-----)
  | (?P<jwt>\beyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*)
  | (?P<aws>\b(?:AKIA|ASIA)[A-Z0-9]{16}\b)
  | (?P<azure>(?i:\b(?:AccountKey|SharedAccessKey|SharedAccessSignature
        |SharedSecretValue)\s*=\s*)(?P<azure_v>[^;\s"']+))
  | (?P<whsec>\bwhsec_[A-Za-z0-9+/=_-]{8,})
  | (?P<github>\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}))
  | (?P<gitlab>\bglpat-[A-Za-z0-9_-]{20,})
  | (?P<slack>\bxox[baprs]-[A-Za-z0-9-]{8,}
        |hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]+)
  | (?P<stripe>\b[sr]k_(?:live|test)_[A-Za-z0-9]{10,})
  | (?P<npm>\bnpm_[A-Za-z0-9]{36}\b)
  | (?P<google>\bAIza[0-9A-Za-z_-]{35})
  | (?P<bearer>(?i:\bbearer)(?:\s+|\s*[:=]\s*)
        (?P<bearer_v>[A-Za-z0-9\-._~+/]{6,}=*))
  | (?P<basic>(?i:\bbasic)\s+
        (?P<basic_v>[A-Za-z0-9+/]{6,}={0,2})(?![A-Za-z0-9+/=]))
  | (?P<hec>(?i:\b(?:token|hec|splunk))[\s:="'\#]{1,3}(?P<hec_v>"""
    + _GUID
    + r"""))
  | (?P<assign>(?i:(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key
        |private[_-]?key|auth(?:orization)?|cookie|session(?:[_-]?id)?
        |credentials?|sig(?:nature)?))["']?\s*(?P<assign_op>=|:(?=[\s"']))\s*
        (?P<assign_v>["']?[^\s"',;&]{3,}))
    """,
    re.VERBOSE,
)
_KEY_CHARACTER = re.compile(r"[A-Za-z0-9_.-]")
_PEM_BLOCK = re.compile(
    r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"[\s\S]*?(?:-----END[A-Z0-9 ]{0,40}-----|$)"
)


def _secret_match_counts(match: re.Match[str]) -> bool:
    """Whether a match of :data:`_SECRET_VALUE` really is a credential."""
    kind = match.lastgroup
    if kind == "bearer":
        token = match["bearer_v"]
        return len(token) >= 20 or any(c.isdigit() for c in token)
    if kind == "basic":
        encoded = match["basic_v"]
        try:
            decoded = base64.b64decode(
                encoded + "=" * (-len(encoded) % 4), validate=True
            )
        except (binascii.Error, ValueError):
            return False
        if b":" in decoded:
            return True
        return len(encoded) >= 16 and any(c.isdigit() for c in encoded)
    if kind == "assign":
        text, start = match.string, match.start()
        while start > 0 and _KEY_CHARACTER.match(text, start - 1):
            start -= 1
        key = text[start : match.start("assign_op")]
        if not is_secret_key(key):
            return False
        value = match["assign_v"].strip("\"'")
        if value.startswith("[") or value in ("null", "none", "true", "false"):
            return False
        if match["assign_op"] == "=":
            return True
        return len(value) >= 16 or any(c.isdigit() for c in value)
    return True


#: Every alternative of :data:`_SECRET_VALUE` starts with one of these (in
#: ASCII lower case), so only their positions need trying.
_SECRET_ANCHORS = (
    b"-----begin",
    b"eyj",
    b"akia",
    b"asia",
    b"accountkey",
    b"sharedaccess",
    b"sharedsecret",
    b"whsec_",
    b"ghp_",
    b"gho_",
    b"ghu_",
    b"ghs_",
    b"ghr_",
    b"github_pat_",
    b"glpat-",
    b"xox",
    b"hooks.slack.com",
    b"sk_",
    b"rk_",
    b"npm_",
    b"aiza",
    b"bearer",
    b"basic",
    b"token",
    b"hec",
    b"splunk",
    b"password",
    b"passwd",
    b"pwd",
    b"secret",
    b"api",
    b"access",
    b"private",
    b"auth",
    b"cookie",
    b"session",
    b"credential",
    b"sig",
)


def _anchor_positions(text: str) -> list[int]:
    """Where an alternative of :data:`_SECRET_VALUE` may start, in order."""
    # PERF(redaction): one regex search tries some twenty alternatives at
    # every position; finding the few anchors with bytes.find is far cheaper.
    # Non-ASCII characters become one "?" each, so positions line up.
    folded = text.encode("ascii", "replace").lower()
    positions = set()
    for anchor in _SECRET_ANCHORS:
        index = folded.find(anchor)
        while index >= 0:
            positions.add(index)
            index = folded.find(anchor, index + 1)
    return sorted(positions)


def _secret_spans(text: str, expects_token: bool) -> Iterator[tuple[int, int]]:
    """Spans of the secret parts of ``text``."""
    covered = 0
    for position in _anchor_positions(text):
        if position < covered:
            continue
        match = _SECRET_VALUE.match(text, position)
        # A near miss ("Authorization: Bearer" read as an assignment) is
        # skipped; a real match may start inside it.
        if match is None or not _secret_match_counts(match):
            continue
        group = f"{match.lastgroup}_v"
        if group in match.re.groupindex and match[group] is not None:
            yield match.span(group)
        else:
            yield match.span()
        covered = match.end()
    if expects_token:
        for match in _GUID_ANYWHERE.finditer(text):
            yield match.span()


_URL = re.compile(
    r"""(?ix)
    (?: \b(?P<scheme>[a-z][a-z0-9+.\-]{0,30}):[/\\]{2}
      | (?<![\w/\\:.])(?P<relative>//)(?=[^\s/\\]) )
    (?P<rest>[^\s<>"'`]*)
    """
)
_SPECIAL_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
#: Normalised query parameter names that carry a credential.
_CREDENTIAL_PARAMETERS = frozenset(
    {
        "accesstoken",
        "apikey",
        "code",
        "key",
        "password",
        "sig",
        "signature",
        "token",
        "xamzcredential",
        "xamzsecuritytoken",
        "xamzsignature",
        "xgoogcredential",
        "xgoogsignature",
    }
)
#: Azure shared access signature fields: two or more of them make a SAS.
_SAS_PARAMETERS = frozenset({"sv", "se", "sp", "sr", "st", "spr", "srt", "ss", "skoid"})
_URL_TRAILING_PUNCTUATION = ").,;:!?]}'\""


_RFC_AUTHORITY = re.compile(r"[^/?#]*")
_WHATWG_AUTHORITY = re.compile(r"[^/\\?#]*")


def _authorities(rest: str) -> list[str]:
    """
    The URL's authority as RFC 3986 reads it and as browsers do (where a
    backslash also ends it); checking both defeats ``http://10.0.0.1\\@a.com``.
    """
    rfc = _RFC_AUTHORITY.match(rest).group()
    whatwg = _WHATWG_AUTHORITY.match(rest).group()
    return [rfc] if rfc == whatwg else [rfc, whatwg]


def _authority_host(authority: str) -> str:
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    # Punctuation closing the sentence around a URL is not part of its host.
    host = host.rstrip(_URL_TRAILING_PUNCTUATION)
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _url_reason(scheme: str | None, rest: str, depth: int = 0) -> str | None:
    """``credential_url`` or ``private_host`` for one URL, or None."""
    single_label = scheme is not None and scheme.lower() in _SPECIAL_SCHEMES
    for authority in _authorities(rest):
        if "@" in authority or "@" in _decode_host(authority):
            return CREDENTIAL_URL
    for authority in _authorities(rest):
        if is_private_host(_authority_host(authority), single_label=single_label):
            return PRIVATE_HOST

    # Split by hand: urlsplit refuses some malformed URLs outright, and their
    # parameters still need reading.
    before_fragment, _, fragment = rest.partition("#")
    query = before_fragment.partition("?")[2]
    parameters = parse_qsl(query, keep_blank_values=True)
    parameters += parse_qsl(fragment, keep_blank_values=True)
    names = {normalise_key(name) for name, _ in parameters}
    if names & _CREDENTIAL_PARAMETERS or len(names & _SAS_PARAMETERS) >= 2:
        return CREDENTIAL_URL
    if any(is_secret_key(name) for name, _ in parameters):
        return CREDENTIAL_URL
    if depth < 2:
        # A URL can carry another one, encoded, in a parameter.
        for _, value in parameters:
            if "//" in value:
                for match in _URL.finditer(value):
                    reason = _url_reason(match["scheme"], match["rest"], depth + 1)
                    if reason:
                        return reason
    return None


def _url_matches(text: str) -> Iterator[re.Match[str]]:
    """Every URL in ``text``, including URLs nested inside another's rest."""
    position = 0
    while True:
        match = _URL.search(text, position)
        if match is None:
            return
        yield match
        position = match.start("rest")


_DOTTED_ADDRESS = re.compile(
    r"(?i)(?<![a-z0-9.])(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){3}"
    r"(?![a-z0-9]|\.[a-z0-9])"
)
_IPV6_ADDRESS = re.compile(
    r"(?i)(?<![\w:.])\[?("
    r"(?:[0-9a-f]{0,4}:){2,7}(?:[0-9a-f]{1,4}|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?"
    r"(?:%[\w.~-]+)?"
    r")\]?(?![\w:])"
)
_LOCAL_NAME_HINT = re.compile(
    r"(?i)localhost|instance-data|ip6-lo"
    r"|\.(?:local|internal|lan|localdomain|home\.arpa)\b"
    r"|\b(?:lvh|localtest|vcap)\.me\b|\.(?:nip|sslip|xip)\.io\b"
)
_HOST_TOKEN = re.compile(r"[A-Za-z0-9._-]+")


def _bare_host_spans(text: str) -> Iterator[tuple[int, int]]:
    """Spans of private hosts written in ``text`` outside URLs."""
    if "." in text:
        for match in _DOTTED_ADDRESS.finditer(text):
            if is_private_host(match.group()):
                yield match.span()
    if ":" in text:
        for match in _IPV6_ADDRESS.finditer(text):
            candidate = match.group(1)
            if any(c in _HEX_DIGITS for c in candidate.lower()) and is_private_host(
                candidate
            ):
                yield match.span()
    if _LOCAL_NAME_HINT.search(text):
        for match in _HOST_TOKEN.finditer(text):
            token = match.group()
            if _LOCAL_NAME_HINT.search(token) and is_private_host(token.strip(".-_")):
                yield match.span()


_JSON_KEY = re.compile(r"""["'][^"'\\\n]{1,64}["']\s*:""")
_PAYLOAD_MARKERS = re.compile(
    r"""(?ix)
      \bHTTP/[0-9](?:\.[0-9])?\s+[0-9]{3}\b
    | ^\s*(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+\S+\s+HTTP/[0-9]
    | <\?xml | <!doctype | <(?:html|head|body|script)[\s>/]
    | <(?:soap|soapenv|s):envelope
    | <([a-z][\w:.-]{0,40})(?:\s[^<>]*)?>[^<>]*</\1\s*>
    | \bdata:[\w/+.-]*;base64,
    """,
    re.MULTILINE,
)
_HEADER_LINE = re.compile(r"(?m)^[ \t]*([A-Za-z][A-Za-z0-9-]{1,40})[ \t]*:[ \t]*\S")
#: Header names that make a line block an HTTP header dump.
_HTTP_HEADERS = frozenset(
    {
        "accept",
        "authorization",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "host",
        "set-cookie",
        "transfer-encoding",
        "user-agent",
    }
)
_BASE64_BLOB = re.compile(rf"[A-Za-z0-9+/_-]{{{BASE64_BLOB_LENGTH},}}")


def _json_members(value: Any, budget: int) -> int:
    """Members (keys and items) of parsed JSON, counting up to ``budget``."""
    count = 0
    stack = [value]
    while stack and count < budget:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            count += len(item)
            stack.extend(item)
    return count


def _looks_like_payload(text: str) -> bool:
    if ("{" in text or "[" in text) and (
        len(_JSON_KEY.findall(text)) >= PAYLOAD_MIN_MEMBERS or _holds_json(text)
    ):
        return True
    if ("<" in text or "HTTP/" in text or "data:" in text or "\n" in text) and (
        _PAYLOAD_MARKERS.search(text)
    ):
        return True
    if "\n" in text:
        names = {name.lower() for name in _HEADER_LINE.findall(text)}
        if names & _HTTP_HEADERS or len(names) >= 3:
            return True
    return len(text) >= BASE64_BLOB_LENGTH and _BASE64_BLOB.search(text) is not None


_JSON_DECODER = json.JSONDecoder()


def _holds_json(text: str) -> bool:
    """Whether a JSON object or array with enough members starts in ``text``."""
    position = 0
    for _ in range(3):
        found = [
            i for i in (text.find("{", position), text.find("[", position)) if i >= 0
        ]
        if not found:
            return False
        start = min(found)
        try:
            value, _end = _JSON_DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            position = start + 1
            continue
        if _json_members(value, PAYLOAD_MIN_MEMBERS) >= PAYLOAD_MIN_MEMBERS:
            return True
        position = start + 1
    return False


# -- one string -----------------------------------------------------------------

#: Anything that might start a finding. A string with none of these, no
#: longer than a base64 blob and outside a token member is clean.
_WORTH_A_LOOK = re.compile(
    r"[:/=.<{\[\n]|-----|(?i:bearer|basic|localhost|token|hec|splunk|instance|ip6)"
    r"|AKIA|ASIA|eyJ|whsec_|gh[pousr]_|github_pat_|xox|AIza|[sr]k_|glpat|npm_"
)
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


@lru_cache(maxsize=65536)
def _string_reason(text: str, expects_token: bool, holds_host: bool) -> str | None:
    """The first built-in reason to refuse ``text``, length aside, or None."""
    if _TIMESTAMP.fullmatch(text):
        return None
    if (
        not expects_token
        and not holds_host
        and len(text) < BASE64_BLOB_LENGTH
        and not _WORTH_A_LOOK.search(text)
    ):
        return None

    if "//" in text or "\\" in text:
        for match in _url_matches(text):
            reason = _url_reason(match["scheme"], match["rest"])
            if reason:
                return reason
    if next(_secret_spans(text, expects_token), None) is not None:
        return SECRET_VALUE
    if holds_host:
        whole = text.strip()
        if whole.count(":") == 1 and not whole.startswith("["):
            whole = whole.partition(":")[0]
        if is_private_host(whole):
            return PRIVATE_HOST
    if next(_bare_host_spans(text), None) is not None:
        return PRIVATE_HOST
    if _looks_like_payload(text):
        return PAYLOAD_BODY
    return None


def _check_string(text: str, key: str | None, max_text_length: int) -> str | None:
    if len(text) > max_text_length:
        return TEXT_TOO_LONG
    expects_token, holds_host = _key_context(key)
    if len(text) > 512:
        # Long strings are seldom repeated; keep them out of the cache.
        return _string_reason.__wrapped__(text, expects_token, holds_host)
    return _string_reason(text, expects_token, holds_host)


# -- documents ------------------------------------------------------------------


def _path_parts(path: tuple | None) -> list[Any]:
    parts: list[Any] = []
    while path is not None:
        path, part = path
        parts.append(part)
    parts.reverse()
    return parts


def _problem(
    path: tuple | None,
    reason: str,
    max_text_length: int,
    *,
    in_name: bool = False,
    rule: RedactionRule | None = None,
) -> FieldProblem:
    if rule is not None:
        what = f"is refused by the {rule.name} redaction rule"
        fix = rule.detail or "remove it"
    elif reason == TEXT_TOO_LONG:
        what = f"is longer than {max_text_length} characters"
        fix = f"shorten it to {max_text_length} characters or fewer"
    else:
        what, fix = _FIXES[reason]
    if in_name:
        # The member name is the offending text, so the pointer stops at the
        # object holding it rather than repeat it.
        what = f"has a member name that {what}"
    return FieldProblem(pointer(_path_parts(path)), f"{what}; {fix}", reason)


def find_problems(
    document: Any,
    *,
    rules: Iterable[RedactionRule] = (),
    max_text_length: int = MAX_TEXT_LENGTH,
    limit: int = MAX_PROBLEMS,
) -> list[FieldProblem]:
    """
    Every offending place of ``document``, in document order, at most ``limit``.

    The document is only read. A member whose name is itself offending (a
    credential used as a name, say) is reported at the object holding it, so
    no pointer repeats it, and its value is not walked.
    """
    active_rules = list(rules)
    problems: list[FieldProblem] = []
    stack: list[tuple[Any, tuple | None, str | None]] = [(document, None, None)]
    # PERF(redaction): a large body repeats a handful of member names
    # thousands of times; judge each name once per document.
    names: dict[str, str | None] = {}

    while stack and len(problems) < limit:
        value, path, key = stack.pop()

        if isinstance(value, str):
            reason = _check_string(value, key, max_text_length)
            if reason:
                problems.append(_problem(path, reason, max_text_length))
            elif active_rules:
                rule = _matching_rule(active_rules, key, value)
                if rule is not None:
                    problems.append(
                        _problem(path, rule.reason, max_text_length, rule=rule)
                    )
        elif isinstance(value, dict):
            children = []
            for name, child in value.items():
                name = name if isinstance(name, str) else str(name)
                verdict = names.get(name, "")
                if verdict == "":
                    verdict = _check_string(name, None, max_text_length) or (
                        SECRET_KEY if is_secret_key(name) else None
                    )
                    names[name] = verdict
                if verdict is None:
                    children.append((child, (path, name), name))
                elif verdict == SECRET_KEY:
                    problems.append(_problem((path, name), SECRET_KEY, max_text_length))
                else:
                    problems.append(
                        _problem(path, verdict, max_text_length, in_name=True)
                    )
            stack.extend(reversed(children))
        elif isinstance(value, list | tuple):
            stack.extend(
                (value[index], (path, index), key)
                for index in range(len(value) - 1, -1, -1)
            )

    return problems[:limit]


def _matching_rule(
    rules: list[RedactionRule], key: str | None, value: str
) -> RedactionRule | None:
    """
    The first plugin rule that refuses ``value``.

    A rule that raises is logged and dropped for the rest of this check: the
    built-in guard has already run, and a broken plugin must not turn every
    request into an error.
    """
    for rule in list(rules):
        try:
            if rule.matches(key, value):
                return rule
        except Exception as exc:
            log.warning(
                "redaction rule raised rule=%s error=%s", rule.name, type(exc).__name__
            )
            rules.remove(rule)
    return None


def check_inbound(
    document: Any,
    *,
    rules: Iterable[RedactionRule] = (),
    max_text_length: int = MAX_TEXT_LENGTH,
) -> None:
    """
    Refuse a request body that carries a secret, a private host or a payload.

    :param document: the parsed body; only read, never changed.
    :param rules: plugin rules (``PluginHost.redaction_rules()``), applied
        to strings the built-in checks let pass.
    :param max_text_length: longest string accepted, in characters.
    :raises InvalidInput: naming the first offending pointer and how to fix
        it, with one problem per offending place (at most 50).
    """
    problems = find_problems(document, rules=rules, max_text_length=max_text_length)
    if not problems:
        return
    first = problems[0]
    where = first.pointer or "/"
    more = len(problems) - 1
    detail = f"The request body at {where} {first.detail}."
    if more:
        detail += f" {more} more {'place is' if more == 1 else 'places are'} listed."
    log.info(
        "request refused by the redaction guard problems=%d first_reason=%s",
        len(problems),
        first.reason,
    )
    raise InvalidInput(detail, problems)


def assert_public_safe(
    document: Any,
    *,
    rules: Iterable[RedactionRule] = (),
    max_text_length: int = MAX_TEXT_LENGTH,
) -> None:
    """
    Check a document cavra built before it is stored or returned.

    :raises UnsafeEvidenceError: when it would leak what :func:`check_inbound`
        refuses; that is a bug in cavra (scrub first), never the caller's.
    """
    problems = find_problems(document, rules=rules, max_text_length=max_text_length)
    if problems:
        where = ", ".join(f"{p.pointer or '/'} ({p.reason})" for p in problems[:5])
        raise UnsafeEvidenceError(f"evidence breaks the redaction guard at {where}")


# -- scrubbing ------------------------------------------------------------------

_HOST_NAME = re.compile(r"[a-z0-9._-]+|\[[0-9a-f:.]+\]")
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
)
_WHITESPACE = re.compile(r"[\s\x00-\x1f\x7f]+")
_UNTIDY = re.compile(r"[\x00-\x1f\x7f]|\s\s|^\s|\s$")


def scrub_url(url: str) -> str:
    """
    ``scheme://host[:port]`` of ``url``, for evidence.

    User information, path, query and fragment are dropped; the port is kept
    unless it is the scheme's default. A private host becomes
    ``redacted.invalid``; a URL that cannot be read becomes ``[redacted]``.
    """
    text = url.strip()
    match = _URL.match(text)
    if match is None or match["scheme"] is None:
        return REDACTED
    scheme = match["scheme"].lower()
    rest = match["rest"]
    authorities = _authorities(rest)
    hosts = {_decode_host(_authority_host(a)) for a in authorities}
    if len(hosts) != 1:
        # RFC 3986 and browsers disagree on where this URL goes.
        return f"{scheme}://{REDACTED_HOST}"
    (host,) = hosts
    if is_private_host(host, single_label=scheme in _SPECIAL_SCHEMES):
        host = REDACTED_HOST
    host = host.rstrip(".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return REDACTED
    if not _HOST_NAME.fullmatch(host):
        return REDACTED

    try:
        port = urlsplit(f"//{authorities[0].rpartition('@')[2]}").port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def _scrub_urls(text: str) -> str:
    def reduce(match: re.Match[str]) -> str:
        found = match.group()
        trailing = len(found) - len(found.rstrip(_URL_TRAILING_PUNCTUATION))
        core, tail = found[: len(found) - trailing], found[len(found) - trailing :]
        if match["scheme"] is None:
            # A scheme-relative URL: reduce it as if it were http.
            return scrub_url(f"http:{core}").removeprefix("http:") + tail
        return scrub_url(core) + tail

    return _URL.sub(reduce, text)


def _replace_spans(
    text: str, spans: Iterable[tuple[int, int]], placeholder: str
) -> str:
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in reversed(merged):
        text = text[:start] + placeholder + text[end:]
    return text


def _scrub_string(text: str, key: str | None, max_length: int) -> str:
    expects_token, holds_host = _key_context(key)
    if (
        "@" not in text
        and "//" not in text
        and "\\" not in text
        and _check_string(text, key, max_length) is None
    ):
        # Nothing to replace: no URL or address to reduce, nothing refused.
        return _WHITESPACE.sub(" ", text).strip() if _UNTIDY.search(text) else text
    if _looks_like_payload(text):
        return PAYLOAD_PLACEHOLDER

    text = _PEM_BLOCK.sub(REDACTED, text)
    text = _replace_spans(text, list(_secret_spans(text, expects_token)), REDACTED)
    text = _scrub_urls(text)
    if "@" in text:
        text = _EMAIL.sub(EMAIL_PLACEHOLDER, text)
    text = _replace_spans(text, list(_bare_host_spans(text)), PRIVATE_HOST_PLACEHOLDER)
    if holds_host and is_private_host(text.strip()):
        text = PRIVATE_HOST_PLACEHOLDER
    text = _WHITESPACE.sub(" ", text).strip()
    if len(text) > max_length:
        text = text[: max_length - 1].rstrip() + "…"

    # Trimming or replacing can, rarely, leave a new shape behind (a cut
    # address reads as a shorter one); then nothing of the text is kept.
    if _check_string(text, key, max_length) is not None:
        return REDACTED
    return text


def scrub_text(text: str, max_length: int = 200) -> str:
    """
    ``text`` made safe for evidence: credentials become ``[redacted]``, URLs
    are reduced to ``scheme://host`` (:func:`scrub_url`), e-mail addresses
    become ``[email]`` and private hosts ``[private-host]``; a payload body
    becomes ``[payload]`` as a whole. Whitespace is collapsed and the result
    trimmed to ``max_length`` characters, ending in an ellipsis when cut.

    With ``max_length`` up to :data:`MAX_TEXT_LENGTH` the result always
    passes :func:`assert_public_safe`.
    """
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    return _scrub_string(text, None, max_length)


def scrub_document(
    document: Any,
    *,
    max_length: int = 200,
    rules: Iterable[RedactionRule] = (),
) -> Any:
    """
    A copy of ``document`` safe for evidence.

    Members with a credential name (or an offending name) are removed, every
    string is scrubbed as by :func:`scrub_text` (a GUID under a token member
    included) and a string a plugin rule refuses becomes ``[redacted]``.
    Numbers, booleans and ``None`` are kept; tuples become lists.
    """
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    active_rules = list(rules)

    def scrub(value: Any, key: str | None) -> Any:
        if isinstance(value, str):
            scrubbed = _scrub_string(value, key, max_length)
            if active_rules and _matching_rule(active_rules, key, scrubbed):
                return REDACTED
            return scrubbed
        if isinstance(value, dict):
            kept = {}
            for name, child in value.items():
                text = name if isinstance(name, str) else str(name)
                if is_secret_key(text) or _check_string(text, None, max_length):
                    continue
                kept[name] = scrub(child, text)
            return kept
        if isinstance(value, list | tuple):
            return [scrub(item, key) for item in value]
        return value

    return scrub(document, None)
