"""Tenants; keys scoped to a tenant (models, limits, budget, expiry); usage cost.

- `tenants`: a name, the models it may use (NULL: all), limits, a budget, the
  guardrails applied to its traffic, and whether its invocations are logged.
- `api_keys`: the tenant it belongs to (NULL for platform admins), narrower
  models/limits/budget, and `expires_at` (set on the old key by rotation).
  Roles are now `admin`, `tenant_admin` and `caller`.
- `usage`: the tenant, the cost in USD, and guardrail interventions.

Existing keys keep working: they belong to no tenant, exactly as before.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("models", sa.JSON, nullable=True),
        sa.Column("limits", sa.JSON, nullable=True),
        sa.Column("budget", sa.JSON, nullable=True),
        sa.Column("guardrails", sa.JSON, nullable=True),
        sa.Column("log_invocations", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("log_retention_days", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("deleted_at", sa.Float, nullable=True),
    )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("models", sa.JSON, nullable=True))
        batch.add_column(sa.Column("limits", sa.JSON, nullable=True))
        batch.add_column(sa.Column("budget", sa.JSON, nullable=True))
        batch.add_column(sa.Column("expires_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("updated_at", sa.Float, nullable=True))
        batch.create_index("ix_api_keys_tenant", ["tenant_id"])
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("tenant_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("cost_usd", sa.Float, nullable=True))
        batch.add_column(
            sa.Column("guardrail_interventions", sa.Integer, nullable=False, server_default="0")
        )
        batch.create_index("ix_usage_tenant_ts", ["tenant_id", "ts"])


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_index("ix_usage_tenant_ts")
        batch.drop_column("guardrail_interventions")
        batch.drop_column("cost_usd")
        batch.drop_column("tenant_id")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_tenant")
        for col in ("updated_at", "expires_at", "budget", "limits", "models", "tenant_id"):
            batch.drop_column(col)
    op.drop_table("tenants")
