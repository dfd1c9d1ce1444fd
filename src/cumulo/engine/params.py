"""What a generation request asks for, and the events it yields back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from cumulo.engine.sampling import SamplingConfig


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What to generate for one request, already validated against the model."""

    max_new_tokens: int  # 0: only the prompt is read (for its log probabilities)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # each sampled token's log probability and this many top ones
    prompt_logprobs: int | None = None  # the same for every prompt token after the first


@dataclass(slots=True)
class TextPiece:
    """New text, in order; never part of a stop string, never a partial character."""

    text: str


@dataclass(slots=True)
class Finished:
    """The last event of a request, with its exact token counts.

    `completion_tokens` counts every token sampled, the end-of-sequence token
    and the tokens of a stop string included. `queue_ms` is how long the
    request waited for a slot in the running batch. `cached_tokens` of the prompt
    tokens were copied from the prefix cache instead of computed.
    """

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float = 0.0
    cached_tokens: int = 0


@dataclass(slots=True)
class TokenLogprobs:
    """Log probabilities of tokens, as the model gave them (before temperature or penalties).

    `prompt`: of prompt tokens, in order from the second (the first has none), all posted
    once the prompt is read; else of one sampled token, posted before its text. `tokens[i]`
    had log probability `logprobs[i]`; `top[i]` holds the most likely tokens at that
    position, with theirs, most likely first.
    """

    tokens: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    prompt: bool = False


GenerationEvent: TypeAlias = TextPiece | TokenLogprobs | Finished
