"""The redaction guard: no secret, private host or payload gets into evidence."""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cavra_core import InvalidInput, hookimpl, hookspecs
from cavra_core.plugins import PluginHost, build_plugin_manager
from cavra_core.redaction import (
    CREDENTIAL_URL,
    MAX_PROBLEMS,
    PAYLOAD_BODY,
    PRIVATE_HOST,
    REDACTED,
    REDACTED_HOST,
    SECRET_KEY,
    SECRET_VALUE,
    TEXT_TOO_LONG,
    RedactionRule,
    UnsafeEvidenceError,
    assert_public_safe,
    check_inbound,
    find_problems,
    is_private_host,
    is_secret_key,
    parse_legacy_ipv4,
    scrub_document,
    scrub_text,
    scrub_url,
)

PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def refusal(document: Any, **options: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_inbound(document, **options)
    return caught.value


def found(document: Any, **options: Any) -> list[tuple[str, str | None]]:
    return [
        (problem.pointer, problem.reason)
        for problem in find_problems(document, **options)
    ]


def package(**changes: Any) -> dict[str, Any]:
    document = {
        "drill_id": "drill-2026-q1",
        "generated_at": "2026-12-03T10:00:00Z",
        "generated_by": "Alice Example",
        "acknowledgements": [
            {
                "notification_id": "notif-0001",
                "role": "release manager",
                "state": "accepted",
                "acknowledged_at": "2026-12-03T10:05:00.250+01:00",
            }
        ],
    }
    document.update(changes)
    return document


# -- secret keys ----------------------------------------------------------------

SECRET_KEYS = [
    "authorization",
    "Authorization",
    "Proxy-Authorization",
    "password",
    "PASSWORD",
    "db_password",
    "passwd",
    "pwd",
    "secret",
    "client_secret",
    "clientSecret",
    "token",
    "access_token",
    "accessToken",
    "refresh-token",
    "id.token",
    "hec_token",
    "api_key",
    "apikey",
    "api key",
    "x-api-key",
    "X-API-KEY",
    "api-token",
    "cookie",
    "set-cookie",
    "Set-Cookie",
    "private_key",
    "privateKey",
    "session",
    "session_id",
    "sessionid",
    "JSESSIONID",
    "credential",
    "credentials",
    "bearer",
    "signature",
    "webhook_signature",
    "auth",
    "basic_auth",
    "oauth",
    "aws_secret_access_key",
    "connection_string",
    "passphrase",
    "ｐａｓｓｗｏｒｄ",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_credential_member_names_are_refused(key: str) -> None:
    """A credential name is refused in any case, separator or width."""
    assert found({key: "x"}) == [(f"/{key}", SECRET_KEY)]


INNOCENT_KEYS = [
    "generated_by",
    "retry_policy",
    "max_retry_attempts",
    "notification_id",
    "acknowledged_at",
    "package_id",
    "connector_id",
    "drill_id",
    "role",
    "state",
    "error_class",
    "source",
    "cadence",
    "sessions_count",
    "token_count",
    "secret_env",
    "hec_token_env",
    "password_ref",
    "author",
    "signed_at",
    "keys",
]


@pytest.mark.parametrize("key", INNOCENT_KEYS)
def test_innocent_member_names_pass(key: str) -> None:
    """Names the API uses, and qualified credential words, are not refused."""
    assert not is_secret_key(key)


def _schema_property_names() -> set[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties", {}))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for entry in resources.files("cavra_schemas").iterdir():
        if entry.name.endswith(".json"):
            walk(json.loads(entry.read_text(encoding="utf-8")))
    return names


def test_no_member_name_of_any_schema_is_a_credential_name() -> None:
    """Every field cavra documents passes the key rule."""
    names = _schema_property_names()

    refused = sorted(name for name in names if is_secret_key(name))

    assert names
    assert refused == []


@pytest.mark.parametrize("value", [None, "", 0, True, {}, [], {"nested": 1}])
def test_credential_member_is_refused_whatever_it_holds(value: Any) -> None:
    """Even an empty credential member is refused; its value is not walked."""
    assert found({"outer": {"token": value}}) == [("/outer/token", SECRET_KEY)]


def test_credential_member_name_is_pointed_at_inside_arrays() -> None:
    document = package()
    document["acknowledgements"][0]["X-Api-Key"] = "k"

    error = refusal(document)

    assert [p.pointer for p in error.problems] == ["/acknowledgements/0/X-Api-Key"]


# -- secret values --------------------------------------------------------------

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
SECRET_VALUES = {
    "bearer": "Bearer abcdef123456",
    "bearer lower case": "bearer abcdefghijklmnopqrstuvwxyz",
    "bearer in a header line": "Authorization: BEARER x1y2z3w4v5",
    "basic": "Basic dXNlcjpwYXNzd29yZA==",
    "basic lower case": "basic dXNlcjpwYXNz",
    "jwt": JWT,
    "jwt in text": f"the receiver said {JWT} was expired",
    "aws access key": "AKIAIOSFODNN7EXAMPLE",
    "aws session key": "key ASIAY34FZKBOKMUTVV7A in use",
    "pem private key": "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----",
    "pem rsa key": "-----BEGIN RSA PRIVATE KEY-----",
    "pem openssh key": "-----BEGIN OPENSSH PRIVATE KEY-----",
    "gcp service account": '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMII"}',
    "azure account key": "DefaultEndpointsProtocol=https;AccountKey=Zm9v;",
    "azure sas": "SharedAccessSignature=sv=2020&sig=abc",
    "webhook secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "github token": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "github fine-grained": "github_pat_11ABCDEFG0abcdefghijklmnopqrstuvwxyz",
    "slack bot token": "xoxb-123456789012-abcdefghij",
    "slack webhook": "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
    "gitlab token": "glpat-abcdefghijklmnopqrst",
    "stripe key": "sk_live_abcdefghijklmnop",
    "google api key": "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
    "password assignment": "password=hunter2",
    "api key assignment": "connect with api_key=abc123 please",
    "quoted json credential": '"client_secret": "s3cr3t-value"',
    "hec token in text": "Splunk HEC token 12345678-1234-1234-1234-123456789abc",
    "hec authorization": "Splunk 12345678-1234-1234-1234-123456789abc",
}


@pytest.mark.parametrize("value", SECRET_VALUES.values(), ids=SECRET_VALUES.keys())
def test_credential_values_are_refused(value: str) -> None:
    assert found({"notes": [value]}) == [("/notes/0", SECRET_VALUE)]


ORDINARY_TEXT = [
    "Bearer of bad news",
    "Basic review by the release manager",
    "the HEC token was rejected",
    "token: expired",
    "author: Alice",
    "tokens=5",
    "password_hash algorithm changed",
    "sig:2026",
    "AKIA",
    "ghp_",
    "The receiver answered HTTP 503",
    "every 15 min",
    "release manager",
    "[draft]",
    '{"a": 1}',
]


@pytest.mark.parametrize("text", ORDINARY_TEXT)
def test_ordinary_text_that_mentions_credentials_passes(text: str) -> None:
    check_inbound({"notes": text})


GUID = "12345678-1234-1234-1234-123456789abc"


@pytest.mark.parametrize("key", ["hec", "splunk_hec", "token_hint", "Splunk"])
def test_a_guid_is_refused_where_a_token_is_expected(key: str) -> None:
    assert found({"receiver": {key: GUID}}) == [(f"/receiver/{key}", SECRET_VALUE)]


def test_a_guid_in_an_array_under_a_token_member_is_refused() -> None:
    assert found({"hec": ["ok", GUID]}) == [("/hec/1", SECRET_VALUE)]


@pytest.mark.parametrize("key", ["channel", "request_channel", "notification_id"])
def test_a_guid_elsewhere_passes(key: str) -> None:
    check_inbound({key: GUID})


# -- URLs -----------------------------------------------------------------------

CREDENTIAL_URLS = [
    "https://user:pass@example.com/",
    "https://token@github.com/acme/repo.git",
    "HTTPS://U:P@EXAMPLE.COM",
    "https://user%40x:p@example.com",
    "http://example.com\\@evil.com/",
    "https://example.com/cb?sig=abc",
    "https://example.com/?Signature=abc&Expires=1",
    "https://bucket.s3.amazonaws.com/o?X-Amz-Credential=a&X-Amz-Signature=b",
    "https://storage.googleapis.com/b/o?X-Goog-Signature=abc",
    "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r",
    "https://example.com/oauth/callback?code=abc123",
    "https://example.com/#access_token=abc",
    "https://example.com/?api_key=abc",
    "https://example.com/?apiKey=abc",
    "https://example.com/?key=abc",
    "https://example.com/?password=abc",
    "https://example.com/?client_secret=abc",
    "https://example.com/?access%5Ftoken=abc",
    "see https://example.com/a?token=abc for the report",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_urls_carrying_credentials_are_refused(url: str) -> None:
    assert found({"link": url}) == [("/link", CREDENTIAL_URL)]


PUBLIC_URLS = [
    "https://example.com/",
    "https://splunk.example.com:8088/services/collector",
    "https://example.com/search?q=rollback&page=2",
    "https://93.184.216.34/",
    "https://[2606:4700::6810:85e5]/",
    "https://203.0.113.10/",
    "s3://audit-bucket/evidence.json",
    "https://example.com./",
]


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_public_urls_pass(url: str) -> None:
    check_inbound({"link": url})


def test_a_malformed_url_still_has_its_parameters_read() -> None:
    """urlsplit refuses an unclosed bracket; the guard reads the query anyway."""
    assert found({"link": "https://[bad.example.com/hook?token=abc"}) == [
        ("/link", CREDENTIAL_URL)
    ]


def test_a_url_nested_in_a_parameter_is_checked() -> None:
    url = "https://example.com/login?next=http%3A%2F%2F2130706433%2Fadmin"

    assert found({"link": url}) == [("/link", PRIVATE_HOST)]


# -- private hosts --------------------------------------------------------------

PRIVATE_URLS = [
    "http://127.0.0.1/",
    "http://127.255.0.9:8080/x",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://100.100.100.200/",
    "http://0.0.0.0:8000/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fc00::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fe80::1%25eth0]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::10.0.0.1]/",
    "http://[2002:7f00:1::]/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0X7F000001/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://017700000001/",
    "http://127.1/",
    "http://10.1/",
    "http://127.0.1/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://localhost:3000/",
    "http://app.localhost/",
    "http://printer.local/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://instance-data/latest/",
    "http://nas.lan/",
    "http://metadata/",
    "http://%31%32%37.0.0.1/",
    "http://%6c%6f%63%61%6c%68%6f%73%74/",
    "http://%2531%2532%2537.0.0.1/",
    "http://１２７.０.０.１/",
    "http://127。0。0。1/",
    "http://10.0.0.1.nip.io/",
    "http://app-10-0-0-1.sslip.io/",
    "http:\\\\127.0.0.1\\",
    "//10.0.0.7/share",
    "ws://[::1]:9000/socket",
    "ftp://192.168.0.10/",
    "see http://2130706433/ for details",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_private_hosts_in_urls_are_refused_in_every_spelling(url: str) -> None:
    assert found({"link": url}) == [("/link", PRIVATE_HOST)]


BARE_PRIVATE_HOSTS = [
    "collector at 10.0.0.5 refused",
    "10.0.0.5:8088",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "127.0.0.1.",
    "::1",
    "[::1]:8080",
    "fe80::1%eth0",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "0:0:0:0:0:0:0:1",
    "localhost",
    "localhost:8080",
    "localhost.",
    "splunk.internal",
    "db.corp.internal:5432",
    "instance-data",
    "metadata.google.internal",
    "10.1.2.3.nip.io",
]


@pytest.mark.parametrize("text", BARE_PRIVATE_HOSTS)
def test_bare_private_hosts_in_text_are_refused(text: str) -> None:
    assert found({"note": text}) == [("/note", PRIVATE_HOST)]


@pytest.mark.parametrize("value", ["127.1", "2130706433", "0x7f000001", "10.1:80"])
@pytest.mark.parametrize("key", ["host", "target_host", "endpoint", "webhook_url"])
def test_host_members_are_read_in_every_legacy_spelling(key: str, value: str) -> None:
    assert found({key: value}) == [(f"/{key}", PRIVATE_HOST)]


PUBLIC_OR_NUMBERS = [
    "8.8.8.8",
    "1.2.3.4",
    "203.0.113.7",
    "2001:db8::1",
    "version 10.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "10:00:00",
    "aa:bb:cc:dd:ee:ff",
    "std::vector",
    "local",
    "the local team",
    "drill:2026.q1",
    "release 2.10.1",
    "example.com",
]


@pytest.mark.parametrize("text", PUBLIC_OR_NUMBERS)
def test_public_hosts_numbers_and_ordinary_text_pass(text: str) -> None:
    check_inbound({"note": text})


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0x", "0.0.0.0"),
        ("0", "0.0.0.0"),
    ],
)
def test_legacy_ipv4_spellings_are_read_like_inet_aton(
    spelling: str, address: str
) -> None:
    assert parse_legacy_ipv4(spelling) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize(
    "spelling",
    ["256.0.0.1", "1.2.3.4.5", "08.0.0.1", "0x1g", "1..2", "a.b", "", "4294967296"],
)
def test_impossible_ipv4_spellings_are_no_address(spelling: str) -> None:
    assert parse_legacy_ipv4(spelling) is None


def test_single_label_hosts_are_private_only_when_asked() -> None:
    assert is_private_host("metadata", single_label=True)
    assert not is_private_host("metadata")


# -- text and payloads ----------------------------------------------------------


def test_text_over_the_default_limit_is_refused() -> None:
    assert found({"note": "word " * 401}) == [("/note", TEXT_TOO_LONG)]


def test_the_text_limit_is_configurable() -> None:
    error = refusal({"note": "a b c d e f"}, max_text_length=5)

    assert error.problems[0].reason == TEXT_TOO_LONG
    assert "5 characters" in error.problems[0].detail


def test_text_at_the_limit_passes() -> None:
    check_inbound({"note": ("word " * 400)[:2000]})


PAYLOADS = {
    "json object": '{"event": "ack", "time": 1, "host": "a"}',
    "nested json": '{"event": {"drill": "d", "acks": [1, 2]}}',
    "json array": '[{"a": 1}, {"b": 2}, {"c": 3}]',
    "truncated json": '{"event": "a", "source": "b", "sourcetype": "c", "ind',
    "python repr": "{'event': 'a', 'time': 1, 'index': 'main'}",
    "http response": "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody",
    "http status in text": "the receiver replied HTTP/2 503 Service Unavailable",
    "http request": "POST /services/collector HTTP/1.1\nHost: example.com\n",
    "header block": "Content-Type: application/json\nX-Request-Id: 1",
    "many header lines": "X-A: 1\nX-B: 2\nX-C: 3",
    "xml": '<?xml version="1.0"?><ack/>',
    "html": "<html><body>Service unavailable</body></html>",
    "doctype": "<!DOCTYPE html><p>x</p>",
    "element": "<error>quota exceeded</error>",
    "soap": "<soap:Envelope></soap:Envelope>",
    "data uri": "data:application/octet-stream;base64,AAAA",
    "base64 blob": "A" * 120 + "b+/9" * 30,
}


@pytest.mark.parametrize("value", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_payload_bodies_are_refused(value: str) -> None:
    assert found({"note": value}) == [("/note", PAYLOAD_BODY)]


# -- the error ------------------------------------------------------------------


def test_the_error_names_the_first_pointer_and_how_to_fix_it() -> None:
    document = package(acknowledgements=[{"role": "r", "api_key": "k"}])

    error = refusal(document)

    assert error.title == "Invalid request"
    assert "/acknowledgements/0/api_key" in error.detail
    assert "environment variable" in error.detail
    assert error.problems[0].reason == SECRET_KEY


def test_every_offending_place_is_listed_in_document_order() -> None:
    document = {"a": "Bearer abc123456", "b": [{"token": 1}], "c": "http://10.0.0.1/"}

    assert found(document) == [
        ("/a", SECRET_VALUE),
        ("/b/0/token", SECRET_KEY),
        ("/c", PRIVATE_HOST),
    ]


def test_problems_are_capped() -> None:
    document = [{"password": "x"} for _ in range(MAX_PROBLEMS * 3)]

    error = refusal(document)

    assert len(error.problems) == MAX_PROBLEMS
    assert f"{MAX_PROBLEMS - 1} more places" in error.detail


def test_a_member_name_holding_a_secret_is_reported_at_its_object() -> None:
    """The pointer must not repeat the name, since the name is the secret."""
    name = "Bearer abcdef123456"

    error = refusal({"outer": {name: {"inner": 1}}})

    assert [(p.pointer, p.reason) for p in error.problems] == [("/outer", SECRET_VALUE)]
    assert name not in error.detail
    assert "member name" in error.problems[0].detail


def test_pointer_escapes_slash_and_tilde() -> None:
    assert found({"a/b": {"c~d": "http://localhost/"}}) == [
        ("/a~1b/c~0d", PRIVATE_HOST)
    ]


def test_a_top_level_string_is_pointed_at_as_the_root() -> None:
    error = refusal("Bearer abcdef123456")

    assert error.problems[0].pointer == ""
    assert "at / " in error.detail


def test_a_deeply_nested_document_is_checked_without_recursion() -> None:
    document: Any = "http://127.0.0.1/"
    for _ in range(5000):
        document = [document]

    error = refusal(document)

    assert error.problems[0].pointer == "/0" * 5000


def test_deeply_nested_json_in_a_string_does_not_break_the_check() -> None:
    check_inbound({"note": "[" * 1999})


def test_numbers_booleans_and_null_are_not_judged() -> None:
    check_inbound({"count": 2130706433, "ok": True, "none": None, "ratio": 10.1})


def test_the_refusal_is_logged_without_the_value(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="cavra_core.redaction")

    refusal({"note": "Bearer abcdef123456"})

    assert "abcdef123456" not in caplog.text
    assert "problems=1" in caplog.text


# -- plugin rules ---------------------------------------------------------------


def _acme_rule(key: str | None, value: str) -> bool:
    return value.startswith("acme_")


ACME_RULE = RedactionRule("acme-token", "acme_token", _acme_rule, "remove the token")


def test_a_plugin_rule_refuses_what_the_built_ins_let_pass() -> None:
    error = refusal({"note": "acme_1234"}, rules=[ACME_RULE])

    assert [(p.pointer, p.reason) for p in error.problems] == [("/note", "acme_token")]
    assert "acme-token" in error.problems[0].detail


def test_plugin_rules_run_after_the_built_ins() -> None:
    assert found({"note": "acme_ http://localhost/"}, rules=[ACME_RULE]) == [
        ("/note", PRIVATE_HOST)
    ]


def test_a_rule_is_given_the_member_name_holding_the_value() -> None:
    seen: list[tuple[str | None, str]] = []
    rule = RedactionRule("spy", "spy", lambda key, value: seen.append((key, value)))

    check_inbound({"a": "x", "b": ["y"]}, rules=[rule])

    assert seen == [("a", "x"), ("b", "y")]


def test_a_raising_rule_is_skipped_and_the_others_still_apply(caplog) -> None:
    def broken(key: str | None, value: str) -> bool:
        raise ValueError(value)

    rules = [RedactionRule("broken", "broken", broken), ACME_RULE]

    error = refusal({"a": "fine", "b": "acme_1"}, rules=rules)

    assert [p.reason for p in error.problems] == ["acme_token"]
    assert "rule=broken error=ValueError" in caplog.text
    assert "fine" not in caplog.text


class AcmeRulesPlugin:
    @hookimpl
    def cavra_redaction_rules(self):
        return [ACME_RULE]


class NoRulesPlugin:
    @hookimpl
    def cavra_redaction_rules(self):
        return None


class BrokenRulesPlugin:
    @hookimpl
    def cavra_redaction_rules(self):
        raise RuntimeError("boom")


class WrongAnswerPlugin:
    @hookimpl
    def cavra_redaction_rules(self):
        return ["not a rule", ACME_RULE]


def _host(*plugins: object) -> PluginHost:
    return PluginHost(build_plugin_manager(plugins, load_entry_points=False))


def test_the_plugin_host_collects_every_plugins_rules() -> None:
    host = _host(AcmeRulesPlugin(), NoRulesPlugin())

    assert host.redaction_rules() == [ACME_RULE]


def test_the_plugin_host_skips_a_plugin_that_raises(caplog) -> None:
    host = _host(AcmeRulesPlugin(), BrokenRulesPlugin())

    rules = host.redaction_rules()

    assert rules == [ACME_RULE]
    assert "error=RuntimeError" in caplog.text


def test_the_plugin_host_skips_answers_that_are_not_rules() -> None:
    assert _host(WrongAnswerPlugin()).redaction_rules() == [ACME_RULE]


def test_rules_from_the_plugin_host_feed_check_inbound() -> None:
    rules = _host(AcmeRulesPlugin()).redaction_rules()

    assert found({"note": "acme_9"}, rules=rules) == [("/note", "acme_token")]


def test_the_redaction_hook_is_a_combined_hook() -> None:
    spec = build_plugin_manager(load_entry_points=False).hook.cavra_redaction_rules
    assert not spec.spec.opts.get("firstresult")
    assert "Called" in (hookspecs.cavra_redaction_rules.__doc__ or "")


# -- scrubbing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://user:pw@Splunk.Example.com:8088/services/collector?x=1#f",
            "https://splunk.example.com:8088",
        ),
        ("https://example.com:443/a", "https://example.com"),
        ("http://example.com:80", "http://example.com"),
        ("HTTPS://EXAMPLE.COM/path", "https://example.com"),
        ("https://[2606:4700::1]:8443/", "https://[2606:4700::1]:8443"),
        ("https://bücher.example/", "https://xn--bcher-kva.example"),
        ("https://example.com./", "https://example.com"),
        ("http://10.0.0.5:8088/", f"http://{REDACTED_HOST}:8088"),
        ("http://[::1]/", f"http://{REDACTED_HOST}"),
        ("http://metadata/", f"http://{REDACTED_HOST}"),
        ("http://127.0.0.1\\@example.com/", f"http://{REDACTED_HOST}"),
        ("not a url", REDACTED),
        ("mailto:alice@example.com", REDACTED),
        ("https:///nohost", REDACTED),
    ],
)
def test_scrub_url_keeps_scheme_host_and_a_non_default_port(
    url: str, expected: str
) -> None:
    assert scrub_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("failed with Bearer abcdef123456", "failed with Bearer [redacted]"),
        (
            "posted to https://u:p@example.com/hook?sig=1",
            "posted to https://example.com",
        ),
        ("(see https://example.com/a/b).", "(see https://example.com)."),
        ("ask alice@example.com", "ask [email]"),
        ("collector 10.0.0.5 down", "collector [private-host] down"),
        ("on localhost:8080 now", "on [private-host]:8080 now"),
        ("AKIAIOSFODNN7EXAMPLE leaked", "[redacted] leaked"),
        ("password=hunter2 in log", "password=[redacted] in log"),
        ("line one\n\tline  two", "line one line two"),
        ('{"a": 1, "b": 2, "c": 3}', "[payload]"),
        ("plain words", "plain words"),
    ],
)
def test_scrub_text_replaces_what_must_not_reach_evidence(
    text: str, expected: str
) -> None:
    assert scrub_text(text) == expected


