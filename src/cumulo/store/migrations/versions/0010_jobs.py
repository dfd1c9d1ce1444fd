"""Jobs: one record per long-running task (batches first), its items and its events.

- `jobs`: kind, owner (key, tenant), status, counts, timestamps, parameters, the input file
  (id + SHA-256), output and error files, and the lease of the worker driving its
  validation or finalization (`cumulo/jobs/runner.py`).
- `job_items`: one row per unit of work (a batch line): where it is in the input file,
  its status, attempts, its result, and the lease of the worker running it. A result is
  written once, by an update conditional on the item still being pending.
- `job_events`: step-level log lines of a job.
- `usage.origin`, `usage.job_id`: usage records of jobs' requests say so, and name the job.

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


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("tenant_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ending", sa.String(16), nullable=True),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finalizing_at", sa.Float, nullable=True),
        sa.Column("cancelling_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("input_file_id", sa.String(40), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=True),
        sa.Column("output_file_id", sa.String(40), nullable=True),
        sa.Column("error_file_id", sa.String(40), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        sa.Column("concurrency", sa.Integer, nullable=True),
    )
    op.create_index("ix_jobs_tenant_created", "jobs", ["tenant_id", "created_at"])
    op.create_index("ix_jobs_status", "jobs", ["status", "priority", "created_at"])
    op.create_table(
        "job_items",
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("line_offset", sa.BigInteger, nullable=False),
        sa.Column("line_length", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_index("ix_job_items_status", "job_items", ["job_id", "status", "idx"])
    op.create_table(
        "job_events",
        sa.Column("job_id", sa.String(40), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("origin", sa.String(16), nullable=True))
        batch.add_column(sa.Column("job_id", sa.String(40), nullable=True))
    op.create_index("ix_usage_job", "usage", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_usage_job", "usage")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("job_id")
        batch.drop_column("origin")
    op.drop_table("job_events")
    op.drop_index("ix_job_items_status", "job_items")
    op.drop_table("job_items")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_tenant_created", "jobs")
    op.drop_table("jobs")
