"""API keys: the secret encrypted under the master key, for AWS SigV4 verification.

Nullable: keys created before this migration keep only their hash and can be
used as bearer tokens only (see cumulo.governance.identity.masterkey).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("secret_enc", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("secret_enc")
