"""Evals: `evals` (an eval's data source config and testing criteria) and `eval_runs` (which
jobs of kind `eval` are runs of which eval).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("data_source_config", sa.JSON, nullable=False),
        sa.Column("testing_criteria", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=True),
    )
    op.create_index("ix_evals_tenant_created", "evals", ["tenant_id", "created_at"])
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("eval_id", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_eval_runs_eval", "eval_runs", ["eval_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_eval_runs_eval", "eval_runs")
    op.drop_table("eval_runs")
    op.drop_index("ix_evals_tenant_created", "evals")
    op.drop_table("evals")
