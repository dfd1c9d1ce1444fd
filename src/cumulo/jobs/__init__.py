"""Jobs: long-running work (batches now; evaluation and fine-tuning next) driven by one
runner per process, each unit of work sent through the gateway as the job's owner.

- `runner`: claiming, leases and heartbeats, concurrency, results written once,
  cancellation, expiry, events, audit and metrics, for every kind alike.
- `kinds`: what a job kind provides (check the input, run one item, deliver results).
- `batch/`: the batch kind (OpenAI's Batch API; `cumulo.api.batches` is its front door).
"""

from cumulo.jobs.kinds import AuditLog, ItemWorker, JobInvalid, JobKind
from cumulo.jobs.runner import JobMetrics, JobRunner, worker_id

__all__ = [
    "AuditLog",
    "ItemWorker",
    "JobInvalid",
    "JobKind",
    "JobMetrics",
    "JobRunner",
    "worker_id",
]
