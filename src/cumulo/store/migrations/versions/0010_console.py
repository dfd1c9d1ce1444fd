"""The web console: its sign-in sessions, and an index for its usage charts.

- `console_sessions`: one row per console sign-in. The cookie carries the session id
  (signed); the row holds only its SHA-256, the key that signed in and when it expires
  or was signed out, so a cookie stops working everywhere the moment its session is
  revoked (sign-out), whoever holds a copy.
- `ix_usage_ts_cover`: usage by time with the columns the console's charts sum, so
  the overview aggregates a time range from the index alone.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COVER = ["ts", "status", "prompt_tokens", "completion_tokens", "cost_usd", "model", "key_id"]


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


def downgrade() -> None:
    op.drop_index("ix_usage_ts_cover", table_name="usage")
    op.drop_index("ix_console_sessions_expires", table_name="console_sessions")
    op.drop_table("console_sessions")
