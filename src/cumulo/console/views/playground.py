"""Playground: chat with a model, or compare up to 3 side by side, as the signed-in key.

Every call goes through the gateway as the key's principal (`Gateway.stream` /
`Gateway.chat`), exactly like a `/v1/chat/completions` call: the same scopes, limits,
budgets, guardrails, routing and usage records (endpoint `console/playground`). The page
streams each panel from `POST /console/playground/stream` (server-sent events read by
`static/console.js`, text inserted as text, never as HTML); without JavaScript, the form
posts to `/console/playground` and the answers come back in the page. A comparison can
be saved as an eval item set: a JSONL file of purpose `evals` in the file store.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cumulo.console.core import Console, Ctx, form_fields
from cumulo.console.pages import EVERYONE, Page
from cumulo.errors import CumuloError, InvalidRequest
from cumulo.request.metering import BlockedStream, MeteredStream
from cumulo.types import ChatRequest, Message, SamplingParams, StreamEnd, TextDelta

PAGE = Page("/playground", "Playground", EVERYONE)
ENDPOINT = "console/playground"
MAX_MODELS = 3
MAX_PROMPT = 32_000
MAX_SYSTEM = 8_000
MAX_TOKENS = 4096
MAX_TURNS = 50  # earlier messages of a chat sent back with each new prompt


@dataclass(frozen=True, slots=True)
class Ask:
    """One playground request, checked."""

    models: list[str]
    system: str
    prompt: str
    params: SamplingParams
    history: tuple[Message, ...] = ()  # a chat's earlier turns (one model only)

    def chat(self, model: str) -> ChatRequest:
        messages = [Message("system", self.system)] if self.system.strip() else []
        messages.extend(self.history)
        messages.append(Message("user", self.prompt))
        return ChatRequest(model, messages, self.params)


def _number(fields: dict[str, str], name: str, low: float, high: float) -> float | None:
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be a number from {low:g} to {high:g}.", param=name)
    return value


def parse_ask(fields: dict[str, str], models: list[str]) -> Ask:
    """The request a form describes; InvalidRequest naming the field otherwise."""
    chosen = [m for m in models if m]
    if not chosen:
        raise InvalidRequest("Choose a model.", param="model")
    if len(chosen) > MAX_MODELS:
        raise InvalidRequest(f"Compare at most {MAX_MODELS} models.", param="model")
    if len(chosen) > 1 and fields.get("history", "").strip():
        raise InvalidRequest("A comparison has no chat history.", param="history")
    prompt = fields.get("prompt", "")
    if not prompt.strip():
        raise InvalidRequest("Write a prompt.", param="prompt")
    if len(prompt) > MAX_PROMPT:
        raise InvalidRequest(f"The prompt is over {MAX_PROMPT} characters.", param="prompt")
    system = fields.get("system", "")
    if len(system) > MAX_SYSTEM:
        raise InvalidRequest(f"The system prompt is over {MAX_SYSTEM} characters.", param="system")
    max_tokens = _number(fields, "max_tokens", 1, MAX_TOKENS)
    params = SamplingParams(
        temperature=_number(fields, "temperature", 0, 2),
        top_p=_number(fields, "top_p", 0, 1),
        max_tokens=None if max_tokens is None else int(max_tokens),
    )
    return Ask(chosen, system, prompt, params, _history(fields.get("history", "")))


def _history(raw: str) -> tuple[Message, ...]:
    """A chat's earlier turns: a JSON list of {role: user|assistant, content}."""
    if not raw.strip():
        return ()
    try:
        turns = orjson.loads(raw)
    except orjson.JSONDecodeError:
        turns = None
    if not isinstance(turns, list) or len(turns) > MAX_TURNS:
        raise InvalidRequest(
            f"'history' must be a JSON list of at most {MAX_TURNS} messages.", param="history"
        )
    out = []
    size = 0
    for i, turn in enumerate(turns):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if role not in ("user", "assistant") or not isinstance(content, str):
            raise InvalidRequest(
                f"'history.{i}' must be {{role: user or assistant, content: text}}.",
                param=f"history.{i}",
            )
        size += len(content)
        out.append(Message("user" if role == "user" else "assistant", content))
    if size > 4 * MAX_PROMPT:
        raise InvalidRequest("The chat is too long: start a new one.", param="history")
    return tuple(out)


