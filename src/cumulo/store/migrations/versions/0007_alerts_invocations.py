"""Alerts and invocation logs.

- `alerts`: one row per alert raised by any replica (a key's traffic deviating
  from its baseline, a budget's soft threshold, ...), read by `GET /admin/alerts`.
- `invocation_logs`: the prompts and responses of tenants that turned logging
  on, deleted once older than the tenant's retention.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _id() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def upgrade() -> None:
    op.create_table(
        "alerts",
        _id(),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=True),
    )
    op.create_index("ix_alerts_ts", "alerts", ["ts"])
    op.create_index("ix_alerts_tenant_ts", "alerts", ["tenant_id", "ts"])
    op.create_table(
        "invocation_logs",
        _id(),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("request_json", sa.Text, nullable=False),
        sa.Column("response_text", sa.Text, nullable=True),
    )
    op.create_index("ix_invocation_logs_tenant_ts", "invocation_logs", ["tenant_id", "ts"])


def downgrade() -> None:
    op.drop_index("ix_invocation_logs_tenant_ts", "invocation_logs")
    op.drop_table("invocation_logs")
    op.drop_index("ix_alerts_tenant_ts", "alerts")
    op.drop_index("ix_alerts_ts", "alerts")
    op.drop_table("alerts")
