"""Batches: re-processing runs over many studies (pulled from a remote archive or taken
from the index), their per-study items, and the batch each job was made for.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types (see 0001).
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
BATCH_STATES = "('querying', 'running', 'paused', 'cancelled', 'done', 'failed')"
ITEM_STATES = ("('pending', 'querying', 'retrieving', 'settled', 'processing', 'done', "
               "'skipped', 'failed')")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("remote", sa.String(length=64), nullable=True),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=True),
        sa.Column("model_key", sa.String(length=512), nullable=False),
        sa.Column("deliver", sa.String(length=600), nullable=False),
        sa.Column("skip_done", sa.Boolean(), nullable=False),
        sa.Column("max_retrieves", sa.Integer(), nullable=False),
        sa.Column("window", sa.String(length=16), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("query_attempts", sa.Integer(), nullable=False),
        sa.Column("next_query_at", TIMESTAMP, nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(f"state IN {BATCH_STATES}", name=op.f("ck_batches_state")),
        sa.CheckConstraint("source IN ('remote', 'local')", name=op.f("ck_batches_source")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_state"), "batches", ["state"])
    op.create_table(
        "batch_items",
        sa.Column("id", ID, nullable=False),
        sa.Column("batch_id", ID, nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(f"state IN {ITEM_STATES}", name=op.f("ck_batch_items_state")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE",
                                name=op.f("fk_batch_items_batch_id_batches")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL",
                                name=op.f("fk_batch_items_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_items")),
        sa.UniqueConstraint("batch_id", "study_instance_uid",
                            name=op.f("uq_batch_items_batch_id_study_instance_uid")),
    )
    op.create_index("ix_batch_items_batch_id_state", "batch_items", ["batch_id", "state"])
    op.create_index("ix_batch_items_study_instance_uid_state", "batch_items",
                    ["study_instance_uid", "state"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("batch_id", ID, nullable=True))
        batch.create_foreign_key(op.f("fk_jobs_batch_id_batches"), "batches", ["batch_id"],
                                 ["id"], ondelete="SET NULL")
        batch.create_index(op.f("ix_jobs_batch_id"), ["batch_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_batch_id"))
        batch.drop_constraint(op.f("fk_jobs_batch_id_batches"), type_="foreignkey")
        batch.drop_column("batch_id")
    op.drop_index("ix_batch_items_study_instance_uid_state", table_name="batch_items")
    op.drop_index("ix_batch_items_batch_id_state", table_name="batch_items")
    op.drop_table("batch_items")
    op.drop_index(op.f("ix_batches_state"), table_name="batches")
    op.drop_table("batches")
