"""
How failures are read: connector types' tables, ``retryable_statuses``, defaults.

The lookup order is the operator's ``retryable_statuses``, then the connector
type's ``classification`` table (error class, ``http:NNN``, the narrowest
``http:A-B`` range), then the default table. The unit tests call the default
policy's hook directly; the end-to-end tests record failures and read the
decisions of a real retry plan, for inline types and for the built-in
webhook, HEC and syslog types.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from plugins_fixtures import T0, Clock, FakeType, only_decision, package, parse
from plugins_fixtures import record_failure as record

from cavra_core import ConnectorConfigError, DeliveryResult, Engine, hookimpl
from cavra_core.connectors import parse_status_ranges
from cavra_core.default_policy import cavra_classify_failure
from cavra_core.types import AttemptFacts, Connector

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def classify(
    status: int | None,
    error_class: str | None = None,
    *,
    table: dict[str, str] | None = None,
    retryable: str | None = None,
) -> str:
    """The default policy's category for one failure of one connector."""
    connector = Connector(
        connector_id="hook-a",
        type="fake",
        settings={},
        classification=table or {},
        retryable_statuses=None
        if retryable is None
        else parse_status_ranges(retryable, "hook-a.retryable_statuses"),
    )
    attempt = AttemptFacts(
        attempt_number=1,
        outcome="failed",
        error_class=error_class or ("http_status" if status else "timeout"),
        http_status=status,
        retry_after_at=None,
        finished_at=T0,
    )
    return cavra_classify_failure(connector, attempt).category


class TableType(FakeType):
    """A connector type that declares a classification table."""

    def __init__(self, name: str, classification: Any) -> None:
        super().__init__(name)
        self.classification = classification


class TablePlugin:
    def __init__(self, *types: FakeType, name: str = "table-types") -> None:
        self.types = types
        self.__name__ = name

    @hookimpl
    def cavra_register_connector_types(self):
        return list(self.types)


@pytest.fixture
def open_engine(make_engine):
    """An engine with inline table types, or the installed built-in plugins."""

    def factory(connectors: dict[str, Any], *types: FakeType) -> Engine:
        return make_engine(
            connectors,
            plugins=[TablePlugin(*types)] if types else [],
            load_entry_points=not types,
            clock=Clock(),
        )

    return factory


# -- a type's table overrides the default -----------------------------------------


def test_error_class_in_the_table_is_looked_up_first() -> None:
    """The error class wins over the status's own entry."""
    table = {"quota_exceeded": "throttle", "http:429": "permanent"}

    assert classify(429, "quota_exceeded", table=table) == "throttle"
    assert classify(429, table=table) == "permanent"


def test_exact_status_in_the_table_overrides_the_default() -> None:
    """http:404 read as transient, though the default reads 404 as permanent."""
    assert classify(404) == "permanent"

    assert classify(404, table={"http:404": "transient"}) == "transient"


def test_exact_status_wins_over_a_range() -> None:
    """http:503 beats http:500-599 whatever the order of the table."""
    table = {"http:500-599": "permanent", "http:503": "throttle"}

    assert classify(503, table=table) == "throttle"
    assert classify(500, table=table) == "permanent"


def test_narrowest_range_holding_the_status_wins() -> None:
    """Of two ranges holding 422, the narrower one decides."""
    table = {
        "http:400-499": "permanent",
        "http:420-429": "throttle",
        "http:500-599": "config",
    }

    assert classify(422, table=table) == "throttle"
    assert classify(404, table=table) == "permanent"
    assert classify(503, table=table) == "config"


def test_failures_the_table_does_not_list_fall_back_to_the_default() -> None:
    """A table naming only 410 leaves 401, 500 and timeouts to the default."""
    table = {"http:410": "receiver_stop"}

    assert classify(410, table=table) == "receiver_stop"
    assert classify(401, table=table) == "config"
    assert classify(500, table=table) == "transient"
    assert classify(None, "timeout", table=table) == "transient"


def test_table_entry_decides_the_plan(open_engine) -> None:
    """Through a plan: the type's http:404 = transient makes a 404 retryable."""
    engine = open_engine(
        {"hook-a": {"type": "lenient"}},
        TableType("lenient", {"http:404": "transient", "http:409-409": "config"}),
    )
    record(engine, T0, status=404, evidence=package("drill-1"))

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")


