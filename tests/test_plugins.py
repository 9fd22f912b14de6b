"""Plugins: start-up checks, blocking, connector overrides and hook order."""

from __future__ import annotations

import ast
import functools
import inspect
from datetime import datetime, timedelta, timezone

import pytest
from plugins_fixtures import (
    T0,
    Clock,
    FakePlugin,
    FakeType,
    attempt,
    only_decision,
    package,
    parse,
    record_failure,
)

from cavra_core import (
    ConnectorConfigError,
    Eligibility,
    Engine,
    FailureClassification,
    InvalidInput,
    ScheduleWindow,
    default_policy,
    hookimpl,
    hookspecs,
)
from cavra_core.engine import package_hash
from cavra_core.plugins import (
    PluginFailure,
    PluginHost,
    PluginSetupError,
    _is_window,
    build_plugin_manager,
)
from cavra_core.redaction import RedactionRule
from cavra_core.types import FailureCount, RecoveryStep

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
HOOK_NAMES = sorted(
    name
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if name.startswith("cavra_")
)
#: Hooks asked while a failure is recorded and decided on.
DECISION_HOOKS = [
    name
    for name in HOOK_NAMES
    if name
    not in (
        "cavra_register_connector_types",
        "cavra_redaction_rules",
        "cavra_recovery_steps",
    )
]


# -- tiny inline plugins ----------------------------------------------------------


class TicketNumberRule:
    """Adds a redaction rule: internal ticket numbers never enter evidence."""

    @hookimpl
    def cavra_redaction_rules(self):
        return [
            RedactionRule(
                "ticket",
                "internal_ticket",
                lambda key, value: value.startswith("TICKET-"),
            )
        ]


class MisspeltHookPlugin:
    """Implements a hook name that no specification declares."""

    @hookimpl
    def cavra_clasify_failure(self, connector, attempt):
        return None


class UnknownArgumentPlugin:
    """Implements a real hook but asks for an argument the hook does not pass."""

    @hookimpl
    def cavra_classify_failure(self, connector, attempt, receiver):
        return None


class ConnectorTypesPlugin:
    """Declares connector types under a plugin name of its own choosing."""

    def __init__(self, name: str, *type_names: str) -> None:
        self.__name__ = name
        self.type_names = type_names

    @hookimpl
    def cavra_register_connector_types(self):
        return [FakeType(type_name) for type_name in self.type_names]


class StrictReceiverPlugin:
    """The ``strict`` type's receivers never recover from a 503."""

    @hookimpl
    def cavra_register_connector_types(self):
        return [FakeType("strict")]

    @hookimpl
    def cavra_classify_failure(self, connector, attempt):
        if connector.type != "strict":
            return None
        if attempt.http_status == 503:
            return FailureClassification(
                "http_status", "permanent", note="the receiver is gone"
            )
        return None


class MalformedAnswersPlugin:
    """Answers for the ``sloppy`` type with documents cavra cannot use."""

    @hookimpl
    def cavra_register_connector_types(self):
        return [FakeType("sloppy")]

    @hookimpl
    def cavra_decide_eligibility(self, connector):
        if connector.type != "sloppy":
            return None
        return Eligibility("hold", "Not A Code", "")


class ScriptedEligibilityPlugin:
    """Answers every eligibility question with ``answer``, whatever it is."""

    def __init__(self) -> None:
        self.answer: object = None

    @hookimpl
    def cavra_decide_eligibility(self):
        return self.answer


class ReasonText(str):
    """A reason code that is a string, but not exactly a ``str``."""


class QuietHoursPlugin:
    """Delays every window by two hours and keeps it at most one hour long."""

    @hookimpl
    def cavra_narrow_window(self, connector, lineage, window):
        start = window.not_before + 2 * HOUR
        return ScheduleWindow(
            start, start + HOUR, window.delay_seconds, held_by="delivery_window"
        )


