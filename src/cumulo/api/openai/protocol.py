"""OpenAI wire models (pydantic), as in https://platform.openai.com/docs/api-reference.

Only what cumulo reads is modelled; unknown fields are ignored, as OpenAI's
own SDKs send fields that older servers do not know. Booleans are JSON booleans
(`"stream": "yes"` is a 400, as at OpenAI). Fields beyond OpenAI's
spec carry a description saying so.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter
from typing_extensions import TypedDict

# Integers are forwarded to upstreams as JSON, which carries at most 64-bit integers.
_INT64_MAX = 2**63 - 1


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


# The chat request is validated into TypedDicts, not models: plain dicts cost half as
# much to build on every request (bench/gateway.py), with pydantic's same checks and errors.


class ContentPart(TypedDict):
    type: str
    text: NotRequired[str | None]


Content = str | list[ContentPart]


class FunctionCall(TypedDict):
    name: str
    arguments: NotRequired[str]


class ToolCallWire(TypedDict):
    id: str
    type: NotRequired[Literal["function"]]
    function: FunctionCall


class SystemMessage(TypedDict):
    role: Literal["system", "developer"]
    content: Content
    name: NotRequired[str | None]


class UserMessage(TypedDict):
    role: Literal["user"]
    content: Content
    name: NotRequired[str | None]


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: NotRequired[Content | None]
    name: NotRequired[str | None]
    tool_calls: NotRequired[list[ToolCallWire] | None]


class ToolMessage(TypedDict):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDef(TypedDict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: NotRequired[str | None]
    parameters: NotRequired[dict[str, Any] | None]


class ToolDef(TypedDict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(TypedDict):
    name: str


class NamedToolChoice(TypedDict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(TypedDict):
    include_usage: NotRequired[StrictBool]


_Int = Annotated[int, Field(ge=1, le=_INT64_MAX)]


class ChatCompletionRequest(TypedDict):
    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    temperature: NotRequired[Annotated[float, Field(ge=0, le=2)] | None]
    top_p: NotRequired[Annotated[float, Field(ge=0, le=1)] | None]
    top_k: NotRequired[
        Annotated[
            int, Field(ge=1, le=_INT64_MAX, description="Beyond OpenAI's spec: top-k sampling.")
        ]
        | None
    ]
    max_tokens: NotRequired[_Int | None]
    max_completion_tokens: NotRequired[_Int | None]
    stop: NotRequired[str | list[str] | None]
    seed: NotRequired[Annotated[int, Field(ge=-_INT64_MAX - 1, le=_INT64_MAX)] | None]
    n: NotRequired[_Int | None]
    presence_penalty: NotRequired[Annotated[float, Field(ge=-2, le=2)] | None]
    frequency_penalty: NotRequired[Annotated[float, Field(ge=-2, le=2)] | None]
    stream: NotRequired[StrictBool]
    stream_options: NotRequired[StreamOptions | None]
    tools: NotRequired[list[ToolDef] | None]
    tool_choice: NotRequired[Literal["none", "auto", "required"] | NamedToolChoice | None]
    response_format: NotRequired[dict[str, Any] | None]
    user: NotRequired[str | None]


chat_completion_request: TypeAdapter[ChatCompletionRequest] = TypeAdapter(ChatCompletionRequest)


class EmbeddingRequestWire(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=_INT64_MAX)
    user: str | None = None


# -- completions (legacy) and the tokenizer endpoints ----------------------------------

MAX_LOGPROBS = 20
"""The most `logprobs` a completion may ask for: vLLM's default `max_logprobs` (OpenAI's own
limit is 5)."""
MAX_STOP = 16
"""Stop sequences a completion may give (OpenAI allows 4; lm-evaluation-harness sends its
task's `until` list whole, as vLLM accepts)."""

_TokenId = Annotated[StrictInt, Field(ge=0, le=_INT64_MAX)]


class CompletionRequestWire(_Wire):
    """POST /v1/completions (https://platform.openai.com/docs/api-reference/completions)."""

    model: str = Field(min_length=1)
    prompt: str | list[str] | list[_TokenId] | list[list[_TokenId]]
    max_tokens: int | None = Field(16, ge=0, le=_INT64_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=_INT64_MAX)
    best_of: int | None = Field(None, ge=1, le=_INT64_MAX)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=-_INT64_MAX - 1, le=_INT64_MAX)
    suffix: str | None = None
    user: str | None = None


class TokenizeRequest(_Wire):
    """POST /tokenize, in vLLM's shape: a `prompt`, or chat `messages` rendered with the
    model's chat template."""

    model: str | None = Field(
        None,
        min_length=1,
        description="The model whose tokenizer to use (optional when "
        "the caller may use a single local model, or when the path names it).",
    )
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool | None = Field(
        None, description="Default: true for a prompt, false for messages (as vLLM)."
    )
    return_token_strs: StrictBool = False


class DetokenizeRequest(_Wire):
    """POST /detokenize, in vLLM's shape."""

    model: str | None = Field(None, min_length=1, description="As in /tokenize.")
    tokens: list[_TokenId]