def test_table_range_decides_the_plan(open_engine) -> None:
    """Through a plan: a range reading 5xx as permanent suppresses a 502."""
    engine = open_engine(
        {"hook-a": {"type": "strict"}},
        TableType("strict", {"http:500-599": "permanent"}),
    )
    record(engine, T0, status=502)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("suppress", "permanent_failure")


# -- retryable_statuses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (500, "transient"),
        (502, "transient"),
        (503, "throttle"),
        (501, "permanent"),
        (429, "permanent"),
        (408, "permanent"),
        (404, "permanent"),
    ],
)
def test_retryable_statuses_decide_which_statuses_are_retried(status, category) -> None:
    """'500-599,!501': every listed status is retried, no unlisted one."""
    assert classify(status, retryable="500-599,!501") == category


def test_an_excluded_status_that_the_default_retries_becomes_permanent() -> None:
    """'500-599,!503' turns 503, throttle by default, into permanent."""
    assert classify(503) == "throttle"

    assert classify(503, retryable="500-599,!503") == "permanent"


def test_a_listed_status_is_retried_though_the_default_refuses_it() -> None:
    """Listing 404 makes it transient."""
    assert classify(404, retryable="404,500-599") == "transient"


def test_configuration_statuses_are_unaffected_unless_listed() -> None:
    """401 stays config when left out, and is retried only when listed."""
    assert classify(401, retryable="500-599") == "config"
    assert classify(302, "redirect", retryable="500-599") == "config"

    assert classify(401, retryable="401,500-599") == "transient"


def test_failures_with_a_success_status_are_unaffected_by_retryable_statuses() -> None:
    """An acknowledgement that never came (HTTP 200) is not about the status."""
    table = {"ack_timeout": "transient", "unreadable": "config"}

    assert classify(200, "ack_timeout", table=table, retryable="500") == "transient"
    assert classify(200, "unreadable", table=table, retryable="500") == "config"


def test_a_delivery_failing_with_a_success_status_keeps_its_class(
    open_engine,
) -> None:
    """Through a plan: an unconfirmed delivery answered 200 is still retried."""
    acking = TableType("acking", {"ack_timeout": "transient"})
    acking.script(DeliveryResult("failed", "ack_timeout", http_status=200))
    engine = open_engine(
        {"hook-a": {"type": "acking", "retryable_statuses": "500-599"}}, acking
    )
    engine.deliver_package(
        {"package": package(), "connectors": ["hook-a"], "generated_by": "rm"}
    )

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")


def test_transport_errors_are_unaffected_by_retryable_statuses() -> None:
    """retryable_statuses speaks about HTTP statuses only."""
    assert classify(None, "timeout", retryable="500") == "transient"
    assert classify(None, "tls_error", retryable="500") == "config"


def test_retryable_statuses_come_before_the_type_table() -> None:
    """The operator's list overrides what the connector type declares."""
    table = {"http:502": "throttle", "http:404": "transient"}

    assert classify(502, table=table, retryable="500,503") == "permanent"
    assert classify(404, table=table, retryable="500,503") == "transient"


def test_an_excluded_status_is_suppressed_in_the_plan(open_engine) -> None:
    """Through a plan: a 503 left out of retryable_statuses is suppressed."""
    engine = open_engine(
        {
            "hook-a": {"type": "fake", "retryable_statuses": "500-599,!501,!503"},
        },
        TableType("fake", {}),
    )
    record(engine, T0, status=503)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("suppress", "permanent_failure")


def test_a_listed_status_is_retried_in_the_plan(open_engine) -> None:
    """Through a plan: a 409 listed in retryable_statuses is retried."""
    engine = open_engine(
        {"hook-a": {"type": "fake", "retryable_statuses": ["409", "500-599"]}},
        TableType("fake", {}),
    )
    record(engine, T0, status=409)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("500-599,!501", set(range(500, 600)) - {501}),
        ("503", {503}),
        (" 500-502 , !501 ", {500, 502}),
        (["429", "500-504", "!502"], {429, 500, 501, 503, 504}),
        ([503, 504], {503, 504}),
        ("!503,503", {503}),
        ("500-599,!500-599", set()),
    ],
)
def test_status_ranges_are_read_left_to_right(value, expected) -> None:
    """Ranges add, exclusions remove what came before them."""
    assert parse_status_ranges(value, "key") == frozenset(expected)


