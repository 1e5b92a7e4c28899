"""One current result per study, and interruptions counted apart from failures.

- ``instances.job_id``: the job that produced an instance (the node's own results), so the
  results of a superseded job can be found, hidden and withdrawn.
- ``instances.superseded``: a produced instance replaced by a newer job's result; queries
  leave it out unless asked for history.
- ``jobs.failures``: runs that raised (bounded by ``max_attempts``); ``jobs.interruptions``:
  runs whose worker died (a lease expired, an orphan released at start), bounded by
  ``max_interruptions``. ``attempts`` stays the number of runs started (the fencing token).
  Existing jobs count their attempts as failures, as before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("failures", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("interruptions", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("max_interruptions", sa.Integer(), nullable=False,
                                   server_default="20"))
    op.execute("UPDATE jobs SET failures = attempts WHERE state = 'failed'")
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(),
                                                                            "sqlite"),
                                   nullable=True))
        batch.add_column(sa.Column("superseded", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.create_foreign_key(op.f("fk_instances_job_id_jobs"), "jobs", ["job_id"], ["id"],
                                 ondelete="SET NULL")
        batch.create_index(op.f("ix_instances_job_id"), ["job_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("failures", existing_type=sa.Integer(), server_default=None)
        batch.alter_column("interruptions", existing_type=sa.Integer(), server_default=None)
        batch.alter_column("max_interruptions", existing_type=sa.Integer(),
                           server_default=None)
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("superseded", existing_type=sa.Boolean(), server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_index(op.f("ix_instances_job_id"))
        batch.drop_constraint(op.f("fk_instances_job_id_jobs"), type_="foreignkey")
        batch.drop_column("superseded")
        batch.drop_column("job_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("max_interruptions")
        batch.drop_column("interruptions")
        batch.drop_column("failures")
