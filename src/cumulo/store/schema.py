"""Table definitions. The schema is changed only by migrations (`migrations/versions`)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(16), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    Column("secret_enc", String(256), nullable=True),  # 0002: for SigV4 (governance/masterkey)
    # 0005: tenancy and scopes (NULL: not narrowed)
    Column("tenant_id", String(32), nullable=True),
    Column("models", JSON, nullable=True),
    Column("limits", JSON, nullable=True),
    Column("budget", JSON, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("updated_at", Float, nullable=True),
    Index("ix_api_keys_tenant", "tenant_id"),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("models", JSON, nullable=True),
    Column("limits", JSON, nullable=True),
    Column("budget", JSON, nullable=True),
    Column("guardrails", JSON, nullable=True),
    Column("log_invocations", Boolean, nullable=False, server_default=false()),
    Column("log_retention_days", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("deleted_at", Float, nullable=True),
)

usage = Table(
    "usage",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("deployment", String(256), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("served_model", String(128), nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("queue_ms", Float, nullable=True),  # 0004: wait for a local engine slot
    Column("tenant_id", String(32), nullable=True),  # 0005
    Column("cost_usd", Float, nullable=True),  # 0005
    Column("guardrail_interventions", Integer, nullable=False, server_default="0"),  # 0005
    Column("origin", String(16), nullable=True),  # 0010: the job kind ("batch"); NULL: a client
    Column("job_id", String(40), nullable=True),  # 0010
    # 0014: of prompt_tokens, those read from a prompt cache
    Column("cached_tokens", Integer, nullable=False, server_default="0"),
    Index("ix_usage_ts", "ts"),
    Index("ix_usage_key_model", "key_id", "model"),
    Index("ix_usage_tenant_ts", "tenant_id", "ts"),
    # 0012: the console's charts sum these over a time range from the index alone
    Index(
        "ix_usage_ts_cover",
        "ts",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "model",
        "key_id",
        "tenant_id",
        "latency_ms",
    ),
    Index("ix_usage_job", "job_id"),
)

# 0007: alerts (anomalies, budget thresholds) and logged invocations (tenants that opt in)
alerts = Table(
    "alerts",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("tenant_id", String(32), nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("message", Text, nullable=False),
    Column("details", JSON, nullable=True),
    Index("ix_alerts_ts", "ts"),
    Index("ix_alerts_tenant_ts", "tenant_id", "ts"),
)

invocation_logs = Table(
    "invocation_logs",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("ts", Float, nullable=False),
    Column("tenant_id", String(32), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(128), nullable=False),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=True),
    Column("completion_tokens", Integer, nullable=True),
    Column("request_json", Text, nullable=False),  # the request's messages/prompt, as JSON
    Column("response_text", Text, nullable=True),
    Index("ix_invocation_logs_tenant_ts", "tenant_id", "ts"),
)

# 0006: the audit ledger, hash-chained (governance/ledger.py), and its MAC'd head checkpoint
ledger = Table(
    "ledger",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(64), nullable=True),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=True),
    Column("tenant_id", String(32), nullable=True),
    Column("data", Text, nullable=False),  # canonical JSON of an object
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
    Index("ix_ledger_hash", "hash"),
    Index("ix_ledger_tenant_seq", "tenant_id", "seq"),
)

ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# 0008: how far each usage journal (governance/journal.py) is written into `usage`, committed
# in the same transaction as the rows, so a journal replayed after a crash adds each row once
usage_journal = Table(
    "usage_journal",
    metadata,
    Column("id", String(64), primary_key=True),  # the journal file's id
    Column("seq", BigInteger, nullable=False),  # its last record written to `usage`
    Column("updated_at", Float, nullable=False),
)

# 0009: uploaded files (cumulo/files) and their content-addressed blobs. A file row names its
# blob by SHA-256; `file_blobs.refs` counts the rows naming it, and its row is the lock that
# orders storing a blob against removing it (a blob is removed when its count reaches 0)
files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),  # file-<24 base62 characters>
    Column("tenant_id", String(32), nullable=True),  # NULL: a key without a tenant
    Column("key_id", String(32), nullable=True),  # the uploader's key
    Column("purpose", String(32), nullable=False),
    Column("filename", String(256), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # pending (blob being stored), processed
    Index("ix_files_tenant_created", "tenant_id", "created_at"),
    Index("ix_files_sha256", "sha256"),
)

file_blobs = Table(
    "file_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("refs", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# 0010: jobs (cumulo/jobs): the job record, its items (a batch's lines) and its event log.
# A job's `lease_*` belong to the worker validating or finalizing it; an item's to the worker
# running it. `ending`: the status a job ends with once finalized (completed, cancelled, expired)
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),  # batch_<32 hex>
    Column("kind", String(32), nullable=False),
    Column("tenant_id", String(32), nullable=True),
    Column("key_id", String(32), nullable=True),  # the owner's key
    Column("status", String(16), nullable=False),
    Column("ending", String(16), nullable=True),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finalizing_at", Float, nullable=True),
    Column("cancelling_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("error", JSON, nullable=True),
    Column("params", JSON, nullable=False),
    Column("input_file_id", String(40), nullable=True),
    Column("input_sha256", String(64), nullable=True),
    Column("output_file_id", String(40), nullable=True),
    Column("error_file_id", String(40), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("concurrency", Integer, nullable=True),
    Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
    Index("ix_jobs_status", "status", "priority", "created_at"),
)

job_items = Table(
    "job_items",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("line_offset", BigInteger, nullable=False),  # where the line starts in the input
    Column("line_length", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # pending, completed, failed
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("result", Text, nullable=True),  # the output (or error) file's line, JSON
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    # 0013: the item's outcome in its kind's words (an eval run's pass, fail or error), so
    # that a run's counts are one indexed GROUP BY
    Column("outcome", String(8), nullable=True),
    Index("ix_job_items_status", "job_id", "status", "idx"),
    Index("ix_job_items_outcome", "job_id", "outcome"),
)

job_events = Table(
    "job_events",
    metadata,
    Column("job_id", String(40), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
)

# 0011: evals (cumulo/evals): an eval's definition (data source config and testing criteria,
# as `POST /v1/evals` received them once checked) and which runs (jobs of kind `eval`) are its
evals = Table(
    "evals",
    metadata,
    Column("id", String(40), primary_key=True),  # eval_<32 hex>
    Column("tenant_id", String(32), nullable=True),
    Column("key_id", String(32), nullable=True),  # the creator's key
    Column("name", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("data_source_config", JSON, nullable=False),
    Column("testing_criteria", JSON, nullable=False),
    Column("metadata", JSON, nullable=True),
    Index("ix_evals_tenant_created", "tenant_id", "created_at"),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", String(40), primary_key=True),  # the run's job id
    Column("eval_id", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_eval_runs_eval", "eval_id", "created_at"),
)

# 0012: console sign-in sessions (`cumulo/console/session.py`): the SHA-256 of each session id,
# so that signing out revokes every copy of its cookie
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("key_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Index("ix_console_sessions_expires", "expires_at"),
)

# 0012: usage summed per UTC day, tenant, key and model (`store/usage_daily.py`), for the
# console's long ranges; '' stands for no tenant or key. The mark is the last usage id folded.
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Float, primary_key=True),
    Column("tenant_id", String(32), primary_key=True),
    Column("key_id", String(32), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Index("ix_usage_daily_tenant_day", "tenant_id", "day"),
)

usage_daily_mark = Table(
    "usage_daily_mark",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("upto", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)
