"""Attempts listed by error class read a range of an index, not the table."""


def up(migrator, db):
    migrator.migrate(
        migrator.add_index(
            "delivery_attempt", ("error_class", "started_at", "attempt_id"), False
        ),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_index(
            "delivery_attempt", "delivery_attempt_error_class_started_at_attempt_id"
        ),
    )