class EagerWindowPlugin:
    """Proposes a window opening ten minutes before the one it was given."""

    @hookimpl
    def cavra_narrow_window(self, connector, lineage, window):
        return ScheduleWindow(
            window.not_before - 10 * MINUTE,
            window.not_after,
            window.delay_seconds,
            held_by="delivery_window",
        )


class FixedScheduleRetryPlugin:
    """Schedules every retry exactly one hour after the latest failure."""

    @hookimpl
    def cavra_schedule_retry(self, connector, lineage, classification, policy, now):
        due = lineage.latest.finished_at + HOUR
        return ScheduleWindow(due, due + 2 * HOUR, 3600, held_by="delay")


class DeferringEligibilityPlugin:
    """Has no opinion on eligibility, but remembers being asked."""

    def __init__(self) -> None:
        self.asked = 0

    @hookimpl
    def cavra_decide_eligibility(self, connector, lineage, classification, policy, now):
        self.asked += 1
        return None


class VendorStepsPlugin:
    """Gives the ``fake`` type's recovery steps: call the vendor."""

    @hookimpl
    def cavra_recovery_steps(self, connector, failure_classes):
        if connector.type != "fake":
            return None
        return [RecoveryStep("call_vendor", "Call the vendor", "Ring them.")]


class CallRecorder:
    """Answers no hook, recording the order in which it is asked."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def cavra_classify_failure(self, connector, attempt):
        self.calls.append("plugin:cavra_classify_failure")

    @hookimpl
    def cavra_decide_eligibility(self, connector, lineage, classification, policy, now):
        self.calls.append("plugin:cavra_decide_eligibility")

    @hookimpl
    def cavra_schedule_retry(self, connector, lineage, classification, policy, now):
        self.calls.append("plugin:cavra_schedule_retry")

    @hookimpl
    def cavra_narrow_window(self, connector, lineage, window):
        self.calls.append("plugin:cavra_narrow_window")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_engine(sqlite_url, clock):
    """Engines on one SQLite store: plugin machinery does not vary by backend."""
    opened: list[Engine] = []

    def factory(*plugins, connectors=None, **options):
        options.setdefault("load_entry_points", False)
        engine = Engine(
            sqlite_url,
            connectors if connectors is not None else {"hook-a": {"type": "fake"}},
            plugins=[FakePlugin(name="fake-connectors"), *plugins],
            clock=clock,
            **options,
        )
        opened.append(engine)
        return engine

    yield factory
    for engine in opened:
        engine.close()


# -- start-up ---------------------------------------------------------------------


def test_misspelt_hook_name_stops_start_up_naming_plugin_and_hook(open_engine) -> None:
    """An implementation of no known hook is an error, not silently ignored."""
    with pytest.raises(PluginSetupError) as caught:
        open_engine(MisspeltHookPlugin())

    message = str(caught.value)
    assert "MisspeltHookPlugin" in message
    assert "cavra_clasify_failure" in message


def test_hook_asking_for_an_unknown_argument_stops_start_up_cleanly(
    open_engine,
) -> None:
    """A wrong argument name is a setup error naming plugin and hook too."""
    with pytest.raises(PluginSetupError) as caught:
        open_engine(UnknownArgumentPlugin())

    assert "cavra_classify_failure" in str(caught.value)


def test_disabled_plugin_is_not_registered(open_engine) -> None:
    """disabled_plugins blocks a plugin by name, so its types are unknown."""
    engine = open_engine(
        ConnectorTypesPlugin("extra-types", "extra"),
        connectors={},
        disabled_plugins=["extra-types"],
    )

    assert "extra" not in engine.connector_types
    assert "fake" in engine.connector_types


def test_connectors_of_a_disabled_plugin_cannot_be_configured(open_engine) -> None:
    """With its plugin blocked, a connector's type is unknown, naming the key."""
    with pytest.raises(ConnectorConfigError) as caught:
        open_engine(disabled_plugins=["fake-connectors"])

    assert caught.value.key == "hook-a.type"


