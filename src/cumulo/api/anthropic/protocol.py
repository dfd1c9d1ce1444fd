"""Anthropic Messages API wire models (pydantic), as in https://docs.anthropic.com/en/api/messages.

Only what cumulo reads is modelled; unknown fields (`thinking`, `service_tier`, …)
are ignored. `cache_control` is read on text, tool_use and tool_result blocks and on
tool definitions (a prompt-cache breakpoint: see `types.Message.cache_point`). Content block types other than
those below are rejected with a 400; image blocks are modelled only to be
rejected with a clear message. Booleans are JSON booleans (`"stream": "yes"` is a 400).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

# Integers are forwarded to upstreams as JSON, which carries at most 64-bit integers.
_INT64_MAX = 2**63 - 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CacheControl(_Wire):
    """A prompt-cache breakpoint ("Prompt caching"); `ttl` is not passed on."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Wire):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None


class ImageBlock(_Wire):
    type: Literal["image"]
    source: dict[str, Any] | None = None


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


ResultBlock = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultBlock] | None = None
    is_error: StrictBool = False
    cache_control: CacheControl | None = None


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]
BLOCK_TYPES = ("text", "image", "tool_use", "tool_result")


class InputMessage(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class ToolDef(_Wire):
    type: Literal["custom"] | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolChoiceWire(_Wire):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, min_length=1)
    disable_parallel_tool_use: StrictBool | None = None


class MessagesRequest(_Wire):
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1, le=_INT64_MAX)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceWire | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, le=_INT64_MAX)
    stop_sequences: list[str] | None = None
    stream: StrictBool = False
    metadata: dict[str, Any] | None = None
