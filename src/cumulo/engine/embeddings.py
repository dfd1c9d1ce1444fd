"""Sentence embeddings with a local sentence-transformers model, batched across requests.

The model is read from a local directory only (`local_files_only`, nothing is
downloaded). Encoding runs on the embedder's own worker thread so the event
loop never blocks. Concurrent requests are coalesced: when a request arrives
at an idle worker, the worker waits up to `batch_window_s` (a few
milliseconds) for more, up to `max_batch_inputs` texts, and encodes them all
in one forward pass; requests that arrive while a batch is being encoded form
the next batch. Each request then gets its own vectors and token count back.

Vectors come out as the model's pipeline makes them (all-MiniLM-L6-v2
normalizes); `dimensions` truncates them and renormalizes to unit length.
A request that fails does not fail the others in its batch: when the batched
forward pass raises, each request is encoded again on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cumulo.engine.hf import quiet_progress
from cumulo.engine.loader import DTypeName, choose_device, configure_torch_threads
from cumulo.errors import ConfigError, CumuloError, InvalidRequest, Unavailable, UpstreamError

logger = logging.getLogger(__name__)

BATCH_WINDOW_S = 0.005
MAX_BATCH_INPUTS = 64

EmbedResult = tuple[list[list[float]], int]


@dataclass(eq=False, slots=True)
class _Job:
    texts: list[str]
    dimensions: int | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EmbedResult]

    def settle(self, result: EmbedResult | BaseException) -> None:
        """Hand `result` to the requester's loop (nothing happens if it stopped waiting)."""
        # A closed event loop raises RuntimeError: its requester is gone, nobody is listening.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(_settle, self.future, result)


def _settle(future: asyncio.Future[EmbedResult], result: EmbedResult | BaseException) -> None:
    if future.done():  # cancelled by the requester
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Embedder:
    """A loaded sentence-transformers model with one batching worker thread.

    `batches` counts forward passes and `requests` the requests they served.
    """

    def __init__(
        self,
        model: Any,
        path: Path,
        *,
        batch_window_s: float = BATCH_WINDOW_S,
        max_batch_inputs: int = MAX_BATCH_INPUTS,
    ) -> None:
        self.model = model
        self.path = path
        dimension = model.get_embedding_dimension()
        if not isinstance(dimension, int):
            raise ConfigError(f"the embedding model in {path} does not state its dimension")
        self.dimension: int = dimension
        self.batch_window_s = max(0.0, batch_window_s)
        self.max_batch_inputs = max(1, max_batch_inputs)
        self.batches = 0
        self.requests = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="cumulo-embed", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, path: Path, dtype: DTypeName = "auto", **batching: Any) -> Embedder:
        """Load the model in `path`; `auto` keeps float32 (embeddings are small and precise)."""
        from sentence_transformers import SentenceTransformer

        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a sentence-transformers model directory")
        configure_torch_threads()
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        try:
            with quiet_progress():
                model = SentenceTransformer(
                    str(path),
                    device=choose_device().type,
                    local_files_only=True,
                    model_kwargs={"dtype": torch_dtype},
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot load the embedding model in {path}: {exc}") from exc
        model.eval()
        return cls(model, path, **batching)

    def describe(self) -> str:
        return f"{self.path.name} ({self.model.device.type}, {self.dimension} dimensions)"

    async def embed(self, texts: list[str], dimensions: int | None = None) -> EmbedResult:
        """Vectors for `texts` and the number of tokens the model read."""
        if not texts:
            raise InvalidRequest("input must not be empty", param="input")
        if dimensions is not None and not 1 <= dimensions <= self.dimension:
            raise InvalidRequest(
                f"dimensions must be between 1 and {self.dimension} for this model",
                param="dimensions",
            )
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), dimensions, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise Unavailable("the local model is shutting down")
            self._jobs.put(job)
        return await job.future

    def close(self) -> None:
        """Serve the requests already queued, then stop the worker; later ones are refused."""
        with self._lock:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    # -- the worker thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while (first := self._jobs.get()) is not None:
            batch, more = self._collect(first)
            self._run(batch)
            if not more:
                break

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` plus the jobs arriving within the window; False once asked to stop."""
        batch, size = [first], len(first.texts)
        deadline = time.monotonic() + self.batch_window_s
        while size < self.max_batch_inputs:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return batch, False
            if size + len(job.texts) > self.max_batch_inputs:
                # Too big to join this batch: encode it in a batch of its own, next.
                self._run(batch)
                batch, size = [job], len(job.texts)
                deadline = time.monotonic() + self.batch_window_s
                continue
            batch.append(job)
            size += len(job.texts)
        return batch, True

    def _run(self, batch: list[_Job]) -> None:
        live = [job for job in batch if not job.future.cancelled()]
        if not live:
            return
        try:
            results = self._encode([job.texts for job in live])
        except Exception as exc:
            if len(live) == 1:
                logger.exception("embedding failed on %s", self.path.name)
                live[0].settle(_translate(exc))
                return
            # One bad request must not fail the others: encode each on its own.
            for job in live:
                self._run([job])
            return
        for job, (vectors, tokens) in zip(live, results, strict=True):
            try:
                job.settle((self._truncate(vectors, job.dimensions), tokens))
            except Exception as exc:
                logger.exception("embedding failed on %s", self.path.name)
                job.settle(_translate(exc))

    @torch.inference_mode()
    def _encode(self, groups: list[list[str]]) -> list[tuple[torch.Tensor, int]]:
        """One forward pass over all `groups`' texts; each group's vectors and token count."""
        texts = [text for group in groups for text in group]
        vectors = self.model.encode(
            texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False
        ).float()
        counts = self._count_tokens(texts)
        self.batches += 1
        self.requests += len(groups)
        results, start = [], 0
        for group in groups:
            end = start + len(group)
            results.append((vectors[start:end], sum(counts[start:end])))
            start = end
        return results

    def _truncate(self, vectors: torch.Tensor, dimensions: int | None) -> list[list[float]]:
        if dimensions is not None and dimensions < self.dimension:
            vectors = torch.nn.functional.normalize(vectors[:, :dimensions], p=2.0, dim=1)
        result: list[list[float]] = vectors.cpu().tolist()
        return result

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model read per text: special tokens included, truncated as the model does."""
        encoded = self.model.tokenizer(
            texts, truncation=True, max_length=self.model.max_seq_length, add_special_tokens=True
        )
        return [len(ids) for ids in encoded["input_ids"]]


def _translate(exc: Exception) -> CumuloError:
    if isinstance(exc, CumuloError):
        return exc
    error = UpstreamError(f"local embedding failed: {exc}")
    error.__cause__ = exc
    return error
