"""The fine-tuning job kind: one training run as the job's single item.

A batch is many short items; a training run is one long step. It fits the runner's item
model unchanged as a job of one item (no change to the runner or `JobKind`):

- `validate` checks the training (and validation) file again, as the API did at
  creation, and adds the one item;
- the worker runs `train.train` on a thread for that item. The runner's heartbeat keeps
  the item's lease while it trains; a cancel or pause (the job leaves `in_progress`) or
  a shutdown cancels the item's task, which asks the trainer to stop at the next step
  boundary (a checkpoint is written there) and waits for it, so the item is given back
  with its position saved. When the process dies instead, the lease lapses and the next
  runner to claim the item resumes from the last checkpoint (`train` resumes from what
  is in the job's directory);
- the item's result is the final metrics; `finalize` records the tuned model's name, the
  adapter's SHA-256 and the metrics in the job's params (the catalog serves it from them).

With `training: {backend: ray}` the worker runs `ray_backend.train_on_ray` instead of
`train.train`: the same training on a Ray cluster, ending the same way.

Training events (step, train loss, validation loss, tokens/s, checkpoints) are job events
at level `metrics`, their message the JSON of the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cumulo.config import TrainingConfig
from cumulo.errors import NotFound
from cumulo.files import FileStore
from cumulo.jobs.finetune.data import parse_file
from cumulo.jobs.finetune.hashes import cache_file, sha256_of_dir, weights_sha256
from cumulo.jobs.kinds import JobInvalid
from cumulo.jobs.runner import CANCELLED, CANCELLING, IN_PROGRESS
from cumulo.origin import Origin
from cumulo.store.jobs import COMPLETED, FAILED, ItemResult, ItemRow, JobRow, JobTable

log = logging.getLogger(__name__)

KIND = "fine_tuning"
METRICS = "metrics"
WATCH_S = 0.5  # how often a training run looks at its job's status


def job_dir(home: Path, job_id: str) -> Path:
    """Where a job's checkpoints, adapter and merged model live."""
    return home / "finetune" / job_id


async def read_all(files: FileStore, tenant_id: str | None, file_id: str) -> tuple[bytes, str]:
    record = await files.get(tenant_id, file_id)
    parts = [chunk async for chunk in files.content(record)]
    return b"".join(parts), record.sha256


class FineTuneKind:
    name = KIND

    def __init__(
        self,
        files: FileStore,
        jobs: JobTable,
        home: Path,
        training: TrainingConfig | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
        charge: Callable[[JobRow, int], None] | None = None,
    ) -> None:
        self.training = training or TrainingConfig()  # where jobs train (local or Ray)
        self.charge = charge  # records a finished run's training tokens in usage and budgets
        self.ready = ready  # training waits for it: the served models have loaded
        self.files = files
        self.jobs = jobs
        self.home = home

    def origin(self, job: JobRow) -> Origin:
        return Origin(KIND, job.id)

    def audit_data(self, job: JobRow) -> dict[str, Any]:
        p = job.params
        return {
            "training_file": p.get("training_file", job.input_file_id),
            "training_sha256": p.get("training_sha256", job.input_sha256),
            "trained_file": job.input_file_id,  # the file as the guardrails left it
            "trained_sha256": job.input_sha256,
            "data_checks": p.get("data_checks"),
            "base_model": p.get("model"),
            "base_sha256": p.get("base_sha256"),
            "base_path": p.get("base_path"),
            "hyperparameters": p.get("hyperparameters"),
            "adapter_sha256": p.get("adapter_sha256"),
            "fine_tuned_model": p.get("fine_tuned_model"),
        }

    async def _examples(self, job: JobRow, file_id: str | None) -> list[list[dict[str, Any]]]:
        if file_id is None:
            return []
        try:
            content, _ = await read_all(self.files, job.tenant_id, file_id)
        except NotFound:
            raise JobInvalid(
                [
                    {
                        "code": "file_not_found",
                        "message": f"The file {file_id} was deleted.",
                        "param": "training_file",
                        "line": None,
                    }
                ]
            ) from None
        examples, errors = parse_file(content)
        if errors:
            raise JobInvalid(errors)
        return examples

    async def validate(
        self, job: JobRow, add_items: Callable[[list[tuple[int, int, int]]], Awaitable[None]]
    ) -> int:
        await self._examples(job, job.input_file_id)
        await self._examples(job, job.params.get("validation_file"))
        await add_items([(0, 0, 0)])
        return 1

    def worker(self, job: JobRow) -> _TrainWorker:
        return _TrainWorker(self, job)

    async def finalize(self, job: JobRow) -> dict[str, Any]:
        if job.ending != "completed" or job.completed != 1:
            return {}
        out = job_dir(self.home, job.id)
        adapter_sha = await asyncio.to_thread(sha256_of_dir, out / "adapter")
        p = job.params
        base_sha = p.get("base_sha256")
        if not base_sha:
            base_sha = await asyncio.to_thread(
                weights_sha256, Path(p["base_path"]), cache_file(self.home)
            )
        name = f"ft:{p['model']}:{p.get('suffix') or 'custom'}:{job.id}"
        results = [r async for _, r in self.jobs.results(job.id, COMPLETED)]
        metrics = json.loads(results[0]) if results and results[0] else {}
        params = {
            **p,
            "fine_tuned_model": name,
            "adapter_sha256": adapter_sha,
            "base_sha256": base_sha,
            "model_path": str(out / "model"),
            "result": metrics,
        }
        if self.charge is not None:
            self.charge(job, int(p.get("estimated_tokens") or 0))
        return {"params": params}


