"""Scheduled runs: one per schedule window; delivery counters for the metrics.

Gives every scheduled worker run a window key that the database keeps
unique, widens counter names so that a connector id fits in one, and counts
the delivery attempts already recorded so the delivery metrics start from
the store's history rather than from zero.
"""

from peewee import CharField, PostgresqlDatabase


def up(migrator, db):
    migrator.migrate(
        migrator.add_column(
            "worker_run", "schedule_window_key", CharField(null=True, max_length=80)
        ),
        migrator.add_index("worker_run", ("schedule_window_key",), True),
    )
    # SQLite does not enforce a VARCHAR length; PostgreSQL does.
    if isinstance(db, PostgresqlDatabase):
        migrator.migrate(
            migrator.alter_column_type("counter", "name", CharField(max_length=200))
        )
    db.execute_sql(
        "INSERT INTO counter (name, value) "
        "SELECT 'deliveries:' || source || ':' || outcome || ':' || connector_id, "
        "COUNT(*) FROM delivery_attempt GROUP BY source, outcome, connector_id"
    )


def down(migrator, db):
    db.execute_sql(f"DELETE FROM counter WHERE name LIKE {db.param}", ("deliveries:%",))
    if isinstance(db, PostgresqlDatabase):
        migrator.migrate(
            migrator.alter_column_type("counter", "name", CharField(max_length=64))
        )
    migrator.migrate(
        migrator.drop_index("worker_run", "worker_run_schedule_window_key"),
        migrator.drop_column("worker_run", "schedule_window_key"),
    )
