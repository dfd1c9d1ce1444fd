"""Job items' outcomes: `job_items.outcome`, an item's outcome in its kind's words (an eval
run's `pass`, `fail` or `error`), with the index `ix_job_items_outcome` (job_id, outcome),
so that a run's result counts are one GROUP BY read from the index instead of every output
item parsed. The items of eval runs already finished are filled in from their results.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# An eval item's result is its output item as JSON, whose `status` is its outcome.
_STATUS = {
    "sqlite": "json_extract(result, '$.status')",
    "postgresql": "(CAST(result AS json) ->> 'status')",
}


def upgrade() -> None:
    with op.batch_alter_table("job_items") as batch:
        batch.add_column(sa.Column("outcome", sa.String(8), nullable=True))
    status = _STATUS[op.get_bind().dialect.name]
    op.execute(
        f"UPDATE job_items SET outcome = {status} WHERE result IS NOT NULL"
        " AND job_id IN (SELECT id FROM jobs WHERE kind = 'eval')"
    )
    op.create_index("ix_job_items_outcome", "job_items", ["job_id", "outcome"])


def downgrade() -> None:
    op.drop_index("ix_job_items_outcome", table_name="job_items")
    with op.batch_alter_table("job_items") as batch:
        batch.drop_column("outcome")