def _cost(
    stream: MeteredStream | BlockedStream, prompt: int, completion: int, cached: int = 0
) -> float | None:
    """What the call cost, priced as its usage record is (`RequestContext.settle`)."""
    if not isinstance(stream, MeteredStream):
        return 0.0
    deployment = stream.lease.deployment
    if deployment.price is not None:
        return deployment.price.cost(prompt, completion, cached)
    return 0.0 if deployment.provider.deployment.provider == "local" else None


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def routes(console: Console) -> list[Route]:
    platform = console.platform
    gateway = platform.gateway

    def chat_models(ctx: Ctx) -> list[str]:
        return console.models(ctx, "chat")

    async def run(ctx: Ctx, ask: Ask, model: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """One model's answer as events: `delta` {text}, then `done` {figures} or `error`."""
        started = time.perf_counter()
        ttft: float | None = None
        try:
            stream = await gateway.stream(ctx.who, ask.chat(model), ENDPOINT)
            usage = None
            async for event in stream.events():
                if isinstance(event, TextDelta) and event.text:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    yield "delta", {"text": event.text}
                elif isinstance(event, StreamEnd):
                    usage = event.usage
        except CumuloError as exc:
            yield "error", {"message": exc.message, "status": exc.status}
            return
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        yield (
            "done",
            {
                "model": model,
                "served_by": stream.info.deployment,
                "latency_ms": round((time.perf_counter() - started) * 1000.0, 1),
                "ttft_ms": None if ttft is None else round(ttft * 1000.0, 1),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cost_usd": _cost(stream, prompt, completion, usage.cached_tokens if usage else 0),
            },
        )

    async def page(request: Request, ctx: Ctx) -> Response:
        models = chat_models(ctx)
        chosen = request.query_params.get("model")
        return console.render(
            request,
            ctx,
            "playground.html",
            {"models": models, "chosen": [chosen] if chosen in models else models[:1],
             "fields": {}, "panels": [], "max_models": MAX_MODELS},
        )  # fmt: skip

    async def ask_form(request: Request) -> tuple[dict[str, str], list[str]]:
        form = await request.form()
        fields = await form_fields(request)
        models = [m for m in form.getlist("model") if isinstance(m, str)]
        return fields, models

    async def stream(request: Request, ctx: Ctx) -> Response:
        """POST /console/playground/stream: one model's answer as server-sent events."""
        fields, models = await ask_form(request)
        ask = parse_ask(fields, models[:1])

        async def body() -> AsyncIterator[bytes]:
            async for event, data in run(ctx, ask, ask.models[0]):
                yield _sse(event, data)

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def answer(request: Request, ctx: Ctx) -> Response:
        """POST /console/playground (no JavaScript): every model's answer in the page."""
        fields, models = await ask_form(request)
        try:
            ask = parse_ask(fields, models)
        except InvalidRequest as exc:
            return console.render(
                request, ctx, "playground.html",
                {"models": chat_models(ctx), "chosen": models, "fields": fields, "panels": [],
                 "message": exc.message, "max_models": MAX_MODELS},
                status=400,
            )  # fmt: skip

        async def panel(model: str) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "text": ""}
            async for event, data in run(ctx, ask, model):
                if event == "delta":
                    out["text"] += data["text"]
                else:
                    out[event] = data
            return out

        panels = await asyncio.gather(*(panel(m) for m in ask.models))
        return console.render(
            request, ctx, "playground.html",
            {"models": chat_models(ctx), "chosen": ask.models, "fields": fields,
             "panels": panels, "max_models": MAX_MODELS,
             "outputs_json": orjson.dumps({p["model"]: p["text"] for p in panels}).decode()},
        )  # fmt: skip

    async def save(request: Request, ctx: Ctx) -> Response:
        """POST /console/playground/save: the comparison as a one-item eval item set."""
        fields = await form_fields(request)
        try:
            outputs = orjson.loads(fields.get("outputs") or "{}")
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest("'outputs' must be a JSON object.", param="outputs") from exc
        if not isinstance(outputs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in outputs.items()
        ):
            raise InvalidRequest("'outputs' must map model names to texts.", param="outputs")
        ask = parse_ask(fields, list(outputs)[:MAX_MODELS] or ["-"])
        item = {
            "item": {"system": ask.system, "input": ask.prompt, "outputs": outputs},
        }
        name = (fields.get("name") or "playground-comparison").strip()[:200] or "comparison"
        line = orjson.dumps(item) + b"\n"

        async def chunks() -> AsyncIterator[bytes]:
            yield line

        record = await platform.files.create(
            tenant_id=ctx.who.tenant_id,
            key_id=ctx.who.key_id,
            purpose="evals",
            filename=name if name.endswith(".jsonl") else name + ".jsonl",
            chunks=chunks(),
            actor=ctx.who.key_id,
        )
        return console.render(request, ctx, "_saved.html", {"file": record})

    return [
        Route("/console/playground", console.view(page, PAGE), methods=["GET"]),
        Route("/console/playground", console.view(answer, PAGE), methods=["POST"]),
        Route("/console/playground/stream", console.view(stream, PAGE), methods=["POST"]),
        Route("/console/playground/save", console.view(save, PAGE), methods=["POST"]),
    ]
