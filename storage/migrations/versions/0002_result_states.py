"""Result states: a study result says whether it was analysed, why not, and how many views.

``fracture_probability`` and ``positive`` become nullable: a study that was not analysed has
no number. Existing results were all analysed; their view counts are unknown (0).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("state", sa.String(length=16), nullable=False,
                                   server_default="analysed"))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("views_analysed", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("views_total", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.alter_column("fracture_probability", existing_type=sa.Float(), nullable=True)
        batch.alter_column("positive", existing_type=sa.Boolean(), nullable=True)
        batch.create_check_constraint(op.f("ck_results_state"),
                                      "state IN ('analysed', 'not_analysed')")
    # The defaults were for the rows already there; new rows always say what they are.
    with op.batch_alter_table("results") as batch:
        batch.alter_column("state", existing_type=sa.String(length=16), server_default=None)
        batch.alter_column("views_analysed", existing_type=sa.Integer(), server_default=None)
        batch.alter_column("views_total", existing_type=sa.Integer(), server_default=None)


def downgrade() -> None:
    # A study that was not analysed has no probability to keep: its rows go.
    op.execute("DELETE FROM results WHERE fracture_probability IS NULL")
    with op.batch_alter_table("results") as batch:
        batch.drop_constraint(op.f("ck_results_state"), type_="check")
        batch.alter_column("positive", existing_type=sa.Boolean(), nullable=False)
        batch.alter_column("fracture_probability", existing_type=sa.Float(), nullable=False)
        batch.drop_column("views_total")
        batch.drop_column("views_analysed")
        batch.drop_column("reason")
        batch.drop_column("state")
