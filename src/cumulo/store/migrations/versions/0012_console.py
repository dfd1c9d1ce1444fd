"""The web console: its sign-in sessions, and an index for its usage charts.

- `console_sessions`: one row per console sign-in. The cookie carries the session id
  (signed); the row holds only its SHA-256, the key that signed in and when it expires
  or was signed out, so a cookie stops working everywhere the moment its session is
  revoked (sign-out), whoever holds a copy.
- `ix_usage_ts_cover`: usage by time with the columns the console's charts sum and its
  table sorts on, so a time range is aggregated (or sorted) from the index alone.
- `usage_daily`: usage summed per UTC day, tenant, key and model, for the console's long
  ranges (7 and 30 days); `usage_daily_mark` holds the last usage id folded into it.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COVER = [
    "ts", "status", "prompt_tokens", "completion_tokens", "cost_usd", "model", "key_id",
    "tenant_id", "latency_ms",
]  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at"])
    op.create_index("ix_usage_ts_cover", "usage", _COVER)
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Float, nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("day", "tenant_id", "key_id", "model"),
    )
    op.create_index("ix_usage_daily_tenant_day", "usage_daily", ["tenant_id", "day"])
    op.create_table(
        "usage_daily_mark",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("upto", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.execute("INSERT INTO usage_daily_mark (id, upto, updated_at) VALUES (1, 0, 0)")


def downgrade() -> None:
    op.drop_table("usage_daily_mark")
    op.drop_index("ix_usage_daily_tenant_day", table_name="usage_daily")
    op.drop_table("usage_daily")
    op.drop_index("ix_usage_ts_cover", table_name="usage")
    op.drop_index("ix_console_sessions_expires", table_name="console_sessions")
    op.drop_table("console_sessions")
