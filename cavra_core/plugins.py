"""
The plugin manager, and the one place in the core that calls hooks.

:func:`build_plugin_manager` assembles the manager in a fixed order: hook
specifications, blocked plugins (``CAVRA_DISABLED_PLUGINS``), entry points of
the group ``cavra``, plugins handed in by the caller, then the built-in default
policy, whose implementations are marked ``trylast`` so every connector plugin
is asked first. Finally every hook implementation is checked against its
specification, so a misspelt hook stops start-up instead of being ignored.

The rest of the core calls hooks only through :class:`PluginHost`, which turns
an exception raised by a plugin into :class:`PluginFailure`.
"""

from __future__ import annotations

import logging
import operator
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pluggy

from cavra_core import default_policy, hookspecs
from cavra_core.redaction import RedactionRule
from cavra_core.types import (
    ACTIONS,
    FAILURE_CATEGORIES,
    AttemptFacts,
    Connector,
    ConnectorType,
    Eligibility,
    FailureClassification,
    FailureCount,
    LineageFacts,
    RecoveryStep,
    ScheduleWindow,
)

log = logging.getLogger(__name__)

DISABLED_PLUGINS_VARIABLE = "CAVRA_DISABLED_PLUGINS"


_REASON = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
#: Bounds on a plugin's recovery steps: how many, and each text's length.
MAX_RECOVERY_STEPS = 20
_STEP_TITLE_LENGTH = 120
_STEP_DETAIL_LENGTH = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _is_window(window: object) -> bool:
    """A plugin's window: aware times, an integer delay."""
    if type(window) is ScheduleWindow:
        # PERF(plan): the answer below, without asking each time for its
        # offset, for the windows the default policy makes.
        not_before, not_after, delay_seconds, _ = window
        if (
            type(not_before) is datetime
            and not_before.tzinfo is UTC
            and type(not_after) is datetime
            and not_after.tzinfo is UTC
            and type(delay_seconds) is int
            and delay_seconds >= 0
        ):
            return True
    try:
        return (
            window.not_before.utcoffset() is not None
            and window.not_after.utcoffset() is not None
            and isinstance(window.delay_seconds, int)
            and window.delay_seconds >= 0
        )
    except AttributeError:
        return False


class PluginSetupError(RuntimeError):
    """The plugins cannot be assembled; the message names plugin and hook."""


class PluginFailure(Exception):
    """
    A plugin raised while answering ``hook``; the original is chained.

    ``plugin`` names the plugin when the host asked it alone, else None.
    """

    def __init__(
        self, hook: str, error: BaseException, plugin: str | None = None
    ) -> None:
        super().__init__(f"{hook} raised {type(error).__name__}")
        self.hook = hook
        self.error_type = type(error).__name__
        self.plugin = plugin


