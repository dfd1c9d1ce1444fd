"""The `eval` job kind: one run of an eval (`POST /v1/evals/{id}/runs`).

- input: a JSONL file of rows (`{"item": …, "sample": …}`) of purpose `evals`: the
  caller's `file_id`, or the run's `file_content` stored as such a file by the front door;
- `validate`: checks each row against the eval's `item_schema` (and a sample for `jsonl`
  runs); each row is an item holding its byte range in the file, and with robustness
  (`cumulo.evals.perturb`) one more item per perturbation over the same bytes: item
  `i * (1 + P) + p` is row `i` under perturbation `p` (0: as it is);
- `worker`: for a `completions` run renders the template over the item and streams the
  answer from the gateway as the run's owner (scopes, limits, budgets, routing, usage),
  timing the first token (a perturbed item renders the template over its perturbed
  copy); for a `jsonl` run takes the row's sample. Then grades it (on the original) with
  each testing criterion (judges and embeddings through the gateway as the owner too).
  The item's result is its output item (JSON); an item whose generation or grading
  errored is `failed` in the job's counts;
- `finalize`: nothing to deliver: output items are read from the job's items.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from cumulo.config import JobsConfig
from cumulo.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    CumuloError,
    RateLimited,
    Unavailable,
)
from cumulo.evals.graders import Call, Grader, applies
from cumulo.evals.items import MAX_ITEMS, check_row, parse_row, sample_text, validator
from cumulo.evals.perturb import options_fields, perturb, perturbations_of
from cumulo.evals.templates import TemplateError, render, sample_scope
from cumulo.files import FileStore
from cumulo.files.validate import MAX_ERRORS
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.jobs.batch.kind import RangeReader, lines_with_offsets
from cumulo.jobs.kinds import JobInvalid
from cumulo.origin import Origin
from cumulo.request.gateway import Gateway
from cumulo.request.metering import CallInfo
from cumulo.store.jobs import COMPLETED, FAILED, ItemResult, ItemRow, JobRow
from cumulo.types import (
    ChatRequest,
    EmbeddingRequest,
    Message,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Usage,
)

KIND = "eval"
ENDPOINT = "evals.runs"
MAX_TRIES = 20
MAX_WAIT_S = 30.0
ADD_CHUNK = 1000


def _gone(job: JobRow) -> dict[str, Any]:
    return {
        "code": "file_not_found",
        "message": f"The data file {job.input_file_id} was deleted; the run cannot go on.",
        "param": "data_source.source.id",
        "line": None,
    }


def _error(exc: CumuloError) -> dict[str, Any]:
    return {"code": exc.code or type(exc).__name__, "message": str(exc)}


class EvalKind:
    name = KIND

    def __init__(
        self, files: FileStore, gateway: Gateway, auth: Authenticator, config: JobsConfig
    ) -> None:
        self.files = files
        self.gateway = gateway
        self.auth = auth
        self.config = config

    def origin(self, job: JobRow) -> Origin:
        return Origin(KIND, job.id)

    def audit_data(self, job: JobRow) -> dict[str, Any]:
        return {
            "eval_id": job.params.get("eval_id"),
            "input_file_id": job.input_file_id,
            "input_sha256": job.input_sha256,
            "model": (job.params.get("data_source") or {}).get("model"),
        }

    async def validate(
        self, job: JobRow, add_items: Callable[[list[tuple[int, int, int]]], Awaitable[None]]
    ) -> int:
        assert job.input_file_id is not None
        try:
            record = await self.files.get(job.tenant_id, job.input_file_id)
        except CumuloError:
            raise JobInvalid([_gone(job)]) from None
        schema = job.params["item_schema"]
        checker = validator(schema)
        need_sample = job.params["data_source"]["type"] == "jsonl"
        copies = 1 + len(perturbations_of(job.params["data_source"]))
        errors: list[dict[str, Any]] = []
        pending: list[tuple[int, int, int]] = []
        idx = 0
        async for _, offset, raw in lines_with_offsets(self.files.content(record)):
            if not raw.strip():
                continue
            if idx >= MAX_ITEMS:
                errors.append(
                    {
                        "code": "too_many_items",
                        "message": f"at most {MAX_ITEMS} items",
                        "param": None,
                        "line": None,
                    }
                )
                break
            _, err = check_row(idx, raw, schema, need_sample, checker)
            if err is not None:
                if len(errors) < MAX_ERRORS:
                    errors.append(err)
            else:  # the original, then its perturbed copies (`cumulo.evals.perturb`)
                pending.extend((idx * copies + p, offset, len(raw)) for p in range(copies))
            idx += 1
            if len(pending) >= ADD_CHUNK and not errors:
                await add_items(pending)
                pending = []
        if not errors and idx == 0:
            errors.append(
                {
                    "code": "empty_file",
                    "message": "the data holds no items",
                    "param": None,
                    "line": None,
                }
            )
        if errors:
            raise JobInvalid(errors)
        await add_items(pending)
        return idx * copies

    def worker(self, job: JobRow) -> _EvalWorker:
        return _EvalWorker(self, job)

    async def finalize(self, job: JobRow) -> dict[str, Any]:
        return {}


class _EvalWorker:
    def __init__(self, kind: EvalKind, job: JobRow) -> None:
        self.kind = kind
        self.job = job
        self.source: dict[str, Any] = job.params["data_source"]
        self.criteria: list[dict[str, Any]] = job.params["testing_criteria"]
        self.perturbations = perturbations_of(self.source)
        self.options = options_fields(job.params["item_schema"])
        self._reader: RangeReader | None = None
        self._lock = asyncio.Lock()

    async def load(self, items: Sequence[ItemRow]) -> list[bytes]:
        async with self._lock:
            try:
                if self._reader is None:
                    assert self.job.input_file_id is not None
                    record = await self.kind.files.get(self.job.tenant_id, self.job.input_file_id)
                    self._reader = RangeReader(lambda: self.kind.files.content(record))
                return [await self._reader.read(it.offset, it.length) for it in items]
            except CumuloError:
                raise JobInvalid([_gone(self.job)]) from None

    def _who(self) -> Principal:
        who = self.kind.auth.principal(self.job.key_id) if self.job.key_id else None
        if who is None:
            raise AuthenticationFailed(
                "The run's API key was revoked or expired; its remaining items are not run.",
                code="invalid_api_key",
            )
        return who

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        for attempt in range(1, MAX_TRIES + 1):
            try:
                return await call()
            except BudgetExceeded:
                raise
            except (RateLimited, Unavailable) as exc:
                if attempt == MAX_TRIES:
                    raise
                await asyncio.sleep(min(exc.retry_after or 1.0, MAX_WAIT_S))
        raise AssertionError("unreachable")

    async def _generate(
        self, messages: list[dict[str, str]]
    ) -> tuple[str, dict[str, Any], str | None]:
        """(answer, the sample's timing/usage/cost fields, finish reason)."""
        src = self.source
        sp = src.get("sampling_params") or {}
        req = ChatRequest(
            model=src["model"],
            messages=[Message(m["role"], m["content"]) for m in messages],  # type: ignore[arg-type]
            params=SamplingParams(
                temperature=sp.get("temperature"),
                top_p=sp.get("top_p"),
                max_tokens=sp.get("max_completion_tokens"),
                seed=sp.get("seed"),
            ),
            stream=True,
        )
        who = self._who()

        async def once() -> tuple[str, dict[str, Any], str | None]:
            started = time.perf_counter()
            stream = await self.kind.gateway.stream(who, req, ENDPOINT)
            parts: list[str] = []
            first: float | None = None
            usage = None
            finish = None
            async for ev in stream.events():
                if isinstance(ev, TextDelta):
                    if first is None:
                        first = time.perf_counter()
                    parts.append(ev.text)
                elif isinstance(ev, StreamEnd):
                    usage, finish = ev.usage, ev.finish_reason
            ended = time.perf_counter()
            prompt = usage.prompt_tokens if usage else 0
            completion = usage.completion_tokens if usage else 0
            cached = usage.cached_tokens if usage else 0
            info = stream.info
            return (
                "".join(parts),
                {
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                        "cached_tokens": cached,
                    },
                    "latency_ms": round((ended - started) * 1000.0, 3),
                    "ttft_ms": None if first is None else round((first - started) * 1000.0, 3),
                    "cost": self._cost(
                        info.model or src["model"], info.deployment, prompt, completion, cached
                    ),
                    "deployment": info.deployment,
                },
                finish,
            )

        result: tuple[str, dict[str, Any], str | None] = await self._retrying(once)
        return result

    def _cost(
        self, model: str, deployment: str | None, prompt: int, completion: int, cached: int = 0
    ) -> float | None:
        route = self.kind.gateway.router.routes.get(model)
        if route is None or deployment is None:
            return None
        for state in route.deployments:
            if state.label == deployment and state.price is not None:
                return float(state.price.cost(prompt, completion, cached))
        return None

    async def _judge(
        self, model: str, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[str, Call]:
        req = ChatRequest(
            model=model,
            messages=[Message(m["role"], m["content"]) for m in messages],  # type: ignore[arg-type]
            params=SamplingParams(
                temperature=params.get("temperature"),
                top_p=params.get("top_p"),
                max_tokens=params.get("max_tokens"),
                seed=params.get("seed"),
            ),
        )
        who = self._who()

        async def once() -> tuple[str, Call]:
            resp, info = await self.kind.gateway.chat(who, req, ENDPOINT)
            return resp.message.content or "", self._call(model, info, resp.usage)

        answer: tuple[str, Call] = await self._retrying(once)
        return answer

    async def _embed(self, model: str, texts: list[str]) -> tuple[list[list[float]], Call]:
        who = self._who()

        async def once() -> tuple[list[list[float]], Call]:
            resp, info = await self.kind.gateway.embed(
                who, EmbeddingRequest(model, texts), ENDPOINT
            )
            return resp.vectors, self._call(model, info, resp.usage)

        vectors: tuple[list[list[float]], Call] = await self._retrying(once)
        return vectors

    def _call(self, model: str, info: CallInfo, usage: Usage | None) -> Call:
        """A grader's call to `model` (its public name) as the run's usage counts it."""
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        return Call(
            model,
            prompt,
            completion,
            self._cost(info.model or model, info.deployment, prompt, completion),
        )

    async def run(self, item: ItemRow, payload: bytes) -> ItemResult | None:
        index, p = divmod(item.idx, 1 + len(self.perturbations))
        row = parse_row(payload)  # checked at validation
        data: dict[str, Any] = row["item"]
        shown, perturbation = data, None  # the item the generation template sees
        if p:
            perturbation = self.perturbations[p - 1]
            seed = self.source["robustness"]["seed"]
            shown = perturb(data, perturbation, seed, index, self.options)
        sample: dict[str, Any] = {
            "input": [],
            "output": [],
            "finish_reason": None,
            "model": self.source.get("model"),
            "usage": None,
            "latency_ms": None,
            "ttft_ms": None,
            "cost": None,
            "error": None,
            "seed": (self.source.get("sampling_params") or {}).get("seed"),
            "temperature": (self.source.get("sampling_params") or {}).get("temperature"),
            "top_p": (self.source.get("sampling_params") or {}).get("top_p"),
            "max_completion_tokens": (self.source.get("sampling_params") or {}).get(
                "max_completion_tokens"
            ),
        }
        text = ""
        if self.source["type"] == "completions":
            try:
                messages = [
                    {"role": m["role"], "content": render(m["content"], {"item": shown})}
                    for m in self.source["template"]
                ]
                sample["input"] = messages
                text, facts, finish = await self._generate(messages)
                sample.update(facts, finish_reason=finish)
                sample["output"] = [{"role": "assistant", "content": text}]
            except TemplateError as exc:
                sample["error"] = {"code": "invalid_template", "message": str(exc)}
            except CumuloError as exc:
                sample["error"] = _error(exc)
        else:
            given = row["sample"] or {}
            text = sample_text(given)
            sample.update(
                input=given.get("input") or [],
                output=[{"role": "assistant", "content": text}],
                model=given.get("model"),
                usage=given.get("usage"),
            )
        results: list[dict[str, Any]] = []
        errored = sample["error"] is not None
        if not errored:
            grader = Grader(self._judge, self._embed)
            facts = {"latency_ms": sample["latency_ms"], "cost": sample["cost"]}
            scope = {"item": data, "sample": {**sample_scope(text), **facts}}
            for c in self.criteria:
                if not applies(c, data):
                    continue
                r = await grader.grade(c, scope)
                errored = errored or r.error is not None
                results.append(r.as_dict())
        status = "error" if errored else "pass" if all(r["passed"] for r in results) else "fail"
        out = {
            "datasource_item_id": index,
            "datasource_item": data,
            "sample": sample,
            "results": results,
            "status": status,
            "created_at": int(time.time()),
        }
        if perturbation is not None:
            out["perturbation"] = {"type": perturbation, "item": shown}
        # A perturbed sample's outcome is not counted with the originals' (result_counts).
        outcome = status if perturbation is None else None
        return ItemResult(
            item.idx, FAILED if errored else COMPLETED, orjson.dumps(out).decode(), outcome
        )

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()
