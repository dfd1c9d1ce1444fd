"""Checking a streamed output as it arrives, so that a stream turning bad is stopped in time.

    checker = guardrail.stream_checker()
    for delta in upstream:
        step = checker.feed(delta)
        if step.blocked:
            send(step.message); break       # nothing of the bad part was sent
        send(step.text)                      # may be "" while text is held back
    else:
        send(checker.finish().text)          # (check `blocked` here too)

The checker holds back the last `holdback` characters (enough for the longest
value that can only be recognised once complete, such as an IBAN written with
spaces, or the longest denied phrase) and never lets out part of a word. Text is
only let out once checked together with what precedes it, so a sensitive value
or a denied word split across chunks is caught: a value is replaced by its
placeholder, a blocking finding stops the stream before any of it is sent.

A match that touches the end of what has arrived may still grow or change
(`foo` could become `food`): it is held back, and only acted upon once the text
after it has arrived, or at `finish()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cumulo.governance.guardrails import credentials
from cumulo.governance.guardrails.config import Source
from cumulo.governance.guardrails.findings import Finding


class Scanner(Protocol):
    """What a stream check needs of a guardrail (`policy.Guardrail` is one)."""

    @property
    def holdback(self) -> int: ...

    def applies(self, source: Source) -> bool: ...

    def blocked_message(self, source: Source) -> str: ...

    def scan(self, text: str, source: Source, block: int = 0) -> list[Finding]: ...


_SPACES = (" ", "\n", "\t", "\r")
# Characters let out that are scanned again with the next ones: enough for the "not preceded
# by" checks at the start of a match (values and phrases are never split: see `_scan`).
CONTEXT = 16
_ASSIGNED = frozenset({"SECRET", "AWS_SECRET_KEY"})


@dataclass(frozen=True, slots=True)
class StreamCheck:
    """What may be sent now: `text` (anonymized, possibly empty), or, when `blocked`, nothing
    more than `message` (the guardrail's blocked output message). `findings` are the new ones."""

    text: str
    blocked: bool = False
    message: str | None = None
    findings: tuple[Finding, ...] = ()


class StreamChecker:
    """Incremental output check for one stream of one guardrail. Not thread-safe; one per
    stream."""

    def __init__(self, guardrail: Scanner) -> None:
        self.guardrail = guardrail
        self.hold = guardrail.holdback
        # Scan again only once this much more text has arrived: a scan per ~4 tokens, not each.
        self.step = max(8, self.hold // 4)
        self.active = guardrail.applies("OUTPUT")
        self.findings: list[Finding] = []  # every finding so far
        self.blocked = False
        self._context = ""  # the last characters let out: left context for the next scan
        self._pending = ""  # arrived, not yet let out

    @property
    def intervened(self) -> bool:
        return bool(self.findings)

    def feed(self, delta: str) -> StreamCheck:
        """Take the next chunk of output; return what may be sent now."""
        if self.blocked:
            return self._blocked_check(())
        if not self.active:
            return StreamCheck(delta)
        self._pending += delta
        if len(self._pending) < self.hold + self.step:
            return StreamCheck("")
        return self._scan(final=False)

    def finish(self) -> StreamCheck:
        """The output has ended: check and return everything still held back."""
        if self.blocked:
            return self._blocked_check(())
        if not self.active or not self._pending:
            return StreamCheck("")
        return self._scan(final=True)

    def _blocked_check(self, findings: tuple[Finding, ...]) -> StreamCheck:
        return StreamCheck("", True, self.guardrail.blocked_message("OUTPUT"), findings)

    def _scan(self, final: bool) -> StreamCheck:
        window = self._context + self._pending
        offset, n = len(self._context), len(window)
        found = [f for f in self.guardrail.scan(window, "OUTPUT") if f.end > offset]
        # A match touching the end may still change; until more text comes, it only holds.
        blocking = tuple(f for f in found if f.action == "BLOCKED" and (final or f.end < n))
        if blocking:
            self.blocked = True
            self.findings.extend(blocking)
            self._pending = ""
            return self._blocked_check(blocking)
        cut = n if final else self._safe_cut(window, offset, n - self.hold)
        if not final and (opener := credentials.open_assignment(window, cut)) is not None:
            cut = max(offset, opener)  # `api_key = ` waits for its value, to be seen together
        for f in sorted(found, key=lambda f: f.start, reverse=True):
            start = f.start
            if f.type in _ASSIGNED:  # recognised by the name it is assigned to: keep them together
                start = credentials.open_assignment(window, f.start) or start
            if start < cut < f.end:  # never let out part of a match
                cut = max(offset, start)
        emitted = [f for f in found if f.action == "ANONYMIZED" and f.start < cut]
        parts: list[str] = []
        pos = offset
        for f in sorted(emitted, key=lambda f: f.start):
            parts.append(window[pos : max(pos, f.start)])
            parts.append("{" + f.type + "}")
            pos = f.end
        parts.append(window[pos:cut])
        self._context = window[max(0, cut - CONTEXT) : cut]
        self._pending = window[cut:]
        self.findings.extend(emitted)
        return StreamCheck("".join(parts), findings=tuple(emitted))

    def _safe_cut(self, window: str, offset: int, cut: int) -> int:
        """`cut` moved back so as not to split a word (unless the word is huge)."""
        if cut <= offset:
            return offset
        if window[cut - 1] in _SPACES or window[cut] in _SPACES:
            return cut
        space = max(window.rfind(c, offset, cut) for c in _SPACES)
        if space >= offset:
            return space + 1
        return cut if cut - offset > 4 * self.hold else offset
