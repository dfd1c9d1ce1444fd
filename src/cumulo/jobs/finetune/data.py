"""Training files: chat-format JSONL, checked line by line before any training starts.

Each line is `{"messages": [{role, content, weight?}, ...], "tools"?: [...]}` as OpenAI's
supervised fine-tuning takes it: roles `system`, `user`, `assistant` (and `tool`), at
least one assistant message with `weight` not 0 in the file, `weight` 0 or 1 on
assistant messages only. An error names the line and the field (`messages[2].content`).
An example longer than the base model's context window is an error naming its line.
"""

from __future__ import annotations

import json
from typing import Any

from cumulo.files.validate import MAX_ERRORS, LineError, LineInvalid

ROLES = ("system", "user", "assistant", "tool")
MAX_EXAMPLES = 100_000


def parse_example(number: int, raw: bytes) -> list[dict[str, Any]]:
    """The messages of line `number`; raises LineInvalid naming the field."""

    def bad(param: str | None, message: str) -> LineInvalid:
        return LineInvalid(LineError(number, param, f"line {number}: {message}"))

    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad(None, "not valid JSON") from None
    if not isinstance(obj, dict):
        raise bad(None, "must be a JSON object with `messages`")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "`messages` must be a non-empty list")
    if "tools" in obj and not isinstance(obj["tools"], list):
        raise bad("tools", "`tools` must be a list")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"`{where}` must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"`{where}.role` must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        if not isinstance(content, str):
            raise bad(f"{where}.content", f"`{where}.content` must be a string")
        msg: dict[str, Any] = {"role": role, "content": content}
        if "weight" in m:
            if role != "assistant":
                raise bad(f"{where}.weight", f"`{where}.weight` is only for assistant messages")
            if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                raise bad(f"{where}.weight", f"`{where}.weight` must be 0 or 1")
            msg["weight"] = m["weight"]
        out.append(msg)
    if not any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in out):
        raise bad("messages", "no assistant message to learn from (weight 0 on all of them)")
    return out


def parse_file(content: bytes) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """(examples, errors as OpenAI's error items) of a whole training file."""
    examples: list[list[dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(examples) >= MAX_EXAMPLES:
            errors.append(
                LineError(number, None, f"line {number}: at most {MAX_EXAMPLES} examples").as_dict()
            )
            break
        try:
            examples.append(parse_example(number, raw))
        except LineInvalid as exc:
            if len(errors) < MAX_ERRORS:
                errors.append(exc.error.as_dict())
    if not examples and not errors:
        errors.append(LineError(1, None, "the file holds no examples", "empty_file").as_dict())
    return examples, errors


def line_numbers(content: bytes) -> list[int]:
    """The line number of each example (non-blank line) in `content`."""
    return [n for n, raw in enumerate(content.split(b"\n"), start=1) if raw.strip()]


__all__ = ["MAX_EXAMPLES", "ROLES", "line_numbers", "parse_example", "parse_file"]