def _own_thread(work: Callable[[], dict[str, Any]]) -> asyncio.Future[dict[str, Any]]:
    """`work()` on a thread of its own (not the loop's shared executor: the trainer lowers
    its thread's priority and sets its thread count, which must not outlive the run)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cumulo-train")
    try:
        return asyncio.get_running_loop().run_in_executor(pool, work)
    finally:
        pool.shutdown(wait=False)  # its one thread ends with `work`


async def _watch(
    jobs: JobTable, job_id: str, stop: threading.Event, discard: threading.Event
) -> None:
    """Tell the trainer at once when its job leaves `in_progress` (not at the runner's next
    heartbeat, nor only when the item's lease is given back): stop for a pause, and stop
    without writing another checkpoint for a cancel. A checkpoint is never written after
    the job is reported cancelled."""
    while not stop.is_set():
        await asyncio.sleep(WATCH_S)
        await _look(jobs, job_id, stop, discard)


async def _look(
    jobs: JobTable, job_id: str, stop: threading.Event, discard: threading.Event
) -> None:
    """Read the job's status once: out of `in_progress` sets `stop`; cancelled (or gone)
    also sets `discard`. A database that does not answer changes nothing."""
    with contextlib.suppress(Exception):  # the database is away: the runner stops us in time
        row = (await jobs.statuses([job_id])).get(job_id)
        status = None if row is None else row.status
        if status in (None, CANCELLING, CANCELLED):
            discard.set()
        if status != IN_PROGRESS:
            stop.set()


class _TrainWorker:
    def __init__(self, kind: FineTuneKind, job: JobRow) -> None:
        self.kind = kind
        self.job = job

    async def load(self, items: Sequence[ItemRow]) -> list[bytes]:
        return [b"" for _ in items]

    async def run(self, item: ItemRow, payload: bytes) -> ItemResult | None:
        from cumulo.jobs.finetune.train import Stopped, TrainSpec, train

        job, kind = self.job, self.kind
        p = job.params
        hp = p.get("hyperparameters") or {}
        lora = p.get("lora") or {}
        spec = TrainSpec(
            base_path=Path(p["base_path"]),
            out_dir=job_dir(kind.home, job.id),
            examples=await kind._examples(job, job.input_file_id),
            validation=await kind._examples(job, p.get("validation_file")),
            n_epochs=int(hp["n_epochs"]),
            batch_size=int(hp["batch_size"]),
            learning_rate_multiplier=float(hp["learning_rate_multiplier"]),
            seed=int(p.get("seed") or 0),
            rank=int(lora.get("rank", 8)),
            alpha=int(lora.get("alpha", 16)),
            dropout=float(lora.get("dropout", 0.0)),
            checkpoint_every=int(p.get("checkpoint_every", 10)),
            threads=kind.training.threads,
            nice=kind.training.nice,
            dtype=kind.training.dtype,
            micro_batch_tokens=kind.training.micro_batch_tokens,
        )
        if kind.ready is not None:  # transformers' first imports are not thread-safe
            await kind.ready()
        loop = asyncio.get_running_loop()
        stop, discard = threading.Event(), threading.Event()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def on_event(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        async def write_events() -> None:
            while (event := await queue.get()) is not None:
                if event.get("type") == "message":
                    await kind.jobs.add_event(job.id, str(event["message"]))
                else:
                    await kind.jobs.add_event(job.id, json.dumps(event), METRICS)

        writer = asyncio.create_task(write_events())
        if item.attempt > 1:
            await kind.jobs.add_event(job.id, f"training resumes (attempt {item.attempt})")
        else:
            await kind.jobs.add_event(job.id, "training starts")
        run: Callable[..., dict[str, Any]]
        if kind.training.backend == "ray":
            from cumulo.jobs.finetune.ray_backend import train_on_ray

            storage = kind.training.storage(kind.home)
            run = functools.partial(
                train_on_ray, config=kind.training, storage=storage, name=job.id
            )
        else:
            run = functools.partial(train, discard=discard.is_set)
        thread = _own_thread(lambda: run(spec, on_event=on_event, should_stop=stop.is_set))
        watcher = asyncio.create_task(_watch(kind.jobs, job.id, stop, discard))
        try:
            try:
                metrics = await asyncio.shield(thread)
            except asyncio.CancelledError:
                await _look(kind.jobs, job.id, stop, discard)  # a cancel writes nothing more
                stop.set()  # a pause or a shutdown: a checkpoint at the next step, then stop
                with contextlib.suppress(Stopped, Exception):
                    await thread
                raise
            except Stopped:
                return None
            except Exception as exc:
                log.exception("job %s: training failed", job.id)
                await kind.jobs.add_event(job.id, f"training failed: {exc}", "error")
                return ItemResult(item.idx, FAILED, json.dumps({"error": str(exc)}))
            return ItemResult(item.idx, COMPLETED, json.dumps(metrics))
        finally:
            watcher.cancel()
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.shield(writer)

    async def close(self) -> None:
        return None


__all__ = [
    "KIND",
    "METRICS",
    "FineTuneKind",
    "job_dir",
    "read_all",
]
