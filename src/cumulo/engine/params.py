"""What a generation request asks for, and the events it yields back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from cumulo.engine.sampling import SamplingConfig


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What to generate for one request, already validated against the model."""

    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class TextPiece:
    """New text, in order; never part of a stop string, never a partial character."""

    text: str


@dataclass(slots=True)
class Finished:
    """The last event of a request, with its exact token counts.

    `completion_tokens` counts every token sampled, the end-of-sequence token
    and the tokens of a stop string included. `queue_ms` is how long the
    request waited for a slot in the running batch.
    """

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    queue_ms: float = 0.0


GenerationEvent: TypeAlias = TextPiece | Finished