def test_environment_variable_blocks_plugins(open_engine, monkeypatch) -> None:
    """CAVRA_DISABLED_PLUGINS is a comma-separated list of plugin names."""
    monkeypatch.setenv("CAVRA_DISABLED_PLUGINS", "nothing-here, extra-types")

    engine = open_engine(ConnectorTypesPlugin("extra-types", "extra"), connectors={})

    assert "extra" not in engine.connector_types


def test_built_in_entry_point_plugin_can_be_blocked(open_engine) -> None:
    """The installed webhook plugin is an ordinary plugin: blocking it works."""
    engine = open_engine(
        connectors={}, load_entry_points=True, disabled_plugins=["webhook"]
    )

    assert "webhook" not in engine.connector_types


def test_two_plugins_declaring_one_type_stop_start_up(open_engine) -> None:
    """A connector type has one owner; the error names both plugins."""
    with pytest.raises(PluginSetupError) as caught:
        open_engine(ConnectorTypesPlugin("second-fake", "fake"))

    message = str(caught.value)
    assert "'fake'" in message
    assert "fake-connectors" in message and "second-fake" in message


# -- connector overrides ----------------------------------------------------------


def test_connector_plugin_classifies_failures_of_its_own_type(open_engine) -> None:
    """The strict type reads 503 as permanent; the fake type keeps the default."""
    engine = open_engine(
        StrictReceiverPlugin(),
        connectors={"hook-a": {"type": "fake"}, "hook-s": {"type": "strict"}},
    )
    evidence = package()
    package_id = package_hash(evidence)

    result = engine.record_attempts(
        {
            "packages": [evidence],
            "attempts": [
                attempt(package_id, T0, connector_id="hook-a", status=503),
                attempt(package_id, T0, connector_id="hook-s", status=503),
            ],
        },
        now=T0,
    )

    states = {a["connector_id"]: a["lineage_state"] for a in result["attempts"]}
    assert states == {"hook-a": "failed", "hook-s": "suppressed"}


def test_worker_retries_only_the_type_that_kept_the_default(open_engine) -> None:
    """The 503 to the strict type is not selected; the fake type's 503 is."""
    engine = open_engine(
        StrictReceiverPlugin(),
        connectors={"hook-a": {"type": "fake"}, "hook-s": {"type": "strict"}},
    )
    record_failure(engine, T0, connector_id="hook-a")
    record_failure(engine, T0, connector_id="hook-s")

    run = engine.run_worker({"generated_by": "platform"}, now=T0 + 20 * MINUTE)

    assert [s["connector_id"] for s in run["selected_retries"]] == ["hook-a"]
    assert run["summary"]["suppressed_count"] == 1


def test_a_malformed_plugin_answer_is_a_plugin_error_for_that_lineage(
    open_engine,
) -> None:
    """An unknown action or reason from a plugin is suppressed, not a crash."""
    engine = open_engine(
        MalformedAnswersPlugin(),
        connectors={"hook-a": {"type": "fake"}, "hook-s": {"type": "sloppy"}},
    )
    record_failure(engine, T0, connector_id="hook-a")
    record_failure(engine, T0, connector_id="hook-s")

    plan = engine.plan_retries({"generated_by": "rm"}, now=T0 + 20 * MINUTE)
    decisions = {
        d["connector_id"]: (d["action"], d["reason"])
        for d in engine.iter_plan_decisions(plan["retry_plan_id"])
    }

    assert decisions == {
        "hook-a": ("retry", "retry_due"),
        "hook-s": ("suppress", "plugin_error"),
    }


def test_narrow_window_plugin_delays_the_retry(open_engine) -> None:
    """A plugin's later not_before holds the retry as outside its window."""
    engine = open_engine(QuietHoursPlugin())
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert (decision["action"], decision["reason"]) == (
        "wait",
        "outside_delivery_window",
    )
    assert parse(decision["not_before"]) == T0 + 20 * MINUTE + 2 * HOUR


def test_narrow_window_plugin_shortens_the_window(open_engine) -> None:
    """The earliest not_after among the proposals closes the window."""
    engine = open_engine(QuietHoursPlugin())
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert parse(decision["not_after"]) - parse(decision["not_before"]) == HOUR


