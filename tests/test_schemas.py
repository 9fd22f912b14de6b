"""The JSON Schemas in ``schemas/``: well-formed, linked, documented and strict."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from cavra_core.redaction import MAX_TEXT_LENGTH

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
BASE = "https://cavra.dev/schemas/"
INDEX = json.loads((SCHEMA_DIR / "index.json").read_text(encoding="utf-8"))
SCHEMAS: dict[str, dict[str, Any]] = {
    path.name: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted(SCHEMA_DIR.glob("*.json"))
    if path.name != "index.json"
}
REGISTRY: Registry = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
    for schema in SCHEMAS.values()
)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        SCHEMAS[name],
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def subschemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every schema object below ``node`` with a readable location."""
    if not isinstance(node, dict):
        return
    yield where, node
    for key in ("properties", "$defs"):
        for name, child in node.get(key, {}).items():
            yield from subschemas(child, f"{where}/{key}/{name}")
    if "items" in node:
        yield from subschemas(node["items"], f"{where}/items")
    for key in ("anyOf", "oneOf", "allOf"):
        for number, child in enumerate(node.get(key, [])):
            yield from subschemas(child, f"{where}/{key}/{number}")


def types_of(node: dict[str, Any]) -> set[str]:
    declared = node.get("type", [])
    return {declared} if isinstance(declared, str) else set(declared)


# ---- the files themselves ---------------------------------------------------


def test_index_lists_exactly_the_schema_files() -> None:
    assert "$schema" not in INDEX
    assert sorted(INDEX.values()) == sorted(SCHEMAS)
    assert len(set(INDEX.values())) == len(INDEX)
    for file in INDEX.values():
        assert (SCHEMA_DIR / file).is_file(), file


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == BASE + name
    assert schema["title"] and schema["description"]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_ref_resolves(name: str) -> None:
    resolver = REGISTRY.resolver(base_uri=SCHEMAS[name]["$id"])
    refs = [node["$ref"] for _, node in subschemas(SCHEMAS[name]) if "$ref" in node]
    for ref in refs:
        assert "://" not in ref, f"{name}: use a relative reference, not {ref}"
        assert isinstance(resolver.lookup(ref).contents, dict), ref


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_objects_are_closed_and_everything_is_documented(name: str) -> None:
    for where, node in subschemas(SCHEMAS[name]):
        if "object" in types_of(node) or "properties" in node:
            assert node.get("additionalProperties") is False, f"{name}{where}"
            assert set(node.get("required", [])) <= set(node["properties"])
        for prop, child in node.get("properties", {}).items():
            assert child.get("title"), f"{name}{where}/{prop} has no title"
            assert child.get("description"), f"{name}{where}/{prop} has no description"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_strings_are_bounded(name: str) -> None:
    for where, node in subschemas(SCHEMAS[name]):
        if "string" in types_of(node) and "enum" not in node:
            assert "maxLength" in node, f"{name}{where} has no maxLength"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_no_string_is_longer_than_the_redaction_guard_accepts(name: str) -> None:
    """A schema must not promise a length that the guard then refuses."""
    for where, node in subschemas(SCHEMAS[name]):
        if "maxLength" in node:
            assert node["maxLength"] <= MAX_TEXT_LENGTH, f"{name}{where}"


def test_full_plan_and_selected_retry_extend_their_parts() -> None:
    summary = SCHEMAS["retry-plan-summary.json"]["properties"]
    plan = SCHEMAS["retry-plan.json"]["properties"]
    assert {k: plan[k] for k in summary} == summary
    assert set(plan) - set(summary) == {"retry_decisions"}
    decision = SCHEMAS["retry-decision.json"]["properties"]
    selected = SCHEMAS["selected-retry.json"]["properties"]
    assert {k: selected[k] for k in decision} == decision
    assert set(selected) - set(decision) == {
        "next_attempt_number",
        "outcome",
        "skipped_reason",
        "approval_id",
        "execution_id",
    }


def test_lineage_decision_now_is_a_retry_decision_without_its_id() -> None:
    decision = SCHEMAS["retry-decision.json"]
    current = SCHEMAS["lineage.json"]["$defs"]["current_decision"]
    assert current["properties"] == {
        k: v for k, v in decision["properties"].items() if k != "decision_id"
    }
    assert current["required"] == [
        k for k in decision["required"] if k != "decision_id"
    ]


def test_effective_policy_is_the_request_policy_made_complete() -> None:
    request = SCHEMAS["retry-policy.json"]
    effective = SCHEMAS["effective-policy.json"]
    assert request["properties"] == effective["properties"]
    assert "required" not in request
    assert sorted(effective["required"]) == sorted(effective["properties"])


# ---- example documents ------------------------------------------------------

HEX = "0123456789abcdef" * 2
PACKAGE_ID = "ab" * 32
WHEN = "2025-03-01T10:00:00Z"