def test_scrub_text_trims_to_the_maximum_length() -> None:
    scrubbed = scrub_text("word " * 100, max_length=50)

    assert len(scrubbed) == 50
    assert scrubbed.endswith("…")


def test_scrub_text_needs_room_for_at_least_one_character() -> None:
    with pytest.raises(ValueError):
        scrub_text("x", max_length=0)


def test_scrub_text_removes_a_whole_pem_block() -> None:
    text = (
        "key: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY----- x"
    )

    assert scrub_text(text) == "key: [redacted] x"


def test_scrub_document_removes_credential_members_and_scrubs_strings() -> None:
    document = {
        "connector": "hec-prod",
        "api_key": "k",
        "hec": GUID,
        "error": "POST to http://10.0.0.5:8088/ failed",
        "attempts": [{"note": "Bearer abcdef123456", "status": 503}],
        "ok": True,
    }

    scrubbed = scrub_document(document)

    assert scrubbed == {
        "connector": "hec-prod",
        "hec": REDACTED,
        "error": f"POST to http://{REDACTED_HOST}:8088 failed",
        "attempts": [{"note": "Bearer [redacted]", "status": 503}],
        "ok": True,
    }
    assert_public_safe(scrubbed)


def test_scrub_document_leaves_its_input_alone() -> None:
    document = {"token": "t", "note": ["Bearer abcdef123456"]}
    before = copy.deepcopy(document)

    scrub_document(document)

    assert document == before


