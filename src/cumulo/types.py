"""Canonical request, response and stream types shared by every layer.

Front doors translate their wire format into these types and back; providers
translate them to and from their upstream. Nothing in between knows a wire
format. They are plain slotted dataclasses: cheap to build on the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]
ModelKind: TypeAlias = Literal["chat", "embedding"]
FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter"]
JSON: TypeAlias = dict[str, Any]


@dataclass(slots=True)
class ToolCall:
    """A function call requested by the assistant; `arguments` is a JSON string."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Message:
    """One message. `cache_point`: the caller asked for a prompt-cache breakpoint after it
    (Anthropic `cache_control`, Bedrock `cachePoint`), which providers with explicit prompt
    caching pass on; the local engine caches prefixes by itself and takes it as a hint."""

    role: Role
    content: str | None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    cache_point: bool = False


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: JSON | None = None
    cache_point: bool = False  # a prompt-cache breakpoint after this tool (see `Message`)


@dataclass(slots=True)
class ToolChoice:
    """`auto`, `none`, `required`, or `tool` with the tool's `name`."""

    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None


@dataclass(slots=True)
class SamplingParams:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    params: SamplingParams = field(default_factory=SamplingParams)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    response_format: JSON | None = None
    stream: bool = False
    user: str | None = None


@dataclass(slots=True)
class Usage:
    """Token counts of one request. `prompt_tokens` counts every prompt token; of those,
    `cached_tokens` were read from a prompt cache (a local engine's prefix cache, a
    provider's prompt cache) and `cache_write_tokens` were written into a provider's."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    created: int
    message: Message
    finish_reason: FinishReason
    usage: Usage
    queue_ms: float | None = None  # time spent waiting for a local engine slot


@dataclass(slots=True)
class TextDelta:
    """A piece of assistant text, in order."""

    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the tool call at `index`; `id` and `name` come with its first piece."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class StreamEnd:
    """The last event of every successful stream."""

    finish_reason: FinishReason
    usage: Usage | None = None
    queue_ms: float | None = None  # time spent waiting for a local engine slot


@dataclass(slots=True)
class TokenLogprob:
    """One token of a completion (or of its prompt, when echoed) and its log probability.

    `logprob` is None for a prompt's first token (nothing precedes it); `top` maps the most
    likely tokens at that position to theirs (None where `logprob` is); `offset` is where
    the token's text starts in the choice's text, in characters."""

    token: str
    logprob: float | None
    top: dict[str, float] | None
    offset: int


@dataclass(slots=True)
class LogprobsDelta:
    """The log probabilities of the tokens whose text comes in the next `TextDelta`s
    (completion streams only)."""

    tokens: list[TokenLogprob]


StreamEvent: TypeAlias = TextDelta | ToolCallDelta | LogprobsDelta | StreamEnd
ChatStream: TypeAlias = AsyncIterator[StreamEvent]


@dataclass(slots=True)
class CompletionRequest:
    """A text completion of each prompt: text, or token ids of the model's tokenizer.

    `params.max_tokens` may be 0 (the prompt is only read). `echo` puts each prompt before
    its completion; `logprobs`, when set, asks for each token's log probability and that
    many most likely tokens at each position (the prompt's too, with `echo`)."""

    model: str
    prompts: list[str | list[int]]
    params: SamplingParams = field(default_factory=SamplingParams)
    echo: bool = False
    logprobs: int | None = None
    stream: bool = False
    user: str | None = None


@dataclass(slots=True)
class CompletionChoice:
    text: str
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class CompletionResponse:
    """One choice per prompt, in the prompts' order."""

    id: str
    model: str
    created: int
    choices: list[CompletionChoice]
    usage: Usage
    queue_ms: float | None = None


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    dimensions: int | None = None
    user: str | None = None


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    vectors: list[list[float]]
    usage: Usage
