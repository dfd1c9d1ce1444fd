"""Denied words and denied topics: phrases matched whole, case-insensitively, in one pass.

A phrase matches only as whole words (`ass` is not found in `class`), its
internal spaces match any run of whitespace (`project  falcon` across a line
break), and a trailing `*` matches any ending (`invest*`: investing).

Matching runs on the lower-cased text with a pattern that starts with the
phrases' letters, so that the regular-expression engine skips quickly to
candidates; the start of a match is then checked to begin a word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

L = TypeVar("L")


def _alternative(phrase: str) -> str:
    core = phrase.strip().lower()
    prefix = core.endswith("*")
    body = r"\s+".join(re.escape(w) for w in core.rstrip("*").split())
    return body + r"\w*" if prefix else body


def _alternation(phrases: Iterable[str]) -> str:
    return "|".join(sorted({_alternative(p) for p in phrases}, key=len, reverse=True))


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive pattern matching any of `phrases` (see the module docstring)."""
    return re.compile(r"(?<!\w)(?:" + _alternation(phrases) + r")(?!\w)", re.IGNORECASE)


def phrase_length(phrase: str) -> int:
    """Characters a phrase's match needs at least (the stream checker holds back more)."""
    return len(" ".join(phrase.rstrip("*").split()))


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


class PhraseMatcher(Generic[L]):
    """Finds phrases, each labelled (a denied word's own spelling, a topic's name)."""

    def __init__(self, phrases: Sequence[tuple[str, L]]) -> None:
        alternation = _alternation(p for p, _ in phrases)
        self._lower = re.compile(r"(?:" + alternation + r")(?!\w)")
        self._any_case = phrase_pattern(p for p, _ in phrases)
        self._exact = {" ".join(p.lower().split()): label for p, label in phrases if "*" not in p}
        self._each = [(phrase_pattern([p]), label) for p, label in phrases]
        self.longest = max((phrase_length(p) for p, _ in phrases), default=0)

    def _label(self, match: str) -> L:
        exact = self._exact.get(" ".join(match.lower().split()))
        if exact is not None:
            return exact
        return next(label for pattern, label in self._each if pattern.fullmatch(match))

    def find(self, text: str) -> Iterator[tuple[int, int, L]]:
        """(start, end, label) of each match."""
        low = text.lower()
        if len(low) != len(text):  # a character lower-cased to two: offsets would shift
            for found in self._any_case.finditer(text):
                yield found.start(), found.end(), self._label(found.group())
            return
        search = self._lower.search
        m: re.Match[str] | None = search(low)
        while m is not None:
            start = m.start()
            if start and _word_char(low[start - 1]):
                m = search(low, start + 1)  # glued to a word: look again from the next character
                continue
            yield start, m.end(), self._label(text[start : m.end()])
            m = search(low, m.end())


class WordMatcher(PhraseMatcher[str]):
    """Denied words; each match is labelled with the phrase as configured."""

    def __init__(self, phrases: Sequence[str]) -> None:
        super().__init__([(p, p) for p in phrases])
        self.phrases = list(phrases)


class TopicMatcher(PhraseMatcher[str]):
    """Denied topics by their keywords, all topics in one pass; labelled with the topic's name."""

    def __init__(self, topics: Sequence[tuple[str, Sequence[str]]]) -> None:
        super().__init__([(k, name) for name, keywords in topics for k in keywords])
        self.names = [name for name, _ in topics]