def build_plugin_manager(
    plugins: Iterable[object] = (),
    *,
    load_entry_points: bool = True,
    disabled: Iterable[str] | None = None,
) -> pluggy.PluginManager:
    """
    Build the plugin manager.

    :param plugins: extra plugin objects or modules, for embedding and tests.
    :param load_entry_points: also load installed plugins (group ``cavra``).
    :param disabled: plugin names to block; by default read from
        ``CAVRA_DISABLED_PLUGINS`` (comma-separated).
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)

    if disabled is None:
        disabled = os.environ.get(DISABLED_PLUGINS_VARIABLE, "").split(",")
    for name in disabled:
        if name.strip():
            manager.set_blocked(name.strip())

    try:
        if load_entry_points:
            manager.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
        for plugin in plugins:
            manager.register(plugin)
        manager.register(default_policy, name="cavra.default_policy")
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or getattr(exc.plugin, "__name__", "?")
        raise PluginSetupError(
            f"plugin {name!r} does not match cavra's hook specifications: {exc}. "
            "Check each hook's name and arguments against cavra_core.hookspecs."
        ) from exc
    except (ImportError, AttributeError) as exc:
        raise PluginSetupError(
            f"a plugin of the entry point group {hookspecs.PROJECT_NAME!r} cannot be "
            f"loaded ({type(exc).__name__}: {exc}); fix or uninstall it, or block "
            f"it with {DISABLED_PLUGINS_VARIABLE}"
        ) from exc
    return manager


class PluginHost:
    """The core's only caller of ``pm.hook``."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self._hook = manager.hook
        self._classifications: dict[tuple, FailureClassification] = {}
        self._plans = {
            name: _call_plan(getattr(manager.hook, name))
            or _pluggy_call(manager.hook, name)
            for name in (
                "cavra_classify_failure",
                "cavra_decide_eligibility",
                "cavra_schedule_retry",
                "cavra_narrow_window",
            )
        }
        # PERF(plan): the hooks asked for every lineage, bound once; their
        # methods call them as _call does, without its lookup and frame.
        self._decide = self._plans["cavra_decide_eligibility"]
        self._schedule = self._plans["cavra_schedule_retry"]
        self._narrow = self._plans["cavra_narrow_window"]
        # PERF(plan): the built-in default narrows a window only to keep it in
        # the connector's delivery calendar; when no other plugin implements
        # the hook, a connector without a schedule keeps its window unasked.
        narrowers = manager.hook.cavra_narrow_window.get_hookimpls()
        self._only_default_narrows = [impl.function for impl in narrowers] == [
            default_policy.cavra_narrow_window
        ]
        #: Reasons found well-formed so far, so that the pattern is matched
        #: once per reason rather than once per lineage.
        self._known_reasons: set[str] = set()

    def connector_types(self) -> dict[str, ConnectorType]:
        """Every declared connector type, by name; duplicates are an error."""
        found: dict[str, ConnectorType] = {}
        owners: dict[str, str] = {}
        for impl in self._hook.cavra_register_connector_types.get_hookimpls():
            try:
                declared = list(impl.function() or ())
            except Exception as exc:
                raise PluginSetupError(
                    f"plugin {impl.plugin_name!r} raised {type(exc).__name__} in "
                    "cavra_register_connector_types; fix or block it with "
                    f"{DISABLED_PLUGINS_VARIABLE}"
                ) from exc
            for connector_type in declared:
                name = getattr(connector_type, "name", None)
                if not isinstance(name, str) or not name:
                    raise PluginSetupError(
                        f"plugin {impl.plugin_name!r} declares a connector type "
                        "without a name; give the type a 'name' attribute"
                    )
                if name in found:
                    raise PluginSetupError(
                        f"connector type {name!r} is declared by both "
                        f"{owners[name]!r} and {impl.plugin_name!r}; block one "
                        f"with {DISABLED_PLUGINS_VARIABLE}"
                    )
                found[name] = connector_type
                owners[name] = impl.plugin_name
        return found

    def classify_failure(
        self, connector: Connector, attempt: AttemptFacts
    ) -> FailureClassification:
        """
        Classify one failure, once per connector configuration and failure kind.

        A classification is a connector type's table lookup: by contract it
        depends only on the connector and the attempt's error class and HTTP
        status, so it is cached on those.
        """
        key = (
            connector.connector_id,
            connector.fingerprint,
            attempt.error_class,
            attempt.http_status,
        )
        found = self._classifications.get(key)
        if found is None:
            found = self._call("cavra_classify_failure", (connector, attempt))
            if getattr(found, "category", None) not in FAILURE_CATEGORIES:
                raise PluginFailure(
                    "cavra_classify_failure", TypeError("not a known failure category")
                )
            if len(self._classifications) > 4096:
                self._classifications.clear()
            self._classifications[key] = found
        return found

    def decide_eligibility(
        self,
        connector: Connector,
        lineage: LineageFacts,
        classification: FailureClassification,
        policy: Any,
        now: datetime,
    ) -> Eligibility:
        try:
            answer = self._decide(connector, lineage, classification, policy, now)
        except Exception as exc:
            raise _plugin_failure("cavra_decide_eligibility", exc) from exc
        if answer is None:
            raise _unanswered("cavra_decide_eligibility")
        if not self._is_eligibility(answer):
            raise PluginFailure(
                "cavra_decide_eligibility", TypeError("not a well-formed eligibility")
            )
        return answer

    def _is_eligibility(self, answer: object) -> bool:
        """An action, a reason code and an explanation of 1 to 1000 characters."""
        if type(answer) is Eligibility:
            # PERF(plan): the answer below, for a reason already matched.
            action, reason, explanation = answer
            if (
                action in ACTIONS
                and type(reason) is str
                and reason in self._known_reasons
                and type(explanation) is str
                and 0 < len(explanation) <= 1000
            ):
                return True
        well_formed = (
            getattr(answer, "action", None) in ACTIONS
            and isinstance(answer.reason, str)
            and _REASON.match(answer.reason) is not None
            and isinstance(answer.explanation, str)
            and 0 < len(answer.explanation) <= 1000
        )
        if (
            well_formed
            and type(answer.reason) is str
            and len(self._known_reasons) < 1024
        ):
            self._known_reasons.add(answer.reason)
        return well_formed

    def schedule_retry(
        self,
        connector: Connector,
        lineage: LineageFacts,
        classification: FailureClassification,
        policy: Any,
        now: datetime,
    ) -> ScheduleWindow:
        try:
            window = self._schedule(connector, lineage, classification, policy, now)
        except Exception as exc:
            raise _plugin_failure("cavra_schedule_retry", exc) from exc
        if window is None:
            raise _unanswered("cavra_schedule_retry")
        if not _is_window(window):
            raise PluginFailure(
                "cavra_schedule_retry", TypeError("not a window of aware times")
            )
        return window

    def narrow_window(
        self, connector: Connector, lineage: LineageFacts, window: ScheduleWindow
    ) -> ScheduleWindow:
        """Intersect every plugin's proposal; with none, ``window`` stands."""
        if self._only_default_narrows and not connector.schedule:
            return window
        try:
            proposals = self._narrow(connector, lineage, window)
        except Exception as exc:
            raise _plugin_failure("cavra_narrow_window", exc) from exc
        if proposals is None:
            raise _unanswered("cavra_narrow_window")
        if type(proposals) is list and not proposals:
            return window  # PERF(plan): the common answer, with nothing to check
        proposals = [proposal for proposal in proposals if proposal is not None]
        if not all(_is_window(proposal) for proposal in proposals):
            raise PluginFailure(
                "cavra_narrow_window", TypeError("not a window of aware times")
            )
        if not proposals:
            return window
        latest = max(proposals, key=lambda proposal: proposal.not_before)
        # Proposals may only delay or shorten: never open earlier than computed.
        return ScheduleWindow(
            not_before=max(latest.not_before, window.not_before),
            not_after=min(proposal.not_after for proposal in proposals),
            delay_seconds=window.delay_seconds,
            held_by=latest.held_by
            if latest.not_before > window.not_before
            else window.held_by,
        )

    def recovery_steps(
        self, connector: Connector, failure_classes: Sequence[FailureCount]
    ) -> list[RecoveryStep]:
        """
        The recovery steps for one failing connector, from the first plugin
        that answers (see :func:`cavra_core.hookspecs.cavra_recovery_steps`).

        Implementations are asked one at a time, in pluggy's order, so that a
        failure can name its plugin.

        Raises:
            PluginFailure: naming the plugin that raised or answered with
                anything but well-formed steps; the caller falls back to
                :meth:`default_recovery_steps` for this connector.
        """
        name = "cavra_recovery_steps"
        arguments = {"connector": connector, "failure_classes": tuple(failure_classes)}
        for impl in reversed(self._hook.cavra_recovery_steps.get_hookimpls()):
            try:
                answer = impl.function(**{key: arguments[key] for key in impl.argnames})
            except Exception as exc:
                log.warning(
                    "plugin raised hook=%s plugin=%s error=%s",
                    name,
                    impl.plugin_name,
                    type(exc).__name__,
                )
                log.debug("plugin traceback plugin=%s", impl.plugin_name, exc_info=True)
                raise PluginFailure(name, exc, impl.plugin_name) from exc
            if answer is None or (isinstance(answer, list | tuple) and not answer):
                continue
            steps = _well_formed_steps(answer)
            if steps is None:
                log.warning(
                    "plugin answered malformed steps hook=%s plugin=%s",
                    name,
                    impl.plugin_name,
                )
                raise PluginFailure(
                    name, TypeError("not a list of recovery steps"), impl.plugin_name
                )
            return steps
        raise PluginFailure(name, LookupError("no plugin answered"))

    def default_recovery_steps(
        self, connector: Connector, failure_classes: Sequence[FailureCount]
    ) -> list[RecoveryStep]:
        """The built-in default's steps, asked directly: the fallback."""
        return default_policy.cavra_recovery_steps(connector, tuple(failure_classes))

    def _call(self, name: str, args: tuple) -> Any:
        """
        Call hook ``name`` with ``args``, in the order of its specification.

        A plugin's exception becomes :class:`PluginFailure`; so does a
        ``firstresult`` hook that nobody answered.
        """
        plan = self._plans.get(name) or _pluggy_call(self._hook, name)
        try:
            result = plan(*args)
        except Exception as exc:
            raise _plugin_failure(name, exc) from exc
        if result is None:
            raise _unanswered(name)
        return result

    def redaction_rules(self) -> list[RedactionRule]:
        """
        Every plugin's redaction rules, flattened, in hook order.

        A plugin that raises, or answers with something other than rules, is
        logged and skipped rather than turned into :class:`PluginFailure`:
        the built-in guard still runs, the other plugins' rules still apply,
        and one broken plugin does not turn every request into an error.
        """
        rules: list[RedactionRule] = []
        hook = self._hook.cavra_redaction_rules
        for impl in reversed(hook.get_hookimpls()):
            try:
                answer = list(impl.function() or ())
            except Exception as exc:
                log.warning(
                    "plugin raised hook=cavra_redaction_rules plugin=%s error=%s",
                    impl.plugin_name,
                    type(exc).__name__,
                )
                log.debug("plugin traceback plugin=%s", impl.plugin_name, exc_info=True)
                continue
            for rule in answer:
                if isinstance(rule, RedactionRule):
                    rules.append(rule)
                else:
                    log.warning(
                        "plugin answered a non-rule hook=cavra_redaction_rules "
                        "plugin=%s type=%s",
                        impl.plugin_name,
                        type(rule).__name__,
                    )
        return rules


