"""OpenAI wire models (pydantic), as in https://platform.openai.com/docs/api-reference.

Only what cumulo reads is modelled; unknown fields are ignored, as OpenAI's
own SDKs send fields that older servers do not know. Fields beyond OpenAI's
spec carry a description saying so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Integers are forwarded to upstreams as JSON, which carries at most 64-bit integers.
_INT64_MAX = 2**63 - 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Wire):
    type: str
    text: str | None = None


Content = str | list[ContentPart]


class FunctionCall(_Wire):
    name: str
    arguments: str = ""


class ToolCallWire(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Wire):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Wire):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Wire):
    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None


class ToolMessage(_Wire):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDef(_Wire):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(_Wire):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Wire):
    name: str


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatCompletionRequest(_Wire):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(
        None, ge=1, le=_INT64_MAX, description="Beyond OpenAI's spec: top-k sampling."
    )
    max_tokens: int | None = Field(None, ge=1, le=_INT64_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=_INT64_MAX)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-_INT64_MAX - 1, le=_INT64_MAX)
    n: int | None = Field(None, ge=1, le=_INT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class EmbeddingRequestWire(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=_INT64_MAX)
    user: str | None = None