def test_scrub_document_applies_plugin_rules() -> None:
    assert scrub_document({"note": "acme_1"}, rules=[ACME_RULE]) == {"note": REDACTED}


def test_assert_public_safe_raises_a_bug_not_a_bad_request() -> None:
    with pytest.raises(UnsafeEvidenceError) as caught:
        assert_public_safe({"endpoint": "https://u:secretpw@example.com"})

    assert not isinstance(caught.value, InvalidInput)
    assert "/endpoint (credential_url)" in str(caught.value)
    assert "secretpw" not in str(caught.value)


def test_assert_public_safe_passes_ordinary_evidence() -> None:
    assert_public_safe(
        {"endpoint": "https://splunk.example.com:8088", "package": package()}
    )


# -- performance ----------------------------------------------------------------


def test_the_largest_body_is_checked_quickly() -> None:
    """PERF(redaction): check_inbound runs on every request body."""
    acknowledgements = [
        {
            "notification_id": f"notif-{index:05d}",
            "role": "release manager",
            "state": "accepted",
            "acknowledged_at": f"2026-12-03T10:{index % 60:02d}:00.{index:06d}Z",
        }
        for index in range(10000)
    ]
    document = {"package": package(acknowledgements=acknowledgements)}

    started = time.perf_counter()
    check_inbound(document)
    elapsed = time.perf_counter() - started

    assert elapsed < 2.0


