"""The provider interface: one backend kind, bound to one deployment.

A provider is built once per deployment at start (`Provider.create`), kept for
the life of the process, and closed at shutdown. It must:

- translate canonical requests to its upstream and the replies back to
  canonical types (`cumulo.types`), and nothing else;
- stream unbuffered: yield each event as soon as the upstream produces it,
  ending every successful stream with exactly one `StreamEnd`;
- stop work for a stream whose consumer goes away (the async generator is
  closed: release the upstream connection or the local slot in `finally`);
- raise only `cumulo.errors` types: `InvalidRequest` when the upstream rejects
  the request as malformed, `RateLimited` (with `retry_after`) on upstream 429,
  `UpstreamTimeout` when a deadline passes, `UpstreamError` for anything else
  that went wrong upstream (connect errors, 5xx, malformed replies). An upstream's
  error answer becomes an error through `providers.http.status_error`, which logs the
  upstream's text and never puts it in the message callers see.

Methods a provider does not support raise `InvalidRequest`; for completions it names
the model (`no_completions`), so a caller learns to use chat completions for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from cumulo.errors import InvalidRequest
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelKind,
)

if TYPE_CHECKING:
    import aiohttp

    from cumulo.config import DeploymentConfig


class ProviderContext:
    """What the process shares with every provider: the pooled upstream HTTP client (set
    when the platform starts, before any provider does) and the home directory."""

    __slots__ = ("_http", "home")

    def __init__(self, http: aiohttp.ClientSession | None, home: Path) -> None:
        self._http = http
        self.home = home

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("no upstream HTTP client: the platform has not started")
        return self._http

    @http.setter
    def http(self, session: aiohttp.ClientSession) -> None:
        self._http = session


class Provider(ABC):
    """Base class of every provider; see the module docstring for the contract."""

    # Why `start()` failed, in words fit for callers (no server paths); set by the catalog.
    load_error: str | None = None

    def __init__(self, deployment: DeploymentConfig, kind: ModelKind, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self.kind = kind
        self.ctx = ctx
        # The deployment's label, unique within its model, set by the catalog
        # (`routing.catalog.deployment_label`): safe to show callers, never a path or URL.
        self.label = deployment.name or deployment.provider

    @classmethod  # noqa: B027 - optional hook
    def check(cls, deployment: DeploymentConfig, kind: ModelKind) -> None:
        """Check, cheaply and before anything loads, that `deployment` can start.

        Run by `cumulo serve` before it starts the server. Raise `ConfigError` with `param`
        naming the deployment's key at fault; load nothing heavy here.
        """

    @classmethod
    def create(
        cls, deployment: DeploymentConfig, kind: ModelKind, ctx: ProviderContext
    ) -> Provider:
        return cls(deployment, kind, ctx)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load weights, warm connections. Called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called once at shutdown."""

    @property
    def ready(self) -> bool:
        return True

    async def chat(self, request: ChatRequest) -> ChatResponse:
        raise InvalidRequest(
            f"{self.deployment.provider} deployments do not serve chat", param="model"
        )

    def stream(self, request: ChatRequest) -> ChatStream:
        raise InvalidRequest(
            f"{self.deployment.provider} deployments do not serve chat", param="model"
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        raise InvalidRequest(
            f"{self.deployment.provider} deployments do not serve embeddings", param="model"
        )

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """Text completions (`/v1/completions`): one choice per prompt, in order."""
        raise self.no_completions(request.model)

    def stream_complete(self, request: CompletionRequest) -> ChatStream:
        """The completion of one prompt as a stream: `TextDelta`s, `LogprobsDelta`s before
        the text they cover (when log probabilities are asked for), one `StreamEnd`."""
        raise self.no_completions(request.model)

    def no_completions(self, model: str) -> InvalidRequest:
        """The answer for a model whose deployment does not serve text completions."""
        return InvalidRequest(
            f"The model '{model}' does not support /v1/completions: its deployment "
            f"'{self.label}' ({self.deployment.provider}) serves chat completions only; "
            "use /v1/chat/completions.",
            param="model",
            code="completions_not_supported",
        )

    def tokenizer(self) -> Any | None:
        """The tokenizer of a model this provider serves in this process (a Hugging Face
        tokenizer), None if it has none here."""
        return None

    def stats(self) -> dict[str, Any] | None:
        """The figures of a serving engine this provider runs in this process (for
        `GET /admin/engine`), None if it runs none. When it does, `loaded` says whether the
        engine has started; the other keys are the engine's own."""
        return None

    def credentials(self) -> tuple[str, ...]:
        """The secret values this provider sends upstream (its key, its extra headers'
        values), so that an upstream's text can be logged with them masked."""
        key = self.deployment.api_key()
        return (*([key] if key else []), *self.deployment.headers.values())

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and `/admin` views; never contains a secret."""


def shown_url(url: str) -> str:
    """`url` fit for a log line: without a user or password and without its query (either
    may carry a credential). Unparsable text is not shown at all."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