@pytest.mark.parametrize(
    "value",
    [
        "5xx",
        "600",
        "099",
        "599-500",
        "500-599,abc",
        "",
        "500,,503",
        503,
        True,
        [],
        {"from": 500},
        "500;503",
    ],
)
def test_bad_retryable_statuses_are_refused_at_load_naming_the_key(
    open_engine, value
) -> None:
    """A value that is no status list stops start-up, naming the setting."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine(
            {"hook-a": {"type": "fake", "retryable_statuses": value}},
            TableType("fake", {}),
        )

    assert caught.value.key == "hook-a.retryable_statuses"
    assert "hook-a.retryable_statuses" in str(caught.value)


def test_retryable_statuses_change_the_configuration_fingerprint(
    open_engine,
) -> None:
    """Editing retryable_statuses is a configuration change like any other."""
    first = open_engine({"hook-a": {"type": "fake"}}, TableType("fake", {}))
    second = open_engine(
        {"hook-a": {"type": "fake", "retryable_statuses": "500-599"}},
        TableType("fake", {}),
    )

    assert (
        first.connectors.get("hook-a").fingerprint
        != second.connectors.get("hook-a").fingerprint
    )


# -- a broken connector type stops start-up --------------------------------------------


def test_invalid_category_in_a_type_table_stops_start_up_naming_the_type(
    open_engine,
) -> None:
    """'retry' is no category: the error names the type, the key and the fix."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine(
            {"hook-a": {"type": "broken"}},
            TableType("broken", {"http:503": "retry"}),
        )

    message = str(caught.value)
    assert "connector type broken" in message
    assert "'http:503'" in message and "'retry'" in message
    assert "receiver_stop" in message


def test_invalid_table_stops_start_up_even_without_a_connector_of_the_type(
    open_engine,
) -> None:
    """An installed type is checked whether or not a connector uses it."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine(
            {"hook-a": {"type": "fine"}},
            TableType("fine", {}),
            TableType("unused", {"timeout": "later"}),
        )

    assert "connector type unused" in str(caught.value)


@pytest.mark.parametrize(
    "table",
    [
        {"http:5xx": "transient"},
        {"http:599-500": "transient"},
        {"http:700": "transient"},
        {"Timeout": "transient"},
        [("http:503", "throttle")],
    ],
)
def test_malformed_table_stops_start_up_naming_the_type(open_engine, table) -> None:
    """Keys must be error classes, http:NNN or http:NNN-NNN, in a mapping."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine({"hook-a": {"type": "odd"}}, TableType("odd", table))

    assert "connector type odd" in str(caught.value)


class NoDeliverType:
    """Declares a type but forgot its deliver() method."""

    name = "silent"
    category = "webhook"

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        return None


def test_type_name_that_no_document_could_carry_stops_start_up(open_engine) -> None:
    """'drop-file' is refused at start-up instead of breaking GET connectors."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine({}, FakeType("drop-file"))

    assert "connector type drop-file" in str(caught.value)
    assert "lower-case letters, digits and '_'" in str(caught.value)


def test_type_without_a_deliver_method_stops_start_up(open_engine) -> None:
    """The required methods are checked when the plugin is loaded."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine({}, NoDeliverType())

    assert "connector type silent: has no deliver() method" in str(caught.value)


class CrashingSettingsType(FakeType):
    """A type whose settings check has a bug: it raises KeyError."""

    def validate_settings(self, connector_id: str, settings: dict[str, Any]) -> None:
        raise KeyError("url")