def test_narrow_window_plugin_cannot_open_the_window_early(open_engine) -> None:
    """Narrowing may only delay: a proposal before the delay is ignored."""
    engine = open_engine(EagerWindowPlugin())
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 10 * MINUTE)

    assert (decision["action"], decision["reason"]) == ("wait", "delay_not_elapsed")
    assert parse(decision["not_before"]) == T0 + 15 * MINUTE


def test_plugin_schedule_wins_over_the_default_backoff(open_engine) -> None:
    """A plugin answering cavra_schedule_retry is used before the default."""
    engine = open_engine(FixedScheduleRetryPlugin())
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert parse(decision["not_before"]) == T0 + HOUR
    assert decision["retry_delay_seconds"] == 3600


def test_plugin_deferring_eligibility_leaves_it_to_the_default(open_engine) -> None:
    """Returning None from cavra_decide_eligibility asks the next plugin."""
    deferring = DeferringEligibilityPlugin()
    engine = open_engine(deferring)
    record_failure(engine, T0)

    decision = only_decision(engine, T0 + 20 * MINUTE)

    assert deferring.asked == 2
    assert (decision["reason"], decision["max_retry_attempts"]) == ("retry_due", 3)


ELIGIBLE = Eligibility("suppress", "custom_reason", "Held back by the plugin.")


@pytest.mark.parametrize(
    ("answer", "well_formed"),
    [
        (ELIGIBLE, True),
        (ELIGIBLE._replace(explanation=""), False),
        (ELIGIBLE._replace(explanation="x" * 1001), False),
        (ELIGIBLE._replace(explanation=b"bytes"), False),
        (ELIGIBLE._replace(action="hold"), False),
        (ELIGIBLE._replace(reason="Custom Reason"), False),
        (ELIGIBLE._replace(reason=ReasonText("custom_reason")), True),
        (ELIGIBLE._replace(reason=ReasonText("Not A Code")), False),
        (ELIGIBLE._replace(reason=["custom_reason"]), False),
        (("suppress", "custom_reason", "A plain tuple has no fields."), False),
    ],
)
def test_every_eligibility_answer_is_checked_after_a_well_formed_one(
    answer: object, well_formed: bool
) -> None:
    """A reason already seen well-formed does not let a malformed answer by."""
    plugin = ScriptedEligibilityPlugin()
    host = PluginHost(build_plugin_manager([plugin], load_entry_points=False))
    plugin.answer = ELIGIBLE
    host.decide_eligibility(None, None, None, None, T0)

    plugin.answer = answer
    if well_formed:
        assert host.decide_eligibility(None, None, None, None, T0) is answer
    else:
        with pytest.raises(PluginFailure, match="cavra_decide_eligibility"):
            host.decide_eligibility(None, None, None, None, T0)


def _full_window_check(window: object) -> bool:
    """What a window must be, checked the long way."""
    try:
        return (
            window.not_before.utcoffset() is not None
            and window.not_after.utcoffset() is not None
            and isinstance(window.delay_seconds, int)
            and window.delay_seconds >= 0
        )
    except AttributeError:
        return False


class LooseWindow:
    """A window-shaped object that is not a ScheduleWindow."""

    def __init__(self, not_before, not_after, delay_seconds) -> None:
        self.not_before = not_before
        self.not_after = not_after
        self.delay_seconds = delay_seconds


NAIVE = datetime(2026, 1, 5, 9, 0)
PLUS_FIVE = timezone(timedelta(hours=5))


@pytest.mark.parametrize(
    "window",
    [
        ScheduleWindow(T0, T0 + HOUR, 900),
        ScheduleWindow(T0, T0 + HOUR, 0, "retry_after"),
        ScheduleWindow(T0.astimezone(PLUS_FIVE), T0 + HOUR, 900),
        ScheduleWindow(NAIVE, T0 + HOUR, 900),
        ScheduleWindow(T0, NAIVE, 900),
        ScheduleWindow(T0, T0 + HOUR, -1),
        ScheduleWindow(T0, T0 + HOUR, 1.0),
        ScheduleWindow(T0, T0 + HOUR, True),
        ScheduleWindow("2026-01-05T09:00:00Z", T0 + HOUR, 900),
        LooseWindow(T0, T0 + HOUR, 900),
        LooseWindow(NAIVE, NAIVE, 900),
        object(),
    ],
)
def test_the_quick_window_check_gives_the_full_checks_answer(window) -> None:
    assert _is_window(window) == _full_window_check(window)


