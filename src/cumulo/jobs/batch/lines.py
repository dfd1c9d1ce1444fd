"""One batch line, run as its owner would call it interactively.

The line's body is read by the OpenAI front door's own translation (the same checks and
error messages as `POST /v1/chat/completions` and `/v1/embeddings`), sent through the
gateway's public entry points as the batch's owner (scopes, limits, budgets, routing,
retries and failover, guardrails, usage), and the answer rendered as the front door
renders it. The result is a line of OpenAI's batch output format:

    {"id": "batch_req_…", "custom_id": "…",
     "response": {"status_code": 200, "request_id": "req_…", "body": {…}}, "error": null}

An error the interactive call would answer with (a bad body, a model the key may not
use, an upstream that refused, a budget spent: `insufficient_quota`) is the line's
response, with its status and OpenAI error body, in the error file; the other lines go
on. A rate limit or a brief unavailability is waited out (`Retry-After`) and the line
tried again, up to `MAX_TRIES`, as a client would.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import Any

import orjson

from cumulo.api.http import OPENAI
from cumulo.api.http import openai_error_body as error_body
from cumulo.api.openai import protocol as wire
from cumulo.api.openai.service import (
    render_chat,
    render_embeddings,
    to_chat_request,
    to_embedding_request,
)
from cumulo.config import ServerConfig
from cumulo.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    CumuloError,
    InvalidRequest,
    RateLimited,
    Unavailable,
)
from cumulo.governance.identity.auth import Principal
from cumulo.request.gateway import Gateway

CHAT, EMBEDDINGS = "/v1/chat/completions", "/v1/embeddings"
ENDPOINTS = (CHAT, EMBEDDINGS)
MAX_TRIES = 20
MAX_WAIT_S = 30.0


class LineIds:
    """Unique ids for output lines and their requests: a random prefix per process and a
    counter (an id needs to be unique, not unguessable; `uuid4` per line costs a system
    call for randomness each time)."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._next = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._next):016x}"


def output_line(ids: LineIds, custom_id: str, status: int, body: Any) -> bytes:
    """A line of the output or error file for an answered request."""
    return orjson.dumps(
        {
            "id": f"batch_req_{ids()}",
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": f"req_{ids()}", "body": body},
            "error": None,
        }
    )


def error_line(ids: LineIds, custom_id: str, code: str, message: str) -> bytes:
    """A line of the error file for a request that got no answer (e.g. `batch_expired`)."""
    return orjson.dumps(
        {
            "id": f"batch_req_{ids()}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


class LineCaller:
    """Sends batch lines through the gateway."""

    def __init__(self, gateway: Gateway, limits: ServerConfig) -> None:
        self.gateway = gateway
        self.limits = limits
        self.ids = LineIds()

    async def call(self, who: Principal | None, endpoint: str, body: dict[str, Any]) -> Any:
        """The rendered response body; raises the CumuloError the interactive call would."""
        if who is None:
            raise AuthenticationFailed(
                "The batch's API key was revoked or expired; its remaining requests are not sent.",
                code="invalid_api_key",
            )
        raw = orjson.dumps(body)
        if endpoint == CHAT:
            w = OPENAI.parse(wire.chat_completion_request.validate_json, raw)
            req = to_chat_request(w, self.limits.max_messages)
            if req.stream:
                raise InvalidRequest("Streaming is not available in a batch.", param="stream")
            resp, _ = await self.gateway.chat(who, req, "chat.completions")
            return render_chat(resp)
        e = OPENAI.parse(wire.EmbeddingRequestWire.model_validate_json, raw)
        ereq = to_embedding_request(e, self.limits.max_embedding_inputs)
        eresp, _ = await self.gateway.embed(who, ereq, "embeddings")
        return render_embeddings(eresp, e.encoding_format)

    async def run(
        self, who: Principal | None, endpoint: str, custom_id: str, body: dict[str, Any]
    ) -> tuple[bool, bytes]:
        """(succeeded, the output or error file's line)."""
        for attempt in range(1, MAX_TRIES + 1):
            try:
                answer = await self.call(who, endpoint, body)
            except BudgetExceeded as exc:  # spent: no waiting makes it come back this period
                return False, output_line(self.ids, custom_id, exc.status, error_body(exc))
            except (RateLimited, Unavailable) as exc:
                if attempt == MAX_TRIES:
                    return False, output_line(self.ids, custom_id, exc.status, error_body(exc))
                await asyncio.sleep(min(exc.retry_after or 1.0, MAX_WAIT_S))
                continue
            except CumuloError as exc:
                return False, output_line(self.ids, custom_id, exc.status, error_body(exc))
            return True, output_line(self.ids, custom_id, 200, answer)
        raise AssertionError("unreachable")