def test_settings_check_that_crashes_stops_start_up_naming_the_connector(
    open_engine,
) -> None:
    """A plugin raising anything but ConnectorConfigError is reported, not leaked."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine({"hook-a": {"type": "crashing"}}, CrashingSettingsType("crashing"))

    assert caught.value.key == "hook-a"
    assert "'crashing' connector plugin failed" in str(caught.value)
    assert "KeyError" in str(caught.value)


# -- the built-in types' tables, end to end ---------------------------------------

BUILT_IN = {
    "webhook": {"type": "webhook", "url": "https://hooks.example.com/cavra"},
    "hec": {
        "type": "hec",
        "url": "https://splunk.example.com:8088",
        "token_env": "CAVRA_TEST_HEC_TOKEN",
    },
    "syslog": {"type": "syslog", "host": "syslog.example.com", "transport": "tls"},
}


@pytest.mark.parametrize(
    ("type_name", "status", "error_class", "expected"),
    [
        ("webhook", 410, "http_status", ("suppress", "receiver_stop")),
        ("webhook", 502, "http_status", ("retry", "retry_due")),
        ("webhook", 401, "http_status", ("wait", "connector_paused")),
        ("webhook", 302, "redirect", ("wait", "connector_paused")),
        ("webhook", None, "invalid_event_id", ("suppress", "permanent_failure")),
        ("webhook", 404, "http_status", ("suppress", "permanent_failure")),
        ("hec", 400, "hec_incorrect_index", ("wait", "connector_paused")),
        ("hec", 403, "hec_invalid_token", ("wait", "connector_paused")),
        ("hec", 503, "hec_server_busy", ("retry", "retry_due")),
        ("hec", 400, "hec_invalid_data_format", ("suppress", "permanent_failure")),
        ("hec", 500, "hec_internal_error", ("retry", "retry_due")),
        ("hec", None, "ack_timeout", ("retry", "retry_due")),
        ("hec", None, "hec_unreadable_response", ("wait", "connector_paused")),
        ("hec", 429, "http_status", ("retry", "retry_due")),
        ("syslog", None, "message_too_large", ("wait", "connector_paused")),
        ("syslog", None, "tls_error", ("wait", "connector_paused")),
        ("syslog", None, "connection_reset", ("retry", "retry_due")),
    ],
)
def test_built_in_tables_decide_the_plan(
    open_engine, type_name, status, error_class, expected
) -> None:
    """Each built-in type's declared table reaches engine.plan_retries."""
    engine = open_engine({"target": BUILT_IN[type_name]})
    record(engine, T0, connector_id="target", status=status, error_class=error_class)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == expected


def test_webhook_410_disables_the_connector(open_engine) -> None:
    """The webhook table's receiver_stop disables its connector."""
    engine = open_engine({"target": BUILT_IN["webhook"]})

    record(engine, T0, connector_id="target", status=410)

    state = engine.get_connector("target")
    assert (state["state"], state["state_reason"]) == ("disabled", "receiver_stop")


def test_hec_incorrect_index_pauses_the_connector(open_engine) -> None:
    """A config class from the HEC table pauses, naming HEC's error class."""
    engine = open_engine({"target": BUILT_IN["hec"]})
    record(
        engine, T0, connector_id="target", status=400, error_class="hec_incorrect_index"
    )
    record(
        engine,
        T0 + MINUTE,
        connector_id="target",
        status=503,
        error_class="hec_server_busy",
        evidence=package("drill-2"),
    )

    decisions = {
        d["package_id"]: d
        for d in engine.iter_plan_decisions(
            engine.plan_retries({"generated_by": "rm"}, now=T0 + HOUR)["retry_plan_id"]
        )
    }

    assert {d["reason"] for d in decisions.values()} == {"connector_paused"}
    assert all(
        "hec_incorrect_index, HTTP 400" in d["explanation"] for d in decisions.values()
    )
    assert engine.get_connector("target")["state_error_class"] == "hec_incorrect_index"


@pytest.mark.parametrize(
    ("status", "error_class", "expected"),
    [
        (503, "hec_server_busy", ("suppress", "permanent_failure")),
        (400, "hec_incorrect_index", ("wait", "connector_paused")),
        (400, "hec_invalid_data_format", ("suppress", "permanent_failure")),
        (500, "hec_internal_error", ("retry", "retry_due")),
    ],
)
def test_retryable_statuses_override_hec_codes_only_where_the_status_retries(
    open_engine, status, error_class, expected
) -> None:
    """'500-502' drops HEC's busy 503 but leaves its 400 codes to the HEC table."""
    settings = {**BUILT_IN["hec"], "retryable_statuses": "500-502"}
    engine = open_engine({"target": settings})
    record(engine, T0, connector_id="target", status=status, error_class=error_class)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == expected


def test_syslog_does_not_honour_retry_after(open_engine) -> None:
    """The syslog type declares honours_retry_after = False."""
    syslog = open_engine({"target": BUILT_IN["syslog"]})
    record(
        syslog,
        T0,
        connector_id="target",
        status=None,
        error_class="connection_reset",
        retry_after="7200",
    )

    decision = only_decision(syslog, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("retry", "retry_due")
    assert parse(decision["not_before"]) == T0 + 15 * MINUTE


def test_webhook_honours_retry_after(open_engine) -> None:
    """The webhook type keeps the receiver's Retry-After."""
    webhook = open_engine({"target": BUILT_IN["webhook"]})
    record(webhook, T0, connector_id="target", status=503, retry_after="7200")

    decision = only_decision(webhook, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("wait", "retry_after_pending")
    assert parse(decision["not_before"]) == T0 + 2 * HOUR
