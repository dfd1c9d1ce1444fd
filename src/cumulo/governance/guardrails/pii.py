"""Sensitive-information detection: personal data and secrets, by pattern and check digits.

Pure Python regular expressions, each candidate then validated: payment cards by
issuer prefix, length, grouping and the Luhn check; IBANs by country length and
mod 97; US SSNs and UK National Insurance numbers by the issuers' rules; Spanish
DNI/NIE by the control letter; Aadhaar by Verhoeff. Phones are international
(`+CC …`), North American (`(415) 555-0132`, `212-555-0187`, `1-800-…`) or national
with a trunk 0 and separators (`020 7946 0321`, `01 42 68 53 00`); a bare run of
digits is never a phone. Secrets are in `credentials`.

`PiiScanner(types).scan(text)` returns non-overlapping spans; where two
detectors claim the same characters, the more specific one wins (a key before a
generic secret, a card before a phone).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from cumulo.governance.guardrails import checksums, credentials
from cumulo.governance.guardrails.config import PiiType

Found = Iterator[tuple[int, int, str]]  # (start, end, type)


@dataclass(frozen=True, slots=True)
class Span:
    """One sensitive value: its type (a `PiiType` or a custom regex's name) and where it is."""

    type: str
    start: int
    end: int


# Each pattern starts with a literal or a character class, so that the regular-expression
# engine skips quickly to candidates; the "not preceded by" checks come right after it.
_EMAIL_DOMAIN = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+'%-")
_PHONE_INTL = re.compile(r"\+(?<![\w+]\+)[1-9](?:[ .-]?\(?\d\)?){6,16}(?!\d)")
_PHONE_NANP_TAIL = re.compile(r"[2-9]\d\d(?P<sep>[ .-])\d{4}(?![\w-]|\.\d)")
_PHONE_NANP_HEAD = re.compile(
    r"(?<![\w+#.-])(?:\+?1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d(?P<sep>[ .-]))\Z"
)
_PHONE_TRUNK = re.compile(r"0(?<![\w+#.-]0)[1-9]\d{0,4}(?:[ -]\d{2,6}){1,5}(?![\w-]|\.\d)")
_CARD = re.compile(r"\d(?<![\w.+-]\d)(?<!\d \d)(?:[ -]?\d){11,18}(?![\w-]|[ -]\d|\.\d)")
_CARD_GROUPS = re.compile(r"(?:\d{4}[ -]){2,4}\d{1,4}|\d{4}[ -]\d{6}[ -]\d{4,5}")
_IBAN_CHECK_DIGITS = re.compile(r"\d\d(?<=(?<![A-Za-z0-9])[A-Za-z]{2}\d\d)")
_SSN = re.compile(r"(\d(?<![\w-]\d)\d\d)([ -])(\d{2})\2(\d{4})(?![\w-]|\.\d)")
_NINO = re.compile(
    r"([A-CEGHJ-PR-TW-Z](?<![A-Za-z0-9][A-Z])[A-CEGHJ-NPR-TW-Z])( ?)\d\d\2\d\d\2\d\d\2[A-D]"
    r"(?![A-Za-z0-9])"
)
_ES_ID = re.compile(r"([0-9XYZ](?<![A-Za-z0-9][0-9XYZ])\d{7})-?([A-Z])(?![A-Za-z0-9])")
_AADHAAR = re.compile(
    r"[2-9](?<![\w.+-][2-9])(?<!\d [2-9])\d{3}([ -]?)\d{4}\1\d{4}(?![\w-]|[ -]\d|\.\d)"
)
_DIGITS = re.compile(r"\d")
_SEPARATORS = re.compile(r"[^0-9A-Za-z]")


def _digits(s: str) -> str:
    return _SEPARATORS.sub("", s)


def find_emails(text: str) -> Found:
    """From each `@…domain` back over the local part (at most 64 characters, starting with a
    letter or digit)."""
    for m in _EMAIL_DOMAIN.finditer(text):
        at = m.start()
        start = at
        while start > 0 and at - start < 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        if start > 0 and text[start - 1] in _EMAIL_LOCAL:
            continue  # local part too long
        while start < at and not text[start].isalnum():
            start += 1
        if start < at:
            yield start, m.end(), "EMAIL"


def _trim_paren(start: int, value: str) -> tuple[int, int]:
    if value.endswith(")") and value.count(")") > value.count("("):
        value = value[:-1]
    return start, start + len(value)


def find_phones(text: str) -> Found:
    for m in _PHONE_INTL.finditer(text):
        if 8 <= len(_digits(m.group())) <= 15:
            yield (*_trim_paren(m.start(), m.group()), "PHONE")
    for m in _PHONE_NANP_TAIL.finditer(text):  # exchange and line number, then the area code
        head = _PHONE_NANP_HEAD.search(text, max(0, m.start() - 12), m.start())
        if head is not None and head.group("sep") in (None, m.group("sep")):
            yield head.start(), m.end(), "PHONE"
    for m in _PHONE_TRUNK.finditer(text):
        if 10 <= len(_digits(m.group())) <= 11:
            yield m.start(), m.end(), "PHONE"


def find_cards(text: str) -> Found:
    for m in _CARD.finditer(text):
        value = m.group()
        digits = _digits(value)
        if len(digits) < 12:
            continue
        separated = len(digits) != len(value)  # then one kind of separator, in card groups
        if separated and (("-" in value and " " in value) or not _CARD_GROUPS.fullmatch(value)):
            continue
        if checksums.card_brand_ok(digits) and checksums.luhn(digits):
            yield m.start(), m.end(), "CREDIT_DEBIT_CARD_NUMBER"


def find_ibans(text: str) -> Found:
    """Country code, check digits, then the country's length of letters and digits, in which
    single spaces may appear; the whole must pass the mod-97 check."""
    for m in _IBAN_CHECK_DIGITS.finditer(text):
        start = m.start() - 2
        length = checksums.IBAN_LENGTHS.get(text[start : m.start()].upper())
        if length is None:
            continue
        chars = [text[start : m.end()].upper()]
        need, i, n = length - 4, m.end(), len(text)
        while need and i < n:
            c = text[i]
            if c.isascii() and c.isalnum():
                chars.append(c.upper())
                need -= 1
            elif not (c == " " and i + 1 < n and text[i + 1].isalnum()):
                break
            i += 1
        if need or (i < n and text[i].isalnum()):
            continue
        if checksums.iban("".join(chars)):
            yield start, i, "INTERNATIONAL_BANK_ACCOUNT_NUMBER"


def find_ssns(text: str) -> Found:
    for m in _SSN.finditer(text):
        if checksums.us_ssn(m.group(1), m.group(3), m.group(4)):
            yield m.start(), m.end(), "US_SOCIAL_SECURITY_NUMBER"


def find_ninos(text: str) -> Found:
    for m in _NINO.finditer(text):
        if checksums.uk_nino(m.group(1)):
            yield m.start(), m.end(), "UK_NATIONAL_INSURANCE_NUMBER"


def find_spanish_ids(text: str) -> Found:
    for m in _ES_ID.finditer(text):
        if checksums.spanish_id(m.group(1), m.group(2)):
            yield m.start(), m.end(), "ES_NATIONAL_ID"


def find_aadhaar(text: str) -> Found:
    for m in _AADHAAR.finditer(text):
        if checksums.aadhaar(_digits(m.group())):
            yield m.start(), m.end(), "IN_AADHAAR"


@dataclass(frozen=True, slots=True)
class Detector:
    find: Callable[[str], Found]
    needs_digit: bool  # skipped, cheaply, on text without digits
    needs: str | None = None  # skipped on text without this substring


# In priority order: where two claim the same characters, the earlier one wins.
DETECTORS: dict[PiiType, Detector] = {
    "PRIVATE_KEY": Detector(credentials.find_private_keys, False, "-----BEGIN"),
    "API_KEY": Detector(credentials.find_prefixed_keys, False),
    "AWS_ACCESS_KEY": Detector(credentials.find_aws_access_keys, True),
    "AWS_SECRET_KEY": Detector(credentials.find_assigned_secrets, False),
    "CREDIT_DEBIT_CARD_NUMBER": Detector(find_cards, True),
    "INTERNATIONAL_BANK_ACCOUNT_NUMBER": Detector(find_ibans, True),
    "IN_AADHAAR": Detector(find_aadhaar, True),
    "US_SOCIAL_SECURITY_NUMBER": Detector(find_ssns, True),
    "UK_NATIONAL_INSURANCE_NUMBER": Detector(find_ninos, True),
    "ES_NATIONAL_ID": Detector(find_spanish_ids, True),
    "EMAIL": Detector(find_emails, False, "@"),
    "PHONE": Detector(find_phones, True),
    "SECRET": Detector(credentials.find_assigned_secrets, False),
}
_PRIORITY: dict[str, int] = {kind: i for i, kind in enumerate(DETECTORS)}
# Longest value a detector can only recognise once complete, in characters (an IBAN with
# spaces): the stream checker holds back at least this much.
MAX_SPACED_VALUE = 44


class PiiScanner:
    """Finds the configured types (and custom regexes, named) in a text."""

    def __init__(
        self, types: Iterable[PiiType], regexes: Sequence[tuple[str, re.Pattern[str]]] = ()
    ) -> None:
        self.types = frozenset(types)
        finders: dict[Callable[[str], Found], Detector] = {}
        for kind in DETECTORS:  # one run for finders serving two types (assigned secrets)
            if kind in self.types:
                finders.setdefault(DETECTORS[kind].find, DETECTORS[kind])
        self._detectors = list(finders.values())
        self._regexes = list(regexes)

    def scan(self, text: str) -> list[Span]:
        """Non-overlapping spans in text order."""
        has_digit: bool | None = None
        found: list[tuple[int, int, int, str]] = []  # (priority, start, end, type)
        for d in self._detectors:
            if d.needs is not None and d.needs not in text:
                continue
            if d.needs_digit:
                if has_digit is None:
                    has_digit = _DIGITS.search(text) is not None
                if not has_digit:
                    continue
            for start, end, kind in d.find(text):
                if kind in self.types:
                    found.append((_PRIORITY[kind], start, end, kind))
        for i, (name, pattern) in enumerate(self._regexes):
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    found.append((len(_PRIORITY) + i, m.start(), m.end(), name))
        if not found:
            return []
        if len(found) == 1:
            _, start, end, kind = found[0]
            return [Span(kind, start, end)]
        found.sort(key=lambda f: (f[0], f[1] - f[2], f[1]))
        taken: list[tuple[int, int, int, str]] = []
        for f in found:
            if all(f[2] <= t[1] or f[1] >= t[2] for t in taken):
                taken.append(f)
        taken.sort(key=lambda f: f[1])
        return [Span(kind, start, end) for _, start, end, kind in taken]
