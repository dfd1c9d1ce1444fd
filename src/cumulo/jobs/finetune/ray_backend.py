"""Fine-tuning on a Ray cluster (`training: {backend: ray}`): Ray Train runs `train.train`.

`train_on_ray(spec, config, storage, name, on_event, should_stop)` is called instead of
`train.train` by the job's worker (on its thread), and ends the same way: the final
metrics, `Stopped` at a step boundary on request, or an exception.

- **Workers.** Ray Train's `TorchTrainer` starts `num_workers` processes on the cluster
  with a torch process group between them (gloo on CPU). Each runs `train.train` on a
  directory of its own with a `Parallel` hook: it takes every `num_workers`-th example of
  each step's batch, and the gradients of the adapter (and the step's loss and token
  counts) are summed across workers with one `all_reduce` before each optimizer update,
  the loss still divided by the whole batch's trained tokens. That is DDP's gradient
  all-reduce done once per step (the trainer accumulates over one example per forward
  pass, and a worker may have no example in a step), and the update is the one a single
  process would make: every worker holds the same weights.
- **Checkpoints in shared storage.** At each of `train`'s checkpoints every worker calls
  `ray.train.report` (a barrier); rank 0 hands over its `ckpt-step-N/`, which Ray Train
  persists as `<storage>/<job id>/ckpt-step-N`. A new run under the same name (after a
  pause, a cancel's stop, or the job worker's death) resumes from the latest one: Ray
  Train restores its run state from the storage and `ray.train.get_checkpoint()` gives
  each worker that checkpoint, which `train` then resumes from.
- **The job's directory stays as the local backend leaves it.** Each checkpoint is copied
  from the storage into the job's directory once reported (nothing to copy with the
  default storage, CUMULO_HOME/finetune: the run's directory is the job's), so the
  checkpoints API and `ckpt-step-N` models work unchanged; at the end `train.train` runs
  here once more on the job's directory: it resumes at the last step and writes the
  adapter and the merged model where the local backend writes them.
- **Events.** Rank 0 sends its events (step, loss, tokens/s summed over the workers,
  checkpoints) to a small actor of the run; this thread forwards them to `on_event`
  every `POLL_S`, and turns `should_stop()` into a request the workers see at their next
  step (rank 0 asks the actor, and the answer is all-reduced so every worker stops at the
  same step).

Ray is imported only here, and only when a job trains on it (the `cumulo[ray]` extra).
Every Ray node needs cumulo with that extra installed, and the base model at the same
path.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from cumulo.config import TrainingConfig
from cumulo.jobs.finetune.train import (
    CKPT_PREFIX,
    Stopped,
    TrainSpec,
    checkpoint_metrics,
    checkpoints,
    steps_per_epoch,
    train,
)

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often events are forwarded and a stop request is looked for
_connecting = threading.Lock()


def connect(config: TrainingConfig) -> None:
    """Connect this process to the configured Ray cluster (once: later jobs share it)."""
    import ray

    with _connecting:
        if ray.is_initialized():
            return
        extra: dict[str, Any] = {}
        if config.address == "local":  # a Ray instance of this process, on loopback
            extra = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        ray.init(address=config.address, log_to_driver=False, configure_logging=False, **extra)


class _Channel:
    """The run's mailbox between rank 0 and the driver (a Ray actor)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.stop = False
        self.outcome: str | None = None

    def put(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def ask_stop(self) -> None:
        self.stop = True

    def stopping(self) -> bool:
        return self.stop

    def finish(self, outcome: str) -> None:
        self.outcome = outcome

    def result(self) -> str | None:
        return self.outcome


class _Worker:
    """One worker's side of `train.train`: the `Parallel` hook, its events and stop."""

    def __init__(self, rank: int, world: int, channel: Any, work: Path) -> None:
        self.rank = rank
        self.world = world
        self.channel = channel
        self.work = work
        self.asked = 0.0
        self.stop = False

    def shard(self, batch: list[int]) -> list[int]:
        return batch[self.rank :: self.world]

    def all_sum(self, params: list[Any], figures: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            chunk = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += p.numel()
        summed = torch.tensor(figures, dtype=torch.float64)
        dist.all_reduce(summed)
        return [float(x) for x in summed.tolist()]

    def should_stop(self) -> bool:
        import ray
        import torch
        import torch.distributed as dist

        if self.rank == 0 and not self.stop and time.monotonic() - self.asked >= POLL_S:
            self.asked = time.monotonic()
            self.stop = bool(ray.get(self.channel.stopping.remote()))
        flag = torch.tensor([1.0 if self.rank == 0 and self.stop else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_event(self, event: dict[str, Any]) -> None:
        import ray.train

        if event.get("type") == "checkpoint":
            name = f"{CKPT_PREFIX}{event['step']}"
            figures = {k: v for k, v in event.items() if isinstance(v, int | float)}
            mine = None  # rank 0 hands its checkpoint over; every worker reports (a barrier)
            if self.rank == 0:
                mine = ray.train.Checkpoint.from_directory(str(self.work / name))
            ray.train.report(figures, checkpoint=mine, checkpoint_dir_name=name)
        if self.rank == 0:
            self.channel.put.remote(event)


def _worker_loop(config: dict[str, Any]) -> None:
    """The training function of each Ray Train worker."""
    import ray
    import ray.train
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    spec: TrainSpec = config["spec"]
    channel = config["channel"]
    work = Path(tempfile.mkdtemp(prefix="cumulo-ft-"))
    try:
        resume = ray.train.get_checkpoint()
        if resume is not None:  # train() resumes from what is in its directory
            resume.to_directory(str(work / Path(resume.path).name))
        if rank == 0:
            backend = dist.get_backend()
            channel.put.remote(
                {"type": "message", "message": f"training on {world} Ray workers ({backend})"}
            )
        worker = _Worker(rank, world, channel, work)
        try:
            train(replace(spec, out_dir=work), worker.on_event, worker.should_stop, worker)
        except Stopped:
            if rank == 0:
                ray.get(channel.finish.remote("stopped"))
            return
        if rank == 0:
            ray.get(channel.finish.remote("completed"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _copy_checkpoint(storage: str, name: str, ckpt: str, out_dir: Path) -> None:
    """Copy `<storage>/<name>/<ckpt>` into `out_dir/<ckpt>`, whole or not at all."""
    from pyarrow import fs

    final = out_dir / ckpt
    if final.exists():
        return
    filesystem, root = fs.FileSystem.from_uri(storage)
    tmp = out_dir / f".tmp-copy-{ckpt}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fs.copy_files(f"{root}/{name}/{ckpt}", str(tmp), source_filesystem=filesystem)
    tmp.rename(final)


def _same_dir(storage: str, name: str, out_dir: Path) -> bool:
    if "://" in storage and not storage.startswith("file://"):
        return False
    run = Path(storage.removeprefix("file://")) / name
    return run.resolve() == out_dir.resolve()


def train_on_ray(
    spec: TrainSpec,
    config: TrainingConfig,
    storage: str,
    name: str,
    on_event: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    """Train (or resume) on Ray as the module docstring says; the final metrics."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    connect(config)
    spec = replace(spec, base_path=spec.base_path.resolve(), out_dir=spec.out_dir.resolve())
    channel = ray.remote(num_cpus=0)(_Channel).remote()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "spec": replace(spec, threads=config.cpus_per_worker),
            "channel": channel,
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=False,
            resources_per_worker={"CPU": config.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name, storage_path=storage, failure_config=FailureConfig(max_failures=0)
        ),
    )
    copy = not _same_dir(storage, name, spec.out_dir)
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - raised in the calling thread below
            outcome["error"] = exc

    last: dict[str, Any] = {}

    def forward() -> None:
        for event in ray.get(channel.take.remote()):
            if event.get("type") == "checkpoint" and copy:
                _copy_checkpoint(storage, name, f"{CKPT_PREFIX}{event['step']}", spec.out_dir)
            if event.get("type") == "metrics":
                last.clear()
                last.update({k: v for k, v in event.items() if k != "type"})
            on_event(event)

    running = threading.Thread(target=fit, name=f"ray-train-{name}", daemon=True)
    running.start()
    asked = False
    try:
        while running.is_alive():
            running.join(POLL_S)
            if not asked and should_stop():
                channel.ask_stop.remote()
                asked = True
            forward()
        forward()
        status = ray.get(channel.result.remote())
    finally:
        if running.is_alive():  # this side failed: the workers stop at their next step
            channel.ask_stop.remote()
            running.join()
        ray.kill(channel)
    if "error" in outcome:
        raise RuntimeError(f"Ray Train failed: {outcome['error']}") from outcome["error"]
    if status == "stopped":
        raise Stopped("stopped on Ray at a checkpoint")
    total = steps_per_epoch(len(spec.examples), spec.batch_size) * spec.n_epochs
    found = checkpoints(spec.out_dir)
    if status != "completed" or not found or found[-1][0] != total:
        raise RuntimeError(f"the Ray run ended without its checkpoint at step {total}")
    # The adapter and the merged model, written as the local backend writes them: train()
    # resumes at the last step here, so it only writes its outputs.
    final = train(spec, lambda event: None, lambda: False)
    return {**checkpoint_metrics(found[-1][1]), **last, "valid_loss": final.get("valid_loss")}


__all__ = ["POLL_S", "connect", "train_on_ray"]
