"""Usage journal checkpoints.

- `usage_journal`: per journal file (one per gateway process, `governance/journal.py`),
  the sequence number of its last record stored in `usage`. It is updated in the same
  transaction as the rows, so replaying a journal after a crash stores each record once.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_journal",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_journal")