# -- properties -----------------------------------------------------------------

WORDS = ["release", "manager", "platform", "owner", "SOC", "analyst", "auditor"]
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
safe_ids = st.from_regex(
    r"[A-Za-z][A-Za-z0-9_-]{0,20}(?:[.:][0-9]{1,4}[a-z]{0,3}){0,2}", fullmatch=True
)
connector_ids = st.from_regex(
    r"[a-z][a-z0-9]{0,12}(?:[-_][a-z0-9]{1,8}){0,2}", fullmatch=True
)
actors = st.one_of(
    words,
    st.sampled_from(["alice@example.com", "svc-cavra-bot", "Bob O'Neil", "Zoë Müller"]),
)
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)


@st.composite
def times(draw: st.DrawFn) -> str:
    moment = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=offsets,
        )
    )
    text = moment.isoformat(
        timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"]))
    )
    return text.replace("+00:00", "Z")


acknowledgements = st.fixed_dictionaries(
    {
        "notification_id": safe_ids,
        "role": words,
        "state": st.sampled_from(
            ["accepted", "deferred", "escalated", "resolved", "dismissed"]
        ),
        "acknowledged_at": times(),
    }
)
audit_packages = st.fixed_dictionaries(
    {
        "drill_id": safe_ids,
        "generated_at": times(),
        "generated_by": actors,
        "acknowledgements": st.lists(acknowledgements, min_size=1, max_size=5),
    }
)
retry_policies = st.fixed_dictionaries(
    {},
    optional={
        "max_retry_attempts": st.integers(1, 100),
        "retry_delay_minutes": st.floats(0, 10080),
        "backoff_multiplier": st.floats(1, 10),
        "max_delay_minutes": st.integers(0, 43200),
        "jitter": st.floats(0, 1),
        "allow_immediate_retry": st.booleans(),
        "max_age_hours": st.integers(1, 8760),
        "retry_window_hours": st.integers(1, 720),
    },
)
worker_run_requests = st.fixed_dictionaries(
    {"generated_by": actors},
    optional={
        "dry_run": st.booleans(),
        "execute": st.booleans(),
        "max_retry_deliveries": st.integers(1, 100),
        "trigger": st.sampled_from(["manual", "schedule"]),
        "schedule": st.fixed_dictionaries(
            {},
            optional={
                "interval_minutes": st.integers(1, 10080),
                "enabled": st.booleans(),
                "cadence": st.sampled_from(["every 15 min", "hourly", "daily 02:00"]),
            },
        ),
        "retry_policy": retry_policies,
    },
)
imported_attempts = st.fixed_dictionaries(
    {
        "package_id": st.text("0123456789abcdef", min_size=64, max_size=64),
        "connector_id": connector_ids,
        "outcome": st.sampled_from(["delivered", "failed"]),
        "started_at": times(),
        "finished_at": times(),
    },
    optional={
        "connector_type": st.sampled_from(["splunk_hec", "webhook", "syslog"]),
        "error_class": st.one_of(
            st.none(), st.sampled_from(["timeout", "http_status"])
        ),
        "http_status": st.one_of(st.none(), st.integers(100, 599)),
        "retry_after": st.sampled_from(["120", "Wed, 21 Oct 2026 07:28:00 GMT", None]),
        "attempt_number": st.integers(1, 1000),
    },
)
safe_documents = st.one_of(
    audit_packages,
    worker_run_requests,
    st.fixed_dictionaries({"generated_by": actors, "retry_policy": retry_policies}),
    st.fixed_dictionaries(
        {
            "package": audit_packages,
            "connectors": st.lists(connector_ids, min_size=1, max_size=3, unique=True),
            "generated_by": actors,
        },
        optional={"source": st.sampled_from(["api", "console"])},
    ),
    st.fixed_dictionaries(
        {"attempts": st.lists(imported_attempts, min_size=1, max_size=4)},
        optional={"packages": st.lists(audit_packages, max_size=2)},
    ),
)