PACKAGE = {
    "drill_id": "drill-2025.03:rollback",
    "generated_at": "2025-03-01T09:00:00+01:00",
    "generated_by": "Dana Release",
    "acknowledgements": [
        {
            "notification_id": "ntf-1",
            "role": "release manager",
            "state": "accepted",
            "acknowledged_at": "2025-03-01T08:55:12.250Z",
        }
    ],
}
POLICY = {
    "max_retry_attempts": 3,
    "retry_delay_minutes": 15,
    "backoff_multiplier": 2.0,
    "max_delay_minutes": 1440,
    "jitter": 0.1,
    "allow_immediate_retry": False,
    "max_age_hours": 168,
    "retry_window_hours": 24,
}
DECISION = {
    "decision_id": "rd_" + HEX,
    "lineage_id": "lin_" + HEX,
    "package_id": PACKAGE_ID,
    "connector_id": "splunk-prod",
    "action": "retry",
    "reason": "transient_failure",
    "explanation": "The collector answered 503; a retry is due.",
    "retry_count": 0,
    "max_retry_attempts": 3,
    "retry_delay_seconds": 900,
    "not_before": WHEN,
    "not_after": None,
    "failed_status_codes": [503],
}
ATTEMPT = {
    "attempt_id": "att_" + HEX,
    "lineage_id": "lin_" + HEX,
    "attempt_number": 1,
    "package_id": PACKAGE_ID,
    "connector_id": "splunk-prod",
    "connector_type": "splunk_hec",
    "outcome": "failed",
    "error_class": "http_status",
    "http_status": 503,
    "retry_after": "120",
    "retry_after_at": "2025-03-01T10:02:00Z",
    "started_at": WHEN,
    "finished_at": WHEN,
    "duration_ms": 87,
    "source": "api",
    "worker_run_id": None,
    "lineage_state": "failed",
}
SUMMARY = {
    "retry_plan_id": "rp_" + HEX,
    "plan_hash": "cd" * 32,
    "generated_at": WHEN,
    "generated_by": "svc:planner",
    "actor_verified": True,
    "policy": POLICY,
    "decision_count": 1,
    "retryable_count": 1,
    "waiting_count": 0,
    "suppressed_count": 0,
    "alert_level": "critical",
}
RUN = {
    "run_id": "wr_" + HEX,
    "dry_run": True,
    "trigger": "schedule",
    "schedule": {
        "interval_minutes": 15,
        "window_start": WHEN,
        "window_end": "2025-03-01T10:15:00Z",
        "cadence": "every 15 min",
        "enabled": True,
    },
    "started_at": WHEN,
    "finished_at": WHEN,
    "generated_by": "scheduler",
    "actor_verified": False,
    "policy": POLICY,
    "summary": {
        "retryable_count": 1,
        "waiting_count": 0,
        "suppressed_count": 0,
        "selected_retry_count": 1,
        "executed_count": 0,
        "skipped_count": 0,
    },
    "notes": ["dry run: nothing delivered"],
    "selected_retries": [
        {**DECISION, "next_attempt_number": 2, "outcome": "would_deliver"}
    ],
}

APPROVAL = {
    "approval_id": "apv_" + HEX,
    "retry_plan_id": "rp_" + HEX,
    "plan_hash": "cd" * 32,
    "verdict": "approve",
    "state": "active",
    "approved_by": "Pat Owner",
    "actor_verified": True,
    "reason": "receiver fixed",
    "created_at": WHEN,
    "expires_at": "2025-03-02T10:00:00Z",
    "decision_count": 1,
    "used_count": 0,
    "revoked_at": None,
    "revoked_by": None,
    "revoke_reason": None,
}
APPROVED_DECISION = {
    "decision_id": "rd_" + HEX,
    "lineage_id": "lin_" + HEX,
    "attempt_number": 2,
    "state": "used",
    "used_at": WHEN,
    "execution_id": "ex_" + HEX,
}
EXECUTION = {
    "execution_id": "ex_" + HEX,
    "run_id": "wr_" + HEX,
    "decision_id": "rd_" + HEX,
    "approval_id": "apv_" + HEX,
    "lineage_id": "lin_" + HEX,
    "package_id": PACKAGE_ID,
    "connector_id": "splunk-prod",
    "attempt_number": 2,
    "outcome": "delivered",
    "skipped_reason": None,
    "error_class": None,
    "http_status": 200,
    "started_at": WHEN,
    "finished_at": WHEN,
    "duration_ms": 31,
    "worker_id": "worker-2.example.net:4711",
    "rescue_count": 0,
    "evidence": {"attempt_id": "att_" + HEX, "evidence_sequence": 7},
}
SKIPPED_EXECUTION = {
    "outcome": "skipped",
    "skipped_reason": "approval_stale",
    "http_status": None,
    "duration_ms": 0,
    "evidence": {"attempt_id": None, "evidence_sequence": 8},
}

