"""Governance: approvals, executions, the evidence log, tokens, idempotency, recovery.

Also records whether the actor of a plan or a run was verified by a token, and
gives every live run a schedule-window key that the database keeps unique.
"""

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    IntegerField,
    Model,
    TextField,
)


def up(migrator, db):
    class Approval(Model):
        approval_id = CharField(primary_key=True, max_length=40)
        retry_plan_id = CharField(max_length=40)
        plan_hash = CharField(max_length=64)
        verdict = CharField(max_length=10)
        approved_by = CharField(max_length=200)
        actor_verified = BooleanField(default=False)
        reason = TextField()
        created_at = BigIntegerField()
        expires_at = BigIntegerField()
        item_count = IntegerField()
        used_count = IntegerField(default=0)
        revoked_at = BigIntegerField(null=True)
        revoked_by = CharField(null=True, max_length=200)
        revoked_by_verified = BooleanField(null=True)
        revoke_reason = TextField(null=True)

        class Meta:
            database = db
            table_name = "approval"
            indexes = (
                (("created_at", "approval_id"), False),
                (("retry_plan_id", "created_at"), False),
            )

    class ApprovalItem(Model):
        approval_id = CharField(max_length=40)
        position = IntegerField()
        decision_id = CharField(max_length=40)
        lineage_id = CharField(max_length=40)
        lineage_version = IntegerField()
        attempt_number = IntegerField()
        created_at = BigIntegerField()
        used_at = BigIntegerField(null=True)
        execution_id = CharField(null=True, max_length=40)

        class Meta:
            database = db
            table_name = "approval_item"
            indexes = (
                (("approval_id", "position"), True),
                (("approval_id", "lineage_id"), True),
                (("lineage_id", "created_at"), False),
            )

    class Execution(Model):
        execution_id = CharField(primary_key=True, max_length=40)
        run_id = CharField(max_length=40)
        decision_id = CharField(max_length=40)
        approval_id = CharField(null=True, max_length=40)
        lineage_id = CharField(max_length=40)
        package_id = CharField(max_length=64)
        connector_id = CharField(max_length=100)
        attempt_number = IntegerField()
        claim_key = CharField(null=True, max_length=60, unique=True)
        outcome = CharField(max_length=20)
        skipped_reason = CharField(null=True, max_length=50)
        error_class = CharField(null=True, max_length=50)
        http_status = IntegerField(null=True)
        attempt_id = CharField(null=True, max_length=40)
        started_at = BigIntegerField()
        finished_at = BigIntegerField(null=True)
        duration_ms = IntegerField(default=0)
        evidence_sequence = BigIntegerField(null=True)

        class Meta:
            database = db
            table_name = "execution"
            indexes = (
                (("started_at", "execution_id"), False),
                (("run_id", "started_at"), False),
                (("lineage_id", "started_at"), False),
                (("connector_id", "outcome", "started_at"), False),
            )

    class EvidenceEntry(Model):
        sequence = BigIntegerField(primary_key=True)
        kind = CharField(max_length=40)
        subject_id = CharField(max_length=64)
        actor = CharField(max_length=200)
        actor_verified = BooleanField(default=False)
        recorded_at = BigIntegerField()
        document = TextField()
        previous_hash = CharField(max_length=64)
        entry_hash = CharField(max_length=64)

        class Meta:
            database = db
            table_name = "evidence_entry"
            indexes = (
                (("kind", "sequence"), False),
                (("subject_id",), False),
            )

    class ApiToken(Model):
        token_id = CharField(primary_key=True, max_length=40)
        name = CharField(max_length=200, unique=True)
        role = CharField(max_length=30)
        token_hash = CharField(max_length=64, unique=True)
        created_at = BigIntegerField()
        revoked_at = BigIntegerField(null=True)

        class Meta:
            database = db
            table_name = "api_token"
            indexes = ((("revoked_at",), False),)

    class IdempotencyRecord(Model):
        scope_key = CharField(primary_key=True, max_length=64)
        request_hash = CharField(max_length=64)
        state = CharField(max_length=20)
        status = IntegerField(null=True)
        content_type = CharField(null=True, max_length=100)
        location = TextField(null=True)
        body = TextField(null=True)
        created_at = BigIntegerField()

        class Meta:
            database = db
            table_name = "idempotency_record"
            indexes = ((("created_at",), False),)

    class RecoveryPlaybook(Model):
        playbook_id = CharField(primary_key=True, max_length=40)
        generated_at = BigIntegerField()
        generated_by = CharField(max_length=200)
        actor_verified = BooleanField(default=False)
        min_failure_count = IntegerField()
        lookback_hours = IntegerField()
        connector_ids = TextField(null=True)
        item_count = IntegerField()
        items = TextField()

        class Meta:
            database = db
            table_name = "recovery_playbook"
            indexes = ((("generated_at", "playbook_id"), False),)

    class RecoveryPlaybookItem(Model):
        playbook_id = CharField(max_length=40)
        connector_id = CharField(max_length=100)
        generated_at = BigIntegerField()
        closure_state = CharField(null=True, max_length=20)
        closed_at = BigIntegerField(null=True)

        class Meta:
            database = db
            table_name = "recovery_playbook_item"
            indexes = (
                (("playbook_id", "connector_id"), True),
                (("closure_state", "generated_at"), False),
            )

    class RecoveryClosure(Model):
        closure_id = CharField(primary_key=True, max_length=40)
        playbook_id = CharField(max_length=40)
        connector_id = CharField(max_length=100)
        closure_state = CharField(max_length=20)
        external_ref = CharField(null=True, max_length=200)
        notes = TextField(null=True)
        verification_refs = TextField()
        closed_by = CharField(max_length=200)
        actor_verified = BooleanField(default=False)
        closed_at = BigIntegerField()

        class Meta:
            database = db
            table_name = "recovery_closure"
            indexes = ((("playbook_id", "connector_id", "closed_at"), False),)

    db.create_tables(
        [
            Approval,
            ApprovalItem,
            Execution,
            EvidenceEntry,
            ApiToken,
            IdempotencyRecord,
            RecoveryPlaybook,
            RecoveryPlaybookItem,
            RecoveryClosure,
        ]
    )
    migrator.migrate(
        migrator.add_column(
            "retry_plan", "actor_verified", BooleanField(default=False)
        ),
        migrator.add_column(
            "worker_run", "actor_verified", BooleanField(default=False)
        ),
        migrator.add_column(
            "worker_run", "live_window_key", CharField(null=True, max_length=80)
        ),
        migrator.add_index("worker_run", ("live_window_key",), True),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_index("worker_run", "worker_run_live_window_key"),
        migrator.drop_column("worker_run", "live_window_key"),
        migrator.drop_column("worker_run", "actor_verified"),
        migrator.drop_column("retry_plan", "actor_verified"),
        *(
            migrator.drop_table(name)
            for name in (
                "recovery_closure",
                "recovery_playbook_item",
                "recovery_playbook",
                "idempotency_record",
                "api_token",
                "evidence_entry",
                "execution",
                "approval_item",
                "approval",
            )
        ),
    )