@PROPERTY
@given(safe_documents)
def test_safe_documents_pass_unchanged(document: dict[str, Any]) -> None:
    before = copy.deepcopy(document)

    check_inbound(document)

    assert document == before


SECRET_WORDS = [
    ["api", "key"],
    ["client", "secret"],
    ["access", "token"],
    ["refresh", "token"],
    ["password"],
    ["authorization"],
    ["set", "cookie"],
    ["private", "key"],
    ["session", "id"],
    ["x", "api", "key"],
    ["hec", "token"],
    ["credentials"],
]


@st.composite
def secret_key_spellings(draw: st.DrawFn) -> str:
    parts = draw(st.sampled_from(SECRET_WORDS))
    separator = draw(st.sampled_from(["_", "-", ".", " ", ""]))
    prefix = draw(st.sampled_from(["", "", "webhook_", "X-", "Splunk."]))
    key = prefix + separator.join(parts)
    cases = draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
    return "".join(
        c.upper() if up else c.lower() for c, up in zip(key, cases, strict=True)
    )


def _insert(data: st.DataObject, document: Any, key: str, value: Any) -> list[Any]:
    """Put ``key: value`` into some dict of ``document``; return its path."""
    path: list[Any] = []
    node = document
    while True:
        children = []
        if isinstance(node, dict):
            children = [k for k, v in node.items() if isinstance(v, dict | list)]
        elif isinstance(node, list):
            children = [i for i, v in enumerate(node) if isinstance(v, dict | list)]
        if isinstance(node, dict) and (not children or data.draw(st.booleans())):
            node[key] = value
            return [*path, key]
        if not children:
            node.append({key: value})
            return [*path, len(node) - 1, key]
        step = data.draw(st.sampled_from(children))
        path.append(step)
        node = node[step]


