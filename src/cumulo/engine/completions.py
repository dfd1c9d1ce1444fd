"""Text completions on the engine: a prompt's tokens in, its completion and log
probabilities out, as the canonical types say them.

`PromptRun` drives one prompt through `ChatEngine.generate` (the same continuous batching
as chat) and turns the engine's token ids into token strings and text offsets:
each token's string is its own decoding (`tokenizer.decode([id])`, as vLLM's are), and
its offset is where it starts in the choice's text, counted from the echoed prompt when
there is one, else from the completion's start.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from cumulo.engine.generate import ChatEngine
from cumulo.engine.params import Finished, GenerationParams, TextPiece, TokenLogprobs
from cumulo.types import TokenLogprob


class TokenStrings:
    """Token ids as strings, each decoded once per tokenizer (a small cache)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._cache.get(token)
        if text is None:
            if len(self._cache) > 65536:
                self._cache.clear()
            text = self._cache[token] = self.tokenizer.decode([token])
        return text


class PromptRun:
    """One prompt's completion: its events as canonical pieces (see the module doc)."""

    def __init__(
        self,
        engine: ChatEngine,
        strings: TokenStrings,
        prompt_ids: list[int],
        params: GenerationParams,
        echo_text: str | None,
        adapter: str | None = None,
    ) -> None:
        self.engine = engine
        self.adapter = adapter  # the LoRA adapter it runs with (None: the model itself)
        self.strings = strings
        self.prompt_ids = prompt_ids
        self.params = params
        self.echo_text = echo_text  # the prompt's text, when echoed
        self.offset = 0  # where the next token's text starts
        self.end: Finished | None = None

    def _token(
        self, token: int, logprob: float | None, top: list[tuple[int, float]] | None
    ) -> TokenLogprob:
        text = self.strings(token)
        out = TokenLogprob(
            text,
            logprob,
            None if top is None else {self.strings(t): p for t, p in top},
            self.offset,
        )
        self.offset += len(text)
        return out

    def _tokens(self, event: TokenLogprobs) -> list[TokenLogprob]:
        out = []
        if event.prompt:  # the first prompt token: nothing came before it
            out.append(self._token(self.prompt_ids[0], None, None))
        for token, logprob, top in zip(event.tokens, event.logprobs, event.top, strict=True):
            out.append(self._token(token, logprob, top))
        return out

    async def events(self) -> AsyncGenerator[str | list[TokenLogprob], None]:
        """Text (the echoed prompt first) and token log probabilities, in order; `end`
        is set once the engine has finished."""
        if self.echo_text and self.params.prompt_logprobs is None:
            self.offset = len(self.echo_text)
            yield self.echo_text
        async with aclosing(
            self.engine.generate(self.prompt_ids, self.params, self.adapter)
        ) as events:
            async for event in events:
                if isinstance(event, TextPiece):
                    yield event.text
                elif isinstance(event, TokenLogprobs):
                    yield self._tokens(event)
                    if event.prompt and self.echo_text:
                        self.offset = len(self.echo_text)
                        yield self.echo_text
                elif isinstance(event, Finished):
                    self.end = event
