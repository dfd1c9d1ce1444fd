"""The README's code blocks and the shell commands in them, as a reader would copy them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_SEPARATORS = {"|", "||", "&&", ";", "(", ")", "&", ">", ">>", "<"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Block:
    lang: str
    text: str
    section: str  # the heading it is under


def blocks(text: str | None = None) -> list[Block]:
    text = README.read_text(encoding="utf-8") if text is None else text
    found = []
    for m in _BLOCK.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[: m.start()], re.M)
        found.append(Block(m.group(1), m.group(2), headings[-1] if headings else ""))
    return found


def shell_lines(block: Block) -> list[str]:
    """The block's commands, one per logical line (backslash continuations and quotes
    spanning lines joined)."""
    lines: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        try:
            shlex.split(line, comments=True)
        except ValueError:  # a quote still open: the command goes on
            pending = line + "\n"
            continue
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(line)
    assert not pending, f"unfinished command in a {block.lang} block: {pending!r}"
    return lines


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at pipes, `&&`, `;`, `$(...)`), each
    without its leading variable assignments; comments dropped."""
    lexer = shlex.shlex(line.replace("$(", " ( "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _SEPARATORS:
            commands.append([])
        elif not commands[-1] and _ASSIGNMENT.match(token):
            continue
        else:
            commands[-1].append(token)
    return [c for c in commands if c]