CONNECTOR = {
    "connector_id": "audit-webhook",
    "type": "webhook",
    "category": "webhook",
    "endpoint": "https://hooks.example.com",
    "acknowledgement": "response",
    "honours_retry_after": True,
    "state": "paused",
    "state_reason": "connector_paused",
    "state_error_class": "http_status",
    "state_http_status": 401,
    "state_changed_at": WHEN,
    "state_changed_by": "delivery",
    "consecutive_failures": 2,
    "last_failure_class": "http_status",
    "last_failure_category": "config",
    "last_failure_at": WHEN,
    "last_success_at": None,
}

EVIDENCE_ENTRY = {
    "sequence": 1,
    "kind": "retry_plan",
    "subject_id": "rp_" + HEX,
    "actor": "svc:planner",
    "actor_verified": True,
    "recorded_at": WHEN,
    "document": {
        key: SUMMARY[key]
        for key in SUMMARY
        if key not in ("actor_verified", "alert_level")
    }
    | {"decision_keys_hash": "ab" * 32},
    "previous_hash": "0" * 64,
    "entry_hash": "ef" * 32,
}
EVIDENCE_VERIFIED = {
    "intact": True,
    "verified_entry_count": 1,
    "entry_count": 1,
    "last_entry_hash": "ef" * 32,
    "first_broken_entry": None,
    "verified_at": WHEN,
}
EVIDENCE_BROKEN = {
    **EVIDENCE_VERIFIED,
    "intact": False,
    "verified_entry_count": 0,
    "last_entry_hash": None,
    "first_broken_entry": {
        "sequence": 1,
        "kind": "retry_plan",
        "subject_id": "rp_" + HEX,
        "problem": "record_modified",
        "detail": "the record the entry vouches for was changed since",
    },
}

STEP = {
    "code": "refresh_credential",
    "title": "Rotate or refresh the connector's credential",
    "detail": "The receiver refused the credentials: 2 failed attempts (HTTP 401: 2).",
}
PLAYBOOK_ITEM = {
    "connector_id": "audit-webhook",
    "connector_type": "webhook",
    "category": "webhook",
    "state": "paused",
    "failure_count": 3,
    "failures_by_class": {"http_status": 2, "connection_refused": 1},
    "failed_status_codes": [401],
    "latest_failure": {
        "attempt_id": "att_" + HEX,
        "error_class": "http_status",
        "http_status": 401,
        "started_at": WHEN,
    },
    "steps": [STEP],
    "notes": [],
    "closure_state": None,
    "closed_at": None,
}
CLOSURE = {
    "closure_id": "cl_" + HEX,
    "playbook_id": "pb_" + HEX,
    "connector_id": "audit-webhook",
    "closure_state": "resolved",
    "external_ref": "INC-4711",
    "notes": "Token rotated.\nDeliveries flow again.",
    "verification_refs": ["ex_" + HEX, "att_" + HEX],
    "closed_by": "soc-analyst",
    "actor_verified": True,
    "closed_at": WHEN,
}
PLAYBOOK = {
    "playbook_id": "pb_" + HEX,
    "generated_at": WHEN,
    "generated_by": "soc-analyst",
    "actor_verified": False,
    "min_failure_count": 2,
    "lookback_hours": 24,
    "lookback_start": "2025-02-28T10:00:00Z",
    "connector_ids": None,
    "item_count": 1,
    "items": [PLAYBOOK_ITEM],
    "closures": [CLOSURE],
}
REPORT_ITEM = {
    "playbook_id": "pb_" + HEX,
    "connector_id": "audit-webhook",
    "generated_at": WHEN,
    "closure_state": "deferred",
    "closed_at": None,
    "due_at": "2025-03-01T14:00:00Z",
    "overdue": True,
}
REPORT = {
    "generated_at": WHEN,
    "slo_minutes": 240,
    "limit": 100,
    "open_count": 1,
    "closed_count": 0,
    "overdue_count": 1,
    "open_items": [REPORT_ITEM],
    "closed_items": [],
    "overdue_items": [REPORT_ITEM],
}

SESSION = {
    "tokens_required": True,
    "authenticated": True,
    "actor": "po-bob",
    "role": "platform_owner",
    "allowed_operations": ["getSession", "listAttempts", "runWorker"],
}
ANONYMOUS = {
    "tokens_required": False,
    "authenticated": False,
    "actor": None,
    "role": None,
    "allowed_operations": [],
}
CURRENT_DECISION = {k: v for k, v in DECISION.items() if k != "decision_id"}
LINEAGE = {
    "lineage_id": "lin_" + HEX,
    "package_id": PACKAGE_ID,
    "drill_id": "drill-2025.03:rollback",
    "connector_id": "splunk-prod",
    "connector_type": "splunk_hec",
    "state": "failed",
    "attempt_count": 1,
    "first_attempt_at": WHEN,
    "last_attempt_at": WHEN,
    "attempts": [ATTEMPT],
    "attempts_truncated": False,
    "decision": CURRENT_DECISION,
    "latest_plan_decision": {
        "retry_plan_id": "rp_" + HEX,
        "generated_at": WHEN,
        "decision": DECISION,
    },
}
ACTIVITY = {
    "since": "2025-03-01T09:00:00Z",
    "until": "2025-03-01T11:00:00Z",
    "bucket_minutes": 60,
    "connectors": [
        {
            "connector_id": "splunk-prod",
            "buckets": [
                {
                    "start": "2025-03-01T09:00:00Z",
                    "failed": 2,
                    "delivered": 1,
                    "recovered": 1,
                },
                {"start": WHEN, "failed": 0, "delivered": 0, "recovered": 0},
            ],
        }
    ],
}

