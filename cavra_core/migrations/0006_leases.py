"""Leased claims: queued executions that any worker may claim for a while.

A live run queues its approved retries as executions; a worker claims a
batch of them under a lease (its id and an expiry) and extends the lease
while the deliveries are in hand. An expired lease is rescued by any worker.
Worker runs gain a state, so workers joining a window's run know when the
window's work is done. Claims left from before are made rescuable.
"""

from peewee import BigIntegerField, CharField, IntegerField


def up(migrator, db):
    migrator.migrate(
        migrator.add_column(
            "execution", "worker_id", CharField(null=True, max_length=100)
        ),
        migrator.add_column(
            "execution", "lease_owner", CharField(null=True, max_length=100)
        ),
        migrator.add_column(
            "execution", "lease_expires_at", BigIntegerField(null=True)
        ),
        migrator.add_column("execution", "due_at", BigIntegerField(null=True)),
        migrator.add_column("execution", "rescue_count", IntegerField(default=0)),
        migrator.add_index("execution", ("outcome", "due_at"), False),
        migrator.add_column(
            "worker_run", "state", CharField(max_length=20, default="finished")
        ),
    )
    # A claim left by a worker that stopped between sending and recording,
    # before leases existed, is taken as an expired lease: the next live
    # worker rescues it (sending again under the lineage's event id, unless
    # the attempt has been recorded meanwhile).
    db.execute_sql(
        "UPDATE execution SET lease_expires_at = 0 WHERE outcome = 'claimed'"
    )


def down(migrator, db):
    migrator.migrate(
        migrator.drop_column("worker_run", "state"),
        migrator.drop_index("execution", "execution_outcome_due_at"),
        migrator.drop_column("execution", "rescue_count"),
        migrator.drop_column("execution", "due_at"),
        migrator.drop_column("execution", "lease_expires_at"),
        migrator.drop_column("execution", "lease_owner"),
        migrator.drop_column("execution", "worker_id"),
    )
