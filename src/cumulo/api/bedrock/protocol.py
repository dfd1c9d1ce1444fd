"""Bedrock Converse wire models (pydantic), as in the Bedrock API reference.

Request: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
(ConverseStream takes the same body). Only what cumulo reads is modelled;
unknown fields (`additionalModelRequestFields`, `guardrailConfig`, …) are
ignored, as an SDK newer than this server may send fields it does not know.
Content block kinds cumulo does not serve (images, documents, …) are kept
as extras so that the service can name them in its error.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_INT32_MAX = 2**31 - 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolUseBlock(_Wire):
    toolUseId: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=64)
    input: Any = None


class ToolResultContent(_Wire):
    model_config = ConfigDict(extra="allow")

    text: str | None = None
    json_: Any = Field(None, alias="json")


class ToolResultBlock(_Wire):
    toolUseId: str = Field(min_length=1, max_length=64)
    content: list[ToolResultContent]
    status: Literal["success", "error"] | None = None


class CachePoint(_Wire):
    """A prompt-cache checkpoint: what precedes it in `system`, the messages or the tools."""

    type: Literal["default"]


class ContentBlock(_Wire):
    """A union: exactly one member is set."""

    model_config = ConfigDict(extra="allow")

    text: str | None = None
    toolUse: ToolUseBlock | None = None
    toolResult: ToolResultBlock | None = None
    cachePoint: CachePoint | None = None


class Message(_Wire):
    role: Literal["user", "assistant"]
    content: list[ContentBlock]


class SystemBlock(_Wire):
    model_config = ConfigDict(extra="allow")

    text: str | None = None
    cachePoint: CachePoint | None = None


class InferenceConfiguration(_Wire):
    maxTokens: int | None = Field(None, ge=1, le=_INT32_MAX)
    temperature: float | None = Field(None, ge=0, le=1)
    topP: float | None = Field(None, ge=0, le=1)
    stopSequences: list[str] | None = Field(None, max_length=2500)


class ToolInputSchema(_Wire):
    json_: dict[str, Any] = Field(alias="json")


class ToolSpecification(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = Field(None, min_length=1)
    inputSchema: ToolInputSchema


class Tool(_Wire):
    """A union of `toolSpec` and `cachePoint` (a checkpoint after the tools before it)."""

    toolSpec: ToolSpecification | None = None
    cachePoint: CachePoint | None = None


class SpecificToolChoice(_Wire):
    name: str = Field(min_length=1, max_length=64)


class ToolChoice(_Wire):
    """A union: `auto`, `any` (some tool) or `tool` (this one)."""

    auto: dict[str, Any] | None = None
    any: dict[str, Any] | None = None
    tool: SpecificToolChoice | None = None


class ToolConfiguration(_Wire):
    tools: list[Tool] = Field(min_length=1)
    toolChoice: ToolChoice | None = None


class ConverseRequest(_Wire):
    """The body of Converse and ConverseStream; `modelId` is in the path."""

    messages: list[Message] = Field(min_length=1)
    system: list[SystemBlock] | None = None
    inferenceConfig: InferenceConfiguration | None = None
    toolConfig: ToolConfiguration | None = None
