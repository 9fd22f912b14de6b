"""
Hook specifications: the whole contract between cavra and its plugins.

Every hook is named ``cavra_<verb>_<noun>``. Connector plugins implement them
with :data:`hookimpl`; the built-in default policy (``cavra_core.default_policy``)
implements them too and is registered last, so a connector plugin's answer for
its own type wins. Each hook receives only the arguments it names, so a plugin
may accept fewer parameters than are listed.

Call semantics are chosen per hook:

* ``firstresult`` hooks have one owner per question. The first non-``None``
  answer is used; a plugin returns ``None`` to say "not mine, ask the next".
* Combined hooks collect every plugin's answer; each plugin may only narrow or
  veto, never widen, what the others said.

A plugin that raises never fails a plan: the engine turns the exception into a
``suppress`` decision with reason ``plugin_error`` for that one lineage. Nor
does it fail a recovery playbook: that one connector gets the default steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pluggy

from cavra_core.redaction import RedactionRule
from cavra_core.types import (
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

PROJECT_NAME = "cavra"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cavra_register_connector_types() -> list[ConnectorType]:
    """
    Declare the connector types a plugin provides.

    Called once, when the plugin manager is built.

    :return: a list of objects following :class:`cavra_core.types.ConnectorType`.
        Combined over all plugins; two plugins declaring the same type name stop
        start-up with an error naming both.
    """


@hookspec(firstresult=True)
def cavra_classify_failure(
    connector: Connector, attempt: AttemptFacts
) -> FailureClassification | None:
    """
    Read one failed attempt the way the receiver meant it.

    Called for the latest attempt of failed lineages when plans and worker
    runs evaluate them and when an attempt is recorded. The answer must depend
    only on the connector and the attempt's ``error_class`` and
    ``http_status`` (a classification table): cavra caches it on those.

    :param connector: the configured connector the attempt went to.
    :param attempt: the facts of the failed attempt (status, error class,
        parsed ``Retry-After``).
    :return: a classification, or ``None`` to leave it to the next plugin (the
        default policy classifies by HTTP status and transport error).
    """


@hookspec(firstresult=True)
def cavra_decide_eligibility(
    connector: Connector,
    lineage: LineageFacts,
    classification: FailureClassification,
    policy: Any,
    now: datetime,
) -> Eligibility | None:
    """
    Decide whether a failed lineage may be retried at all, timing aside.

    Called after :func:`cavra_classify_failure` for every failed lineage.

    :param connector: the configured connector of the lineage.
    :param lineage: the lineage's facts (attempt count, ages, latest attempt).
    :param classification: the failure's classification.
    :param policy: the effective :class:`cavra_core.policy.RetryPolicy`.
    :param now: the evaluation time (UTC).
    :return: ``Eligibility(action="retry", ...)`` when the lineage may be
        retried (the schedule decides when), a ``wait`` or ``suppress``
        eligibility with a reason code otherwise, or ``None`` to defer to the
        next plugin.
    """


@hookspec(firstresult=True)
def cavra_schedule_retry(
    connector: Connector,
    lineage: LineageFacts,
    classification: FailureClassification,
    policy: Any,
    now: datetime,
) -> ScheduleWindow | None:
    """
    Compute when an eligible lineage may be retried.

    Called only for lineages that :func:`cavra_decide_eligibility` found
    eligible.

    :param connector: the configured connector of the lineage.
    :param lineage: the lineage's facts; ``lineage.latest`` is the failure.
    :param classification: the failure's classification (``honours_retry_after``
        says whether the receiver's ``Retry-After`` may lengthen the delay).
    :param policy: the effective :class:`cavra_core.policy.RetryPolicy`.
    :param now: the evaluation time (UTC); the window may lie before it.
    :return: the window (delay after the latest failure, lengthened by the
        receiver's ``Retry-After`` where honoured), or ``None`` to defer to the
        next plugin. The default applies exponential backoff with a cap.
    """


@hookspec
def cavra_narrow_window(
    connector: Connector, lineage: LineageFacts, window: ScheduleWindow
) -> ScheduleWindow | None:
    """
    Propose a later or shorter window, for example to keep out of a blackout.

    Called for every plugin after :func:`cavra_schedule_retry`. Combined: the
    engine intersects the proposals, taking the latest ``not_before`` and the
    earliest ``not_after`` among them, so any plugin can delay or shorten what
    another proposed. With no proposal the computed window stands. The default
    delivery calendar shifts a window past blackouts and outside allowed
    hours, keeping its length.

    :param connector: the configured connector of the lineage.
    :param lineage: the lineage's facts.
    :param window: the window computed by :func:`cavra_schedule_retry`, starting
        no earlier than the evaluation time.
    :return: a proposed window (``held_by="delivery_window"`` when it moved
        ``not_before``), or ``None`` for no opinion.
    """


@hookspec
def cavra_redaction_rules() -> list[RedactionRule]:
    """
    Add refusals to the redaction guard, for secrets only a plugin knows.

    Called by :meth:`cavra_core.plugins.PluginHost.redaction_rules`, whose
    answer is handed to :func:`cavra_core.redaction.check_inbound` and the
    scrubbing functions. Combined:
    every plugin's rules are applied after the built-in checks, so a plugin
    can refuse more (its receiver's token format, say) but never lift a
    built-in refusal. A plugin that raises is logged and its rules skipped.

    :return: a list of :class:`cavra_core.redaction.RedactionRule`, whose
        ``matches(key, value)`` must not raise and whose ``detail`` must not
        repeat the value; ``None`` or an empty list adds no rule.
    """


@hookspec(firstresult=True)
def cavra_recovery_steps(
    connector: Connector, failure_classes: Sequence[FailureCount]
) -> list[RecoveryStep] | None:
    """
    Say what an operator should do to bring a failing connector back.

    Called once per connector when a recovery playbook is made, for each
    connector with enough failed attempts within the playbook's lookback.
    ``firstresult``: the plugin that owns the connector's type answers with
    steps in its receiver's terms (the token to rotate, the index to check)
    and returns ``None`` for other types; the default policy answers last
    with generic steps by failure category. An answer replaces every later
    one, so a plugin answers for every kind of failure it is given.
    Implementations are asked one by one; wrappers are not applied. A plugin
    that raises or answers with anything but steps is skipped for that
    connector: its item gets the default steps and a note naming the plugin.

    :param connector: the configured connector, with its ``health`` (state
        ``active``, ``paused`` or ``disabled``, and what changed it).
    :param failure_classes: the kinds of failure within the lookback, most
        frequent first, as :class:`cavra_core.types.FailureCount` (error
        class, HTTP status, category, count and ``Retry-After`` facts).
    :return: a list of 1 to 20 :class:`cavra_core.types.RecoveryStep`, the
        most urgent first, with distinct codes; ``None`` or an empty list
        leaves the connector to the next plugin.
    """
