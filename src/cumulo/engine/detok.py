"""Incremental detokenization with stop strings.

Tokens do not map to characters one to one: a byte-level token may hold half
of a UTF-8 character, and merges can change how earlier bytes read. So the
whole generated id list is decoded at each step and only the new suffix is
emitted, minus what is not safe to show yet:

- a trailing U+FFFD, the mark of an incomplete UTF-8 sequence, waits for the
  bytes that complete it;
- a trailing piece of text that could be the start of a stop string waits
  until it either becomes the stop string (and is dropped with everything
  after it) or stops matching.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_INCOMPLETE = "\ufffd"


class IncrementalText:
    """Turns a growing list of token ids into text pieces, honouring stop strings."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return self._text[: self._emitted]

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that is now safe to emit.

        After a stop string appears, `stopped` is true and the returned piece
        ends right before it.
        """
        if self.stopped:
            return ""
        self._ids.append(token_id)
        self._text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            return self._emit_to(cut)
        end = len(self._text)
        while end > self._emitted and self._text[end - 1] == _INCOMPLETE:
            end -= 1
        return self._emit_to(end - self._stop_prefix_len(end))

    def flush(self) -> str:
        """The text held back so far; call once generation has ended without a stop string."""
        if self.stopped:
            return ""
        return self._emit_to(len(self._text))

    def _emit_to(self, end: int) -> str:
        end = max(end, self._emitted)
        piece = self._text[self._emitted : end]
        self._emitted = end
        return piece

    def _find_stop(self) -> int | None:
        if not self._stop:
            return None
        # A stop string cannot start inside text already emitted (it would
        # have been held back), so only the recent tail needs searching.
        start = max(0, self._emitted - self._longest_stop)
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, end: int) -> int:
        """Length of the longest tail of `text[:end]` that begins some stop string."""
        longest = min(self._longest_stop - 1, end - self._emitted)
        for size in range(longest, 0, -1):
            tail = self._text[end - size : end]
            if any(s.startswith(tail) for s in self._stop):
                return size
        return 0