GOOD: dict[str, list[Any]] = {
    "actor.json": [
        "a",
        "Dana Release <dana@example.org>",
        "x" * 200,
        "Zoë Ø'Brien",
        "运维 团队",
        "a\u200db",
        "\u200bleading-format-character",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    ],
    "connector-id.json": ["splunk-prod", "0", "a" * 100],
    "package-id.json": [PACKAGE_ID, "0" * 64],
    "ids.json": ["wr_" + HEX, "lin_" + HEX],
    "lineage-id.json": ["lin_" + HEX],
    "retry-policy.json": [{}, {"jitter": 1}, POLICY],
    "effective-policy.json": [POLICY],
    "audit-package.json": [PACKAGE],
    "delivery-request.json": [
        {"package": PACKAGE, "connectors": ["splunk-prod"], "generated_by": "dana"},
        {
            "package": PACKAGE,
            "connectors": ["splunk-prod", "hook.audit"],
            "generated_by": "dana",
            "source": "console",
        },
    ],
    "attempt-import-request.json": [
        {
            "attempts": [
                {
                    "package_id": PACKAGE_ID,
                    "connector_id": "splunk-prod",
                    "outcome": "delivered",
                    "started_at": WHEN,
                    "finished_at": WHEN,
                }
            ]
        },
        {
            "packages": [PACKAGE],
            "attempts": [
                {
                    "package_id": PACKAGE_ID,
                    "connector_id": "splunk-prod",
                    "connector_type": "splunk_hec",
                    "outcome": "failed",
                    "error_class": "http_status",
                    "http_status": 429,
                    "retry_after": "Sat, 01 Mar 2025 10:05:00 GMT",
                    "started_at": WHEN,
                    "finished_at": WHEN,
                    "attempt_number": 2,
                }
            ],
        },
    ],
    "retry-plan-request.json": [
        {"generated_by": "dana"},
        {"generated_by": "dana", "retry_policy": {"max_retry_attempts": 5}},
    ],
    "worker-run-request.json": [
        {"generated_by": "scheduler"},
        {
            "generated_by": "ops",
            "dry_run": False,
            "execute": True,
            "max_retry_deliveries": 100,
            "trigger": "manual",
            "schedule": {"interval_minutes": 30, "enabled": True, "cadence": "30m"},
            "retry_policy": {"retry_delay_minutes": 0, "allow_immediate_retry": True},
        },
    ],
    "delivery-report.json": [
        {
            "package_id": PACKAGE_ID,
            "drill_id": "drill-1",
            "generated_by": "dana",
            "deliveries": [
                {
                    "connector_id": "splunk-prod",
                    "lineage_id": "lin_" + HEX,
                    "attempt_id": None,
                    "attempt_number": None,
                    "outcome": "skipped",
                    "http_status": None,
                    "error_class": None,
                    "skipped_reason": "already_recovered",
                }
            ],
        }
    ],
    "attempt.json": [ATTEMPT],
    "attempt-import-result.json": [{"recorded_count": 1, "attempts": [ATTEMPT]}],
    "attempt-page.json": [{"items": [ATTEMPT], "next_cursor": "eyJpZCI6IDF9"}],
    "retry-decision.json": [DECISION],
    "selected-retry.json": [RUN["selected_retries"][0]],
    "retry-plan-summary.json": [SUMMARY],
    "retry-plan.json": [{**SUMMARY, "retry_decisions": [DECISION]}],
    "retry-plan-page.json": [{"items": [SUMMARY], "next_cursor": None}],
    "worker-run.json": [RUN],
    "worker-run-page.json": [{"items": [RUN], "next_cursor": None}],
    "dashboard.json": [
        {
            "generated_at": WHEN,
            "run_count": 1,
            "dry_run_count": 1,
            "executed_count": 0,
            "retryable_count": 1,
            "selected_retry_count": 1,
            "waiting_count": 0,
            "suppressed_count": 0,
            "alert_level": "warning",
            "paused_connector_count": 1,
            "executed_retry_count": 2,
            "delivered_retry_count": 1,
            "failed_retry_count": 1,
            "skipped_retry_count": 0,
            "latest_runs": [RUN],
        }
    ],
    "approval-request.json": [
        {"reason": "receiver fixed", "all_retry_decisions": True},
        {"reason": "x", "all_retry_decisions": True},
        {
            "approved_by": "Pat Owner",
            "verdict": "deny",
            "decision_ids": ["rd_" + HEX],
            "reason": "wait for the change window",
            "expires_at": WHEN,
            "plan_hash": "cd" * 32,
        },
    ],
    "approval-revoke-request.json": [
        {"reason": "approved the wrong plan"},
        {"reason": " approved the wrong plan\n", "revoked_by": "Pat Owner"},
    ],
    "approval.json": [APPROVAL, {**APPROVAL, "decisions": [APPROVED_DECISION]}],
    "approval-page.json": [{"items": [APPROVAL], "next_cursor": None}],
    "execution.json": [EXECUTION, {**EXECUTION, **SKIPPED_EXECUTION}],
    "execution-page.json": [{"items": [EXECUTION], "next_cursor": None}],
    "connector.json": [CONNECTOR],
    "connector-list.json": [{"items": [CONNECTOR]}],
    "connector-resume-request.json": [{"generated_by": "platform-owner"}],
    "recovery-playbook-request.json": [
        {},
        {
            "generated_by": "soc-analyst",
            "min_failure_count": 1,
            "lookback_hours": 720,
            "connector_ids": ["audit-webhook"],
        },
    ],
    "recovery-playbook.json": [
        PLAYBOOK,
        {**PLAYBOOK, "item_count": 0, "items": [], "closures": []},
    ],
    "recovery-playbook-page.json": [{"items": [PLAYBOOK], "next_cursor": None}],
    "recovery-closure-request.json": [
        {"connector_id": "audit-webhook", "closure_state": "deferred"},
        {
            "connector_id": "audit-webhook",
            "closure_state": "deferred",
            "external_ref": "x",
            "notes": ("Waiting on the network team.\n" * 100)[:2000],
        },
        {
            key: CLOSURE[key]
            for key in (
                "connector_id",
                "closure_state",
                "external_ref",
                "notes",
                "verification_refs",
                "closed_by",
            )
        },
    ],
    "recovery-closure.json": [
        CLOSURE,
        {**CLOSURE, "external_ref": None, "notes": None, "verification_refs": []},
        # Names are read back as they were recorded, padded ones too.
        {**CLOSURE, "closed_by": " soc-analyst "},
    ],
    "recovery-report.json": [REPORT],
    "evidence-entry.json": [
        EVIDENCE_ENTRY,
        {
            **EVIDENCE_ENTRY,
            "sequence": 2,
            "kind": "approval_revocation",
            "subject_id": "apv_" + HEX,
            "document": {
                "approval_id": "apv_" + HEX,
                "revoked_at": WHEN,
                "revoked_by": "dana",
                "reason": None,
            },
            "previous_hash": "ef" * 32,
        },
    ],
    "evidence-page.json": [
        {"items": [EVIDENCE_ENTRY], "next_cursor": "ZXZpZGVuY2U6MQ"}
    ],
    "evidence-verification.json": [EVIDENCE_VERIFIED, EVIDENCE_BROKEN],
    "health.json": [
        {
            "status": "ok",
            "version": "0.1.0",
            "database": "sqlite",
            "connector_count": 2,
        }
    ],
    "problem.json": [
        {"type": "about:blank", "title": "Not Found", "status": 404},
        {
            "type": "https://cavra.dev/problems/invalid-body",
            "title": "Invalid request body",
            "status": 400,
            "detail": "1 problem",
            "instance": "/api/v1/retry-plans",
            "errors": [
                {"pointer": "/retry_policy/jitter", "detail": "too large"},
                {"pointer": "", "detail": "bad", "reason": "required"},
            ],
        },
    ],
    "session.json": [SESSION, ANONYMOUS],
    "lineage.json": [
        LINEAGE,
        {
            **LINEAGE,
            "state": "recovered",
            "attempts": [],
            "attempts_truncated": True,
            "decision": None,
            "latest_plan_decision": None,
        },
        {
            **LINEAGE,
            "state": "pending",
            "attempt_count": 0,
            "first_attempt_at": None,
            "last_attempt_at": None,
            "attempts": [],
            "decision": None,
            "latest_plan_decision": None,
        },
    ],
    "attempt-activity.json": [ACTIVITY, {**ACTIVITY, "connectors": []}],
}

