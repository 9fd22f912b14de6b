"""
Claims read the queue in the order they take it, from an index.

Workers claim queued executions by due time, then execution id. An index on
the outcome and the due time alone left the database sorting every queued
execution with the same due time for each batch (a bulk re-delivery queues
thousands at once); with the execution id in the index a claim reads just
its batch.
"""


def up(migrator, db):
    migrator.migrate(
        migrator.drop_index("execution", "execution_outcome_due_at"),
        migrator.add_index("execution", ("outcome", "due_at", "execution_id"), False),
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_index("execution", "execution_outcome_due_at_execution_id"),
        migrator.add_index("execution", ("outcome", "due_at"), False),
    )