def _well_formed_steps(answer: Any) -> list[RecoveryStep] | None:
    """``answer`` as recovery steps, or None when it breaks the hook's contract."""
    if not isinstance(answer, list | tuple) or len(answer) > MAX_RECOVERY_STEPS:
        return None
    steps = []
    for item in answer:
        code = getattr(item, "code", None)
        title = getattr(item, "title", None)
        detail = getattr(item, "detail", None)
        well_formed = (
            isinstance(code, str)
            and _REASON.fullmatch(code) is not None
            and _is_step_text(title, _STEP_TITLE_LENGTH)
            and _is_step_text(detail, _STEP_DETAIL_LENGTH)
        )
        if not well_formed:
            return None
        steps.append(RecoveryStep(code, title, detail))
    if len({step.code for step in steps}) != len(steps):
        return None
    return steps


def _is_step_text(text: Any, limit: int) -> bool:
    return (
        isinstance(text, str)
        and 0 < len(text.strip()) <= limit
        and len(text) <= limit
        and _CONTROL.search(text) is None
    )


def _plugin_failure(name: str, error: Exception) -> PluginFailure:
    """Log a plugin's exception (its traceback at debug) and wrap it."""
    log.warning("plugin raised hook=%s error=%s", name, type(error).__name__)
    log.debug("plugin traceback hook=%s", name, exc_info=True)
    return PluginFailure(name, error)


