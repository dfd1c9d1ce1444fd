"""Finders for secrets: provider API keys, AWS keys, private keys, and secrets assigned to names.

Each finder yields `(start, end, type)` of the secret's characters in the text.
Keys with a known prefix are recognised by their format; anything else only
when it is assigned to a key-like name (`api_key=…`, `"password": "…"`,
`Authorization: Bearer …`) and looks random: long, mixed characters, high
entropy. Placeholders (`YOUR_API_KEY_HERE`, `<token>`, `${TOKEN}`) are not secrets.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

# Each pattern starts with a literal, so that the regular-expression engine skips quickly to
# candidates; "not preceded by a word character" is checked on the (rare) matches.
_PREFIXED = re.compile(
    r"(?:"
    r"sk-[A-Za-z0-9_-]{20,}"  # OpenAI (sk-, sk-proj-, sk-svcacct-, …), Anthropic (sk-ant-…)
    r"|sk_(?:live|test)_[A-Za-z0-9]{16,}|rk_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{40,}"  # GitHub fine-grained tokens
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab personal access tokens
    r"|AIza[A-Za-z0-9_-]{35}"  # Google API keys
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r"|npm_[A-Za-z0-9]{36}"  # npm tokens
    r"|ck-[0-9a-f]{8,32}\.[A-Za-z0-9_-]{20,}"  # cumulo keys
    r")(?![A-Za-z0-9_-])"
)
_AWS_ACCESS_KEY = re.compile(
    r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA|3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"
)
_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
    r"(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)"
)
# Key-like names, found in the lower-cased text; the assignment is then matched from the name on.
_KEY_HINTS = ("key", "secret", "token", "pass", "pwd", "auth", "credential")
_KEY_NAME = re.compile(
    r"api[_.-]?key|apikey|secret|token|passw(?:or)?d|pwd|passphrase|access[_.-]?key"
    r"|auth(?:orization)?|credentials?|private[_.-]?key"
)
_KEY_NAME_ANY_CASE = re.compile(_KEY_NAME.pattern, re.IGNORECASE)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_ASSIGNMENT = re.compile(
    r"[\w.-]*[\"']?\s*(?:=>|=|:)\s*[\"']?(?:(?:bearer|basic|token)\s+)?"
    r"(?P<value>(?:[^\s\"'<>,;(){}\[\]&`]|&(?!\w+=)){8,})",
    re.IGNORECASE,
)
# A name and its assignment with no value yet: `api_key = `, `Authorization: Bearer `.
_OPEN_ASSIGNMENT = re.compile(
    rf"[\w.-]*(?:{_KEY_NAME.pattern})[\w.-]*[\"']?\s*(?:=>|=|:)\s*[\"']?"
    r"(?:(?:bearer|basic|token)\b\s*)?\Z",
    re.IGNORECASE,
)
_OPENER_REACH = 120  # characters looked back for an open assignment
_PASSWORD_NAME = re.compile(r"(?i)passw|pwd|passphrase")
_AWS_SECRET_NAME = re.compile(r"(?i)secret[_.-]?access[_.-]?key|aws[_.-]?secret")
_AWS_SECRET_VALUE = re.compile(r"[A-Za-z0-9/+]{40}")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:your|my|the|some|example)[_-]|^\$\{?\w+\}?$|x{4}|\*{3}|\.\.\.|redacted"
    r"|changeme|placeholder"
)
_CONSTANT_NAME = re.compile(r"[A-Z][A-Z_]*")  # YOUR_API_KEY_HERE, an env var's name
_TRAILING = ".:!?"


def _glued(text: str, start: int) -> bool:
    """Whether `start` continues a word (`risk-free` holds no `sk-` key)."""
    return start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-")


def find_prefixed_keys(text: str) -> Iterator[tuple[int, int, str]]:
    """Provider API keys recognised by their prefix and format."""
    for m in _PREFIXED.finditer(text):
        token = m.group()
        if _glued(text, m.start()):
            continue
        if token.startswith("sk-") and not any(c.isdigit() for c in token):
            continue  # `sk-` words in prose; real keys are random and carry digits
        yield m.start(), m.end(), "API_KEY"


def find_aws_access_keys(text: str) -> Iterator[tuple[int, int, str]]:
    for m in _AWS_ACCESS_KEY.finditer(text):
        yield m.start(), m.end(), "AWS_ACCESS_KEY"


def find_private_keys(text: str) -> Iterator[tuple[int, int, str]]:
    """PEM private key blocks, header to footer (or to the end of an unterminated block)."""
    if "-----BEGIN" not in text:
        return
    for m in _PEM.finditer(text):
        yield m.start(), m.end(), "PRIVATE_KEY"


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _classes(value: str) -> int:
    lower = upper = digit = other = 0
    for c in value:
        if c.islower():
            lower = 1
        elif c.isupper():
            upper = 1
        elif c.isdigit():
            digit = 1
        else:
            other = 1
    return lower + upper + digit + other


def looks_secret(key: str, value: str) -> bool:
    """Whether `value`, assigned to `key`, looks like a real secret rather than a word or a
    placeholder: a password needs 8+ characters of 3+ classes; anything else 16+ characters,
    a digit, 2+ classes and 3+ bits of entropy per character."""
    if _PLACEHOLDER.search(value) or _CONSTANT_NAME.fullmatch(value):
        return False
    if _PASSWORD_NAME.search(key):
        return len(value) >= 8 and _classes(value) >= 3
    return (
        len(value) >= 16
        and any(c.isdigit() for c in value)
        and _classes(value) >= 2
        and entropy(value) >= 3.0
    )


def open_assignment(text: str, end: int) -> int | None:
    """Where a key-like name starts, if `text[:end]` ends with it and its assignment but no
    value yet (the value may come in the next chunk of a stream); else None."""
    start = max(0, end - _OPENER_REACH)
    if not any(hint in text[start:end].lower() for hint in _KEY_HINTS):
        return None
    m = _OPEN_ASSIGNMENT.search(text, start, end)
    return None if m is None else m.start()


def find_assigned_secrets(text: str) -> Iterator[tuple[int, int, str]]:
    """Secrets assigned to key-like names: `SECRET`, or `AWS_SECRET_KEY` for an AWS secret key."""
    low = text.lower()
    if not any(hint in low for hint in _KEY_HINTS):
        return
    # Lower-casing keeps offsets unless some character lower-cases to two.
    names = _KEY_NAME.finditer(low) if len(low) == len(text) else _KEY_NAME_ANY_CASE.finditer(text)
    done = 0  # end of the last value reported: `aws_secret_access_key` names two hints
    for name in names:
        if name.start() < done:
            continue
        m = _ASSIGNMENT.match(text, name.end())
        if m is None:
            continue
        start = name.start()
        while start > 0 and text[start - 1] in _NAME_CHARS:
            start -= 1
        key = text[start : m.start("value")]
        value = m.group("value").rstrip(_TRAILING)
        if not looks_secret(key, value):
            continue
        kind = "SECRET"
        if _AWS_SECRET_NAME.search(key) and _AWS_SECRET_VALUE.fullmatch(value):
            kind = "AWS_SECRET_KEY"
        done = m.start("value") + len(value)
        yield m.start("value"), done, kind