# -- hook order -------------------------------------------------------------------


def test_default_policy_is_asked_after_every_connector_plugin(
    open_engine, monkeypatch
) -> None:
    """For each decision hook, the built-in default is asked after the plugin."""
    calls: list[str] = []
    for name in DECISION_HOOKS:
        original = getattr(default_policy, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(f"default:{_name}")
            return _original(*args, **kwargs)

        monkeypatch.setattr(default_policy, name, functools.wraps(original)(spy))
    engine = open_engine(CallRecorder(calls))

    record_failure(engine, T0)

    for name in DECISION_HOOKS:
        assert calls.index(f"plugin:{name}") < calls.index(f"default:{name}")


def test_a_plugin_gives_the_recovery_steps_of_its_own_type(open_engine) -> None:
    """cavra_recovery_steps: the type's plugin answers before the default."""
    engine = open_engine(VendorStepsPlugin())
    connector = engine.connectors.get("hook-a")
    failures = [FailureCount("http_status", 401, "config", 2)]

    steps = engine.hooks.recovery_steps(connector, failures)

    assert [step.code for step in steps] == ["call_vendor"]
    assert engine.hooks.default_recovery_steps(connector, failures)[0].code == (
        "refresh_credential"
    )


def test_default_policy_implementations_are_marked_trylast(open_engine) -> None:
    """Plugins registered later still come first: the defaults are trylast."""
    engine = open_engine()

    for name in [*DECISION_HOOKS, "cavra_recovery_steps"]:
        impls = getattr(engine.plugin_manager.hook, name).get_hookimpls()
        assert impls[0].plugin_name == "cavra.default_policy"
        assert impls[0].trylast


# -- the hook contract ------------------------------------------------------------


def test_every_hook_has_a_docstring_saying_when_and_what_it_returns() -> None:
    """Each spec says when it is called and what it returns."""
    for name in HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""

        assert "Called" in doc, name
        assert ":return:" in doc, name


def test_every_hook_parameter_is_documented() -> None:
    """DESIGN.md: each hook documents each of its parameters."""
    missing = [
        f"{name}({parameter})"
        for name in HOOK_NAMES
        for parameter in inspect.signature(getattr(hookspecs, name)).parameters
        if f":param {parameter}:" not in (getattr(hookspecs, name).__doc__ or "")
    ]

    assert missing == []


def test_a_plugin_redaction_rule_refuses_matching_input(tmp_path) -> None:
    """A plugin's rule joins the built-in guard for every request."""
    engine = Engine(
        f"sqlite:///{tmp_path}/cavra.db",
        {},
        plugins=[TicketNumberRule()],
        load_entry_points=False,
    )

    with pytest.raises(InvalidInput) as caught:
        engine.plan_retries({"generated_by": "TICKET-4711"})

    assert [(p.pointer, p.reason) for p in caught.value.problems] == [
        ("/generated_by", "internal_ticket")
    ]
    engine.close()


def test_every_hook_is_exercised_by_a_test_in_this_module() -> None:
    """Meta-test: some test here uses a plugin class implementing each hook."""
    with open(__file__, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    hooks_by_class = {
        node.name: {
            item.name
            for item in node.body
            if isinstance(item, ast.FunctionDef) and item.name.startswith("cavra_")
        }
        for node in tree.body
        if isinstance(node, ast.ClassDef)
    }
    exercised: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            for name in ast.walk(node):
                if isinstance(name, ast.Name) and name.id in hooks_by_class:
                    exercised |= hooks_by_class[name.id]

    assert sorted(set(HOOK_NAMES) - exercised) == []
