"""Connector health: active, paused or disabled, with the failures that led there."""

from peewee import BigIntegerField, CharField, IntegerField, Model


def up(migrator, db):
    class ConnectorState(Model):
        connector_id = CharField(primary_key=True, max_length=100)
        state = CharField(max_length=20, default="active")
        state_reason = CharField(null=True, max_length=50)
        state_error_class = CharField(null=True, max_length=50)
        state_http_status = IntegerField(null=True)
        state_changed_at = BigIntegerField(null=True)
        state_changed_by = CharField(null=True, max_length=200)
        paused_fingerprint = CharField(null=True, max_length=64)
        consecutive_failures = IntegerField(default=0)
        last_failure_class = CharField(null=True, max_length=50)
        last_failure_category = CharField(null=True, max_length=20)
        last_failure_at = BigIntegerField(null=True)
        last_success_at = BigIntegerField(null=True)
        version = IntegerField(default=0)

        class Meta:
            database = db
            table_name = "connector_state"
            indexes = ((("state",), False),)

    db.create_tables([ConnectorState])


def down(migrator, db):
    migrator.migrate(migrator.drop_table("connector_state"))