def _pointer(path: list[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@PROPERTY
@given(safe_documents, secret_key_spellings(), st.data())
def test_a_credential_name_anywhere_is_refused_with_its_pointer(
    document: dict[str, Any], key: str, data: st.DataObject
) -> None:
    value = data.draw(st.one_of(st.text(max_size=5), st.none(), st.integers()))
    path = _insert(data, document, key, value)

    error = refusal(document)

    assert [(p.pointer, p.reason) for p in error.problems] == [
        (_pointer(path), SECRET_KEY)
    ]


PRIVATE_V4 = [
    "127.0.0.1",
    "127.45.6.7",
    "10.0.0.1",
    "10.200.30.4",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.1",
    "0.0.0.0",
]


def _octets(address: str) -> list[int]:
    return [int(part) for part in address.split(".")]


def _percent(text: str) -> str:
    return "".join(f"%{ord(c):02x}" for c in text)


SPELLINGS: dict[str, Callable[[str], str]] = {
    "dotted": lambda a: a,
    "decimal": lambda a: str(int(ipaddress.IPv4Address(a))),
    "hex": lambda a: hex(int(ipaddress.IPv4Address(a))),
    "hex upper": lambda a: hex(int(ipaddress.IPv4Address(a))).upper(),
    "hex dotted": lambda a: ".".join(hex(o) for o in _octets(a)),
    "octal dotted": lambda a: ".".join(f"0{o:o}" for o in _octets(a)),
    "octal": lambda a: f"0{int(ipaddress.IPv4Address(a)):o}",
    "three parts": lambda a: "{}.{}.{}".format(
        *_octets(a)[:2], _octets(a)[2] * 256 + _octets(a)[3]
    ),
    "two parts": lambda a: (
        f"{_octets(a)[0]}.{int(ipaddress.IPv4Address(a)) & 0xFFFFFF}"
    ),
    "mixed": lambda a: "{:#x}.0{:o}.{}.{}".format(*_octets(a)),
    "mapped": lambda a: f"[::ffff:{a}]",
    "mapped hex": lambda a: "[::ffff:{:x}:{:x}]".format(
        *divmod(int(ipaddress.IPv4Address(a)), 0x10000)
    ),
    "mapped exploded": lambda a: f"[0:0:0:0:0:FFFF:{a}]",
    "nat64": lambda a: f"[64:ff9b::{a}]",
    "trailing dot": lambda a: f"{a}.",
    "percent": _percent,
    "percent twice": lambda a: _percent(a).replace("%", "%25"),
    "full width": lambda a: a.translate(
        str.maketrans("0123456789.", "０１２３４５６７８９．")
    ),
}
PRIVATE_V6 = ["::1", "fe80::1", "fd00:ec2::254", "fc00::5", "::"]
V6_SPELLINGS: dict[str, Callable[[str], str]] = {
    "compressed": lambda a: f"[{a}]",
    "exploded": lambda a: f"[{ipaddress.IPv6Address(a).exploded}]",
    "upper": lambda a: f"[{ipaddress.IPv6Address(a).exploded.upper()}]",
    "zone": lambda a: f"[{a}%25eth0]",
    "percent": lambda a: "[" + _percent(a) + "]",
}
PRIVATE_NAMES = [
    "localhost",
    "LocalHost.",
    "api.localhost",
    "printer.local",
    "metadata.google.internal",
    "instance-data",
    "nas.lan",
    "10.0.0.1.nip.io",
]
URL_TEMPLATES = [
    "https://{}/",
    "http://{}:8080/status?x=1",
    "wss://{}",
    "delivery to https://{}/services/collector failed",
    "HTTP://{}/#frag",
]
private_spellings = st.one_of(
    st.builds(
        lambda a, f: f(a),
        st.sampled_from(PRIVATE_V4),
        st.sampled_from(list(SPELLINGS.values())),
    ),
    st.builds(
        lambda a, f: f(a),
        st.sampled_from(PRIVATE_V6),
        st.sampled_from(list(V6_SPELLINGS.values())),
    ),
    st.sampled_from(PRIVATE_NAMES),
)


@PROPERTY
@given(private_spellings, st.sampled_from(URL_TEMPLATES), st.data())
def test_every_spelling_of_a_private_host_in_a_url_is_refused(
    host: str, template: str, data: st.DataObject
) -> None:
    document = data.draw(safe_documents)
    path = _insert(data, document, "link", template.format(host))

    error = refusal(document)

    assert [(p.pointer, p.reason) for p in error.problems] == [
        (_pointer(path), PRIVATE_HOST)
    ]


def test_every_ipv4_spelling_reads_back_as_its_address() -> None:
    """The spellings used above really are the address (no vacuous property)."""
    for address in PRIVATE_V4:
        for name, spell in SPELLINGS.items():
            spelled = spell(address)
            if spelled.startswith("[") or "%" in spelled or not spelled.isascii():
                continue
            assert parse_legacy_ipv4(spelled) == ipaddress.IPv4Address(address), name


secret_bodies = st.text(
    "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789",
    min_size=24,
    max_size=40,
)


@st.composite
def planted_secrets(draw: st.DrawFn) -> tuple[str, str]:
    """(text holding a secret, the part that must not survive)."""
    body = draw(secret_bodies)
    upper = "".join(c for c in body.upper() if c.isalnum())[:16].ljust(16, "Q")
    shapes = [
        (f"Bearer {body}", body),
        (f"eyJhbGciOiJub25lIn0.eyJ{body}.{body[::-1]}", body),
        (f"AKIA{upper}", f"AKIA{upper}"),
        (f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----", body),
        (f"whsec_{body}", body),
        (f"ghp_{body}", body),
        (f"xoxb-1234-{body}", body),
        (f"https://svc:{body}@example.com/hook", body),
        (f"https://example.com/cb?access_token={body}&x=1", body),
        (f"AccountName=a;AccountKey={body};", body),
        (f"password={body}", body),
        (f"Splunk {GUID}", GUID),
        (f"http://10.{len(body)}.7.9:8088/x", f"10.{len(body)}.7.9"),
        (f"[fd00::{len(body):x}]", f"fd00::{len(body):x}"),
        (f"{body}@example.com", body),
    ]
    return draw(st.sampled_from(shapes))


@PROPERTY
@given(planted_secrets(), words, words, st.integers(20, 300))
def test_scrub_text_never_keeps_a_planted_secret(
    planted: tuple[str, str], before: str, after: str, max_length: int
) -> None:
    text, secret = planted

    scrubbed = scrub_text(f"{before} {text} {after}", max_length=max_length)

    assert secret not in scrubbed
    assert len(scrubbed) <= max_length
    assert_public_safe({"note": scrubbed})


offending_values = st.one_of(
    planted_secrets()
    .filter(lambda planted: "@example.com" not in planted[0])
    .map(lambda planted: planted[0]),
    st.builds(
        lambda h, t: t.format(h), private_spellings, st.sampled_from(URL_TEMPLATES)
    ),
    st.sampled_from(list(PAYLOADS.values()) + CREDENTIAL_URLS),
)


@PROPERTY
@given(offending_values, st.sampled_from(["note", "hec", "endpoint"]))
def test_the_offending_value_never_appears_in_the_error(value: str, key: str) -> None:
    error = refusal({"evidence": [{key: value}]})

    shown = [error.detail, str(error)] + [
        text for p in error.problems for text in (p.pointer, p.detail)
    ]
    assert all(value not in text for text in shown)
    assert [p.pointer for p in error.problems] == [f"/evidence/0/{key}"]
