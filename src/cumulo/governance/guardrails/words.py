"""Denied words and denied topics: phrases matched whole, case-insensitively, in one pass.

A phrase matches only as whole words (`ass` is not found in `class`), its
internal spaces match any run of whitespace (`project  falcon` across a line
break), and a trailing `*` matches any ending (`invest*`: investing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence


def _alternative(phrase: str) -> str:
    core = phrase.strip()
    prefix = core.endswith("*")
    body = r"\s+".join(re.escape(w) for w in core.rstrip("*").split())
    return body + r"\w*" if prefix else body


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of `phrases` (see the module docstring)."""
    alternatives = sorted({_alternative(p) for p in phrases}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def phrase_length(phrase: str) -> int:
    """Characters a phrase's match needs at least (the stream checker holds back more)."""
    return len(" ".join(phrase.rstrip("*").split()))


class WordMatcher:
    """Finds denied words; each match is reported as the configured phrase it matched."""

    def __init__(self, phrases: Sequence[str]) -> None:
        self.phrases = list(phrases)
        self._pattern = phrase_pattern(phrases)
        self._exact = {
            " ".join(p.lower().split()): p for p in phrases if not p.strip().endswith("*")
        }
        self._each = [(p, phrase_pattern([p])) for p in phrases]
        self.longest = max((phrase_length(p) for p in phrases), default=0)

    def _phrase(self, match: str) -> str:
        exact = self._exact.get(" ".join(match.lower().split()))
        if exact is not None:
            return exact
        return next(p for p, pattern in self._each if pattern.fullmatch(match))

    def find(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, configured phrase) of each match."""
        for m in self._pattern.finditer(text):
            yield m.start(), m.end(), self._phrase(m.group())


class TopicMatcher:
    """Finds denied topics by their keywords, all topics in one pass."""

    def __init__(self, topics: Sequence[tuple[str, Sequence[str]]]) -> None:
        self.names = [name for name, _ in topics]
        groups = [
            f"(?P<t{i}>{phrase_pattern(keywords).pattern})"
            for i, (_, keywords) in enumerate(topics)
        ]
        self._pattern = re.compile("|".join(groups), re.IGNORECASE) if groups else None
        self.longest = max(
            (phrase_length(k) for _, keywords in topics for k in keywords), default=0
        )

    def find(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, topic name) of each keyword match."""
        if self._pattern is None:
            return
        for m in self._pattern.finditer(text):
            assert m.lastgroup is not None
            yield m.start(), m.end(), self.names[int(m.lastgroup[1:])]