def _unanswered(name: str) -> PluginFailure:
    # The built-in default answers every firstresult hook.
    return PluginFailure(name, LookupError("no plugin answered"))


def _pluggy_call(hooks: Any, name: str) -> Callable[..., Any]:
    """Call hook ``name`` through pluggy, with the specification's arguments."""

    def call(*args: Any) -> Any:
        caller = getattr(hooks, name)
        return caller(**dict(zip(caller.spec.argnames, args, strict=True)))

    return call


def _call_plan(caller: pluggy.HookCaller) -> Callable[..., Any] | None:
    """
    A direct caller for a hook without wrappers, or None to use pluggy's own.

    PERF(plan): a plan asks three or four hooks for every failed lineage, and
    pluggy's general call loop (keyword arguments, wrappers, argument checks)
    costs more than the default policy's answer. Without wrappers the loop is
    simple: implementations in pluggy's order (last registered first,
    ``tryfirst``/``trylast`` honoured by ``get_hookimpls``), each given only
    the arguments it names, picked by position from the arguments in the
    specification's order; the first non-None answer for ``firstresult``
    hooks, else every answer. The caller takes the arguments in the
    specification's order; a hook whose only implementation names them all
    is its implementation itself.
    """
    impls = caller.get_hookimpls()
    if caller.spec is None or any(
        impl.hookwrapper or impl.wrapper or impl.kwargnames for impl in impls
    ):
        return None
    names = caller.spec.argnames
    steps = [
        _positional(impl.function, tuple(map(names.index, impl.argnames)), len(names))
        for impl in reversed(impls)
    ]
    if caller.spec.opts.get("firstresult"):
        if len(steps) == 1:
            return steps[0]

        def first(*args: Any) -> Any:
            for step in steps:
                result = step(*args)
                if result is not None:
                    return result
            return None

        return first

    def every(*args: Any) -> list[Any]:
        results = []
        for step in steps:
            result = step(*args)
            if result is not None:
                results.append(result)
        return results

    return every


def _positional(
    function: Callable[..., Any], positions: tuple[int, ...], arity: int
) -> Callable[..., Any]:
    """Call ``function`` with the arguments at ``positions`` of a call's."""
    if positions == tuple(range(arity)):
        return function
    if not positions:
        return lambda *args: function()
    if len(positions) == 1:
        (only,) = positions
        return lambda *args: function(args[only])
    pick = operator.itemgetter(*positions)
    return lambda *args: function(*pick(args))