DROP = object()


def changed(document: Any, path: str, value: Any) -> Any:
    """Copy ``document`` with the value at ``path`` (``a/0/b``) replaced or dropped."""
    result = copy.deepcopy(document)
    *parents, last = path.split("/")
    target = result
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is DROP:
        del target[last]
    else:
        target[last] = value
    return result


IMPORT = GOOD["attempt-import-request.json"][1]
DELIVERY = GOOD["delivery-request.json"][0]
WORKER = GOOD["worker-run-request.json"][1]

BAD: dict[str, list[tuple[str, Any]]] = {
    "evidence-entry.json": [
        ("sequence zero", changed(EVIDENCE_ENTRY, "sequence", 0)),
        ("unknown kind", changed(EVIDENCE_ENTRY, "kind", "retry_decision")),
        ("subject of no record", changed(EVIDENCE_ENTRY, "subject_id", "lin_" + HEX)),
        ("short hash", changed(EVIDENCE_ENTRY, "entry_hash", "ef" * 31)),
        ("document of another kind", changed(EVIDENCE_ENTRY, "kind", "worker_run")),
        ("unknown document field", changed(EVIDENCE_ENTRY, "document/token", "x")),
    ],
    "evidence-verification.json": [
        (
            "unknown problem",
            changed(EVIDENCE_BROKEN, "first_broken_entry/problem", "tampered"),
        ),
        ("missing count", changed(EVIDENCE_VERIFIED, "entry_count", DROP)),
    ],
    "actor.json": [
        ("empty", ""),
        ("too long", "x" * 201),
        ("control character", "dana\tops"),
        ("trailing newline", "dana\n"),
        ("leading space", " dana"),
        ("trailing space", "dana "),
        ("one space", " "),
        ("spaces only", "   "),
        ("no-break space at the end", "dana\u00a0"),
        ("ideographic space first", "\u3000dana"),
        ("zero-width space only", "\u200b"),
        ("format characters only", "\u200e\u2060\ufeff"),
        ("format and spaces only", "\u200b \u200b"),
        ("tag characters only", "\U000e0020\U000e007f"),
    ],
    "connector-id.json": [
        ("upper case", "Splunk"),
        ("leading dash", "-a"),
        ("trailing newline", "splunk\n"),
    ],
    "package-id.json": [("short", "ab" * 31), ("upper hex", "AB" * 32)],
    "ids.json": [("unknown prefix", "xx_" + HEX), ("short", "wr_" + HEX[:-1])],
    "lineage-id.json": [("run id", "wr_" + HEX), ("newline", "lin_" + HEX + "\n")],
    "retry-policy.json": [
        ("unknown field", {"retries": 3}),
        ("too many attempts", {"max_retry_attempts": 101}),
        ("fractional attempts", {"max_retry_attempts": 2.5}),
        ("negative delay", {"retry_delay_minutes": -1}),
        ("jitter above one", {"jitter": 1.5}),
        ("string boolean", {"allow_immediate_retry": "yes"}),
        ("window too long", {"retry_window_hours": 721}),
    ],
    "effective-policy.json": [("missing key", changed(POLICY, "jitter", DROP))],
    "audit-package.json": [
        ("unknown field", {**PACKAGE, "token": "x"}),
        ("missing drill", changed(PACKAGE, "drill_id", DROP)),
        ("no offset", changed(PACKAGE, "generated_at", "2025-03-01T09:00:00")),
        ("date only", changed(PACKAGE, "generated_at", "2025-03-01")),
        ("time then newline", changed(PACKAGE, "generated_at", WHEN + "\n")),
        ("no acknowledgements", changed(PACKAGE, "acknowledgements", [])),
        ("bad state", changed(PACKAGE, "acknowledgements/0/state", "maybe")),
        ("bad role", changed(PACKAGE, "acknowledgements/0/role", " lead")),
        ("unknown ack field", changed(PACKAGE, "acknowledgements/0/body", "x")),
        (
            "missing ack time",
            changed(PACKAGE, "acknowledgements/0/acknowledged_at", DROP),
        ),
    ],
    "delivery-request.json": [
        ("unknown field", {**DELIVERY, "url": "http://127.0.0.1/"}),
        ("no connectors", changed(DELIVERY, "connectors", [])),
        ("duplicate connectors", changed(DELIVERY, "connectors", ["a", "a"])),
        (
            "too many connectors",
            changed(DELIVERY, "connectors", [f"c{i}" for i in range(51)]),
        ),
        ("bad source", {**DELIVERY, "source": "cli"}),
        ("bad nested package", changed(DELIVERY, "package/drill_id", "")),
    ],
    "attempt-import-request.json": [
        ("unknown field", {**IMPORT, "dry_run": True}),
        ("missing attempts", changed(IMPORT, "attempts", DROP)),
        ("empty attempts", changed(IMPORT, "attempts", [])),
        ("missing outcome", changed(IMPORT, "attempts/0/outcome", DROP)),
        ("bad outcome", changed(IMPORT, "attempts/0/outcome", "skipped")),
        ("status too low", changed(IMPORT, "attempts/0/http_status", 99)),
        ("status too high", changed(IMPORT, "attempts/0/http_status", 600)),
        ("attempt number zero", changed(IMPORT, "attempts/0/attempt_number", 0)),
        ("retry-after control", changed(IMPORT, "attempts/0/retry_after", "1\r\n")),
        ("retry-after too long", changed(IMPORT, "attempts/0/retry_after", "9" * 65)),
        ("bad error class", changed(IMPORT, "attempts/0/error_class", "HTTP")),
        ("bad package id", changed(IMPORT, "attempts/0/package_id", "abc")),
        ("unknown attempt field", changed(IMPORT, "attempts/0/headers", {})),
    ],
    "approval-request.json": [
        ("missing reason", {"all_retry_decisions": True}),
        (
            "bad verdict",
            {"reason": "r", "verdict": "maybe", "all_retry_decisions": True},
        ),
        ("plan id as decision", {"reason": "r", "decision_ids": ["rp_" + HEX]}),
        ("repeated decision", {"reason": "r", "decision_ids": ["rd_" + HEX] * 2}),
        (
            "naive expiry",
            {
                "reason": "r",
                "all_retry_decisions": True,
                "expires_at": "2025-03-01T10:00:00",
            },
        ),
        ("unknown field", {"reason": "r", "all_retry_decisions": True, "force": 1}),
        ("blank reason", {"reason": "   ", "all_retry_decisions": True}),
        ("reason of breaks", {"reason": " \n\t\r ", "all_retry_decisions": True}),
        ("invisible reason", {"reason": "\u200b\u00a0", "all_retry_decisions": True}),
        (
            "padded approver",
            {"reason": "r", "all_retry_decisions": True, "approved_by": "pat "},
        ),
    ],
    "approval-revoke-request.json": [
        ("missing reason", {}),
        ("blank reason", {"reason": " "}),
        ("no-break spaces", {"reason": "\u00a0\u2007"}),
        ("blank revoker", {"reason": "wrong plan", "revoked_by": " "}),
    ],
    "execution.json": [
        ("unknown outcome", changed(EXECUTION, "outcome", "sent")),
        ("unknown skip", changed(EXECUTION, "skipped_reason", "bored")),
        ("body kept", changed(EXECUTION, "evidence/body", "x")),
        ("negative rescue count", changed(EXECUTION, "rescue_count", -1)),
    ],
    "retry-plan-request.json": [
        ("blank actor", {"generated_by": ""}),
        ("unknown field", {"generated_by": "dana", "force": True}),
        (
            "bad nested policy",
            {"generated_by": "dana", "retry_policy": {"jitter": -0.1}},
        ),
        ("unknown nested key", {"generated_by": "dana", "retry_policy": {"x": 1}}),
    ],
    "worker-run-request.json": [
        ("blank actor", changed(WORKER, "generated_by", "")),
        ("unknown field", {**WORKER, "approve": True}),
        ("too many deliveries", changed(WORKER, "max_retry_deliveries", 101)),
        ("bad trigger", changed(WORKER, "trigger", "cron")),
        ("interval zero", changed(WORKER, "schedule/interval_minutes", 0)),
        ("bad cadence", changed(WORKER, "schedule/cadence", "*/5 * * * *")),
        ("unknown schedule key", changed(WORKER, "schedule/timezone", "UTC")),
        ("string dry run", changed(WORKER, "dry_run", "false")),
    ],
    "recovery-playbook-request.json": [
        ("no failures", {"min_failure_count": 0}),
        ("lookback too long", {"lookback_hours": 721}),
        ("no connectors", {"connector_ids": []}),
        ("repeated connector", {"connector_ids": ["a", "a"]}),
        ("unknown field", {"dry_run": True}),
    ],
    "recovery-playbook.json": [
        ("bad step code", changed(PLAYBOOK, "items/0/steps/0/code", "Rotate")),
        ("no steps", changed(PLAYBOOK, "items/0/steps", [])),
        ("bad class key", changed(PLAYBOOK, "items/0/failures_by_class", {"X": 1})),
        ("unknown state", changed(PLAYBOOK, "items/0/closure_state", "done")),
        ("run id", changed(PLAYBOOK, "playbook_id", "wr_" + HEX)),
    ],
    "recovery-closure-request.json": [
        ("missing state", {"connector_id": "audit-webhook"}),
        (
            "plan as proof",
            {
                "connector_id": "a",
                "closure_state": "resolved",
                "verification_refs": ["rp_" + HEX],
            },
        ),
        (
            "long reference",
            {
                "connector_id": "a",
                "closure_state": "resolved",
                "external_ref": "x" * 201,
            },
        ),
        (
            "control character",
            {"connector_id": "a", "closure_state": "deferred", "notes": "a\x07b"},
        ),
        (
            "notes longer than the guard takes",
            {"connector_id": "a", "closure_state": "deferred", "notes": "x" * 2001},
        ),
        (
            "blank notes",
            {"connector_id": "a", "closure_state": "deferred", "notes": " \n "},
        ),
        (
            "blank reference",
            {"connector_id": "a", "closure_state": "deferred", "external_ref": "  "},
        ),
        (
            "padded closer",
            {"connector_id": "a", "closure_state": "deferred", "closed_by": "\tc"},
        ),
    ],
    "recovery-closure.json": [
        ("bad closure id", changed(CLOSURE, "closure_id", "cl_1"))
    ],
    "recovery-report.json": [
        ("slo zero", changed(REPORT, "slo_minutes", 0)),
        ("missing count", changed(REPORT, "overdue_count", DROP)),
    ],
    "attempt.json": [
        ("bad lineage id", changed(ATTEMPT, "lineage_id", "lin_123")),
        ("bad run id", changed(ATTEMPT, "worker_run_id", "rp_" + HEX)),
        ("negative duration", changed(ATTEMPT, "duration_ms", -1)),
        ("missing source", changed(ATTEMPT, "source", DROP)),
    ],
    "retry-plan.json": [
        ("missing decisions", SUMMARY),
        (
            "bad nested action",
            {**SUMMARY, "retry_decisions": [{**DECISION, "action": "go"}]},
        ),
    ],
    "retry-plan-summary.json": [("with decisions", {**SUMMARY, "retry_decisions": []})],
    "worker-run.json": [
        ("missing window", changed(RUN, "schedule/window_end", DROP)),
        ("long note", changed(RUN, "notes", ["x" * 501])),
        ("bad selection outcome", changed(RUN, "selected_retries/0/outcome", "sent")),
    ],
    "dashboard.json": [
        (
            "eleven runs",
            changed(GOOD["dashboard.json"][0], "latest_runs", [RUN] * 11),
        )
    ],
    "problem.json": [
        ("missing title", {"type": "about:blank", "status": 400}),
        ("success status", {"type": "about:blank", "title": "OK", "status": 200}),
        (
            "relative pointer",
            {
                "type": "about:blank",
                "title": "Bad",
                "status": 400,
                "errors": [{"pointer": "retry_policy", "detail": "x"}],
            },
        ),
    ],
    "health.json": [
        (
            "unknown database",
            {**GOOD["health.json"][0], "database": "mysql"},
        )
    ],
    "session.json": [
        ("unknown role", changed(SESSION, "role", "owner")),
        ("operation with a space", changed(SESSION, "allowed_operations", ["get x"])),
        (
            "repeated operation",
            changed(SESSION, "allowed_operations", ["getSession", "getSession"]),
        ),
        ("missing actor", changed(ANONYMOUS, "actor", DROP)),
        ("unknown field", {**SESSION, "token": "cavra_x"}),
    ],
    "lineage.json": [
        ("unknown state", changed(LINEAGE, "state", "retrying")),
        ("decision with an id", changed(LINEAGE, "decision/decision_id", "rd_" + HEX)),
        (
            "plan decision without id",
            changed(LINEAGE, "latest_plan_decision/decision/decision_id", DROP),
        ),
        ("no drill", changed(LINEAGE, "drill_id", DROP)),
        ("too many attempts", changed(LINEAGE, "attempts", [ATTEMPT] * 101)),
        (
            "time without offset",
            changed(LINEAGE, "last_attempt_at", "2025-03-01T10:00:00"),
        ),
    ],
    "attempt-activity.json": [
        ("zero width", changed(ACTIVITY, "bucket_minutes", 0)),
        ("width over a day", changed(ACTIVITY, "bucket_minutes", 1441)),
        ("negative count", changed(ACTIVITY, "connectors/0/buckets/0/failed", -1)),
        (
            "missing recovered",
            changed(ACTIVITY, "connectors/0/buckets/0/recovered", DROP),
        ),
        (
            "start without offset",
            changed(ACTIVITY, "connectors/0/buckets/1/start", "2025-03-01T10:00:00"),
        ),
        (
            "unknown bucket field",
            changed(ACTIVITY, "connectors/0/buckets/0/skipped", 1),
        ),
    ],
}


@pytest.mark.parametrize(
    ("name", "number"),
    [(name, number) for name, docs in GOOD.items() for number in range(len(docs))],
)
def test_good_documents_validate(name: str, number: int) -> None:
    validator(name).validate(GOOD[name][number])


@pytest.mark.parametrize(
    ("name", "label"),
    [(name, label) for name, cases in BAD.items() for label, _ in cases],
)
def test_bad_documents_are_refused(name: str, label: str) -> None:
    document = dict(BAD[name])[label]
    assert not validator(name).is_valid(document), f"{name}: {label} was accepted"


def test_every_schema_has_a_good_example() -> None:
    assert set(GOOD) == set(SCHEMAS)


@pytest.mark.parametrize("stamp", ["2025-03-01T09:00:00", WHEN + "\n", "2025-03-01"])
def test_times_need_an_offset_even_without_format_checking(stamp: str) -> None:
    plain = Draft202012Validator(SCHEMAS["audit-package.json"], registry=REGISTRY)
    assert not plain.is_valid(changed(PACKAGE, "generated_at", stamp))
    assert plain.is_valid(PACKAGE)
