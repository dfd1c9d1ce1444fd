"""The audit ledger: hash-chained entries of admin actions, and its head checkpoint.

- `ledger`: one row per entry, `seq` 1, 2, 3 ... with no gaps; each row's `hash`
  chains it to the previous one and its `mac` authenticates it under a key derived
  from the master key (see `cumulo.governance.audit.ledger`).
- `ledger_head`: one row (id 1): the newest entry's seq and hash, MAC'd, so that
  deleting the newest entries is detected.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256), nullable=True),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    op.create_index("ix_ledger_hash", "ledger", ["hash"])
    op.create_index("ix_ledger_tenant_seq", "ledger", ["tenant_id", "seq"])
    op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_head")
    op.drop_index("ix_ledger_tenant_seq", "ledger")
    op.drop_index("ix_ledger_hash", "ledger")
    op.drop_table("ledger")
