"""Triage: a study's triage priority, the sender's urgency (a floor the result never
lowers), the history of every priority change, and the queue lane of each job.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types (see 0001).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
PRIORITIES = "('HIGH', 'MEDIUM', 'LOW', 'NOT_ANALYSED', 'FAILED')"


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("triage_priority", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("requested_priority", sa.String(length=64), nullable=True))
        batch.create_check_constraint(
            op.f("ck_studies_triage_priority"),
            f"triage_priority IS NULL OR triage_priority IN {PRIORITIES}")
        batch.create_index(op.f("ix_studies_triage_priority"), ["triage_priority"])
    with op.batch_alter_table("jobs") as batch:  # live: what every earlier job was
        batch.add_column(sa.Column("lane", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "priority_events",
        sa.Column("id", ID, nullable=False),
        sa.Column("study_id", ID, nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(f"priority IN {PRIORITIES}", name=op.f("ck_priority_events_priority")),
        sa.CheckConstraint("source IN ('result', 'sender', 'user')",
                           name=op.f("ck_priority_events_source")),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE",
                                name=op.f("fk_priority_events_study_id_studies")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL",
                                name=op.f("fk_priority_events_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_priority_events")),
    )
    op.create_index(op.f("ix_priority_events_study_id"), "priority_events", ["study_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_priority_events_study_id"), table_name="priority_events")
    op.drop_table("priority_events")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lane")
    with op.batch_alter_table("studies") as batch:
        batch.drop_index(op.f("ix_studies_triage_priority"))
        batch.drop_constraint(op.f("ck_studies_triage_priority"), type_="check")
        batch.drop_column("requested_priority")
        batch.drop_column("triage_priority")
