"""The first schema: packages, lineages, attempts, plans, decisions, runs, counters.

A frozen copy of the models as they were when this migration was written:
times are integer microseconds since the epoch (UTC), JSON is stored as text.
"""

from peewee import (
    BigIntegerField,
    BooleanField,
    CharField,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)


def up(migrator, db):
    class AuditPackage(Model):
        package_id = CharField(primary_key=True, max_length=64)
        drill_id = CharField(index=True, max_length=200)
        generated_at = BigIntegerField()
        generated_by = CharField(max_length=200)
        received_at = BigIntegerField()

        class Meta:
            database = db
            table_name = "audit_package"

    db.create_tables([AuditPackage])

    class Acknowledgement(Model):
        package = ForeignKeyField(AuditPackage)
        position = IntegerField()
        notification_id = CharField(max_length=200)
        role = CharField(max_length=200)
        state = CharField(max_length=20)
        acknowledged_at = BigIntegerField()

        class Meta:
            database = db
            table_name = "acknowledgement"
            indexes = ((("package", "position"), True),)

    db.create_tables([Acknowledgement])

    class Counter(Model):
        name = CharField(primary_key=True, max_length=64)
        value = BigIntegerField(default=0)

        class Meta:
            database = db
            table_name = "counter"

    db.create_tables([Counter])

    class Lineage(Model):
        lineage_id = CharField(primary_key=True, max_length=40)
        package = ForeignKeyField(AuditPackage)
        connector_id = CharField(max_length=100)
        connector_type = CharField(max_length=50)
        state = CharField(max_length=20)
        latest_failed = BooleanField(default=False)
        attempt_count = IntegerField(default=0)
        first_attempt_at = BigIntegerField(null=True)
        last_attempt_at = BigIntegerField(null=True)
        package_generated_at = BigIntegerField()
        last_outcome = CharField(null=True, max_length=20)
        last_error_class = CharField(null=True, max_length=50)
        last_http_status = IntegerField(null=True)
        last_retry_after_at = BigIntegerField(null=True)
        failed_status_codes = TextField(default="[]")
        config_fingerprint = CharField(max_length=64, default="")
        closing_reason = CharField(null=True, max_length=50)
        assessment = CharField(null=True, max_length=20)
        eligible_from = BigIntegerField(null=True)
        eligible_until = BigIntegerField(null=True)
        claimed_at = BigIntegerField(null=True)
        version = IntegerField(default=0)

        class Meta:
            database = db
            table_name = "lineage"
            indexes = (
                (("latest_failed", "lineage_id"), False),
                (("state", "assessment", "eligible_from"), False),
                (("state", "assessment", "eligible_until"), False),
                (("package", "connector_id"), True),
                (("connector_id", "state"), False),
            )

    db.create_tables([Lineage])

    class DeliveryAttempt(Model):
        attempt_id = CharField(primary_key=True, max_length=40)
        lineage = ForeignKeyField(Lineage)
        attempt_number = IntegerField()
        package_id = CharField(max_length=64)
        connector_id = CharField(max_length=100)
        connector_type = CharField(max_length=50)
        outcome = CharField(max_length=20)
        error_class = CharField(null=True, max_length=50)
        http_status = IntegerField(null=True)
        retry_after_raw = CharField(null=True, max_length=64)
        retry_after_at = BigIntegerField(null=True)
        started_at = BigIntegerField()
        finished_at = BigIntegerField()
        duration_ms = IntegerField()
        source = CharField(max_length=20)
        worker_run_id = CharField(null=True, max_length=40)

        class Meta:
            database = db
            table_name = "delivery_attempt"
            indexes = (
                (("lineage", "attempt_number"), True),
                (("started_at", "attempt_id"), False),
                (("connector_id", "started_at", "attempt_id"), False),
                (("outcome", "started_at", "attempt_id"), False),
            )

    db.create_tables([DeliveryAttempt])

    class RetryPlan(Model):
        retry_plan_id = CharField(primary_key=True, max_length=40)
        plan_hash = CharField(max_length=64)
        generated_at = BigIntegerField()
        generated_by = CharField(max_length=200)
        policy = TextField()
        decision_count = IntegerField()
        retryable_count = IntegerField()
        waiting_count = IntegerField()
        suppressed_count = IntegerField()
        alert_level = CharField(max_length=20)

        class Meta:
            database = db
            table_name = "retry_plan"
            indexes = ((("generated_at", "retry_plan_id"), False),)

    db.create_tables([RetryPlan])

    class RetryDecision(Model):
        decision_id = CharField(primary_key=True, max_length=40)
        plan = ForeignKeyField(RetryPlan)
        position = IntegerField()
        lineage_id = CharField(max_length=40)
        lineage_version = IntegerField()
        package_id = CharField(max_length=64)
        connector_id = CharField(max_length=100)
        action = CharField(max_length=20)
        reason = CharField(max_length=50)
        explanation = TextField()
        retry_count = IntegerField()
        max_retry_attempts = IntegerField()
        retry_delay_seconds = IntegerField()
        not_before = BigIntegerField(null=True)
        not_after = BigIntegerField(null=True)
        failed_status_codes = TextField()

        class Meta:
            database = db
            table_name = "retry_decision"
            indexes = ((("plan", "position"), True), (("lineage_id",), False))

    db.create_tables([RetryDecision])

    class WorkerRun(Model):
        run_id = CharField(primary_key=True, max_length=40)
        dry_run = BooleanField()
        trigger = CharField(max_length=20)
        interval_minutes = IntegerField()
        window_start = BigIntegerField()
        window_end = BigIntegerField()
        cadence = CharField(max_length=64)
        enabled = BooleanField()
        started_at = BigIntegerField()
        finished_at = BigIntegerField()
        generated_by = CharField(max_length=200)
        policy = TextField()
        retryable_count = IntegerField()
        waiting_count = IntegerField()
        suppressed_count = IntegerField()
        selected_retry_count = IntegerField()
        executed_count = IntegerField()
        skipped_count = IntegerField()
        notes = TextField(default="[]")
        selected_retries = TextField(default="[]")

        class Meta:
            database = db
            table_name = "worker_run"
            indexes = (
                (("started_at", "run_id"), False),
                (("dry_run", "started_at", "run_id"), False),
            )

    db.create_tables([WorkerRun])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("worker_run"))
    migrator.migrate(migrator.drop_table("retry_decision"))
    migrator.migrate(migrator.drop_table("retry_plan"))
    migrator.migrate(migrator.drop_table("delivery_attempt"))
    migrator.migrate(migrator.drop_table("lineage"))
    migrator.migrate(migrator.drop_table("counter"))
    migrator.migrate(migrator.drop_table("acknowledgement"))
    migrator.migrate(migrator.drop_table("audit_package"))
